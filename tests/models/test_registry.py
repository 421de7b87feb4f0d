"""Registry: every model builds by name, bad names and options fail with a useful message."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import models
from models.base import ChangeModel

EXPECTED = {"clearscd", "fc_ef", "fc_siam_conc", "fc_siam_diff", "gold", "gold_lite", "segchange_r1", "stikdnet"}


def test_available_lists_all_models() -> None:
    assert set(models.available()) == EXPECTED
    assert models.available() == sorted(models.available())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_build_every_model_by_name(name: str) -> None:
    with torch.device("meta"):  # construction only; forward passes are tested per model
        model = models.build(name)
    assert isinstance(model, ChangeModel)
    assert model.num_classes == 2
    assert model.default_loss in models.available_losses()


def test_names_are_normalised() -> None:
    with torch.device("meta"):
        assert isinstance(models.build("FC-Siam-diff"), models.FCSiamDiff)
        assert isinstance(models.build(" GOLD "), models.GOLD)


def test_unknown_name_lists_available_models() -> None:
    with pytest.raises(ValueError) as err:
        models.build("unet3000")
    message = str(err.value)
    assert "unet3000" in message
    for name in EXPECTED:
        assert name in message


def test_unknown_option_names_it_and_the_accepted_ones() -> None:
    with pytest.raises(ValueError, match="optical_chanels.*accepted.*optical_channels"):
        models.build("gold", optical_chanels=4)


def test_weights_round_trip_and_missing_file(tmp_path: Path) -> None:
    model = models.build("fc_siam_diff", t1_channels=4, t2_channels=2)
    path = tmp_path / "w.pt"
    torch.save({"model": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    again = models.build("fc_siam_diff", t1_channels=4, t2_channels=2, weights=path)
    for k, v in model.state_dict().items():
        assert torch.equal(v, again.state_dict()[k])
    with pytest.raises(FileNotFoundError):
        models.build("fc_siam_diff", weights=tmp_path / "nope.pt")
    with pytest.raises(ValueError, match="do not fit"):
        models.build("fc_ef", weights=path)


def test_build_loss() -> None:
    assert models.available_losses() == ["change", "clearscd", "gold", "segchange", "stikd"]
    assert isinstance(models.build_loss("gold", weighting="uncertainty"), models.GoldLoss)
    with pytest.raises(ValueError, match="available losses: change, clearscd, gold, segchange, stikd"):
        models.build_loss("focal")
    with pytest.raises(ValueError, match="unknown option"):
        models.build_loss("gold", temprature=3)
