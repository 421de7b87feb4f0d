"""A full disk or a read-only output folder: one error line naming the path, exit code 2, nothing lost.

Detection stopped by a full disk keeps its staged blocks and resumes, once there is space again, to
the same rasters as an uninterrupted run.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import rasterio.shutil
import torch
import yaml
from typer.testing import CliRunner

from flows.cli import app
from pipeline.detect.output import CLASS_FILE, PROBABILITY_FILE
from pipeline.detect.sliding import detect_group
from pipeline.detect.staging import PARTIAL_DIR
from pipeline.errors import OutputError
from tests.conftest import write_folder_dataset
from tests.fixtures import disks
from tests.pipeline.detect.test_detect import FAST, _checkpoint
from tests.pipeline.detect.test_detect import group as detect_group_folder

small_disk, read_only, group = disks.small_disk, disks.read_only, detect_group_folder  # fixtures
ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.fixture(scope="module")
def prefect_backend():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(autouse=True)
def quiet_logging_errors(monkeypatch):
    """Prefect's console handler keeps the stream of the first CliRunner call, closed by the next ones;
    the standard switch keeps logging from reporting that (through Prefect's print-to-log, recursively)."""
    monkeypatch.setattr(logging, "raiseExceptions", False)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _error_lines(output: str) -> list[str]:
    # Prefect's own log of a failed flow run (with its traceback) is not changeflow's line: left to the CLI's
    # Prefect-logging work; changeflow prints exactly one error line.
    return [line for line in output.splitlines() if line.startswith("error:")]


# --------------------------------------------------------------------------- detection resumes


def test_detection_stopped_by_a_full_disk_while_staging_resumes_to_identical_rasters(group, tmp_path, monkeypatch):
    checkpoint = _checkpoint(tmp_path / "model.pt")
    detect_group(group, checkpoint, tmp_path / "full", FAST, run_id="r1")
    part = tmp_path / "part"
    savez, calls = np.savez, []

    def fourth_block_fills_the_disk(file, **arrays):
        calls.append(1)
        if len(calls) == 4:
            file.write(b"PK\x03\x04 half a block")
            raise ENOSPC
        return savez(file, **arrays)

    monkeypatch.setattr(np, "savez", fourth_block_fills_the_disk)
    with pytest.raises(OutputError) as info:
        detect_group(group, checkpoint, part, FAST, run_id="r1")
    blocks = part / PARTIAL_DIR / "blocks"
    assert re.fullmatch(rf"cannot write {re.escape(str(blocks))}/r\d+_c\d+\.npz: no space left on device", str(info.value))
    assert len(json.loads((part / PARTIAL_DIR / "journal.json").read_text())["done"]) == 3
    assert len(list(blocks.iterdir())) == 3  # no half-written block
    assert not (part / PROBABILITY_FILE).exists() and not (part / CLASS_FILE).exists()

    monkeypatch.setattr(np, "savez", savez)  # space is back
    resumed = detect_group(group, checkpoint, part, FAST)
    assert resumed.blocks_resumed == 3 and resumed.run_id == "r1"
    assert not (part / PARTIAL_DIR).exists()
    for name in (PROBABILITY_FILE, CLASS_FILE):
        assert (part / name).read_bytes() == (tmp_path / "full" / name).read_bytes()


def test_detection_stopped_by_a_full_disk_while_writing_a_cog_resumes_without_recomputing(group, tmp_path,
                                                                                          monkeypatch):
    checkpoint = _checkpoint(tmp_path / "model.pt")
    full = detect_group(group, checkpoint, tmp_path / "full", FAST, run_id="r1")
    part = tmp_path / "part"
    copy, calls = rasterio.shutil.copy, []

    def class_cog_fills_the_disk(source, destination, **options):
        calls.append(destination)
        if len(calls) == 2:
            raise ENOSPC
        return copy(source, destination, **options)

    monkeypatch.setattr(rasterio.shutil, "copy", class_cog_fills_the_disk)
    with pytest.raises(OutputError, match=f"^cannot write {re.escape(str(part / CLASS_FILE))}: no space left on device$"):
        detect_group(group, checkpoint, part, FAST, run_id="r1")
    assert not (part / CLASS_FILE).exists()
    assert not [p for p in part.rglob("*") if ".partial" in p.name]
    assert len(json.loads((part / PARTIAL_DIR / "journal.json").read_text())["done"]) == full.blocks_total

    monkeypatch.setattr(rasterio.shutil, "copy", copy)
    resumed = detect_group(group, checkpoint, part, FAST)
    assert (resumed.blocks_done, resumed.blocks_resumed) == (0, full.blocks_total)
    for name in (PROBABILITY_FILE, CLASS_FILE):
        assert (part / name).read_bytes() == (tmp_path / "full" / name).read_bytes()


# --------------------------------------------------------------------------- the CLI


def _detect_config(tmp_path: Path, group: Path, checkpoint: Path) -> Path:
    config = tmp_path / "detect.yaml"
    config.write_text(yaml.safe_dump({"prepared": str(group.parent.parent), "checkpoint": str(checkpoint),
                                      "device": "cpu", "block_size": 64, "batch_size": 4, "window": 64}))
    return config


@pytest.mark.integration
def test_detect_into_a_read_only_folder_is_one_line_and_keeps_the_previous_outputs(prefect_backend, group, tmp_path,
                                                                                       read_only):
    checkpoint = _checkpoint(tmp_path / "model.pt")
    out = tmp_path / "detections"
    detect_group(group, checkpoint, out / "city1", FAST)
    before = _files(out)
    read_only(out)
    result = CliRunner().invoke(app, ["detect", "--config", str(_detect_config(tmp_path, group, checkpoint)),
                                      "--out", str(out)])
    assert result.exit_code == 2, (result.exception, result.output[-3000:])
    assert _error_lines(result.output) in (
        [f"error: cannot write {out}: output folder is read-only"],
        [f"error: cannot write {out}: output folder is not writable (permission denied)"],
    )
    assert _files(out) == before


@pytest.mark.integration
def test_detect_onto_a_full_disk_is_one_line_before_any_work(prefect_backend, group, tmp_path, small_disk):
    checkpoint = _checkpoint(tmp_path / "model.pt")
    out = small_disk(0) / "detections"
    result = CliRunner().invoke(app, ["detect", "--config", str(_detect_config(tmp_path, group, checkpoint)),
                                      "--out", str(out)])
    assert result.exit_code == 2, (result.exception, result.output[-3000:])
    assert _error_lines(result.output) == [f"error: cannot write {out}: no space left on device"]
    assert list(out.iterdir()) == []


@pytest.mark.integration
def test_train_whose_checkpoint_hits_a_full_disk_is_one_line_and_keeps_the_last_checkpoint(prefect_backend, tmp_path,
                                                                                          monkeypatch):
    data = write_folder_dataset(tmp_path / "data", tiles=4, size=32)
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({"data": str(data), "model": "fc_siam_diff", "epochs": 3, "batch_size": 2,
                                      "workers": 0, "device": "cpu",
                                      "modalities": {"A": "optical", "B": "optical"}}))
    out = tmp_path / "run"
    save, seen = torch.save, {}

    def second_last_fills_the_disk(payload, path):
        if Path(path).name.startswith(".last."):
            seen["last"] = seen.get("last", 0) + 1
            if seen["last"] == 2:
                seen["before"] = (out / "last.pt").read_bytes()
                Path(path).write_bytes(b"PK half a checkpoint")
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
        return save(payload, path)

    monkeypatch.setattr(torch, "save", second_last_fills_the_disk)
    # torch's own message does not say why: a device with nothing left does.
    monkeypatch.setattr("pipeline.io.write_errors.shutil.disk_usage", lambda _: SimpleNamespace(free=0))
    result = CliRunner().invoke(app, ["train", "--config", str(config), "--out", str(out)])
    assert result.exit_code == 2, (result.exception, result.output[-3000:])
    assert _error_lines(result.output) == [f"error: cannot write {out / 'last.pt'}: no space left on device"]
    assert (out / "last.pt").read_bytes() == seen["before"]
    assert not [p for p in out.iterdir() if ".partial" in p.name]
