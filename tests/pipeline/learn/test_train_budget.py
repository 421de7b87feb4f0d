"""Training budgets: optimiser steps and minutes, early stopping, and resuming with class-balanced draws."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from pipeline.config import TrainConfig
from pipeline.learn.checkpoint import load_checkpoint, save_checkpoint
from pipeline.learn.train import train
from tests.conftest import write_folder_dataset


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_folder_dataset(tmp_path_factory.mktemp("budget") / "data", tiles=4, size=32)


def _config(folder: Path, **overrides) -> TrainConfig:
    settings = dict(data=folder, model="fc_siam_diff", modalities={"A": "optical", "B": "optical"},
                    batch_size=8, workers=0, device="cpu")
    return TrainConfig(**{**settings, **overrides})


def _rows(out: Path) -> list[dict]:
    with open(out / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


def _metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


def test_step_budget_on_four_tiles_runs_few_long_epochs(folder, tmp_path):
    # 4 tiles, batch 8: one step per pass; 10 steps over at most 3 epochs → 4 + 4 + 2 steps.
    train(_config(folder, max_steps=10, epochs=3), tmp_path / "run")
    assert [int(float(row["step"])) for row in _rows(tmp_path / "run")] == [4, 8, 10]
    metrics = _metrics(tmp_path / "run")
    assert (metrics["steps"], metrics["epochs_run"], metrics["stopped"]) == (10, 3, "max_steps")
    # Epochs stay an upper bound: 3 epochs of 4 steps end before a budget of 100.
    train(_config(folder, max_steps=100, epochs=3, steps_per_epoch=4), tmp_path / "capped")
    assert (_metrics(tmp_path / "capped")["steps"], _metrics(tmp_path / "capped")["stopped"]) == (12, "epochs")


def test_minutes_budget_stops_after_the_step_that_spends_it(folder, tmp_path):
    train(_config(folder, max_minutes=1e-6, epochs=5, steps_per_epoch=3), tmp_path / "run")
    metrics = _metrics(tmp_path / "run")
    assert (metrics["steps"], metrics["epochs_run"], metrics["stopped"]) == (1, 1, "max_minutes")
    assert load_checkpoint(tmp_path / "run" / "last.pt")["train_seconds"] > 0


def test_early_stopping_ends_training_after_patience_validations_and_stays_stopped(folder, tmp_path):
    # min_delta 2: no IoU can rise that much, so the second validation is the first without improvement.
    config = _config(folder, epochs=6, early_stopping={"patience": 1, "min_delta": 2.0})
    train(config, tmp_path / "run")
    assert len(_rows(tmp_path / "run")) == 2
    assert _metrics(tmp_path / "run")["stopped"] == "early_stopping"
    train(config, tmp_path / "run", resume=True)  # a resumed stopped run does not train on
    assert len(_rows(tmp_path / "run")) == 2


def test_resume_mid_budget_with_balanced_draws_matches_an_uninterrupted_run(folder, tmp_path):
    config = _config(folder, max_steps=9, epochs=3, sampling={"change_share": 0.5}, crop=16)
    train(config, tmp_path / "full")

    class Interrupted(Exception):
        pass

    def interrupt_in_second_epoch(description: str, done: int, total: int) -> None:
        if description.startswith("epoch 2") and done == 2:
            raise Interrupted

    with pytest.raises(Interrupted):
        train(config, tmp_path / "part", progress=interrupt_in_second_epoch)
    assert load_checkpoint(tmp_path / "part" / "last.pt")["step"] == 3
    train(config, tmp_path / "part", resume=True)
    assert _metrics(tmp_path / "part")["steps"] == _metrics(tmp_path / "full")["steps"] == 9
    a, b = load_checkpoint(tmp_path / "full" / "last.pt"), load_checkpoint(tmp_path / "part" / "last.pt")
    for key, value in a["model"].items():
        assert torch.allclose(value.float(), b["model"][key].float(), atol=1e-5), key


def test_a_checkpoint_without_step_state_still_resumes(folder, tmp_path):
    # Checkpoints written before step budgets have no step, time or early-stopping keys.
    config = _config(folder, epochs=3)
    train(config.model_copy(update={"epochs": 1}), tmp_path / "run")
    payload = load_checkpoint(tmp_path / "run" / "last.pt")
    for key in ("step", "train_seconds", "early_stopping", "stopped"):
        payload.pop(key)
    save_checkpoint(tmp_path / "run" / "last.pt", payload)
    train(config, tmp_path / "run", resume=True)
    assert len(_rows(tmp_path / "run")) == 3
    assert _metrics(tmp_path / "run")["steps"] == 3  # 1 step counted for the old epoch, then 2
