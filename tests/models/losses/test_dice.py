"""Soft Dice on the change class — and the exact failure mode of the original Dice (spec §4.1, §12)."""

from __future__ import annotations

import torch

from models.losses import SoftDiceLoss


def quarter_change(n: int = 2, size: int = 32) -> torch.Tensor:
    """Label with 25 % change pixels (the top-left quadrant)."""
    y = torch.zeros(n, size, size, dtype=torch.long)
    y[:, : size // 2, : size // 2] = 1
    return y


def logits_for(prob_change: torch.Tensor) -> torch.Tensor:
    """2-class logits whose softmax gives ``prob_change`` for class 1."""
    p = prob_change.clamp(1e-6, 1 - 1e-6)
    return torch.stack([torch.zeros_like(p), torch.log(p / (1 - p))], dim=1)


def original_gold_dice(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """Re-statement of the original ``Dice_loss`` as the spec describes it: a 2-class one-hot target whose last
    channel is dropped, so both softmax channels are scored against the background mask."""
    p = torch.softmax(logits, dim=1).permute(0, 2, 3, 1).reshape(-1, 2)
    background = (target == 0).float().reshape(-1, 1)  # one_hot(target, 2)[..., :-1]
    tp = (background * p).sum(0)
    fp = p.sum(0) - tp
    fn = background.sum(0) - tp
    score = (2 * tp + smooth) / (2 * tp + fn + fp + smooth)
    return 1 - score.mean()


def test_true_mask_minimises_the_dice_not_uniform_half() -> None:
    y = quarter_change()
    dice = SoftDiceLoss()
    perfect = dice(logits_for(y.float()), y)
    uniform = dice(logits_for(torch.full(y.shape, 0.5)), y)
    inverted = dice(logits_for(1 - y.float()), y)
    all_background = dice(logits_for(torch.zeros(y.shape)), y)
    assert perfect < 1e-3
    assert perfect < uniform < inverted
    assert perfect < all_background


def test_original_dice_had_its_minimum_at_uniform_half() -> None:
    """The bug this module fixes: the original scores perfect and inverted predictions alike (0.50) and is
    lowest for p = 0.5 everywhere (0.40 with 25 % change) — the numbers measured in the spec."""
    y = quarter_change()
    perfect = original_gold_dice(logits_for(y.float()), y)
    inverted = original_gold_dice(logits_for(1 - y.float()), y)
    uniform = original_gold_dice(logits_for(torch.full(y.shape, 0.5)), y)
    assert abs(perfect - 0.5) < 1e-3 and abs(inverted - 0.5) < 1e-3 and abs(uniform - 0.4) < 1e-3
    assert uniform < perfect  # the failure mode
    # ...which the corrected Dice does not have:
    assert SoftDiceLoss()(logits_for(y.float()), y) < SoftDiceLoss()(logits_for(torch.full(y.shape, 0.5)), y)


def test_gradient_at_uniform_half_points_toward_the_mask() -> None:
    y = quarter_change(1, 16)
    logits = logits_for(torch.full(y.shape, 0.5)).requires_grad_(True)
    SoftDiceLoss()(logits, y).backward()
    g = logits.grad[:, 1] - logits.grad[:, 0]  # d loss / d (change logit margin)
    assert (g[y == 1] < 0).all() and (g[y == 0] > 0).all()


def test_ignored_pixels_have_no_effect() -> None:
    y = quarter_change()
    y[:, :6] = 255
    logits = torch.randn(2, 2, 32, 32)
    other = logits.clone()
    other[:, :, :6] = torch.randn(2, 2, 6, 32) * 10
    dice = SoftDiceLoss()
    assert torch.equal(dice(logits, y), dice(other, y))


def test_batch_without_change_rewards_predicting_no_change() -> None:
    y = torch.zeros(2, 16, 16, dtype=torch.long)
    dice = SoftDiceLoss()
    assert dice(logits_for(torch.full(y.shape, 0.01)), y) < dice(logits_for(torch.full(y.shape, 0.5)), y)
    assert dice(logits_for(torch.zeros(y.shape)), y) < 1e-3
