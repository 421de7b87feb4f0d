"""Logit distillation: temperature-scaled KL divergence, per pixel.

What: ``L_KL = T² · mean over valid pixels of Σ_c q_c (log q_c − log p_c)`` with q = softmax(teacher/T),
p = softmax(student/T), T = 2 (Hinton et al., "Distilling the Knowledge in a Neural Network", 2015; the T²
keeps gradient magnitudes independent of T).

Why: GOLD's output-level distillation (spec §4.2). The original called ``F.kl_div(..., reduction='mean')`` on
``[N, 2, H, W]``, which averages over classes too (a silent factor 1/2 against the true per-pixel KL, on top
of the intended mean over pixels). Here the KL is summed over classes and averaged over every (sample, pixel)
— PyTorch's ``'batchmean'`` with the pixels folded into the batch dimension, the mathematically correct mean KL.
(A literal ``'batchmean'`` on ``[N, 2, H, W]`` would sum over pixels and scale with the tile area.)
Label-255 pixels are excluded. Detaching the teacher is the caller's choice (:class:`models.losses.GoldLoss`).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ._masks import check_target, masked_mean


class LogitDistillationLoss(nn.Module):
    """``forward(student_logits [N,C,H,W], teacher_logits [N,C,H,W], target=None) -> scalar``."""

    def __init__(self, temperature: float = 2.0, ignore_index: int = 255) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature
        self.ignore_index = ignore_index

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, target: Tensor | None = None) -> Tensor:
        t = self.temperature
        log_p = F.log_softmax(student_logits.float() / t, dim=1)
        log_q = F.log_softmax(teacher_logits.float() / t, dim=1)
        kl = F.kl_div(log_p, log_q, reduction="none", log_target=True).sum(dim=1)  # [N, H, W]
        if target is None:
            return kl.mean() * t * t
        target = check_target(target, kl.shape[-2:], "LogitDistillationLoss")
        return masked_mean(kl, target != self.ignore_index) * t * t
