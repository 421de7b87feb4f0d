"""GoldLoss: the combined objective on synthetic model outputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models.losses import GoldLoss
from tests.models.conftest import change_label

N, H, W = 2, 32, 32


def one_hot_logits(y: torch.Tensor, scale: float = 8.0) -> torch.Tensor:
    return F.one_hot(y.clamp(max=1), 2).permute(0, 3, 1, 2).float() * 2 * scale - scale


def outputs(y: torch.Tensor, perfect: bool) -> dict[str, torch.Tensor]:
    """GOLD-like outputs. Perfect: student = teacher = label. Wrong: the student inverts the label and its
    features differ from the teacher's."""
    g = torch.Generator().manual_seed(1)
    t_feat = torch.relu(torch.randn(N, 16, H // 4, W // 4, generator=g))
    fa, fc = torch.randn(N, 8, H // 4, W // 4, generator=g), torch.randn(N, 8, H // 4, W // 4, generator=g)
    out = {
        "teacher_logits": one_hot_logits(y),
        "teacher_feat": t_feat,
        "feat_a": fa,
        "feat_c": fc,
    }
    if perfect:
        out.update(logits=one_hot_logits(y), student_feat=t_feat.clone(), feat_b=fc.clone())
    else:
        out.update(
            logits=one_hot_logits((y == 0).long()),
            student_feat=torch.relu(torch.randn(N, 16, H // 4, W // 4, generator=g)),
            feat_b=torch.randn(N, 8, H // 4, W // 4, generator=g),
        )
    return out


@pytest.mark.parametrize("mode", ["gold", "uncertainty"])
def test_perfect_prediction_is_minimal(mode: str) -> None:
    y = change_label(N, H, W)
    loss = GoldLoss(weighting=mode)
    best, parts_best = loss(outputs(y, True), y, epoch=30)
    worst, parts_worst = loss(outputs(y, False), y, epoch=30)
    assert best < worst
    for k in ("student_cd", "teacher_cd", "feat", "kl", "map", "ch", "sp"):
        assert parts_best[k] < 1e-3 or parts_best[k] < parts_worst[k], k
        assert parts_best[k] <= parts_worst[k], k
    assert parts_best["kl"] < 1e-6 and parts_best["feat"] < 1e-6 and parts_best["map"] < 1e-10


def test_components_are_floats_and_complete() -> None:
    y = change_label(N, H, W)
    total, parts = GoldLoss()(outputs(y, False), y, epoch=5.5)
    assert parts["loss"] == pytest.approx(float(total.detach()))
    for key in ("student_cd", "student_ce", "student_dice", "teacher_cd", "feat", "feat_mse", "feat_cos", "kl",
                "map", "ch", "sp", "w_cd", "w_dist", "w_att", "ramp"):  # fmt: skip
        assert isinstance(parts[key], float), key


@pytest.mark.parametrize("mode", ["gold", "uncertainty"])
def test_ignore_index_has_no_effect(mode: str) -> None:
    y = change_label(N, H, W, ignore_rows=8)  # feature rows 0:2 ignored at stride 4
    a = outputs(y, False)
    b = {k: v.clone() for k, v in a.items()}
    b["logits"][..., :8, :] = 30.0
    b["teacher_logits"][..., :8, :] = -30.0
    for k in ("student_feat", "teacher_feat", "feat_a", "feat_b", "feat_c"):
        b[k][..., :2, :] = 7.0
    loss = GoldLoss(weighting=mode)
    pa, pb = loss(a, y, epoch=12)[1], loss(b, y, epoch=12)[1]
    for k in pa:
        assert pa[k] == pytest.approx(pb[k], rel=1e-5, abs=1e-7), k


def test_validation_outputs_need_no_epoch() -> None:
    y = change_label(N, H, W)
    out = outputs(y, False)
    total, parts = GoldLoss()({"logits": out["logits"]}, y)
    assert set(parts) == {"loss", "student_cd", "student_ce", "student_dice"}
    assert parts["loss"] == parts["student_cd"]
    with pytest.raises(ValueError, match="epoch is required"):
        GoldLoss()(out, y)
    with pytest.raises(ValueError, match="teacher entries"):
        GoldLoss()({"logits": out["logits"], "teacher_logits": out["teacher_logits"]}, y, epoch=1)


@pytest.mark.parametrize("mode", ["gold", "uncertainty"])
def test_weights_are_in_the_state_dict(mode: str) -> None:
    a, b = GoldLoss(weighting=mode), GoldLoss(weighting=mode)
    with torch.no_grad():
        for p in a.parameters():
            p.add_(torch.randn_like(p))
    state = a.state_dict()
    assert any(k.startswith("weighting.") for k in state)
    b.load_state_dict(state)
    y = change_label(N, H, W)
    out = outputs(y, False)
    assert torch.equal(a(out, y, epoch=40)[0], b(out, y, epoch=40)[0])
    with pytest.raises(ValueError, match="unknown weighting"):
        GoldLoss(weighting="fixed")  # type: ignore[arg-type]


def test_entropy_term_optional() -> None:
    y = change_label(N, H, W)
    out = outputs(y, False)
    out["teacher_logits"] = torch.zeros_like(out["teacher_logits"])  # maximal entropy
    base = GoldLoss()(out, y, epoch=30)[1]
    with_entropy = GoldLoss(teacher_entropy_weight=0.1)(out, y, epoch=30)[1]
    assert with_entropy["teacher_entropy"] == pytest.approx(torch.log(torch.tensor(2.0)).item(), rel=1e-5)
    assert with_entropy["teacher_cd"] == pytest.approx(base["teacher_cd"] + 0.1 * with_entropy["teacher_entropy"])
