"""Suite-wide fixtures and the ``gpu`` marker: gpu tests skip cleanly without an NVIDIA GPU."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import warnings

import pytest


def _has_nvidia_gpu() -> bool:
    if shutil.which("nvidia-smi") is None:
        return False
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and "GPU" in out.stdout


HAS_GPU = _has_nvidia_gpu()

# pyclesperanto's OpenCL backend crashes the interpreter (segfault) when it is first activated
# after tensorflow has loaded its libraries (seen with the pocl CPU driver).  Any test module
# may import tensorflow, so load pyclesperanto first in every test process.
if importlib.util.find_spec("pyclesperanto") is not None:
    with warnings.catch_warnings():
        # Without an OpenCL driver it warns here; the tests that need it then skip.
        warnings.simplefilter("ignore")
        import pyclesperanto  # noqa: F401


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if HAS_GPU:
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU (none found by nvidia-smi)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# --------------------------------------------------------------------------- S3 test server


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server on 127.0.0.1; yields the fsspec storage options that reach it.

    Credentials go in the environment (the way real deployments pass them) and so does
    ``AWS_ENDPOINT_URL``, so that worker processes started by a test reach the server too.
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
        mp.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
        server.start()
        try:
            yield {"endpoint_url": f"http://127.0.0.1:{port}", "use_listings_cache": False}
        finally:
            server.stop()


@pytest.fixture
def s3_bucket(s3_server):
    """A fresh, empty bucket: (``s3://name``, storage options)."""
    import uuid

    import s3fs

    fs = s3fs.S3FileSystem(**s3_server)
    name = f"hcs-{uuid.uuid4().hex[:12]}"
    fs.mkdir(name)
    return f"s3://{name}", s3_server
