"""Case family 1: hostile names as group, scene id or inbox base are refused; nothing outside OUT is touched."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from tests.flows.test_hostile_names import _user_files
from tests.reliability.conftest import copy_group
from tests.reliability.support import changeflow, judge, tree

pytestmark = pytest.mark.reliability

SETTINGS = {"tiling": {"size": 64, "stride": 64}, "split": {"block_tiles": 1}, "coregistration": {"enabled": False}}


def _config(folder: Path, files: dict[str, Path], *, key: str = "group", value: str = "g1") -> Path:
    scenes = [{"path": str(files[role]), "role": role, "group": "g1"} for role in ("A", "B", "C", "label")]
    scenes[1][key] = value
    config = folder / "run.yaml"
    config.write_text(yaml.safe_dump({"scenes": scenes, **SETTINGS}))
    return config


@pytest.mark.parametrize(
    ("case", "key", "value"),
    [
        ("name-group-dotdot", "group", ".."),
        ("name-group-escape", "group", "../../victim"),
        ("name-group-absolute", "group", "ABSOLUTE/keep"),
        ("name-group-nul", "group", "nul\x00byte"),
        ("name-group-long", "group", "g" * 300),
        ("name-id-escape", "id", "../../victim"),
        ("name-id-absolute", "id", "ABSOLUTE/keep"),
    ],
)
def test_a_hostile_name_in_the_config_is_one_error_line_and_nothing_outside_out_changes(
        prefect_api, group_files, tmp_path, verdict, case, key, value):
    value = value.replace("ABSOLUTE", str(tmp_path))
    _user_files(tmp_path)
    files = copy_group(group_files, tmp_path / "scenes", "g1")
    config = _config(tmp_path, files, key=key, value=value)
    before = tree(tmp_path)

    run = changeflow("prepare", "--config", str(config), "--out", str(tmp_path / "out"), prefect_api=prefect_api)

    beside_out = {k: v for k, v in tree(tmp_path).items() if not k.startswith("out")}
    verdict(case, judge(run, lost=beside_out != before))
    assert beside_out == before  # the user's victim/ and keep/ files, the scenes, the config
    assert run.returncode == 2, run.output
    assert "Traceback" not in run.output
    [line] = run.error_lines
    assert f"{config}: invalid config: 'scenes.1.{key}'" in line
    assert "\x00" not in run.output
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_a_rerun_with_group_dotdot_leaves_every_file_of_the_earlier_out(prefect_api, group_files, tmp_path, verdict):
    files = copy_group(group_files, tmp_path / "scenes", "g1")
    out = tmp_path / "out"
    first = changeflow("prepare", "--config", str(_config(tmp_path, files)), "--out", str(out), prefect_api=prefect_api)
    assert first.returncode == 0, first.output
    (out / "notes.txt").write_text("my notes on this run\n")
    before = tree(out)
    assert "catalog.gpkg" in before and any(name.endswith(".tif") for name in before)

    config = tmp_path / "run.yaml"
    scenes = [{"path": str(files[role]), "role": role, "group": ".."} for role in ("A", "B", "C", "label")]
    config.write_text(yaml.safe_dump({"scenes": scenes, **SETTINGS}))
    run = changeflow("prepare", "--config", str(config), "--out", str(out), prefect_api=prefect_api)

    verdict("name-rerun-dotdot", judge(run, lost=tree(out) != before))
    assert tree(out) == before  # the earlier run and the user's notes, byte for byte
    assert run.returncode == 2, run.output
    [line] = run.error_lines
    assert "'scenes.0.group'" in line and "'..'" in line


HOSTILE_BASES = ["evil\nname_A.tif", f"{'x' * 120}_A.tif", "-rf_B.tif", "x\\..\\..\\victim_A.tif"]


def test_inbox_files_with_hostile_bases_are_refused_by_name_and_the_good_group_is_prepared(
        prefect_api, group_files, tmp_path, verdict):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for role, letter in {"A": "A", "B": "B", "C": "D", "label": "E"}.items():
        shutil.copy(group_files[role], inbox / f"g1_{letter}.tif")
    for name in HOSTILE_BASES:
        shutil.copy(group_files["A" if "_A" in name else "B"], inbox / name)
    _user_files(tmp_path)
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"inbox": str(inbox), **SETTINGS}))
    before = {k: v for k, v in tree(tmp_path).items() if not k.startswith("out")}

    run = changeflow("prepare", "--config", str(config), "--out", str(tmp_path / "out"), prefect_api=prefect_api)

    report_file = tmp_path / "out" / "prepare_report.json"
    report = json.loads(report_file.read_text()) if report_file.exists() else {}
    refused = report.get("scenes_refused", {})
    beside_out = {k: v for k, v in tree(tmp_path).items() if not k.startswith("out")}
    verdict("name-inbox-base", judge(run, refused=False, lost=beside_out != before))
    assert run.returncode == 0, run.output
    assert "Traceback" not in run.output
    assert report["groups"] == {"g1": "prepared"}
    assert sorted(refused) == sorted(str(inbox / name) for name in HOSTILE_BASES)
    assert all("is not a safe name" in reason or "too long" in reason for reason in refused.values())
    assert sorted(p.name for p in (tmp_path / "out" / "groups").iterdir()) == ["g1"]
    assert beside_out == before
