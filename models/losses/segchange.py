"""SegChange-R1 loss: BCE + soft Dice + class-balanced focal (+ an optional, corrected contrastive term).

What (spec §4, with the fixes of §10), on the binary change logit ``z = l₁ − l₀`` of the model's two-class
logits (``sigmoid(z)`` = ``softmax[:, 1]``, so BCE on z is exactly the two-class cross-entropy), p = σ(z),
y ∈ {0, 1}, every mean/sum over the valid pixels (label 255 is ignored by every term):
- **BCE**: mean binary cross-entropy with logits;
- **Dice**: ``1 − (2Σpy + 1)/(Σp + Σy + 1)`` over the whole batch (as the original), or averaged per image
  (``dice_per_image=True``, spec §10: batches mix empty and non-empty tiles);
- **Focal** (γ = 2): ``mean(−α_t (1 − p_t)^γ log p_t)`` with p_t = p on change pixels and 1 − p elsewhere and
  **α_t = α on change, 1 − α on no-change** — class-balanced. The original applied α = 0.6 to every pixel, which
  is only a constant factor (spec §4, §10). log p_t is computed with log-sigmoid (no ``+1e-6`` clamp);
- **BCL** (off by default, ``bcl_weight=0``): the original's "batch-balanced contrastive" term acted on raw
  logits, ``|z − y|`` pulled to 0 on change and pushed beyond a margin of 2 *in either sign* on no-change, which
  rewards no-change pixels at z = +2 (spec §4, §10: ill-posed, it fights the BCE). The corrected version here
  treats p as a change distance: ``mean_{y=0} p² + mean_{y=1} max(0, m − p)²`` (m = ``bcl_margin``), each class
  averaged separately (batch-balanced).

Total = 1.0·BCE + 1.5·Dice + 1.5·Focal (+ bcl_weight·BCL), the original's weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._masks import check_target, masked_mean


class SegChangeLoss(nn.Module):
    """``forward(outputs: dict, target [N, H, W] (0/1, 255 = ignore), epoch=None) -> (total, components)``.

    ``components``: floats ``loss``, ``bce``, ``dice``, ``focal`` (and ``bcl`` when its weight is > 0).
    ``terms(logits, target)`` returns the same as tensors (for tests and custom loops).
    """

    def __init__(
        self,
        bce_weight: float = 1.0,
        dice_weight: float = 1.5,
        focal_weight: float = 1.5,
        focal_alpha: float = 0.6,
        focal_gamma: float = 2.0,
        dice_smooth: float = 1.0,
        dice_per_image: bool = False,
        bcl_weight: float = 0.0,
        bcl_margin: float = 0.9,
        ignore_index: int = 255,
    ) -> None:
        super().__init__()
        if not 0.0 <= focal_alpha <= 1.0:
            raise ValueError(f"focal_alpha must be in [0, 1], got {focal_alpha}")
        self.bce_weight = bce_weight
        self.dice_weight = dice_weight
        self.focal_weight = focal_weight
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.dice_smooth = dice_smooth
        self.dice_per_image = dice_per_image
        self.bcl_weight = bcl_weight
        self.bcl_margin = bcl_margin
        self.ignore_index = ignore_index

    @staticmethod
    def change_logit(logits: Tensor) -> Tensor:
        """``[N, 2, H, W]`` two-class logits → ``[N, H, W]`` binary logit ``l₁ − l₀`` (``[N, 1, H, W]`` → squeeze)."""
        if logits.ndim != 4 or logits.shape[1] not in (1, 2):
            raise ValueError(f"SegChangeLoss: logits must be [N, 2, H, W] (or [N, 1, H, W]), got {tuple(logits.shape)}")
        logits = logits.float()
        return logits[:, 0] if logits.shape[1] == 1 else logits[:, 1] - logits[:, 0]

    def _dice(self, p: Tensor, y: Tensor, valid: Tensor) -> Tensor:
        p, y = p * valid, y * valid
        if self.dice_per_image:
            inter = (p * y).flatten(1).sum(1)
            denom = p.flatten(1).sum(1) + y.flatten(1).sum(1)
            per = 1.0 - (2.0 * inter + self.dice_smooth) / (denom + self.dice_smooth)
            has = valid.flatten(1).any(1)
            return per[has].mean()
        return 1.0 - (2.0 * (p * y).sum() + self.dice_smooth) / (p.sum() + y.sum() + self.dice_smooth)

    def terms(self, logits: Tensor, target: Tensor) -> dict[str, Tensor]:
        """The weighted total and each unweighted term as tensors: keys loss, bce, dice, focal[, bcl]."""
        z = self.change_logit(logits)
        target = check_target(target, z.shape[-2:], "SegChangeLoss")
        valid_b = target != self.ignore_index
        if not valid_b.any():
            zero = z.sum() * 0.0  # keeps the graph; nothing to learn from a fully ignored batch
            out = {"loss": zero, "bce": zero, "dice": zero, "focal": zero}
            if self.bcl_weight > 0:
                out["bcl"] = zero
            return out
        valid = valid_b.to(z.dtype)
        y = (target == 1).to(z.dtype) * valid  # ignored pixels get y = 0, then masked everywhere
        z = torch.where(valid_b, z, torch.zeros((), dtype=z.dtype, device=z.device))  # no inf/NaN leaks
        p = torch.sigmoid(z)
        bce = masked_mean(F.binary_cross_entropy_with_logits(z, y, reduction="none"), valid_b)
        dice = self._dice(p, y, valid)
        log_pt = torch.where(y > 0, F.logsigmoid(z), F.logsigmoid(-z))
        pt = log_pt.exp()
        alpha_t = torch.where(y > 0, torch.full_like(z, self.focal_alpha), torch.full_like(z, 1 - self.focal_alpha))
        focal = masked_mean(-alpha_t * (1 - pt).pow(self.focal_gamma) * log_pt, valid_b)
        total = self.bce_weight * bce + self.dice_weight * dice + self.focal_weight * focal
        out = {"loss": total, "bce": bce, "dice": dice, "focal": focal}
        if self.bcl_weight > 0:
            pos, neg = valid_b & (target == 1), valid_b & (target == 0)
            bcl = masked_mean(p.pow(2), neg) + masked_mean(F.relu(self.bcl_margin - p).pow(2), pos)
            out["bcl"] = bcl
            out["loss"] = total + self.bcl_weight * bcl
        return out

    def forward(
        self, outputs: dict[str, Tensor], target: Tensor, epoch: float | None = None
    ) -> tuple[Tensor, dict[str, float]]:
        terms = self.terms(outputs["logits"], target)
        values = torch.stack([v.detach() for v in terms.values()]).tolist()
        return terms["loss"], dict(zip(terms.keys(), values))
