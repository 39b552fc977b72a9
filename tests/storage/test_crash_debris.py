"""SIGKILLed writers leave debris; a clean rewrite of the same paths leaves none.

One helper process imports hcsflow once, then forks writer children and SIGKILLs each
after a random few milliseconds, ``HCSFLOW_KILLS`` times (default 100).  The children
rewrite the same disk files (unnamed O_TMPFILE writes and named temporary files),
disk batches, zarr file nodes (overwritten and newly created) and an OME-Zarr well.
Afterwards the helper runs the same writes once to completion: every path must read
back, and :func:`hcsflow.storage.find_debris` must find nothing left.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

KILLS = int(os.environ.get("HCSFLOW_KILLS", "100"))

_HELPER = textwrap.dedent("""
    import json, os, random, signal, sys, time
    import numpy as np
    from hcsflow.storage import DiskStorageBackend, ZarrStorageBackend, find_debris, write_well
    from hcsflow.storage.disk import _publish

    root, kills, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    for sub in ("unnamed", "named", "zarr"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    unnamed_mode = _publish._O_TMPFILE

    def workload(value, forever):
        unnamed = DiskStorageBackend(os.path.join(root, "unnamed"), fsync=False)
        named = DiskStorageBackend(os.path.join(root, "named"), fsync=False)
        store = ZarrStorageBackend(os.path.join(root, "zarr"))
        plate = os.path.join(root, "plate.zarr")
        img = np.full((256, 256), value, np.uint16)
        while True:
            for backend, mode in ((unnamed, unnamed_mode), (named, 0)):
                _publish._O_TMPFILE = mode
                for i in range(3):
                    backend.save(img, f"/x{i}.tif", overwrite=True)
                backend.save_batch([img] * 3, [f"/b{i}.tif" for i in range(3)], overwrite=True)
            for i in range(3):
                store.save(img, f"/x{i}.npy", overwrite=True)
                if store.exists(f"/n{i}.npy"):
                    store.delete(f"/n{i}.npy")
                store.save(img, f"/n{i}.npy")
            write_well(plate, "B02", {0: np.full((1, 2, 64, 64), value, np.uint16)},
                       overwrite=True)
            if not forever:
                return

    rng = random.Random(seed)
    workload(0, False)  # every path exists before the kills start
    for k in range(kills):
        pid = os.fork()
        if pid == 0:
            try:
                workload(k + 1, True)
            finally:
                os._exit(0)
        time.sleep(rng.uniform(0.002, 0.06))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    before = find_debris(root)
    workload(kills + 7, False)  # the clean rewrite
    after = find_debris(root)
    _publish._O_TMPFILE = unnamed_mode
    checks = [
        int(DiskStorageBackend(os.path.join(root, "unnamed")).load("/x0.tif")[0, 0]),
        int(DiskStorageBackend(os.path.join(root, "named")).load("/b2.tif")[0, 0]),
        int(ZarrStorageBackend(os.path.join(root, "zarr")).load("/n1.npy")[0, 0]),
    ]
    print(json.dumps({
        "before": [[d.path, d.what, d.reason] for d in before],
        "after": [[d.path, d.what, d.reason] for d in after],
        "values": checks,
    }))
""")


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.timeout(240)
@pytest.mark.parametrize("seed", [7])
def test_clean_rewrite_after_sigkills_leaves_no_debris(tmp_path, seed) -> None:
    script = tmp_path / "helper.py"
    script.write_text(_HELPER)
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "data"), str(KILLS), str(seed)],
        capture_output=True,
        text=True,
        timeout=230,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    kinds: dict[str, int] = {}
    for _, what, _ in result["before"]:
        kinds[what] = kinds.get(what, 0) + 1
    print(f"{KILLS} SIGKILLs: {len(result['before'])} debris entries before the rewrite {kinds}")
    assert result["after"] == [], result["after"]
    assert result["values"] == [KILLS + 7] * 3
