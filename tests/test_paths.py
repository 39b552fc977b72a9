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


# names of one shape: the same template, with any digits and any characters in place
_TEMPLATE = st.lists(
    st.sampled_from(list("aZ_- ~.0") + ["0", "00", ".tif", "w0"]), min_size=1, max_size=10
).map("".join)


@st.composite
def _one_shape_lists(draw: st.DrawFn) -> list[str]:
    template = draw(_TEMPLATE)
    fill = {"0": st.sampled_from("0123456789"), ".": st.just(".")}
    other = st.sampled_from(list("aAbzZ_- ~"))
    count = draw(st.integers(min_value=2, max_value=15))
    return ["".join(draw(fill.get(char, other)) for char in template) for _ in range(count)]


@settings(max_examples=300)
@given(_one_shape_lists())
@example(["s01_w1.tif", "s10_w2.tif", "s00_w1.tif", "s09_w9.tif"])
@example(["a-1.tif", "a_1.tif", "a 1.tif", "A~1.tif"])
def test_names_of_one_shape_sort_as_natsort(items: list[str]) -> None:
    paths._key_cache.clear()
    assert natural_sorted(items) == sorted(items, key=natural_key)


def test_one_shape_needs_the_same_digit_counts_and_a_plain_extension() -> None:
    assert paths._one_plain_shape(["A01_s1.tif", "B12_s9.tif"])
    assert not paths._one_plain_shape(["A1_s1.tif", "A12_s1.tif"])  # 1 vs 12 digits
    assert not paths._one_plain_shape(["a.b.tif", "c.d.tif"])  # two suffixes
    assert not paths._one_plain_shape(["a.1tif", "b.2tif"])  # a number starts the "suffix"
    assert not paths._one_plain_shape([".tif", ".png"])
    assert not paths._one_plain_shape(["a\x00b", "c"])  # a NUL is not a separator here


@settings(max_examples=300)
@given(st.lists(st.text(alphabet="ab_.-0123456789", max_size=14), min_size=1, max_size=40))
def test_vector_encoding_equals_the_regex_encoding(texts: list[str]) -> None:
    assert paths._encode_vector(texts) == paths._encode_regex(texts)


def test_vector_encoding_of_a_long_number_uses_the_regex() -> None:
    texts = ["x" + "7" * 200, "y0012"]
    assert paths._encode_vector(texts) == paths._encode_regex(texts)


@settings(max_examples=500)
@given(st.lists(st.text(alphabet="ab_.-0129", min_size=1, max_size=9), min_size=1, max_size=6))
def test_bulk_name_dot_ext_check_agrees_with_the_per_name_split(items: list[str]) -> None:
    joined = "\x02".join(items)
    plain = [
        item.count(".") == 1
        and item[0] != "."
        and 0 < len(item.partition(".")[2]) <= 4
        and item.partition(".")[2][0] not in "0123456789"
        for item in items
    ]
    assert paths._all_name_dot_ext(joined, len(items)) == all(plain)
    if all(plain):
        assert list(map(paths._name_text, items)) == joined.replace(".", "\x00.").split("\x02")


def test_large_unpadded_listing_order_matches_natsort() -> None:
    rng = random.Random(1)
    items = [
        f"A{rng.randint(1, 24)}_s{rng.randint(1, 16)}_w{rng.randint(1, 4)}.tif" for _ in range(500)
    ]
    paths._key_cache.clear()
    assert natural_sorted(items) == sorted(items, key=natural_key)
