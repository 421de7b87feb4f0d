"""Tests of pipeline.io.paths: safe names, and joins that never leave their folder."""

from __future__ import annotations

import pytest

from pipeline.errors import ChangeflowError, InputError
from pipeline.io.paths import MAX_NAME_LENGTH, UnsafePathError, contained, name_problem, safe_name, shown


@pytest.mark.parametrize("name", ["city1", "GF2_PMS1_E113.5_N23.1_20190501", "g-1.v2", "0", "a" * MAX_NAME_LENGTH])
def test_safe_names_are_accepted(name):
    assert name_problem(name) is None
    assert safe_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["..", ".", "", "../../victim", "/abs/path/keep", "a/b", "a..b", ".hidden", "-rf", "_x", "city 1",
     "city1\n", "nul\x00byte", "back\\slash", "北京", "a" * (MAX_NAME_LENGTH + 1)],
)
def test_unsafe_names_are_refused_with_the_name_shown(name):
    problem = name_problem(name)
    assert problem is not None
    with pytest.raises(ValueError) as error:
        safe_name(name)
    assert str(error.value) == f"{shown(name)} {problem}"


def test_shown_escapes_control_characters_and_cuts_long_names():
    assert shown("a\x00b\n") == "'a\\x00b\\n'"
    long = shown("x" * 5000)
    assert long == repr("x" * 60) + "… (5000 characters)"
    assert name_problem("x" * 5000) == f"is too long: 5000 characters, at most {MAX_NAME_LENGTH} are allowed"


def test_contained_joins_plain_names_inside_the_root(tmp_path):
    assert contained(tmp_path / "groups", "city1") == tmp_path / "groups" / "city1"
    assert contained(tmp_path, "tiles", "train", "A", "g_x0_y0.tif") == tmp_path / "tiles" / "train" / "A" / "g_x0_y0.tif"
    assert contained(str(tmp_path), ".city1.partial") == tmp_path / ".city1.partial"


@pytest.mark.parametrize("parts", [("..",), (".",), ("",), ("../../victim",), ("/abs/path/keep",), ("a/b",),
                                   ("g", ".."), ("nul\x00",), ()])
def test_contained_refuses_anything_but_plain_names(tmp_path, parts):
    root = tmp_path / "out" / "groups"
    with pytest.raises(UnsafePathError) as error:
        contained(root, *parts)
    message = str(error.value)
    assert message.startswith(f"{root}: refusing the name ")
    assert "\n" not in message and "\x00" not in message
    assert isinstance(error.value, InputError) and isinstance(error.value, ChangeflowError)


def test_contained_names_the_root_and_the_offending_name(tmp_path):
    with pytest.raises(UnsafePathError) as error:
        contained(tmp_path / "groups", "../../victim")
    assert str(error.value) == f"{tmp_path / 'groups'}: refusing the name '../../victim': not a single file or folder name"
    assert error.value.name == "../../victim"


def test_contained_refuses_a_folder_that_links_out_of_the_root(tmp_path):
    root = tmp_path / "out"
    (tmp_path / "victim").mkdir()
    root.mkdir()
    (root / "escape").symlink_to(tmp_path / "victim", target_is_directory=True)
    with pytest.raises(UnsafePathError, match="outside"):
        contained(root, "escape", "important.txt")


def test_contained_does_not_follow_the_last_name(tmp_path):
    # The last name is what the caller creates, replaces or removes: a link there is itself inside the root.
    root = tmp_path / "archive"
    root.mkdir()
    (root / "scene_A.tif").symlink_to(tmp_path / "elsewhere.tif")
    assert contained(root, "scene_A.tif") == root / "scene_A.tif"
