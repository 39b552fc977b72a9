"""Listings of the zarr backend: kinds, order, half-written nodes, other writers, the cache.

Local listings read a directory in one pass and cache its entries while the
directory's change time stays the same (see ``hcsflow.storage.zarr._listing``).  A
change time is trusted only once it is a second old; the ``trusting`` fixture trusts it
at once, and ``tick()`` waits longer than the file system's clock tick so that the next
change gets a different change time, the way a later change would in real use.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from hcsflow.errors import CorruptStoreError, PathEscapeError
from hcsflow.storage import StorageLimits, ZarrStorageBackend
from hcsflow.storage.zarr import _listing

SRC = str(Path(__file__).resolve().parents[2] / "src")


@pytest.fixture
def trusting(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Trust every change time at once, so the second listing comes from the cache."""
    monkeypatch.setattr(_listing, "TRUST_AFTER_NS", -(10**18))
    monkeypatch.setattr(_listing, "TRUST_AFTER_COARSE_NS", -(10**18))
    yield


def tick() -> None:
    """Wait past the file system clock's granularity (a few ms on Linux)."""
    time.sleep(0.05)


def _backend(tmp_path: Path) -> ZarrStorageBackend:
    root = tmp_path / "root"
    root.mkdir()
    b = ZarrStorageBackend(root)
    b.ensure_directory("/d")
    return b


def _mixed(b: ZarrStorageBackend) -> None:
    """Files of every kind, groups, links, in an order natural sorting must fix."""
    for i in (10, 2, 1):
        b.save(np.full((2, 2), i, np.uint16), f"/d/img{i}.tif")
    b.save({"a": 1}, "/d/meta.json")
    b.ensure_directory("/d/sub/inner")
    b.save(np.zeros(3), "/d/sub/inner/deep.tif")
    b.create_symlink("/d/img1.tif", "/d/link_to_file.tif")
    b.create_symlink("/d/sub", "/d/link_to_dir")
    (Path(b.url_of("/d")) / "plain.txt").write_text("not a node")


def _listings(b: ZarrStorageBackend) -> tuple[list[str], list[str], list[str], list[str]]:
    return (
        b.list_dir("/d"),
        b.list_files("/d"),
        b.list_files("/d", recursive=True),
        b.list_image_files("/d"),
    )


EXPECTED = (
    [
        "img1.tif",
        "img2.tif",
        "img10.tif",
        "link_to_dir",
        "link_to_file.tif",
        "meta.json",
        "plain.txt",
        "sub",
    ],
    [
        "/d/img1.tif",
        "/d/img2.tif",
        "/d/img10.tif",
        "/d/link_to_file.tif",
        "/d/meta.json",
        "/d/plain.txt",
    ],
    [
        "/d/img1.tif",
        "/d/img2.tif",
        "/d/img10.tif",
        "/d/link_to_file.tif",
        "/d/meta.json",
        "/d/plain.txt",
        "/d/sub/inner/deep.tif",
    ],
    ["/d/img1.tif", "/d/img2.tif", "/d/img10.tif", "/d/link_to_file.tif"],
)


def test_kinds_and_natural_order(tmp_path: Path) -> None:
    b = _backend(tmp_path)
    _mixed(b)
    assert _listings(b) == EXPECTED
    assert b.entry_kind("/d/sub") == "directory"
    assert b.entry_kind("/d/link_to_dir", follow_symlinks=False) == "symlink"


