"""Hostile names through the CLI: refused with one clear line (exit 2), nothing outside OUT touched.

A group name, scene id or inbox base becomes ``OUT/groups/{name}`` (replaced with ``rmtree`` on a
rerun), tile ids and detection folders; ``..``, absolute paths, NUL and very long names must never
reach a path.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from flows.cli import app
from flows.prepare import run_prepare
from pipeline.io.paths import shown
from pipeline.synthetic.scenes import write_synthetic_group

pytestmark = pytest.mark.integration

SETTINGS = "tiling: {size: 128, stride: 128}\nsplit: {block_tiles: 1}\n"
SAFE_NAME_PROBLEM = "is not a safe name"


@pytest.fixture(scope="module")
def prefect_backend():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> dict[str, Path]:
    """A small synthetic group: role → GeoTIFF."""
    root = tmp_path_factory.mktemp("scenes")
    write_synthetic_group(root, name="g1", size=512, seed=1)
    return {role: root / f"g1_{role}.tif" for role in ("A", "B", "C", "label")}


def _scene_list(path: Path, scenes: dict[str, Path], group: str) -> Path:
    items = [{"path": str(scenes[role]), "role": role, "group": group} for role in ("A", "B", "C", "label")]
    path.write_text(yaml.safe_dump({"scenes": items}))
    return path


def _config(folder: Path, scene_list: Path) -> Path:
    path = folder / "run.yaml"
    path.write_text(f"scene_list: {scene_list}\n{SETTINGS}")
    return path


def _tree(folder: Path) -> dict[str, str]:
    """Relative path → sha256 of every file under ``folder`` (folders as 'dir')."""
    return {
        str(p.relative_to(folder)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
    }


def _prepare(config: Path, out: Path):
    return CliRunner().invoke(app, ["prepare", "--config", str(config), "--out", str(out)])


def _error_line(output: str) -> str:
    """The one line of the error; fails when there is none, several, or a traceback."""
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, output
    return lines[0]


def _user_files(folder: Path) -> None:
    (folder / "victim").mkdir(parents=True)
    (folder / "victim" / "important.txt").write_text("the user's own notes\n")
    (folder / "keep").mkdir()
    (folder / "keep" / "important.txt").write_text("keep me\n")


@pytest.mark.parametrize("group", ["../../victim", "ABSOLUTE"])
def test_a_group_escaping_out_is_refused_and_user_files_beside_out_stay(prefect_backend, scenes, tmp_path, group):
    group = str(tmp_path / "keep") if group == "ABSOLUTE" else group
    _user_files(tmp_path)
    scene_list = _scene_list(tmp_path / "scenes.yaml", scenes, group)
    config = _config(tmp_path, scene_list)
    before = _tree(tmp_path)

    result = _prepare(config, tmp_path / "out")  # OUT/groups/../../victim is tmp_path/victim

    assert result.exit_code == 2, result.output
    line = _error_line(result.output)
    assert f"{scene_list}: invalid config: 'scenes.0.group'" in line
    assert shown(group) in line and SAFE_NAME_PROBLEM in line
    after = _tree(tmp_path)
    assert {k: v for k, v in after.items() if not k.startswith("out")} == before  # nothing beside OUT changed
    assert (tmp_path / "victim" / "important.txt").read_text() == "the user's own notes\n"
    assert (tmp_path / "keep" / "important.txt").read_text() == "keep me\n"
    assert not (tmp_path / "out" / "groups").exists()


def test_a_rerun_with_group_dotdot_leaves_the_existing_out_untouched(prefect_backend, scenes, tmp_path):
    out = tmp_path / "out"
    config = _config(tmp_path, _scene_list(tmp_path / "scenes.yaml", scenes, "g1"))
    assert run_prepare(config, out)["groups"] == {"g1": "prepared"}
    (out / "notes.txt").write_text("my notes on this run\n")
    before = _tree(out)
    assert len(before) > 20 and "catalog.gpkg" in before

    _scene_list(tmp_path / "scenes.yaml", scenes, "..")
    result = _prepare(config, out)

    assert result.exit_code == 2, result.output
    line = _error_line(result.output)
    assert "'scenes.0.group'" in line and "'..'" in line
    assert _tree(out) == before  # every file of the earlier run, and the user's notes, byte for byte


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("group", "nul\x00byte"),
        ("group", "g" * 300),
        ("group", "/abs/path/keep"),
        ("group", ".."),
        ("group", "."),
        ("group", "a/b"),
        ("group", "line\nbreak"),
        ("id", "../../victim"),
        ("id", "/etc/passwd"),
    ],
    ids=["nul", "long", "absolute", "dotdot", "dot", "slash", "newline", "id-dotdot", "id-absolute"],
)
def test_hostile_names_in_the_config_are_refused_naming_key_and_value(prefect_backend, scenes, tmp_path, key, value):
    items = [{"path": str(scenes[role]), "role": role, "group": "g1"} for role in ("A", "B", "C", "label")]
    items[1][key] = value
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"scenes": items}) + SETTINGS)
    before = _tree(tmp_path)

    result = _prepare(config, tmp_path / "out")

    assert result.exit_code == 2, result.output
    line = _error_line(result.output)
    assert f"{config}: invalid config: 'scenes.1.{key}'" in line
    assert shown(value) in line
    assert "\x00" not in result.output
    assert _tree(tmp_path) == before  # not even OUT was created


def test_detect_refuses_group_dotdot_before_writing_anything(tmp_path):
    (tmp_path / "prepared" / "groups").mkdir(parents=True)
    (tmp_path / "model.pt").write_bytes(b"")
    config = tmp_path / "detect.yaml"
    config.write_text(f"prepared: {tmp_path / 'prepared'}\ncheckpoint: {tmp_path / 'model.pt'}\ngroups: ['g1', '..']\n")
    result = CliRunner().invoke(app, ["detect", "--config", str(config), "--out", str(tmp_path / "detections")])
    assert result.exit_code == 2, result.output
    line = _error_line(result.output)
    assert f"{config}: invalid config: 'groups.1'" in line and "'..'" in line and SAFE_NAME_PROBLEM in line
    assert not (tmp_path / "detections").exists()


def test_an_inbox_file_with_a_hostile_base_is_refused_and_good_scenes_are_prepared(prefect_backend, scenes, tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    letters = {"A": "A", "B": "B", "C": "D", "label": "E"}
    for role, letter in letters.items():
        shutil.copy(scenes[role], inbox / f"g1_{letter}.tif")
    hostile = ["evil\nname_A.tif", "evil\nname_B.tif", "x\\..\\..\\victim_A.tif"]
    for name, role in zip(hostile, ("A", "B", "A")):
        shutil.copy(scenes[role], inbox / name)
    config = tmp_path / "run.yaml"
    config.write_text(f"inbox: {inbox}\n{SETTINGS}")

    result = _prepare(config, tmp_path / "out")

    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "prepare_report.json").read_text())
    assert report["groups"] == {"g1": "prepared"}
    assert sorted(report["scenes_refused"]) == sorted(str(inbox / name) for name in hostile)
    for name, reason in report["scenes_refused"].items():
        assert reason.startswith(f"{name}: inbox name ") and SAFE_NAME_PROBLEM in reason
    assert sorted(p.name for p in (tmp_path / "out" / "groups").iterdir()) == ["g1"]
    assert report["splits"]["train"]["tiles"] > 0
