"""GOLD: outputs for every band layout, gradient paths, teacher detachment, parameter and FLOP counts."""

from __future__ import annotations

import pytest
import torch

import models
from models.losses import GoldLoss
from tests.models.conftest import change_label, images

TEACHER_KEYS = {"teacher_logits", "student_feat", "teacher_feat", "feat_a", "feat_b", "feat_c"}


@pytest.mark.parametrize(("name", "emb", "branch"), [("gold", 256, 128), ("gold_lite", 32, 32)])
@pytest.mark.parametrize(("opt", "sar", "h", "w"), [(3, 3, 64, 64), (4, 1, 64, 64), (4, 2, 64, 64), (3, 4, 70, 90)])
@torch.no_grad()
def test_training_outputs(name: str, emb: int, branch: int, opt: int, sar: int, h: int, w: int) -> None:
    model = models.build(name, optical_channels=opt, sar_channels=sar)
    out = model(images(2, opt, h, w), images(2, sar, h, w), images(2, opt, h, w))
    assert set(out) == {"logits"} | TEACHER_KEYS
    assert out["logits"].shape == out["teacher_logits"].shape == (2, 2, h, w)
    fh, fw = -(-h // 4), -(-w // 4)  # stride-4 grid (ceil: stride-2 conv then stride-2 pool)
    assert out["student_feat"].shape == out["teacher_feat"].shape == (2, emb, fh, fw)
    for k in ("feat_a", "feat_b", "feat_c"):
        assert out[k].shape == (2, branch, fh, fw)
    assert all(torch.isfinite(v).all() for v in out.values())


@pytest.mark.parametrize("name", ["gold", "gold_lite"])
@torch.no_grad()
def test_inference_needs_only_a_and_b(name: str) -> None:
    model = models.build(name, optical_channels=4, sar_channels=2).eval()
    a, b = images(1, 4, 48, 40), images(1, 2, 48, 40)
    out = model(a, b)
    assert set(out) == {"logits"}
    assert out["logits"].shape == (1, 2, 48, 40)
    # The student does not depend on C, and the teacher does not depend on B (no SAR leak into the teacher).
    c = images(1, 4, 48, 40)
    full = model(a, b, c)
    assert torch.allclose(full["logits"], out["logits"])
    other_b = model(a, images(1, 2, 48, 40), c)
    assert torch.allclose(other_b["teacher_logits"], full["teacher_logits"])
    assert not torch.allclose(other_b["logits"], full["logits"])


def test_wrong_inputs_are_clear_errors() -> None:
    model = models.build("gold", optical_channels=4, sar_channels=1)
    with pytest.raises(ValueError, match=r"B \(SAR t2\): expected a \[N, 1, H, W\]"):
        model(images(1, 4, 32, 32), images(1, 3, 32, 32))
    with pytest.raises(ValueError, match="co-registered"):
        model(images(1, 4, 32, 32), images(1, 1, 32, 48))


def test_teacher_head_starts_as_copy_of_student_head() -> None:
    model = models.build("gold")
    for s, t in zip(model.student_head.parameters(), model.teacher_head.parameters()):
        assert torch.equal(s, t)
        assert s.data_ptr() != t.data_ptr()


def _grad_norm(module: torch.nn.Module) -> float:
    return sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", ["gold", "gold_lite"])
def test_full_loss_reaches_both_encoders(name: str) -> None:
    model = models.build(name, optical_channels=4, sar_channels=2)
    out = model(images(2, 4, 32, 32), images(2, 2, 32, 32), images(2, 4, 32, 32))
    total, parts = GoldLoss()(out, change_label(2, 32, 32, ignore_rows=4), epoch=5)
    total.backward()
    assert _grad_norm(model.encoder_opt) > 0
    assert _grad_norm(model.encoder_sar) > 0
    assert _grad_norm(model.encoder_sar.conv1) > 0  # down to the SAR input layer
    assert parts["loss"] == pytest.approx(float(total.detach()))


@pytest.mark.parametrize("name", ["gold", "gold_lite"])
def test_detached_teacher_gets_no_distillation_gradient(name: str) -> None:
    model = models.build(name)
    out = model(images(2, 3, 32, 32), images(2, 3, 32, 32), images(2, 3, 32, 32))
    y = change_label(2, 32, 32)
    teacher = [p for m in model.teacher_modules for p in getattr(model, m).parameters()]
    student_only = list(model.encoder_sar.parameters())

    one_way = sum(v for k, v in GoldLoss(detach_teacher=True).distillation_terms(out, y).items() if "_" not in k)
    grads = torch.autograd.grad(one_way, teacher + student_only, retain_graph=True, allow_unused=True)
    assert all(g is None or not g.any() for g in grads[: len(teacher)])
    assert any(g is not None and g.any() for g in grads[len(teacher) :])

    mutual = sum(v for k, v in GoldLoss(detach_teacher=False).distillation_terms(out, y).items() if "_" not in k)
    grads = torch.autograd.grad(mutual, teacher, allow_unused=True)
    assert any(g is not None and g.any() for g in grads)


def test_parameter_and_flop_counts_match_spec() -> None:
    """spec §3.2 [measured] at HEAD: 25.74 M in total of which 0.335 M are the dead MixFFN modules we do not
    build; 24.22 M on the student inference path; 111.9 GFLOPs inference, 187.2 GFLOPs training per 512² tile.
    spec §3.3: lightweight 6.57 M (incl. ~0.04 M dead modules), 19.7 / 30.8 GFLOPs."""
    with torch.device("meta"):
        gold, lite = models.build("gold"), models.build("gold_lite")
    tile2, tile3 = [(1, 3, 512, 512)] * 2, [(1, 3, 512, 512)] * 3
    params, flops = models.complexity(gold, tile2)
    assert params == pytest.approx(24.22e6, rel=0.005)
    assert flops == pytest.approx(111.9e9, rel=0.005)
    params, flops = models.complexity(gold, tile3)
    assert params == pytest.approx(25.74e6 - 0.335e6, rel=0.005)
    assert flops == pytest.approx(187.2e9, rel=0.005)
    params, flops = models.complexity(lite, tile3)
    assert params == pytest.approx(6.57e6, rel=0.02)
    assert flops == pytest.approx(30.8e9, rel=0.02)
    assert models.complexity(lite, tile2)[1] == pytest.approx(19.7e9, rel=0.02)


@torch.no_grad()
def test_lite_distillation_features() -> None:
    """Lightweight GOLD distils SAR-dependent features (the original distilled optical t1 toward optical t2)."""
    a, b, c = images(1, 3, 32, 32), images(1, 3, 32, 32), images(1, 3, 32, 32)
    for mode in ("fused", "branch"):
        model = models.build("gold_lite", distill_features=mode).eval()
        out, other = model(a, b, c), model(a, images(1, 3, 32, 32), c)
        assert not torch.allclose(out["student_feat"], other["student_feat"])  # depends on the SAR input
        assert torch.allclose(out["teacher_feat"], other["teacher_feat"])  # teacher side does not
    assert torch.equal(out["student_feat"], out["feat_b"])  # "branch": SAR vs optical-t2 encoder features
    assert torch.equal(out["teacher_feat"], out["feat_c"])
    with pytest.raises(ValueError, match="distill_features"):
        models.build("gold_lite", distill_features="opt")
