"""Training loop: exact resume, clear errors before any step, DDP on gloo."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from pipeline.config import TrainConfig
from pipeline.errors import ConfigError, InputError
from pipeline.learn.checkpoint import load_checkpoint
from pipeline.learn.train import train
from tests.conftest import write_folder_dataset, write_raster


@pytest.fixture
def folder(tmp_path) -> Path:
    return write_folder_dataset(tmp_path / "data")


def _config(folder: Path, **overrides) -> TrainConfig:
    settings = dict(
        data=folder, model="fc_siam_diff", modalities={"A": "optical", "B": "optical"}, epochs=3,
        batch_size=2, lr=1e-3, workers=0, device="cpu",
    )
    return TrainConfig(**{**settings, **overrides})


def _column(path: Path, name: str) -> list[float]:
    with open(path) as handle:
        return [float(row[name]) for row in csv.DictReader(handle)]


def test_resume_continues_exactly(folder, tmp_path):
    full = tmp_path / "full"
    train(_config(folder), full)
    part = tmp_path / "part"

    class Interrupted(Exception):
        pass

    def interrupt_in_third_epoch(description: str, done: int, total: int) -> None:
        if description.startswith("epoch 3"):
            raise Interrupted

    with pytest.raises(Interrupted):
        train(_config(folder), part, progress=interrupt_in_third_epoch)
    assert load_checkpoint(part / "last.pt")["epoch"] == 1
    # Resumed: the LR curve and the weights match the uninterrupted run.
    train(_config(folder), part, resume=True)
    assert _column(part / "metrics.csv", "lr") == pytest.approx(_column(full / "metrics.csv", "lr"))
    assert _column(part / "metrics.csv", "lr")[1] < _column(part / "metrics.csv", "lr")[0]
    a, b = load_checkpoint(full / "last.pt"), load_checkpoint(part / "last.pt")
    for key, value in a["model"].items():
        assert torch.allclose(value.float(), b["model"][key].float(), atol=1e-5), key
    assert a["normalization"] == b["normalization"] and a["epoch"] == 2


def test_checkpoint_holds_what_inference_needs(folder, tmp_path):
    train(_config(folder, epochs=1), tmp_path / "run")
    checkpoint = load_checkpoint(tmp_path / "run" / "best.pt")
    assert checkpoint["model_name"] == "fc_siam_diff"
    assert checkpoint["bands"] == {"A": 3, "B": 3, "label": 1}
    assert set(checkpoint["normalization"]) == {"A", "B"}
    assert checkpoint["normalization"]["A"]["modality"] == "optical"
    # The report says which labels training used (a reviewed label: its reviewed pixels), counted from the files.
    labels = json.loads((tmp_path / "run" / "metrics.json").read_text())["labels"]
    for split in ("train", "val", "test"):
        masks = [rasterio.open(p).read(1) for p in sorted((folder / split / "label").glob("*.tif"))]
        assert labels[split] == {"tiles": len(masks), "labelled_pixels": sum(m.size for m in masks),
                                 "change_pixels": sum(int((m > 127).sum()) for m in masks)}
    assert labels["train"]["change_pixels"] > 0


def test_missing_tile_is_reported_before_training(folder, tmp_path):
    (folder / "train" / "B" / "t3.tif").unlink()
    with pytest.raises(InputError, match=r"t3.tif: tile listed in the index is missing"):
        train(_config(folder), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_band_mismatch_is_reported(folder, tmp_path):
    write_raster(folder / "val" / "A" / "t0.tif", np.ones((4, 64, 64), np.uint16))
    with pytest.raises(InputError, match=r"t0.tif: has 4 bands, other A tiles"):
        train(_config(folder), tmp_path / "run")


def test_unknown_model_lists_the_available_ones(folder, tmp_path):
    with pytest.raises(ConfigError, match=r"unknown model 'fc_siam_dif'; available: .*fc_siam_diff"):
        train(_config(folder, model="fc_siam_dif"), tmp_path / "run")


def test_corrupt_checkpoint_for_resume(folder, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match=r"last.pt: not a readable changeflow checkpoint"):
        train(_config(folder), run, resume=True)


def test_ddp_with_two_processes_on_gloo(folder, tmp_path):
    config = tmp_path / "ddp.yaml"
    config.write_text(
        f"data: {folder}\nmodel: fc_siam_diff\nmodalities: {{A: optical, B: optical}}\n"
        "epochs: 2\nbatch_size: 2\nworkers: 0\ndevice: cpu\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--master-port=29533",
        "-m", "flows.cli", "train", "--config", str(config), "--out", str(tmp_path / "run"),
    ]
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=Path(__file__).parents[3])
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert len(_column(tmp_path / "run" / "metrics.csv", "lr")) == 2  # one writer: rank 0
    assert load_checkpoint(tmp_path / "run" / "last.pt")["epoch"] == 1
