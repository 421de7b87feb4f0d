"""STIKDNet loss: BCE+Dice as the original, label 255 ignored, KD targets (B3), detached teacher, features."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import models
from models.losses.stikd import BCEDiceLoss, StikdLoss, kd_target_map
from tests.models.conftest import change_label


def one_hot_logits(y: torch.Tensor, scale: float = 10.0) -> torch.Tensor:
    return F.one_hot(y.clamp(max=1), 2).permute(0, 3, 1, 2).float() * 2 * scale - scale


def original_bce_dice(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The original ``BCEDiceLoss`` (no ignore handling), written out as in the spec §4."""
    t = F.one_hot(y, 2).permute(0, 3, 1, 2).float()
    bce = F.binary_cross_entropy_with_logits(logits, t)
    p = torch.sigmoid(logits).flatten(1)
    t = t.flatten(1)
    dice = (2 * (p * t).sum(1) + 1e-5) / (p.sum(1) + t.sum(1) + 1e-5)
    return 0.75 * bce + 0.25 * (1 - dice.mean())


def test_pixel_loss_matches_the_original_without_ignored_pixels() -> None:
    y = change_label(2, 16, 16)
    logits = torch.randn(2, 2, 16, 16)
    assert torch.allclose(BCEDiceLoss()(logits, y), original_bce_dice(logits, y), atol=1e-6)


def test_perfect_logits_give_near_zero_pixel_loss() -> None:
    y = change_label(2, 32, 32)
    pixel = BCEDiceLoss()
    perfect = pixel(one_hot_logits(y), y)
    noisy = pixel(torch.randn(2, 2, 32, 32), y)
    wrong = pixel(one_hot_logits(1 - y), y)
    assert perfect < 1e-3 < noisy < wrong


