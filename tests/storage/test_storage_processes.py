"""Subprocess tests: imports stay light, and a killed writer never leaves a torn file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tifffile

FRAMEWORKS = [
    "torch",
    "jax",
    "jaxlib",
    "tensorflow",
    "cupy",
    "pyclesperanto",
    "pyclesperanto_prototype",
]


@pytest.mark.parametrize(
    "statement",
    [
        "import hcsflow",
        "import hcsflow.storage",
        "import hcsflow.storage; hcsflow.storage.FileManager().backend('disk')",
        "from hcsflow.storage import DiskStorageBackend, MemoryStorageBackend, default_codecs",
    ],
)
def test_import_loads_no_optional_framework(statement) -> None:
    code = (
        f"import sys; {statement}; print(','.join(m for m in {FRAMEWORKS!r} if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "", f"{statement!r} imported {out.stdout.strip()}"


_WRITER = textwrap.dedent("""
    import os, sys, time
    import numpy as np
    import tifffile
    from hcsflow.storage import DiskStorageBackend

    root, value, pause = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    if pause == "data":
        # stop half-way through the pixel data, so the kill lands mid-write for sure
        original = tifffile.FileHandle.write_array

        def half_then_wait(self, data, *args):
            flat = np.ascontiguousarray(data).reshape(-1)
            original(self, flat[: flat.size // 2])
            self.flush()
            print("paused", flush=True)
            time.sleep(600)

        tifffile.FileHandle.write_array = half_then_wait
    elif pause == "fsync":
        # the temporary file is complete but not yet published
        def wait(fd):
            print("paused", flush=True)
            time.sleep(600)

        os.fsync = wait
    backend = DiskStorageBackend(root)
    data = np.full((8, 512, 512), value, np.uint16)
    print("writing", flush=True)
    backend.save(data, "/stack.tif", overwrite=True)
    print("done", flush=True)
""")


def _unnamed_files() -> bool:
    from hcsflow.storage.disk import _publish

    return bool(_publish._O_TMPFILE) and _publish._proc_fd_links()


@pytest.mark.parametrize("pause", ["data", "fsync", "none"])
def test_killed_save_leaves_old_or_new_file(tmp_path, pause) -> None:
    from hcsflow.storage import DiskStorageBackend

    old = np.full((8, 512, 512), 1, np.uint16)
    tifffile.imwrite(tmp_path / "stack.tif", old, imagej=True, metadata={"axes": "ZYX"})
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    with subprocess.Popen(
        [sys.executable, str(script), str(tmp_path), "2", pause], stdout=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "writing"
        if pause == "none":
            assert proc.stdout.readline().strip() == "done"
        else:
            assert proc.stdout.readline().strip() == "paused"
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    data = tifffile.imread(tmp_path / "stack.tif")
    assert data.shape == old.shape
    expected = 2 if pause == "none" else 1
    assert np.unique(data).tolist() == [expected]
    leftovers = [n for n in os.listdir(tmp_path) if n not in ("stack.tif", "writer.py")]
    if pause == "none" or _unnamed_files():
        # an unnamed (O_TMPFILE) file vanishes with its killed writer
        assert leftovers == []
    else:  # the killed writer's temporary file is the only leftover, and listings hide it
        assert len(leftovers) == 1 and leftovers[0].startswith(".hcsflow-stack.tif.")
        assert leftovers[0].endswith(".tmp")
    assert DiskStorageBackend(tmp_path).list_dir("/") == ["stack.tif", "writer.py"]
