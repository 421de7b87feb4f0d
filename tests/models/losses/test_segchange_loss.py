"""SegChangeLoss: perfect prediction → 0, ignore pixels have no effect, class-balanced focal, Dice modes, BCL."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import models
from models.losses import SegChangeLoss
from tests.models.conftest import change_label


def logits_for(target: torch.Tensor, scale: float = 20.0) -> torch.Tensor:
    """Two-class logits that predict ``target`` (255 → no change) with confidence ``scale``."""
    z = torch.where(target == 1, scale, -scale).float() / 2
    return torch.stack([-z, z], dim=1)


def test_perfect_prediction_is_nearly_zero() -> None:
    target = change_label(2, 32, 32, ignore_rows=4)
    terms = SegChangeLoss().terms(logits_for(target), target)
    for name in ("loss", "bce", "dice", "focal"):
        assert terms[name].item() == pytest.approx(0.0, abs=1e-6), name
    wrong = SegChangeLoss().terms(logits_for(1 - target.clamp(max=1)), target)
    assert wrong["loss"] > 10 and wrong["dice"] > 0.9


def test_bce_equals_two_class_cross_entropy() -> None:
    logits = torch.randn(2, 2, 16, 16)
    target = change_label(2, 16, 16, ignore_rows=3)
    bce = SegChangeLoss().terms(logits, target)["bce"]
    torch.testing.assert_close(bce, F.cross_entropy(logits, target, ignore_index=255))


def test_ignored_pixels_have_no_effect() -> None:
    target = change_label(2, 32, 32, ignore_rows=8)
    logits = torch.randn(2, 2, 32, 32)
    other = logits.clone()
    other[:, :, :8] = 1e6 * torch.randn(2, 2, 8, 32)  # anything, even absurd values, where the label is 255
    other[0, 1, 0, 0] = float("inf")
    for loss in (SegChangeLoss(), SegChangeLoss(dice_per_image=True, bcl_weight=0.3)):
        a, b = loss.terms(logits, target), loss.terms(other, target)
        for name in a:
            torch.testing.assert_close(a[name], b[name], msg=name)
    # ... and they are not simply treated as background
    as_zero = target.clone()
    as_zero[as_zero == 255] = 0
    assert not torch.allclose(SegChangeLoss().terms(logits, as_zero)["loss"], a["loss"])


def test_fully_ignored_batch_is_zero_with_a_graph() -> None:
    logits = torch.randn(2, 2, 8, 8, requires_grad=True)
    total, parts = SegChangeLoss()({"logits": logits}, torch.full((2, 8, 8), 255))
    total.backward()
    assert total.item() == 0.0 and parts["loss"] == 0.0
    assert logits.grad is not None and logits.grad.abs().sum() == 0


def test_focal_is_class_balanced() -> None:
    """One wrong change pixel vs one wrong no-change pixel, equally confident: α / (1 − α)."""
    loss = SegChangeLoss(focal_alpha=0.6)
    logits = torch.zeros(1, 2, 1, 1)
    logits[0, 1] = -2.0  # predicts no change with p(change) = σ(−2)
    on_change = loss.terms(logits, torch.ones(1, 1, 1, dtype=torch.long))["focal"]
    on_background = loss.terms(-logits, torch.zeros(1, 1, 1, dtype=torch.long))["focal"]
    assert (on_change / on_background).item() == pytest.approx(0.6 / 0.4, rel=1e-5)
    p = torch.sigmoid(torch.tensor(-2.0))
    assert on_change.item() == pytest.approx((-0.6 * (1 - p) ** 2 * torch.log(p)).item(), rel=1e-5)
    # easy pixels are down-weighted by (1 − p_t)^γ
    easy = loss.terms(-logits, torch.ones(1, 1, 1, dtype=torch.long))["focal"]
    assert easy < 0.01 * on_change


def test_weights_and_components() -> None:
    logits = torch.randn(2, 2, 16, 16)
    target = change_label(2, 16, 16)
    total, parts = models.build_loss("segchange")({"logits": logits}, target, epoch=1.5)
    assert set(parts) == {"loss", "bce", "dice", "focal"}
    assert parts["loss"] == pytest.approx(parts["bce"] + 1.5 * parts["dice"] + 1.5 * parts["focal"], rel=1e-5)
    assert total.item() == pytest.approx(parts["loss"])
    with pytest.raises(ValueError, match="unknown option"):
        models.build_loss("segchange", focal_alfa=0.5)
    with pytest.raises(ValueError, match="logits must be"):
        SegChangeLoss().terms(torch.randn(2, 3, 4, 4), torch.zeros(2, 4, 4, dtype=torch.long))


def test_per_image_dice_counts_empty_images_separately() -> None:
    target = torch.zeros(2, 16, 16, dtype=torch.long)
    target[0, 4:12, 4:12] = 1  # image 1 has no change
    logits = logits_for(target)
    logits[1, 1, 0, 0], logits[1, 0, 0, 0] = 10.0, -10.0  # one false positive in the empty image
    batch = SegChangeLoss().terms(logits, target)["dice"]
    per_image = SegChangeLoss(dice_per_image=True).terms(logits, target)["dice"]
    # batch Dice barely notices the lone false positive; per-image Dice gives the empty image a 0.5 loss
    assert batch.item() < 0.01
    assert per_image.item() == pytest.approx(0.25, abs=1e-3)


def test_bcl_is_sign_aware() -> None:
    """The original rewarded no-change pixels at logit +2 as much as at −2; the corrected term does not."""
    loss = SegChangeLoss(bcl_weight=0.3)
    target = torch.zeros(1, 1, 1, dtype=torch.long)
    pos_logit = torch.tensor([0.0, 2.0]).view(1, 2, 1, 1)
    neg_logit = torch.tensor([0.0, -2.0]).view(1, 2, 1, 1)
    assert loss.terms(pos_logit, target)["bcl"] > 10 * loss.terms(neg_logit, target)["bcl"]
    assert "bcl" in loss({"logits": pos_logit}, target)[1]
