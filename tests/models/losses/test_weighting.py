"""Dynamic loss weights: GOLD's softplus scheme (warm-up, clamps) and Kendall uncertainty weighting."""

from __future__ import annotations

import math

import pytest
import torch

from models.losses import GoldWeighting, UncertaintyWeighting, build_weighting, ramp
from models.losses.weighting import TERMS

W0 = {"task": [1.0, 0.3, 0.3], "cd": [1.0, 0.4], "dist": [0.7, 0.3], "att": [0.5, 0.3, 0.2]}


def terms(**over: float) -> dict[str, torch.Tensor]:
    base = {"student_cd": 1.2, "teacher_cd": 0.9, "feat": 0.8, "kl": 0.05, "map": 0.01, "ch": 0.002, "sp": 0.001}
    base.update(over)
    return {k: torch.tensor(v) for k, v in base.items()}


def weights_of(module: torch.nn.Module, epoch: float) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in module.weights(epoch).items()}


def reference_group(s: list[float], w0: list[float], epoch: float, warmup: float = 20) -> list[float]:
    """spec §4.4, written independently in plain Python."""
    p = [math.log1p(math.exp(-v)) + 1e-8 for v in s]
    sp, sw = sum(p), sum(w0)
    if epoch < warmup:
        a = 0.5 * (1 - math.cos(math.pi * epoch / warmup))
        return [((1 - a) * w / sw + a * q / sp) * sw for w, q in zip(w0, p)]
    return [q / sp * sw for q in p]


def reference_task(s: list[float], epoch: float) -> list[float]:
    w = reference_group(s, W0["task"], epoch)
    tot = sum(w)
    c = [max(w[0], 0.6 * tot), min(w[1], 0.3 * tot), min(w[2], 0.2 * tot)]
    return [v * tot / sum(c) for v in c]


def test_ramp() -> None:
    assert ramp(0, 20) == 0.0
    assert ramp(10, 20) == pytest.approx(0.5)
    assert ramp(20, 20) == ramp(400, 20) == 1.0
    assert ramp(3, 0) == 1.0


def test_gold_weights_start_at_the_initial_weights() -> None:
    w = weights_of(GoldWeighting(), 0.0)
    got = [float(w[k]) for k in ("cd", "dist", "att", "student_cd", "teacher_cd", "feat", "kl", "map", "ch", "sp")]
    assert got == pytest.approx(W0["task"] + W0["cd"] + W0["dist"] + W0["att"])


def test_gold_weights_after_warmup_match_spec() -> None:
    # spec §4.4: "effective weights after warm-up if s stays ≈ 0".
    for epoch in (20, 400):
        w = weights_of(GoldWeighting(), epoch)
        assert [float(w[k]) for k in ("cd", "dist", "att")] == pytest.approx([0.873, 0.436, 0.291], abs=1e-3)
        assert [float(w[k]) for k in ("student_cd", "teacher_cd")] == pytest.approx([0.7, 0.7])
        assert [float(w[k]) for k in ("feat", "kl")] == pytest.approx([0.5, 0.5])
        assert [float(w[k]) for k in ("map", "ch", "sp")] == pytest.approx([1 / 3] * 3)


@pytest.mark.parametrize("epoch", [0.0, 3.5, 10.0, 19.9, 20.0, 150.0])
def test_gold_weights_follow_the_formula_for_any_s(epoch: float) -> None:
    gw = GoldWeighting()
    with torch.no_grad():
        for name in ("task", "cd", "dist", "att"):
            getattr(gw, f"s_{name}").copy_(torch.randn(len(W0[name])) * 2)
    w = weights_of(gw, epoch)
    assert [float(w[k]) for k in ("cd", "dist", "att")] == pytest.approx(
        reference_task(gw.s_task.tolist(), epoch), rel=1e-5
    )
    assert [float(w[k]) for k in ("map", "ch", "sp")] == pytest.approx(
        reference_group(gw.s_att.tolist(), W0["att"], epoch), rel=1e-5
    )
    assert all(float(v) > 0 for v in w.values())


def test_gold_clamps_keep_the_cd_task_dominant() -> None:
    gw = GoldWeighting()
    with torch.no_grad():
        gw.s_task.copy_(torch.tensor([8.0, -8.0, -8.0]))  # softplus(−s) pushes all weight to dist and att
    w = weights_of(gw, 100)
    task = torch.stack([w["cd"], w["dist"], w["att"]])
    assert task.tolist() == pytest.approx([0.873, 0.436, 0.291], abs=1e-3)
    assert float(task.sum()) == pytest.approx(1.6)
    assert float(w["cd"] / task.sum()) >= 0.6 / 1.1 - 1e-6


