"""Feature distillation: change-weighted MSE plus a global cosine term.

What: ``L_feat = mse_weight · mean(M²·(S − T)²) + cos_weight · (1 − mean_n cos(GAP S_n, GAP T_n))``, where S
and T are the student's and teacher's enhanced features ``[N, C, h, w]`` and M the label at feature resolution (nearest)
mapped to 4.0 on change, 0.5 on no change (the original's ``(M⊙S − M⊙T)²``, so the weights act squared).

Why: GOLD (spec §4.2, ``HeterogeneousAttentionDistillationLoss``) pulls the optical–SAR student's change
features toward the optical–optical teacher's, emphasising changed pixels where the SAR student is weakest; the
cosine of the global descriptors aligns the overall feature direction.

Differences from the original: label-255 positions get weight 0 and are left out of the means (both the MSE
and the pooled descriptors), so predictions on ignored pixels have no effect; the teacher is detached by the
caller (:class:`models.losses.GoldLoss`) unless mutual learning is asked for — the original never detached it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._masks import label_at


class FeatureDistillationLoss(nn.Module):
    """``forward(student [N,C,h,w], teacher [N,C,h,w], target [N,H,W]) -> (total, mse, cos_term)``."""

    def __init__(
        self,
        pos_weight: float = 4.0,
        neg_weight: float = 0.5,
        mse_weight: float = 0.7,
        cos_weight: float = 0.3,
        ignore_index: int = 255,
    ) -> None:
        super().__init__()
        self.pos_weight = pos_weight
        self.neg_weight = neg_weight
        self.mse_weight = mse_weight
        self.cos_weight = cos_weight
        self.ignore_index = ignore_index

    def forward(self, student: Tensor, teacher: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if student.shape != teacher.shape:
            raise ValueError(f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)} features differ")
        student, teacher = student.float(), teacher.float()
        lbl = label_at(target, student.shape[-2:])
        valid = (lbl != self.ignore_index).unsqueeze(1).to(student.dtype)  # [N,1,h,w]
        weight = torch.where(lbl.unsqueeze(1) == 1, self.pos_weight, self.neg_weight).to(student.dtype) * valid
        n_valid = valid.sum().clamp_min(1.0) * student.shape[1]
        mse = ((weight * (student - teacher)) ** 2).sum() / n_valid
        per_sample = valid.sum(dim=(2, 3)).clamp_min(1.0)  # [N,1]
        gs = (student * valid).sum(dim=(2, 3)) / per_sample
        gt = (teacher * valid).sum(dim=(2, 3)) / per_sample
        cos = 1.0 - F.cosine_similarity(gs, gt, dim=1, eps=1e-8).mean()
        return self.mse_weight * mse + self.cos_weight * cos, mse, cos