def test_ignored_pixels_do_not_affect_any_term() -> None:
    y = change_label(2, 32, 32, ignore_rows=8)
    teacher, student = torch.randn(2, 2, 32, 32), torch.randn(2, 2, 32, 32)
    feats = [torch.randn(2, 4, 32 // s, 32 // s) for s in (4, 8)]
    s_feats = [torch.randn_like(f) for f in feats]

    def scrambled(t: torch.Tensor) -> torch.Tensor:
        t = t.clone()
        t[..., :8, :] = torch.randn_like(t[..., :8, :]) * 7
        return t

    for kd_target in ("argmax", "soft", "reference"):
        loss = StikdLoss(kd_target=kd_target)
        out = {"logits": teacher, "student_logits": student, "features": feats, "student_features": s_feats}
        other = {
            "logits": scrambled(teacher),
            "student_logits": scrambled(student),
            "features": feats,
            "student_features": [f.clone() for f in s_feats],
        }
        other["student_features"][0][..., :2, :] = 100.0  # rows 0-7 at stride 4 = feature rows 0-1
        a, parts_a = loss(out, y)
        b, parts_b = loss(other, y)
        assert torch.allclose(a, b, atol=1e-6), kd_target
        assert parts_a == pytest.approx(parts_b, abs=1e-6)


def test_fully_ignored_batch_is_zero_not_nan() -> None:
    logits = torch.randn(1, 2, 8, 8, requires_grad=True)
    total, parts = StikdLoss()({"logits": logits, "student_logits": logits * 2}, torch.full((1, 8, 8), 255))
    assert float(total.detach()) == 0.0 and all(v == v for v in parts.values())
    total.backward()  # still has a graph


def test_reference_kd_target_is_mostly_unchanged_while_argmax_follows_the_teacher() -> None:
    """B3: a confident teacher trained with one-hot BCE has z_change ≈ −z_nochange, so the mean of its two
    logits is ≈ 0 and [mean > 0.5] says "no change" everywhere — even where the teacher says change."""
    y = change_label(2, 32, 32)
    teacher = one_hot_logits(y, 6.0) + 0.3 * torch.randn(2, 2, 32, 32)
    ref = kd_target_map(teacher, "reference")
    arg = kd_target_map(teacher, "argmax")
    assert torch.equal(arg, y)
    assert (ref == 0).float().mean() > 0.95
    assert (ref[y == 1] == 1).float().mean() < 0.05
    student = torch.randn(2, 2, 32, 32)
    _, parts_ref = StikdLoss(kd_target="reference")({"logits": teacher, "student_logits": student}, y)
    _, parts_arg = StikdLoss(kd_target="argmax")({"logits": teacher, "student_logits": student}, y)
    change_rate = float((y == 1).float().mean())
    assert parts_arg["kd_change"] == pytest.approx(change_rate)
    assert parts_ref["kd_change"] < 0.05 < change_rate
    # The argmax KD of a student equal to the teacher's decision is ≈ 0; the reference KD penalises it.
    agree = {"logits": teacher, "student_logits": one_hot_logits(y)}
    assert StikdLoss(kd_target="argmax").kd(agree["student_logits"], teacher, y)[0] < 1e-3
    assert StikdLoss(kd_target="reference").kd(agree["student_logits"], teacher, y)[0] > 0.1


@pytest.mark.parametrize("kd_target", ["argmax", "soft", "reference"])
def test_no_gradient_reaches_the_teacher_through_kd(kd_target: str) -> None:
    y = change_label(2, 16, 16)
    teacher = torch.randn(2, 2, 16, 16, requires_grad=True)
    student = torch.randn(2, 2, 16, 16, requires_grad=True)
    loss = StikdLoss(teacher_weight=0.0, student_weight=0.0, kd_weight=1.0, kd_target=kd_target)
    total, _ = loss({"logits": teacher, "student_logits": student}, y)
    total.backward()
    assert teacher.grad is None or not teacher.grad.any()
    assert student.grad is not None and student.grad.abs().sum() > 0


def test_total_combines_the_terms_with_the_original_weights() -> None:
    y = change_label(2, 16, 16)
    out = {"logits": torch.randn(2, 2, 16, 16), "student_logits": torch.randn(2, 2, 16, 16)}
    total, parts = StikdLoss()(out, y)
    assert set(parts) == {"teacher", "student", "kd", "kd_change", "total"}
    expected = parts["teacher"] + 0.9 * parts["student"] + 0.1 * parts["kd"]
    assert parts["total"] == pytest.approx(expected, rel=1e-5) and float(total) == pytest.approx(expected, rel=1e-5)
    assert parts["teacher"] == pytest.approx(float(BCEDiceLoss()(out["logits"], y)), rel=1e-6)


def test_without_student_logits_it_is_the_pixel_loss() -> None:
    y = change_label(2, 16, 16)
    logits = torch.randn(2, 2, 16, 16)
    total, parts = StikdLoss()({"logits": logits}, y)
    assert set(parts) == {"teacher", "total"}
    assert torch.allclose(total, BCEDiceLoss()(logits, y))


def test_soft_target_is_the_temperature_kl() -> None:
    y = change_label(2, 16, 16)
    teacher, student = torch.randn(2, 2, 16, 16), torch.randn(2, 2, 16, 16)
    kd, _ = StikdLoss(kd_target="soft", temperature=3.0).kd(student, teacher, y)
    q = F.softmax(teacher / 3, dim=1)
    manual = (q * (q.log() - F.log_softmax(student / 3, dim=1))).sum(1).mean() * 9
    assert torch.allclose(kd, manual, atol=1e-5)
    assert StikdLoss(kd_target="soft").kd(teacher, teacher, y)[0] < 1e-6


@pytest.mark.parametrize("kind", ["cosine", "mse"])
def test_feature_term_is_zero_for_equal_features_and_trains_only_the_student(kind: str) -> None:
    y = change_label(2, 32, 32)
    logits = torch.randn(2, 2, 32, 32)
    clean = [torch.randn(2, 8, 32 // s, 32 // s, requires_grad=True) for s in (4, 8, 16, 32)]
    same = [f.detach().clone().requires_grad_() for f in clean]
    loss = StikdLoss(feature_weight=1.0, feature_loss=kind)
    _, parts = loss({"logits": logits, "student_logits": logits, "features": clean, "student_features": same}, y)
    assert parts["feature"] == pytest.approx(0.0, abs=1e-5)
    moved = [(f.detach() + torch.randn_like(f)).requires_grad_() for f in clean]
    total, parts = loss({"logits": logits, "student_logits": logits, "features": clean, "student_features": moved}, y)
    assert parts["feature"] > 0.05
    total.backward()
    assert all(f.grad is None for f in clean) and all(f.grad.abs().sum() > 0 for f in moved)
    # feature_weight = 0: features are ignored.
    outputs = {"logits": logits, "student_logits": logits, "features": clean, "student_features": moved}
    _, parts = StikdLoss(feature_weight=0.0)(outputs, y)
    assert "feature" not in parts


def test_registry_and_option_errors() -> None:
    assert "stikd" in models.available_losses()
    assert isinstance(models.build_loss("stikd", kd_target="reference"), StikdLoss)
    with pytest.raises(ValueError, match="kd_target"):
        StikdLoss(kd_target="mean")
    with pytest.raises(ValueError, match="unknown option"):
        models.build_loss("stikd", kd_weigth=0.2)
