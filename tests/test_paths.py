"""Virtual paths: the fast normaliser and the fast natural order agree with the references."""

from __future__ import annotations

import random

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from hcsflow import paths
from hcsflow.errors import InvalidPathError, PathEscapeError
from hcsflow.paths import join, name, natural_key, natural_sorted, normalize_path, parent


def _reference_normalize(raw: str) -> str:
    """The lexical rules written out plainly: no shortcut for already-normal paths."""
    if raw == "" or "\x00" in raw:
        raise InvalidPathError("invalid", path=raw)
    out: list[str] = []
    for part in raw.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not out:
                raise PathEscapeError("escape", path=raw)
            out.pop()
        else:
            out.append(part)
    return "/" + "/".join(out)


_PATH_TEXT = st.text(alphabet=st.sampled_from(list("/.ab\x00_1")), max_size=12)


@given(_PATH_TEXT)
@example("/")
@example("/a/.b")
@example("/a/b/")
@example("//a")
@example("/a/..")
def test_normalize_agrees_with_the_plain_rules(raw: str) -> None:
    try:
        expected: str | type[Exception] = _reference_normalize(raw)
    except (InvalidPathError, PathEscapeError) as exc:
        expected = type(exc)
    if isinstance(expected, str):
        assert normalize_path(raw) == expected
        assert normalize_path(expected) == expected
    else:
        with pytest.raises(expected):
            normalize_path(raw)


def test_join_parent_name() -> None:
    assert join("/a", "b") == "/a/b" and join("/a/", "b") == "/a/b" and join("/", "b") == "/b"
    assert join("/a", "/b") == "/b"  # an absolute part restarts, as posixpath.join
    assert join("/a", "") == "/a" and join("/a", "b", "c") == "/a/b/c"
    assert parent("/") == "/" and parent("/a") == "/" and parent("/a/b") == "/a"
    assert name("/") == "" and name("/a/b.tif") == "b.tif"


# names as microscopes and users write them: digits, dots, separators, extensions
_NAME_CHARS = st.sampled_from(list("aAbz_-. 0123456789~") + ["tif", ".tif", ".ome", "w1", "A01"])
_NAMES = st.lists(_NAME_CHARS, min_size=1, max_size=8).map("".join)
_PATHS = st.lists(_NAMES, min_size=1, max_size=4).map(lambda parts: "/" + "/".join(parts))
# anything at all, to reach natsort's own handling of unusual strings
_ANY = st.text(max_size=10)


def _reference(items: list[str]) -> list[str] | None:
    try:
        return sorted(items, key=natural_key)
    except TypeError:  # natsort cannot order some mixes of unusual strings either
        return None


@settings(max_examples=300)
@given(st.lists(st.one_of(_NAMES, _PATHS, _ANY), max_size=12))
@example(["a.tif", "a-b.tif", "a_b.tif"])  # extensions are components of their own
@example(["x.tif_y.tif", "x_y.tif", "x_y"])  # natsort drops every copy of the extension
@example(["img_02.tif", "img_2.tif", "img_1.tif", "img_10.tif"])  # equal numbers keep order
@example(["a..tif", "a.1.tif", "a.b.c.tif", ".tif", "..tif", "a.", "."])
@example(["/a/b10/x.tif", "/a/b9/y.tif", "/a/b9.tif", "a/b", "/"])
@example(["é1", "e1", "e10", "\x01", ""])
def test_natural_sorted_is_natsorts_order(items: list[str]) -> None:
    expected = _reference(items)
    if expected is None:
        return
    paths._key_cache.clear()
    assert natural_sorted(items) == expected
    assert natural_sorted(items) == expected  # again, with the remembered keys


def test_fast_keys_cover_listings() -> None:
    # the names a listing sorts never need natsort itself
    for item in ("img_01.tif", "A01_s2_w3.TIF", "/plate/A01/img_1.ome.tiff", "x.tar.gz"):
        assert paths._fast_key(item) is not None
    for item in ("é.tif", "", "//a", "/a/", "a/./b", "\x01"):
        assert paths._fast_key(item) is None


def test_large_listing_order_matches_natsort() -> None:
    rng = random.Random(0)
    wells = [f"{r}{c:02d}" for r in "ABCDEFGH" for c in range(1, 13)]
    items = [
        f"plate_{rng.choice(wells)}_s{rng.randint(1, 30)}_w{rng.randint(1, 4)}"
        f"_z{rng.randint(0, 120):03d}{rng.choice(['.tif', '.TIF', '.tiff', '.ome.tif', '.png'])}"
        for _ in range(3000)
    ]
    paths._key_cache.clear()
    assert natural_sorted(items) == sorted(items, key=natural_key)