def test_cached_listing_is_the_same_and_reads_no_metadata(
    tmp_path: Path, trusting: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    b = _backend(tmp_path)
    _mixed(b)
    assert _listings(b) == EXPECTED
    reads: list[str] = []
    real = _listing._read_meta

    def counting(dir_fd: int, name: str, limit: int) -> bytes | None:
        reads.append(name)
        return real(dir_fd, name, limit)

    monkeypatch.setattr(_listing, "_read_meta", counting)
    assert _listings(b) == EXPECTED
    # the unchanged directory /d came from the cache (only the links were looked at)
    assert not [n for n in reads if n.startswith("img")]
    tick()
    b.save(np.zeros(2), "/d/img3.tif")
    assert "/d/img3.tif" in b.list_files("/d")
    assert "img1.tif" in reads  # the changed directory was read again


def test_half_written_node_is_not_listed_until_published(tmp_path: Path, trusting: None) -> None:
    b = _backend(tmp_path)
    b.save(np.arange(4), "/d/done.tif")
    d = Path(b.url_of("/d"))
    done = d / "done.tif"
    # a node whose writer died before zarr.json: its data array, no metadata
    half = d / "half.tif"
    half.mkdir()
    data = next(p.name for p in done.iterdir() if p.name.startswith("data"))
    shutil.copytree(done / data, half / data)
    # one whose zarr.json is being written (a temporary name, not yet renamed)
    writing = d / "writing.tif"
    writing.mkdir()
    shutil.copytree(done / data, writing / data)
    tmp_doc = writing / f"zarr.json.{uuid.uuid4().hex}.partial"
    tmp_doc.write_bytes((done / "zarr.json").read_bytes())
    for _ in range(2):  # fresh, then from the cache
        assert b.list_dir("/d") == ["done.tif"]
        assert b.list_files("/d") == ["/d/done.tif"]
    # publishing zarr.json inside the node does not change /d: still seen
    tick()
    os.replace(tmp_doc, writing / "zarr.json")
    assert b.list_files("/d") == ["/d/done.tif", "/d/writing.tif"]
    assert b.list_dir("/d") == ["done.tif", "writing.tif"]
    assert np.array_equal(b.load("/d/writing.tif"), np.arange(4))


def test_entries_from_another_instance_are_seen(tmp_path: Path, trusting: None) -> None:
    b = _backend(tmp_path)
    b.save(np.zeros(2), "/d/a.tif")
    assert b.list_files("/d") == ["/d/a.tif"]
    assert b.list_files("/d") == ["/d/a.tif"]  # cached
    other = ZarrStorageBackend(tmp_path / "root")
    tick()
    other.save(np.zeros(2), "/d/b.tif")
    other.ensure_directory("/d/g")
    assert b.list_files("/d") == ["/d/a.tif", "/d/b.tif"]
    assert b.list_dir("/d") == ["a.tif", "b.tif", "g"]
    tick()
    other.delete("/d/a.tif")
    assert b.list_files("/d") == ["/d/b.tif"]


_WRITER = r"""
import sys
import numpy as np
from hcsflow.storage import ZarrStorageBackend
b = ZarrStorageBackend(sys.argv[1])
b.save(np.ones(3), "/d/from_process.tif")
b.ensure_directory("/d/group_from_process")
b.save(np.ones(3), "/d/group_from_process/x.tif")
"""


def test_entries_from_another_process_are_seen(tmp_path: Path, trusting: None) -> None:
    b = _backend(tmp_path)
    b.save(np.zeros(2), "/d/a.tif")
    assert b.list_files("/d") == ["/d/a.tif"]
    assert b.list_files("/d") == ["/d/a.tif"]
    tick()
    env = {**os.environ, "PYTHONPATH": SRC}
    subprocess.run(
        [sys.executable, "-c", _WRITER, str(tmp_path / "root")], check=True, env=env, timeout=120
    )
    assert b.list_files("/d") == ["/d/a.tif", "/d/from_process.tif"]
    assert b.list_dir("/d") == ["a.tif", "from_process.tif", "group_from_process"]
    assert b.list_files("/d", recursive=True) == [
        "/d/a.tif",
        "/d/from_process.tif",
        "/d/group_from_process/x.tif",
    ]


def test_a_node_changing_kind_in_place_is_seen(tmp_path: Path, trusting: None) -> None:
    b = _backend(tmp_path)
    b.save(np.zeros(2), "/d/x.tif")
    b.ensure_directory("/d/g")
    assert b.list_files("/d") == ["/d/x.tif"]
    assert b.list_files("/d") == ["/d/x.tif"]
    other = ZarrStorageBackend(tmp_path / "root")
    tick()
    # a file overwritten by a link to a directory: no longer a file
    other.create_symlink("/d/g", "/d/x.tif", overwrite=True)
    assert b.list_files("/d") == []
    assert b.list_dir("/d") == ["g", "x.tif"]
    tick()
    # and back to a file
    other.save(np.ones(2), "/d/x.tif", overwrite=True)
    assert b.list_files("/d") == ["/d/x.tif"]
    assert b.list_files("/d") == ["/d/x.tif"]


def test_symlinked_child_outside_the_root_is_not_followed(tmp_path: Path, trusting: None) -> None:
    b = _backend(tmp_path)
    b.save(np.zeros(2), "/d/a.tif")
    outside = tmp_path / "outside"
    outside.mkdir()
    ZarrStorageBackend(outside).save(np.ones(2), "/secret.tif")
    d = Path(b.url_of("/d"))
    (d / "escape.tif").symlink_to(outside / "secret.tif")
    # listed by name (as ls would), never classified from what lies outside
    assert b.list_dir("/d") == ["a.tif", "escape.tif"]
    with pytest.raises(PathEscapeError):
        b.list_files("/d")
    with pytest.raises(PathEscapeError):
        b.list_files("/d")  # the link is looked at again, not cached
    (d / "escape.tif").unlink()
    (d / "inside.tif").symlink_to(d / "a.tif")  # a link within the root is followed
    assert b.list_files("/d") == ["/d/a.tif", "/d/inside.tif"]


def test_corrupt_node_fails_the_file_listing_only(tmp_path: Path) -> None:
    b = _backend(tmp_path)
    b.save(np.zeros(2), "/d/a.tif")
    doc = Path(b.url_of("/d/a.tif")) / "zarr.json"
    doc.write_text(doc.read_text().replace('"data":"data', '"data":"../data'))
    assert b.list_dir("/d") == ["a.tif"]
    with pytest.raises(CorruptStoreError, match="not a data array of the node"):
        b.list_files("/d")


def test_own_documents_are_classified_without_the_parser(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Files of every codec and groups, as hcsflow writes them, skip the JSON parser:
    if the writer's layout drifted from the listing's pattern, this fails."""
    b = _backend(tmp_path)
    _mixed(b)
    b.save("some text", "/d/notes.txt")
    b.save(np.arange(3), "/d/raw.npy")
    b.save(np.zeros((2, 2), np.uint8), "/d/mask.png")
    parsed: list[bytes] = []
    real = _listing._parse

    def counting(raw: bytes, limits: object) -> object:
        parsed.append(raw)
        return real(raw, limits)

    monkeypatch.setattr(_listing, "_parse", counting)
    b._listings.clear()
    files = b.list_files("/d", recursive=True)
    assert "/d/notes.txt" in files and "/d/raw.npy" in files and "/d/mask.png" in files
    # only the two links went through the parser
    assert len(parsed) == 2 and all(b'"kind":"symlink"' in raw for raw in parsed)


_NODE = (
    b'{"zarr_format":3,"node_type":"group","attributes":{"hcsflow":{"kind":"file",'
    b'"format":"array","data":"data%s","size":%s}}}'
)
_HEX = b"c4e23b2e14260065a56f020008c5e7fc"


@pytest.mark.parametrize(
    "doc",
    [
        _NODE % (_HEX, b"18"),  # as written
        _NODE % (_HEX, b"null"),
        b'{"zarr_format":3,"node_type":"group","attributes":{}}',
        _NODE % (_HEX, b"018"),  # not JSON (leading zero)
        _NODE % (_HEX[:-1], b"18"),  # a data name hcsflow never writes, still valid
        _NODE % (b"/../x", b"18"),  # a data name outside the node
        _NODE.replace(b'"data":"data%s"', b'"data":"zarr.json"') % b"1",
        _NODE.replace(b'"kind":"file"', b'"kind":"fil\\u0065"') % (_HEX, b"1"),
        _NODE.replace(b":3,", b": 3,") % (_HEX, b"1"),  # other spacing
        _NODE.replace(b'"group"', b'"array"') % (_HEX, b"1"),
        _NODE.replace(b"}}}", b'},"x":1}}') % (_HEX, b"1"),  # more attributes
        _NODE.replace(b'"zarr_format":3,', b"") % (_HEX, b"1"),
        b'{"zarr_format":3,"node_type":"group","attributes":{}}{}',
        b'{"zarr_format":3,"node_type":"group","attributes":{}}\n',
        b'{"zarr_format":3,"node_type":"group","attributes":{},"node_type":"array"}',
    ],
)
@pytest.mark.parametrize("depth", [256, 2])
def test_pattern_and_parser_agree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, doc: bytes, depth: int
) -> None:
    """Whatever a ``zarr.json`` holds, the listing says what the JSON parser and the node
    rules say, with or without the pattern (a depth limit below the documents' own
    depth must refuse them through the parser)."""
    root = tmp_path / "root"
    root.mkdir()
    b = ZarrStorageBackend(root, limits=StorageLimits(max_json_depth=depth))
    b.ensure_directory("/d")
    node = Path(b.url_of("/d")) / "n.tif"
    node.mkdir()
    (node / "zarr.json").write_bytes(doc)

    def outcome() -> list[object]:
        said: list[object] = []
        for call in (lambda: b.list_dir("/d"), lambda: b.list_files("/d")):
            b._listings.clear()
            try:
                said.append(call())
            except Exception as exc:  # the error is part of what must agree
                said.append(type(exc))
        return said

    fast = outcome()
    monkeypatch.setattr(_listing, "_PLAIN", re.compile(rb"(?!)"))  # never matches
    assert outcome() == fast


def test_change_times_are_trusted_only_when_old_enough() -> None:
    now = time.time_ns()
    fine = now - 1_234_567  # ns resolution, 1 ms ago
    assert not _listing._trusted(fine, now)
    assert _listing._trusted(fine, fine + _listing.TRUST_AFTER_NS + 1)
    coarse = (now // 10**9) * 10**9  # whole seconds: a coarse file system
    assert not _listing._trusted(coarse, coarse + _listing.TRUST_AFTER_NS + 1)
    assert _listing._trusted(coarse, coarse + _listing.TRUST_AFTER_COARSE_NS + 1)


def test_object_store_listing(tmp_path: Path) -> None:
    b = ZarrStorageBackend(f"memory://hcs-{uuid.uuid4().hex[:8]}")
    b.ensure_directory("/d/sub")
    for i in (10, 2, 1):
        b.save(np.zeros(2), f"/d/img{i}.tif")
    b.create_symlink("/d/sub", "/d/link")
    assert b.list_dir("/d") == ["img1.tif", "img2.tif", "img10.tif", "link", "sub"]
    assert b.list_files("/d") == ["/d/img1.tif", "/d/img2.tif", "/d/img10.tif"]


def test_listing_while_another_thread_writes(tmp_path: Path, trusting: None) -> None:
    """Every file a listing names is whole: loadable, never a node half-written."""
    import threading

    b = _backend(tmp_path)
    names = [f"/d/f{i}.tif" for i in range(60)]
    stop = threading.Event()
    failures: list[BaseException] = []

    def writer() -> None:
        try:
            for i, p in enumerate(names):
                b.save(np.full(4, i, np.uint16), p)
                if i % 3 == 0:
                    b.save(np.full(4, i // 2, np.uint16), names[i // 2], overwrite=True)
        except BaseException as exc:
            failures.append(exc)
        finally:
            stop.set()

    thread = threading.Thread(target=writer)
    thread.start()
    seen: list[str] = []
    reader = ZarrStorageBackend(tmp_path / "root")  # its own cache, as another process
    while not stop.is_set():
        listed = reader.list_files("/d")
        assert set(seen) <= set(listed)  # nothing listed before disappears
        for p in listed:
            assert np.array_equal(reader.load(p), np.full(4, names.index(p), np.uint16))
        seen = listed
    thread.join()
    assert not failures
    assert reader.list_files("/d") == names


def test_load_of_a_file_whose_data_array_vanishes_reads_the_new_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An overwrite between reading a file's metadata and opening its data array: the
    load reads the node again and returns the new content (zarr's own
    ArrayNotFoundError, a FileNotFoundError, used to escape untyped)."""
    import zarr.errors

    import zarr
    from hcsflow.errors import ZarrError

    b = _backend(tmp_path)
    b.save(np.full(4, 1, np.uint16), "/d/f.tif")
    real_open = zarr.open_array
    calls = {"n": 0}

    def racing_open(*args: object, **kwargs: object) -> object:
        calls["n"] += 1
        if calls["n"] == 1:  # the writer wins the race once
            b.save(np.full(4, 2, np.uint16), "/d/f.tif", overwrite=True)
            raise zarr.errors.ArrayNotFoundError("gone")
        return real_open(*args, **kwargs)

    monkeypatch.setattr(zarr, "open_array", racing_open)
    assert np.array_equal(b.load("/d/f.tif"), np.full(4, 2, np.uint16))

    # nothing changed meanwhile: a typed error naming the path
    calls["n"] = 0

    def vanished(*args: object, **kwargs: object) -> object:
        raise zarr.errors.ArrayNotFoundError("gone")

    monkeypatch.setattr(zarr, "open_array", vanished)
    with pytest.raises(ZarrError, match="missing data array"):
        b.load("/d/f.tif")


@pytest.fixture(params=["openat2", "openat"])
def opener(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """A first listing with ``openat2`` where the kernel has it, and with the two
    ``openat`` calls used where it does not."""
    from hcsflow.storage._contain import _Openat2

    if request.param == "openat":
        monkeypatch.setattr(_Openat2, "available", False)
    return str(request.param)


def test_first_listing_reads_each_document_without_following_a_link(
    tmp_path: Path, opener: str
) -> None:
    b = _backend(tmp_path)
    _mixed(b)
    assert _listings(b) == EXPECTED
    d = Path(b.url_of("/d"))
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        own = _listing._read_meta(fd, "img1.tif", 4096)
        assert own is not None and _listing._PLAIN.fullmatch(own)
        # a node whose zarr.json is a link (here to a file node's document outside the
        # root) is never read through the link: the generic lookup decides, and refuses
        outside = tmp_path / "outside"
        outside.mkdir()
        ZarrStorageBackend(outside).save(np.ones(2), "/doc.tif")
        (d / "linked").mkdir()
        (d / "linked" / "zarr.json").symlink_to(outside / "doc.tif" / "zarr.json")
        assert _listing._read_meta(fd, "linked", 4096) is None
        (d / "os_link").symlink_to(d / "img1.tif")  # a node reached through a link
        assert _listing._read_meta(fd, "os_link", 4096) is None
        (d / "os_link").unlink()
        assert _listing._read_meta(fd, "missing", 4096) is None
        assert _listing._read_meta(fd, "plain.txt", 4096) is None  # not a directory
    finally:
        os.close(fd)
    with pytest.raises(PathEscapeError):  # the generic lookup refuses what leaves the root
        b.list_files("/d")
