"""``hcsflow fsck``: debris of dead writers is listed and removed, a live writer's never."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from hcsflow.cli import main
from hcsflow.storage import DiskStorageBackend, ZarrStorageBackend, find_debris
from hcsflow.storage._debris import writer_tag


def _dead_tag() -> str:
    """A writer tag of this host and boot whose process does not exist."""
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from hcsflow.storage._debris import writer_tag; print(writer_tag())",
        ],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    return proc.stdout.strip()


def test_fsck_lists_then_fixes_dead_writers_debris_only(tmp_path, capsys) -> None:
    DiskStorageBackend(tmp_path).save(np.arange(3), "/a.npy")
    (tmp_path / "z").mkdir()
    zarr = ZarrStorageBackend(tmp_path / "z")
    zarr.save(np.arange(4), "/x.npy")
    dead, alive = _dead_tag(), writer_tag()
    (tmp_path / f".hcsflow-a.npy.{dead}.tmp").write_bytes(b"x" * 100)
    (tmp_path / f".hcsflow-b.npy.{alive}.tmp").write_bytes(b"y")
    (tmp_path / "z" / "x.npy" / f"data{dead}").mkdir()
    (tmp_path / "z" / "x.npy" / f"zarr.json.{dead}.partial").write_text("{}")
    (tmp_path / f".hcsflow-old.npy.{'ab' * 6}.tmp").write_bytes(b"legacy")

    assert main(["fsck", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "5 entries, 3 removable" in out and "still running" in out

    assert main(["fsck", str(tmp_path), "--fix", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["removed"] == 3
    left = sorted(os.path.basename(d.path) for d in find_debris(tmp_path))
    assert left == sorted([f".hcsflow-b.npy.{alive}.tmp", f".hcsflow-old.npy.{'ab' * 6}.tmp"])
    np.testing.assert_array_equal(zarr.load("/x.npy"), np.arange(4))

    # entries whose writer cannot be identified go only when old enough
    assert main(["fsck", str(tmp_path), "--fix", "--older-than", "0"]) == 0
    capsys.readouterr()
    left = [os.path.basename(d.path) for d in find_debris(tmp_path)]
    assert left == [f".hcsflow-b.npy.{alive}.tmp"]


def test_fsck_of_a_clean_tree_and_of_a_missing_path(tmp_path, capsys) -> None:
    DiskStorageBackend(tmp_path).save(np.arange(3), "/a.npy")
    assert main(["fsck", str(tmp_path)]) == 0
    assert "no debris" in capsys.readouterr().out
    assert main(["fsck", str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err


def test_fsck_takes_a_file_url_and_refuses_other_urls(tmp_path, capsys) -> None:
    DiskStorageBackend(tmp_path).save(np.arange(3), "/a.npy")
    assert main(["fsck", f"file://{tmp_path}"]) == 0
    assert f"{tmp_path}: no debris" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        main(["fsck", "s3://bucket/run"])
    assert info.value.code == 2
    assert "'s3://bucket/run' is a URL; this command needs a local path" in capsys.readouterr().err
