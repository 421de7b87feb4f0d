"""Change-detection loss: class-weighted cross-entropy + soft Dice on the change class.

What: ``L_CD = ce_weight · CE_w(logits, y) + dice_weight · Dice(logits, y)``, with CE weights (0.1, 0.9) for
(no change, change), PyTorch's weighted mean, label 255 ignored by both terms.

Why: GOLD's supervised loss for both student and teacher (spec §4.1: ``--ce_weight_bg 0.1 --ce_weight_fg 0.9
--ce_in_lcd_weight 1.0 --dice_in_lcd_weight 1.5``), with the Dice term corrected (see :mod:`.dice`). It is also
the loss of the FC baselines (Daudt et al. trained with weighted NLL; the Dice term helps on imbalanced tiles).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._masks import check_target
from .dice import SoftDiceLoss


class ChangeLoss(nn.Module):
    """Weighted CE + soft Dice.

    ``terms(logits, target) -> (total, ce, dice)`` (tensors) and, for the trainer,
    ``forward(outputs: dict, target, epoch=None) -> (total, {"loss", "ce", "dice"} as floats)`` reading
    ``outputs["logits"]``; ``epoch`` is accepted (and unused) so every loss has the same call signature.
    """

    def __init__(
        self,
        ce_class_weights: Sequence[float] | None = (0.1, 0.9),
        ce_weight: float = 1.0,
        dice_weight: float = 1.5,
        dice_smooth: float = 1.0,
        ignore_index: int = 255,
    ) -> None:
        super().__init__()
        self.ce_weight = ce_weight
        self.dice_weight = dice_weight
        self.ignore_index = ignore_index
        if ce_class_weights is None:
            self.register_buffer("class_weights", None)
        else:
            self.register_buffer("class_weights", torch.tensor([float(w) for w in ce_class_weights]))
        self.dice = SoftDiceLoss(dice_smooth, ignore_index)

    def terms(self, logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        target = check_target(target, logits.shape[-2:], "ChangeLoss")
        logits = logits.float()
        if not (target != self.ignore_index).any():
            zero = logits.sum() * 0.0  # keeps the graph; nothing to learn from a fully ignored batch
            return zero, zero, zero
        ce = F.cross_entropy(logits, target, weight=self.class_weights, ignore_index=self.ignore_index)
        dice = self.dice(logits, target)
        return self.ce_weight * ce + self.dice_weight * dice, ce, dice

    def forward(
        self, outputs: dict[str, Tensor], target: Tensor, epoch: float | None = None
    ) -> tuple[Tensor, dict[str, float]]:
        total, ce, dice = self.terms(outputs["logits"], target)
        values = torch.stack([total.detach(), ce.detach(), dice.detach()]).tolist()
        return total, dict(zip(("loss", "ce", "dice"), values))
