"""Names the zarr format or the backend use themselves cannot be virtual entries."""

from __future__ import annotations

import numpy as np
import pytest

from hcsflow.errors import InvalidPathError
from hcsflow.storage import ZarrStorageBackend


@pytest.mark.parametrize(
    "path",
    [
        "/d/zarr.json",
        "/d/.zattrs",
        "/d/.zgroup",
        "/.hcsflow",
        "/d/zarr.json/x.npy",
        "/d/x.npy." + "0" * 32 + ".partial",
    ],
)
def test_reserved_names_are_refused_everywhere(tmp_path, path: str) -> None:
    backend = ZarrStorageBackend(root=str(tmp_path))
    backend.ensure_directory("/d")
    with pytest.raises(InvalidPathError, match="reserved"):
        backend.save(np.zeros((2, 2), np.uint8), path)
    with pytest.raises(InvalidPathError, match="reserved"):
        backend.exists(path)
    with pytest.raises(InvalidPathError, match="reserved"):
        backend.ensure_directory(path)
    assert backend.list_dir("/d") == []


def test_ordinary_names_that_resemble_reserved_ones_work(tmp_path) -> None:
    backend = ZarrStorageBackend(root=str(tmp_path))
    backend.ensure_directory("/d")
    for name in ("zarr.json.bak.npy", "x.partial.npy", "hcsflow.npy"):
        backend.save(np.ones((2, 2), np.uint8), f"/d/{name}")
    assert sorted(backend.list_dir("/d")) == sorted(
        ["zarr.json.bak.npy", "x.partial.npy", "hcsflow.npy"]
    )