def test_gold_total_formula_ramp_and_learnable_s() -> None:
    gw = GoldWeighting()
    t = terms()
    total, logged = gw(t, 0.0)
    # At epoch 0 the ramp is 0: no teacher supervision, no distillation.
    expected = 1.0 * (1.0 * t["student_cd"]) + 0.3 * (0.5 * t["map"] + 0.3 * t["ch"] + 0.2 * t["sp"])
    assert torch.allclose(total, expected)
    assert logged["ramp"] == 0.0
    assert torch.allclose(gw(terms(teacher_cd=50.0, feat=50.0, kl=50.0), 0.0)[0], total)
    gw(t, 5.0)[0].backward()  # during warm-up every s is learnable
    for name in ("task", "cd", "dist", "att"):
        assert getattr(gw, f"s_{name}").grad.abs().sum() > 0, name


def test_gold_task_weights_are_pinned_by_the_clamps_after_warmup() -> None:
    """A property of the original scheme worth knowing: with s_task near 0 after warm-up all three task clamps
    are active, so the task weights are fixed fractions of Σw0 and s_task gets no gradient — only the inner
    weights keep adapting."""
    gw = GoldWeighting()
    gw(terms(), 30.0)[0].backward()
    assert gw.s_task.grad.abs().sum() == 0
    for name in ("cd", "dist", "att"):
        assert getattr(gw, f"s_{name}").grad.abs().sum() > 0, name


def test_uncertainty_weighting_is_kendall() -> None:
    uw = UncertaintyWeighting()
    t = terms()
    w = weights_of(uw, 50)
    assert [float(w[k]) for k in ("cd", "dist", "att")] == pytest.approx([0.5, 0.5, 0.5])
    groups = [
        1.0 * t["student_cd"] + 0.4 * t["teacher_cd"],
        0.7 * t["feat"] + 0.3 * t["kl"],
        0.5 * t["map"] + 0.3 * t["ch"] + 0.2 * t["sp"],
    ]
    with torch.no_grad():
        uw.log_var.copy_(torch.tensor([0.3, -1.0, 2.0]))
    total, logged = uw(t, 50)
    s = uw.log_var.detach()
    expected = sum(0.5 * torch.exp(-s[g]) * groups[g] + 0.5 * s[g] for g in range(3))
    assert torch.allclose(total, expected)
    assert all(v > 0 for k, v in logged.items() if k.startswith("w_"))
    # Stationary where σ² equals the group loss: s = log L.
    with torch.no_grad():
        uw.log_var.copy_(torch.log(torch.stack(groups)))
    uw.log_var.grad = None
    uw(t, 50)[0].backward()
    assert uw.log_var.grad.abs().max() < 1e-6


def test_uncertainty_learns_smaller_weights_for_larger_losses() -> None:
    uw = UncertaintyWeighting()
    opt = torch.optim.Adam(uw.parameters(), lr=0.1)
    t = terms(student_cd=2.0, teacher_cd=0.0, feat=0.1, kl=0.1, map=0.02, ch=0.02, sp=0.02)
    for _ in range(300):
        opt.zero_grad()
        uw(t, 100)[0].backward()
        opt.step()
    w = weights_of(uw, 100)
    assert float(w["cd"]) < float(w["dist"]) < float(w["att"])
    assert uw.log_var[0].item() == pytest.approx(math.log(2.0), abs=0.05)


def test_uncertainty_ramp_freezes_distillation_at_start() -> None:
    uw = UncertaintyWeighting()
    total, _ = uw(terms(), 0.0)
    assert torch.allclose(uw(terms(teacher_cd=9.0, feat=9.0, kl=9.0), 0.0)[0], total)
    total.backward()
    assert uw.log_var.grad[1] == 0.0 and uw.log_var.grad[0] != 0.0


@pytest.mark.parametrize("mode", ["gold", "uncertainty"])
def test_state_dict_round_trip(mode: str) -> None:
    a = build_weighting(mode, warmup_epochs=10)
    with torch.no_grad():
        for p in a.parameters():
            p.copy_(torch.randn_like(p))
    b = build_weighting(mode, warmup_epochs=10)
    b.load_state_dict(a.state_dict())
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k])
    wa, wb = weights_of(a, 12.0), weights_of(b, 12.0)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert len(list(a.parameters())) > 0


def test_bad_configuration() -> None:
    with pytest.raises(ValueError, match="available: gold, uncertainty"):
        build_weighting("kendall")
    with pytest.raises(ValueError, match="task_init"):
        GoldWeighting(task_init=(1.0, 0.3))
    with pytest.raises(ValueError, match="missing"):
        GoldWeighting()({k: torch.tensor(1.0) for k in TERMS[:3]}, 1.0)
