"""Data roots: what may be opened, and that a refusal names the path and the roots."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote

import pytest

from diffstream.stream.io.paths import resolve_data_path
from diffstream.stream.ops.errors import BadExposure, PathNotAllowed

pytestmark = pytest.mark.unit


@pytest.fixture
def tree(tmp_path):
    """Factory: a data root with one file, a sibling directory outside it, and a secret."""
    root = tmp_path / "data" / "raw"
    root.mkdir(parents=True)
    (root / "visit1").mkdir()
    inside = root / "visit1" / "calexp.fits"
    inside.write_bytes(b"x")
    outside = tmp_path / "secret.txt"
    outside.write_text("no")
    sibling = tmp_path / "data" / "raw2"
    sibling.mkdir()
    (sibling / "a.fits").write_bytes(b"x")
    return root, inside, outside, sibling


def test_plain_absolute_path_inside_root(tree):
    root, inside, _, _ = tree
    assert resolve_data_path(str(inside), [root]) == inside.resolve()


def test_returns_path_even_if_file_does_not_exist_yet(tree):
    root, _, _, _ = tree
    target = root / "later.fits"
    assert resolve_data_path(str(target), [str(root)]) == target.resolve()


def test_relative_path_is_resolved_against_cwd(tree, monkeypatch):
    root, inside, _, _ = tree
    monkeypatch.chdir(root)
    assert resolve_data_path("visit1/calexp.fits", [root]) == inside.resolve()
    assert resolve_data_path(Path("visit1") / "calexp.fits", [root]) == inside.resolve()


def test_file_uri_with_escapes_and_localhost(tree):
    root, _, _, _ = tree
    spaced = root / "a file #1.fits"
    spaced.write_bytes(b"x")
    uri = "file://" + quote(str(spaced))
    assert resolve_data_path(uri, [root]) == spaced.resolve()
    assert resolve_data_path("file://localhost" + quote(str(spaced)), [root]) == spaced.resolve()
    assert resolve_data_path("FILE://" + quote(str(spaced)), [root]) == spaced.resolve()


def test_single_slash_file_uri(tree):
    root, inside, _, _ = tree
    assert resolve_data_path("file:" + str(inside), [root]) == inside.resolve()


def test_dotdot_escape_is_refused_and_message_names_path_and_roots(tree):
    root, _, outside, _ = tree
    sneaky = f"{root}/visit1/../../../secret.txt"
    with pytest.raises(PathNotAllowed, match="outside every data root") as info:
        resolve_data_path(sneaky, [root])
    msg = str(info.value)
    assert str(outside.resolve()) in msg
    assert str(root.resolve()) in msg
    assert info.value.fields["reason"] == "outside_roots"
    assert info.value.fields["roots"] == [str(root.resolve())]


def test_dotdot_that_stays_inside_is_allowed(tree):
    root, inside, _, _ = tree
    assert resolve_data_path(f"{root}/visit1/../visit1/calexp.fits", [root]) == inside.resolve()


def test_symlink_inside_root_pointing_outside_is_refused(tree):
    root, _, outside, _ = tree
    link = root / "innocent.fits"
    os.symlink(outside, link)
    with pytest.raises(PathNotAllowed, match="outside every data root"):
        resolve_data_path(str(link), [root])


def test_symlink_outside_pointing_inside_is_allowed(tree, tmp_path):
    root, inside, _, _ = tree
    link = tmp_path / "shortcut.fits"
    os.symlink(inside, link)
    assert resolve_data_path(str(link), [root]) == inside.resolve()


def test_root_given_through_a_symlink(tree, tmp_path):
    root, inside, _, _ = tree
    root_link = tmp_path / "rootlink"
    os.symlink(root, root_link)
    assert resolve_data_path(str(inside), [root_link]) == inside.resolve()
    assert resolve_data_path(str(root_link / "visit1" / "calexp.fits"), [root]) == inside.resolve()


def test_sibling_with_common_string_prefix_is_refused(tree):
    root, _, _, sibling = tree
    with pytest.raises(PathNotAllowed, match="outside every data root"):
        resolve_data_path(str(sibling / "a.fits"), [root])


def test_any_of_several_roots(tree):
    root, _, _, sibling = tree
    target = sibling / "a.fits"
    assert resolve_data_path(str(target), [root, sibling]) == target.resolve()


def test_roots_none_means_no_restriction(tree):
    _, _, outside, _ = tree
    assert resolve_data_path(str(outside), None) == outside.resolve()


def test_empty_roots_allow_nothing(tree):
    _, inside, _, _ = tree
    with pytest.raises(PathNotAllowed, match=r"none configured"):
        resolve_data_path(str(inside), [])


@pytest.mark.parametrize(
    "uri", ["s3://bucket/key.fits", "https://example.org/a.fits", "gs://b/a.fits"]
)
def test_non_file_schemes_are_refused(tree, uri):
    root, _, _, _ = tree
    with pytest.raises(PathNotAllowed, match="unsupported URI scheme") as info:
        resolve_data_path(uri, [root])
    assert info.value.fields["reason"] == "unsupported_scheme"


def test_remote_file_host_is_refused(tree):
    root, _, _, _ = tree
    with pytest.raises(PathNotAllowed, match="names host 'otherhost'"):
        resolve_data_path(f"file://otherhost{root}/x.fits", [root])


def test_file_uri_with_query_is_refused(tree):
    root, inside, _, _ = tree
    with pytest.raises(PathNotAllowed, match="query or fragment"):
        resolve_data_path(f"file://{inside}?x=1", [root])


def test_file_uri_without_path_is_refused(tree):
    root, _, _, _ = tree
    with pytest.raises(PathNotAllowed, match="has no path"):
        resolve_data_path("file://", [root])


def test_empty_location_is_refused(tree):
    root, _, _, _ = tree
    with pytest.raises(PathNotAllowed, match="empty data location"):
        resolve_data_path("  ", [root])


def test_nul_byte_is_refused(tree):
    root, _, _, _ = tree
    with pytest.raises(PathNotAllowed, match="NUL byte"):
        resolve_data_path(f"{root}/a\x00.fits", [root])
    with pytest.raises(PathNotAllowed, match="NUL byte"):
        resolve_data_path(f"file://{root}/a%00.fits", [root])


def test_symlink_loop_is_refused(tree):
    root, _, _, _ = tree
    a, b = root / "a", root / "b"
    os.symlink(b, a)
    os.symlink(a, b)
    try:
        resolved = resolve_data_path(str(a / "x.fits"), [root])
    except PathNotAllowed as exc:
        assert "cannot resolve" in str(exc)
    else:  # Python >= 3.13 resolves loops leniently; the result must still be under root
        assert resolved.is_relative_to(root.resolve())


def test_plain_name_with_colon_is_a_path(tree, monkeypatch):
    root, _, _, _ = tree
    monkeypatch.chdir(root)
    assert resolve_data_path("a:b.fits", [root]) == (root / "a:b.fits").resolve()


def test_error_is_a_bad_exposure_with_bad_event_kind(tree):
    _, _, outside, _ = tree
    with pytest.raises(BadExposure) as info:
        resolve_data_path(str(outside), [])
    rec = info.value.to_record()
    assert rec["kind"] == "bad_event"
    assert rec["error"] == "PathNotAllowed"
    assert rec["fields"]["path"] == str(outside)
