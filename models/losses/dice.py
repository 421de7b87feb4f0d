"""Soft Dice loss on the change class.

What: ``1 − (2·Σ p·y + s) / (Σ p + Σ y + s)`` where p = softmax probability of class 1 (change), y = the change
mask, sums over every valid pixel of the batch (label 255 excluded from both p and y), s = smoothing.

Why: the Dice term of GOLD (spec §4.1; Milletari et al., V-Net, 3DV 2016) is meant to counter the heavy class
imbalance of building change (~6 % change pixels). The original ``Dice_loss`` one-hot encoded the label with
two classes and then dropped the last channel (a recipe for an extra "ignore" channel), so both softmax channels
were scored against the *background* mask: it carries no change information and is minimised by p = 0.5
everywhere (0.40 there vs 0.50 for the perfect prediction). This one is minimised by the true mask.

Differences from the thesis formula: only the change class (the background Dice is dominated by the ~94 %
no-change pixels and adds little), sums over the whole batch (per-tile Dice is undefined on the many tiles
without change), and smoothing s = 1 instead of 1e-5 so that a batch without change pixels still rewards
predicting no change (with 1e-5 the loss is ≈ 1 for any such prediction).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._masks import check_target


class SoftDiceLoss(nn.Module):
    """``forward(logits [N, 2, H, W], target [N, H, W]) -> scalar``; see the module docstring."""

    def __init__(self, smooth: float = 1.0, ignore_index: int = 255, change_class: int = 1) -> None:
        super().__init__()
        self.smooth = smooth
        self.ignore_index = ignore_index
        self.change_class = change_class

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        target = check_target(target, logits.shape[-2:], "SoftDiceLoss")
        valid = (target != self.ignore_index).to(logits.dtype)
        p = torch.softmax(logits.float(), dim=1)[:, self.change_class] * valid
        y = (target == self.change_class).to(p.dtype) * valid
        inter = (p * y).sum()
        return 1.0 - (2.0 * inter + self.smooth) / (p.sum() + y.sum() + self.smooth)
