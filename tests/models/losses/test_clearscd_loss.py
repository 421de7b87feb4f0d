"""ClearSCD loss: BCD BCE+Dice, SACL local InfoNCE and global memory loss, FIFO bank, warm-up, BSCC, ignore 255."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import models
from models.clearscd import ClearSCD
from models.losses.clearscd import (
    ClearSCDLoss,
    bcd_loss,
    bscc_loss,
    enqueue,
    global_contrast,
    local_contrast,
)
from tests.models.conftest import images


def _grid(*pixels: list[float]) -> torch.Tensor:
    """Vectors of a 1×1×len(pixels) feature map, [1, D, 1, P]."""
    return torch.tensor(pixels, dtype=torch.float32).T[None, :, None, :]


def _unit(v: list[float]) -> list[float]:
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b))


# ------------------------------------------------------------------------------------------------------ BCD
def test_bcd_bce_and_smp_dice_by_hand() -> None:
    z = torch.tensor([[[2.0, -1.0, 0.5, 3.0]]])
    y = torch.tensor([[[1, 0, 1, 255]]])
    bce, dice = bcd_loss(z, y)
    p = [1 / (1 + math.exp(-v)) for v in (2.0, -1.0, 0.5)]
    expected_bce = -(math.log(p[0]) + math.log(1 - p[1]) + math.log(p[2])) / 3
    expected_dice = 1 - 2 * (p[0] + p[2]) / (sum(p) + 2)
    assert bce.item() == pytest.approx(expected_bce, rel=1e-5)
    assert dice.item() == pytest.approx(expected_dice, rel=1e-5)
    # a batch without changed pixels: smp's binary Dice is 0 (only BCE remains)
    _, dice = bcd_loss(z, torch.tensor([[[0, 0, 0, 255]]]))
    assert dice.item() == 0.0
    bce, dice = bcd_loss(z, torch.full((1, 1, 4), 255))
    assert bce.item() == dice.item() == 0.0


# ------------------------------------------------------------------------------------------------------ SACL local
def test_local_infonce_hand_computed() -> None:
    # date A: pixel 0 class 0, pixel 1 class 1; date B: pixel 0 class 0, pixel 1 ignored
    za, zb = _grid([1, 0], [0, 1]), _grid([1, 1], [3, -7])
    ka, kb = _grid([1, 0], [0.6, 0.8]), _grid([0.8, 0.6], [5, 5])
    ya, yb = torch.tensor([[[0, 1]]]), torch.tensor([[[0, 255]]])
    tau = 0.1
    value = local_contrast((za, zb), (ka, kb), (ya, yb), temperature=tau, sample_num=1024)

    def infonce(anchor: list[float], positives: list[list[float]], negatives: list[list[float]]) -> float:
        neg = sum(math.exp(_dot(anchor, k) / tau) for k in negatives)
        return sum(
            -math.log(math.exp(_dot(anchor, k) / tau) / (math.exp(_dot(anchor, k) / tau) + neg)) for k in positives
        ) / len(positives)

    # class 0: anchor = normalised mean of the (raw) queries of both dates (cross-temporal)
    a0 = _unit([1, 0.5])
    l0 = infonce(a0, [[1, 0], [0.8, 0.6]], [[0.6, 0.8]])
    l1 = infonce([0, 1], [[0.6, 0.8]], [[1, 0], [0.8, 0.6]])
    assert value.item() == pytest.approx((l0 + l1) / 2, rel=1e-5)

    # a single class has nothing to contrast with: log(1) = 0
    single = local_contrast((za, zb), (ka, kb), (torch.tensor([[[0, 0]]]),) * 2, temperature=tau)
    assert single.item() == pytest.approx(0.0, abs=1e-6)


def test_local_infonce_respects_the_sample_limit() -> None:
    z, k = torch.randn(1, 4, 6, 6), torch.randn(1, 4, 6, 6)
    y = torch.randint(0, 3, (1, 6, 6))
    taken: list[int] = []
    original = torch.randperm

    def spy(n: int, **kwargs: object) -> torch.Tensor:
        taken.append(n)
        return original(n, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch, "randperm", spy)
        value = local_contrast((z, z), (k, k), (y, y), sample_num=2)
    assert torch.isfinite(value) and taken  # classes with more than 2 pixels were subsampled


# ------------------------------------------------------------------------------------------------------ SACL global
def _bank() -> torch.Tensor:
    # queue[d, c] is a D×L matrix whose columns are the bank vectors (D = 2, L = 2)
    q = torch.zeros(2, 2, 2, 2)
    q[0, 0] = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # columns (1,0), (0,1)
    q[1, 0] = torch.tensor([[1.0, 1.0], [0.0, 0.0]])  # (1,0), (1,0)
    q[0, 1] = torch.tensor([[0.0, 0.0], [1.0, 1.0]])  # (0,1), (0,1)
    q[1, 1] = torch.tensor([[-1.0, 0.0], [0.0, 1.0]])  # (-1,0), (0,1)
    return q


def _term(q: list[float], pos: list[list[float]], neg: list[list[float]]) -> float:
    p = sum(1 - _dot(q, v) for v in pos) / len(pos)
    n = sum(1 + _dot(q, v) for v in neg) / len(neg) if neg else 0.0
    return 0.5 * (p + n)


def test_global_memory_loss_hand_computed_with_hard_weights() -> None:
    bank = _bank()
    cols = {(d, c): [bank[d, c][:, j].tolist() for j in range(2)] for d in range(2) for c in range(2)}
    proj = (_grid([1, 0], [0, 1]), _grid([1, 0], [0, 1]))
    labels = (torch.tensor([[[0, 1]]]), torch.tensor([[[0, 0]]]))
    # date B, class 0: p(0) = 0.5 and 0.75 → hard weights 0.5 and 0.25 → centroid ∝ (2, 1)
    sem = (torch.zeros(1, 2, 1, 2), torch.tensor([[[[0.0, math.log(3)]], [[0.0, 0.0]]]]))
    value = global_contrast(proj, sem, labels, bank, torch.full((2, 2), 2.0))

    a0 = _term([1, 0], cols[0, 0] + cols[1, 0], cols[0, 1] + cols[1, 1])
    a1 = _term([0, 1], cols[0, 1] + cols[1, 1], cols[0, 0] + cols[1, 0])
    b0 = _term(_unit([2, 1]), cols[0, 0] + cols[1, 0], cols[0, 1] + cols[1, 1])
    assert a0 == pytest.approx(0.5) and a1 == pytest.approx(0.75)
    assert value.item() == pytest.approx((a0 + a1) / 4 + b0 / 2, rel=1e-5)

    plain = global_contrast(proj, sem, labels, bank, None, hard_sampling=False)
    b0_plain = _term(_unit([1, 1]), cols[0, 0] + cols[1, 0], cols[0, 1] + cols[1, 1])
    assert plain.item() == pytest.approx((a0 + a1) / 4 + b0_plain / 2, rel=1e-5)

    # never-written columns are left out ("written"): class 1 has written columns only at date A
    count = torch.tensor([[2.0, 2.0], [2.0, 0.0]])
    written = global_contrast(proj, sem, labels, bank, count)
    a0w = _term([1, 0], cols[0, 0] + cols[1, 0], cols[0, 1])
    a1w = _term([0, 1], cols[0, 1], cols[0, 0] + cols[1, 0])
    b0w = _term(_unit([2, 1]), cols[0, 0] + cols[1, 0], cols[0, 1])
    assert written.item() == pytest.approx((a0w + a1w) / 4 + b0w / 2, rel=1e-5)
    everything = global_contrast(proj, sem, labels, bank, count, queue_negatives="all")
    assert everything.item() == pytest.approx(value.item(), rel=1e-6)


def test_global_memory_loss_is_within_0_and_2() -> None:
    torch.manual_seed(1)
    for _ in range(5):
        bank = F.normalize(torch.randn(2, 4, 8, 16), dim=2)
        proj = (torch.randn(2, 8, 4, 4), torch.randn(2, 8, 4, 4))
        sem = (torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4))
        labels = (torch.randint(0, 4, (2, 4, 4)), torch.randint(0, 4, (2, 4, 4)))
        value = global_contrast(proj, sem, labels, bank, torch.full((2, 4), 16.0)).item()
        assert 0.0 <= value <= 2.0
    # extremes: queries equal to every positive and opposite to every negative → 0
    bank = torch.zeros(2, 2, 2, 3)
    bank[:, 0, 0], bank[:, 1, 0] = 1.0, -1.0
    proj = (_grid([1, 0]), _grid([1, 0]))
    zero = global_contrast(proj, (torch.zeros(1, 2, 1, 1),) * 2, (torch.tensor([[[0]]]),) * 2, bank)
    assert zero.item() == pytest.approx(0.0, abs=1e-6)
    two = global_contrast(proj, (torch.zeros(1, 2, 1, 1),) * 2, (torch.tensor([[[1]]]),) * 2, bank)
    assert two.item() == pytest.approx(2.0, abs=1e-6)


def test_enqueue_is_fifo_and_counts_written_columns() -> None:
    queue = F.normalize(torch.randn(2, 2, 3, 4), dim=2)
    count = torch.zeros(2, 2)
    keys = (torch.randn(1, 3, 1, 5), torch.randn(1, 3, 1, 5))
    labels = (torch.tensor([[[0, 0, 0, 1, 255]]]), torch.tensor([[[1, 1, 1, 1, 1]]]))
    before = queue.clone()
    enqueue(queue, count, keys, labels, enqueue_len=2)
    # class 0 at date A (3 pixels ≥ 2): oldest 2 columns dropped, 2 new unit keys of class-0 pixels appended
    assert torch.equal(queue[0, 0, :, :2], before[0, 0, :, 2:])
    class0 = F.normalize(keys[0][0, :, 0, :3].T, dim=1)
    for j in (2, 3):
        assert min((queue[0, 0, :, j] - k).abs().max().item() for k in class0) < 1e-6
    assert torch.equal(queue[0, 1], before[0, 1])  # one pixel < enqueue_len: not enqueued
    assert count.tolist() == [[2.0, 0.0], [0.0, 2.0]]
    first = queue[0, 0, :, 2:].clone()
    enqueue(queue, count, (torch.randn(1, 3, 1, 5), keys[1]), labels, enqueue_len=2)
    assert torch.equal(queue[0, 0, :, :2], first)  # the previous batch moved to the front
    enqueue(queue, count, (torch.randn(1, 3, 1, 5), keys[1]), labels, enqueue_len=2)
    assert count.tolist() == [[4.0, 0.0], [0.0, 4.0]]  # capped at the queue length
    assert not any(torch.equal(queue[0, 0, :, j], first[:, i]) for j in range(4) for i in range(2))  # dropped


# ------------------------------------------------------------------------------------------------------ BSCC
def test_bscc_hand_computed() -> None:
    fa = torch.tensor([[[[0.0, 0.0, 0.0]]]])
    fb = torch.tensor([[[[1.0, 0.5, 9.0]]]])  # D = 1, 0.5, 9
    z = torch.tensor([[[[-2.0, 3.0, 0.0]]]])
    valid = torch.tensor([[[True, True, False]]])
    value = bscc_loss((fa, fb), z, margin=2.0, valid=valid)
    p0, p1 = 1 / (1 + math.exp(2.0)), 1 / (1 + math.exp(-3.0))
    u0 = 1 - p0  # pixel 0: p < 0.5 → "unchanged", pulled; pixel 1: "changed", pushed to margin
    expected = 0.5 * (u0 * 1.0**2 / (u0 + 1e-4) + p1 * (2.0 - 0.5) ** 2 / (p1 + 1e-4))
    assert value.item() == pytest.approx(expected, rel=1e-5)

    # two channels: the sums run over channels and the result is divided by C (channel mean)
    two = bscc_loss((fa.repeat(1, 2, 1, 1), fb.repeat(1, 2, 1, 1)), z, valid=valid)
    assert two.item() == pytest.approx(expected, rel=1e-5)

    # with the label instead of the pseudo-label, pixel 1 labelled unchanged is pulled
    label = torch.tensor([[[0, 0, 0]]])
    p = torch.sigmoid(z[0, 0, 0, :2])
    u = 1 - p
    expected_label = 0.5 * (u[0] * 1.0 + u[1] * 0.25) / (u.sum() + 1e-4)
    assert bscc_loss((fa, fb), z, target=label, valid=valid).item() == pytest.approx(expected_label.item(), rel=1e-5)

    zg = z.clone().requires_grad_(True)
    bscc_loss((fa, fb), zg, valid=valid).backward()
    assert zg.grad.abs().sum() > 0  # not detached by default: the loss also shapes the change head
    zg.grad = None
    bscc_loss((fa, fb.requires_grad_(True)), zg, valid=valid, detach=True).backward()
    assert zg.grad is None or zg.grad.abs().sum() == 0


# ------------------------------------------------------------------------------------------------------ total loss
def _outputs(k: int = 3, n: int = 2, size: int = 16, low: int = 4, dim: int = 8, length: int = 6) -> dict:
    g = torch.Generator().manual_seed(3)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    z_low = r(n, 1, low, low)
    z = F.interpolate(z_low, size=(size, size), mode="bilinear", align_corners=True)
    return {
        "logits": torch.cat([torch.zeros_like(z), z], 1),
        "semantic_t1": r(n, k, size, size),
        "semantic_t2": r(n, k, size, size),
        "features_t1": r(n, dim, low, low),
        "features_t2": r(n, dim, low, low),
        "projections_t1": r(n, dim, low, low),
        "projections_t2": r(n, dim, low, low),
        "semantic_low_t1": r(n, k, low, low),
        "semantic_low_t2": r(n, k, low, low),
        "change_low": z_low,
        "memory_queue": F.normalize(r(2, k, dim, length), dim=2),
        "memory_count": torch.full((2, k), float(length)),
    }


def _target(k: int = 3, n: int = 2, size: int = 16, ignore_rows: int = 4) -> dict:
    g = torch.Generator().manual_seed(4)
    block = torch.randint(0, k, (n, size // 4, size // 4), generator=g)
    t1 = block.repeat_interleave(4, 1).repeat_interleave(4, 2)  # constant on each 4×4 cell of the 1/4 grid
    t2 = t1.clone()
    t2[:, 8:12, 8:16] = (t2[:, 8:12, 8:16] + 1) % k
    change = (t1 != t2).long()
    for y in (t1, t2, change):
        y[:, :ignore_rows] = 255
    return {"change": change, "t1": t1, "t2": t2}


def test_total_is_the_weighted_sum_of_the_components() -> None:
    loss = models.build_loss("clearscd", enqueue_len=2)
    assert isinstance(loss, ClearSCDLoss)
    total, parts = loss(_outputs(), _target(), epoch=3.0)
    assert set(parts) == {"loss", "bcd_bce", "bcd_dice", "seg_t1", "seg_t2", "sacl_local", "sacl_global", "bscc"}
    assert all(parts[k] > 0 for k in parts)
    expected = (
        parts["bcd_bce"] + parts["bcd_dice"] + parts["seg_t1"] + parts["seg_t2"]
        + 0.1 * parts["sacl_local"] + parts["sacl_global"] + 0.1 * parts["bscc"]
    )
    assert total.item() == pytest.approx(expected, rel=1e-5)
    assert parts["loss"] == pytest.approx(total.item())


def test_warm_up_skips_the_global_term_but_fills_the_bank() -> None:
    loss = ClearSCDLoss(enqueue_len=2)
    out = _outputs()
    out["memory_count"].zero_()
    queue = out["memory_queue"].clone()
    _, parts = loss(out, _target(), epoch=0.5)
    assert parts["sacl_global"] == 0.0
    assert out["memory_count"].sum() > 0 and not torch.equal(out["memory_queue"], queue)  # updated in place
    _, parts = loss(out, _target(), epoch=1.0)
    assert parts["sacl_global"] > 0
    _, parts = ClearSCDLoss(enqueue_len=2, warmup_epochs=0)(out, _target(), epoch=0.0)
    assert parts["sacl_global"] > 0


def test_ignored_pixels_have_no_effect() -> None:
    loss = ClearSCDLoss(enqueue_len=2)
    target = _target()  # the top 4 full-res rows = the top row of the 1/4 grid are 255 in all three maps
    out = _outputs()
    changed = {k: v.clone() for k, v in out.items()}
    for key in ("logits", "semantic_t1", "semantic_t2"):
        changed[key][:, :, :4] = torch.randn_like(changed[key][:, :, :4]) * 10
    for key in ("features_t1", "features_t2", "projections_t1", "projections_t2", "semantic_low_t1",
                "semantic_low_t2"):
        changed[key][:, :, :1] = torch.randn_like(changed[key][:, :, :1]) * 10
    changed["change_low"][:, :, :1] = 5.0
    torch.manual_seed(0)
    _, a = loss(out, target, epoch=2.0)
    torch.manual_seed(0)
    _, b = loss(changed, target, epoch=2.0)
    assert a == pytest.approx(b, rel=1e-5)
    assert torch.allclose(out["memory_queue"], changed["memory_queue"])


def test_eval_outputs_give_only_the_supervised_terms_and_bad_targets_fail() -> None:
    out = {k: v for k, v in _outputs().items() if k in ("logits", "semantic_t1", "semantic_t2")}
    total, parts = ClearSCDLoss()(out, _target())
    assert parts["sacl_local"] == parts["sacl_global"] == parts["bscc"] == 0.0
    assert total.item() == pytest.approx(parts["bcd_bce"] + parts["bcd_dice"] + parts["seg_t1"] + parts["seg_t2"])
    with pytest.raises(ValueError, match="dict with 'change'"):
        ClearSCDLoss()(out, _target()["change"])
    with pytest.raises(ValueError, match="key_space"):
        ClearSCDLoss(key_space="decoder")
    with pytest.raises(ValueError, match="proj_dim"):
        full = _outputs()
        full["memory_queue"] = torch.zeros(2, 3, 5, 6)
        ClearSCDLoss(key_space="feature")(full, _target(), epoch=2.0)


def test_training_step_with_the_model_updates_the_bank_in_place() -> None:
    model = ClearSCD(semantic_classes=3, queue_len=8, proj_dim=16).train()
    loss = ClearSCDLoss(enqueue_len=4)
    target = _target(size=64, ignore_rows=8)
    out = model(images(2, 3), images(2, 3))
    total, parts = loss({k: v.float() for k, v in out.items()}, target, epoch=2.0)
    assert parts["sacl_global"] == 0.0  # a fresh bank has no written column yet
    assert model.memory_count.sum() > 0  # the model's buffer itself was written
    out = model(images(2, 3), images(2, 3))
    total, parts = loss({k: v.float() for k, v in out.items()}, target, epoch=2.0)
    total.backward()
    assert torch.isfinite(total) and parts["sacl_global"] > 0
    assert model.encoder._conv_stem.weight.grad.abs().sum() > 0
    assert model.projection[0].weight.grad.abs().sum() > 0
