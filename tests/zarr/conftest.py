"""Fixtures for the zarr tests: a moto S3 server on 127.0.0.1 for the whole session."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from typing import Any

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def s3_server() -> Iterator[dict[str, Any]]:
    """A moto S3 server; yields the fsspec storage options that reach it.

    Credentials are set in the environment (the way real deployments pass them), never
    in library code.
    """
    pytest.importorskip("s3fs")
    moto_server = pytest.importorskip("moto.server")
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_SESSION_TOKEN", "testing")
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        server.start()
        try:
            yield {"endpoint_url": f"http://127.0.0.1:{port}", "use_listings_cache": False}
        finally:
            server.stop()


@pytest.fixture
def s3_bucket(s3_server: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """A fresh, empty bucket: (``s3://name``, storage options)."""
    import s3fs

    fs = s3fs.S3FileSystem(**s3_server)
    name = f"hcs-{uuid.uuid4().hex[:12]}"
    fs.mkdir(name)
    return f"s3://{name}", s3_server
