"""Case families 3 and 4: a full disk and a read-only output folder.

A full disk is faked (``OSError(ENOSPC)`` at the write layer, ``inject.py``) during prepare and detect, and
real on a small tmpfs where the test runs as root and can mount one. Either way: one line naming the
path, exit code 2, the previous outputs byte for byte, no half-written file.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml

from pipeline.detect.staging import PARTIAL_DIR
from tests.conftest import write_folder_dataset
from tests.fixtures import disks
from tests.flows.test_ingest_flow import _checkpoint
from tests.reliability.conftest import copy_group
from tests.reliability.support import (
    changeflow,
    in_process_layout,
    judge,
    no_traceback,
    partial_files,
    tree,
)

pytestmark = pytest.mark.reliability
small_disk, read_only = disks.small_disk, disks.read_only  # fixtures

STAGING = PARTIAL_DIR  # detection's resumable staging may stay after a failed run (README)


def _prepare_config(folder: Path, files: dict[str, Path], *, stride: int = 64) -> Path:
    scenes = [{"path": str(files[role]), "role": role, "group": "g1"} for role in ("A", "B", "C", "label")]
    config = folder / f"run-{stride}.yaml"
    config.write_text(yaml.safe_dump({"scenes": scenes, "tiling": {"size": 64, "stride": stride},
                                      "split": {"block_tiles": 1}, "coregistration": {"enabled": False}}))
    return config


def _prepared(prefect_api, group_files, folder: Path) -> Path:
    files = copy_group(group_files, folder / "scenes", "g1")
    out = folder / "out"
    run = changeflow("prepare", "--config", str(_prepare_config(folder, files)), "--out", str(out),
                     prefect_api=prefect_api)
    assert run.returncode == 0, run.output
    return out


def _detect_config(folder: Path, prepared: Path, checkpoint: Path, **extra) -> Path:
    config = folder / "detect.yaml"
    config.write_text(yaml.safe_dump({"prepared": str(prepared), "checkpoint": str(checkpoint), "device": "cpu",
                                      "window": 64, "block_size": 128, "batch_size": 8, **extra}))
    return config


@pytest.fixture(scope="module")
def prepared(prefect_api, group_files, tmp_path_factory) -> Path:
    """A prepared OUT of the 256-px group, and a random fc_siam_diff checkpoint beside it."""
    folder = tmp_path_factory.mktemp("prepared")
    out = _prepared(prefect_api, group_files, folder)
    _checkpoint(folder / "model.pt")
    return out


@in_process_layout
def test_a_full_disk_while_prepare_writes_tiles_is_one_line_and_keeps_the_previous_out(
        prefect_api, prepared, tmp_path, verdict):
    out = Path(shutil.copytree(prepared, tmp_path / "out", symlinks=True))
    before = tree(out)
    config = _prepare_config(tmp_path, {role: prepared.parent / "scenes" / f"g1_{role}.tif"
                                        for role in ("A", "B", "C", "label")}, stride=32)

    run = changeflow("prepare", "--config", str(config), "--out", str(out), prefect_api=prefect_api,
                     inject="enospc-tile:3")

    verdict("disk-enospc-prepare-tiles", judge(run, lost=tree(out) != before))
    assert tree(out) == before  # the earlier run's tiles, index, config and reports, byte for byte
    assert partial_files(out) == []
    assert run.returncode == 2, run.output
    [line] = run.error_lines
    # The run's only group failed: the line names the tile being written when the disk filled up.
    assert re.fullmatch(rf"error: no group was prepared \(g1: cannot write {re.escape(str(out))}/\S+\.tif: "
                        r"no space left on device\)", line), line
    no_traceback(run)


@in_process_layout
def test_a_full_disk_while_detect_writes_its_cog_is_one_line_and_keeps_the_previous_outputs(
        prefect_api, prepared, tmp_path, verdict):
    checkpoint = prepared.parent / "model.pt"
    out = tmp_path / "detections"
    first = changeflow("detect", "--config", str(_detect_config(tmp_path, prepared, checkpoint)), "--out", str(out),
                       prefect_api=prefect_api)
    assert first.returncode == 0, first.output
    before = tree(out)
    assert any(name.endswith("change_class.tif") for name in before)

    config = _detect_config(tmp_path, prepared, checkpoint, threshold=0.3)
    run = changeflow("detect", "--config", str(config), "--out", str(out), prefect_api=prefect_api,
                     inject="enospc-cog:2")

    # Detection goes on with the other groups: a failed group is one line naming it, and exit code 1.
    after, lines = tree(out, skip=(STAGING,)), [line for line in run.output.splitlines() if line.startswith("g1: ")]
    verdict("disk-enospc-detect-cog", judge(run, lost=after != before, lines=lines))
    assert run.returncode == 1, run.output
    assert lines == [f"g1: cannot write {out / 'g1' / 'change_class.tif'}: no space left on device"]
    no_traceback(run)
    assert [name for name in partial_files(out) if STAGING not in name] == []
    # The first detection's COGs, polygons, report and config, byte for byte.
    assert after == before, sorted(name for name in after if after[name] != before.get(name))


def test_a_real_full_disk_under_a_prepare_rerun_is_one_line_and_keeps_the_previous_out(
        prefect_api, prepared, tmp_path, small_disk, verdict):
    disk = small_disk(4 << 20)  # nothing filled yet
    out = Path(shutil.copytree(prepared, disk / "out", symlinks=True))
    files = {role: prepared.parent / "scenes" / f"g1_{role}.tif" for role in ("A", "B", "C", "label")}
    before = tree(out)
    small_disk(64 << 10)  # 64 KiB left: far less than four times the tiles need

    run = changeflow("prepare", "--config", str(_prepare_config(tmp_path, files, stride=32)), "--out", str(out),
                     prefect_api=prefect_api)

    verdict("disk-tmpfs-prepare-rerun", judge(run, lost=tree(out) != before))
    assert tree(out) == before
    assert partial_files(out) == []
    assert run.returncode == 2, run.output
    [line] = run.error_lines
    assert re.fullmatch(rf"error: no group was prepared \(g1: cannot write {re.escape(str(out))}/\S+: "
                        r"no space left on device\)", line), line
    no_traceback(run)


@pytest.mark.parametrize("case", ["readonly-prepare", "readonly-detect", "readonly-train"])
def test_a_read_only_output_folder_is_one_line_and_exit_2(prefect_api, prepared, group_files, tmp_path, read_only,
                                                          verdict, case):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("kept\n")
    if case == "readonly-prepare":
        config = _prepare_config(tmp_path, copy_group(group_files, tmp_path / "scenes", "g1"))
    elif case == "readonly-detect":
        config = _detect_config(tmp_path, prepared, prepared.parent / "model.pt")
    else:
        config = tmp_path / "train.yaml"
        config.write_text(yaml.safe_dump({"data": str(write_folder_dataset(tmp_path / "data", tiles=4, size=32)),
                                          "model": "fc_siam_diff", "epochs": 1, "batch_size": 2, "workers": 0,
                                          "device": "cpu", "modalities": {"A": "optical", "B": "optical"}}))
    before = tree(out)
    read_only(out)

    run = changeflow(case.removeprefix("readonly-"), "--config", str(config), "--out", str(out),
                     prefect_api=prefect_api)

    verdict(case, judge(run, lost=tree(out) != before))
    assert tree(out) == before
    assert run.returncode == 2, run.output
    assert run.error_lines == [f"error: cannot write {out}: output folder is read-only"]
    no_traceback(run)
