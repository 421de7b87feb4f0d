"""Weighted CE + Dice: minimal for the perfect prediction, label 255 ignored, class weights applied."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models.losses import ChangeLoss
from tests.models.conftest import change_label


def one_hot_logits(y: torch.Tensor, scale: float = 10.0) -> torch.Tensor:
    return F.one_hot(y.clamp(max=1), 2).permute(0, 3, 1, 2).float() * 2 * scale - scale


def test_perfect_prediction_is_minimal() -> None:
    y = change_label(2, 32, 32)
    loss = ChangeLoss()
    perfect, parts = loss({"logits": one_hot_logits(y)}, y)
    wrong, _ = loss({"logits": one_hot_logits(1 - y)}, y)
    noisy, _ = loss({"logits": torch.randn(2, 2, 32, 32)}, y)
    assert perfect < 1e-3 < noisy < wrong
    assert set(parts) == {"loss", "ce", "dice"}
    assert parts["loss"] == pytest.approx(parts["ce"] + 1.5 * parts["dice"], rel=1e-5)


def test_ignored_pixels_have_no_effect() -> None:
    y = change_label(2, 32, 32, ignore_rows=8)
    logits = torch.randn(2, 2, 32, 32)
    other = logits.clone()
    other[:, :, :8] = -logits[:, :, :8] * 5
    loss = ChangeLoss()
    assert torch.equal(loss.terms(logits, y)[0], loss.terms(other, y)[0])


def test_fully_ignored_batch_is_zero_not_nan() -> None:
    logits = torch.randn(1, 2, 8, 8, requires_grad=True)
    total, ce, dice = ChangeLoss().terms(logits, torch.full((1, 8, 8), 255))
    assert float(total.detach()) == 0.0
    total.backward()
    assert torch.isfinite(logits.grad).all()


def test_class_weights_are_applied() -> None:
    y = change_label(1, 16, 16)
    logits = torch.randn(1, 2, 16, 16)
    ce = ChangeLoss(dice_weight=0.0).terms(logits, y)[1]
    expected = F.cross_entropy(logits, y, weight=torch.tensor([0.1, 0.9]))
    assert torch.allclose(ce, expected)


def test_shape_mismatch_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="target is"):
        ChangeLoss().terms(torch.randn(1, 2, 16, 16), torch.zeros(1, 8, 8, dtype=torch.long))
