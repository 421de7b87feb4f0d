"""Difference-map attention transfer: difference map, channel attention and spatial attention.

What (spec §4.3, ``DifferenceAttentionLoss`` of GOLD):
- difference map of two feature maps: ``D(f1, f2) = ½·[√(Σ_c (f1 − f2)² + 1e-6) + (1 − cos_c(f1, f2))]``,
  divided by its per-sample spatial maximum (+1e-6) so it lies in [0, 1]. The student map is
  ``D(o1, o2)`` (optical t1 vs SAR t2), the teacher map ``D(o1, o3)`` (optical t1 vs optical t2), and
  ``L_map = MSE(D_s, D_t)``: the SAR branch should make the same "where did it change" map as the optical pair;
- channel attention ``A_ch(F) = σ((GAP F + GMP F) / 2)`` and spatial attention ``A_sp(F) = σ(mean_c F + max_c F)``
  of the enhanced features S and T (parameter-free, as the code — the paper's formulas have an MLP/conv),
  ``L_ch = MSE(A_ch(S), A_ch(T))``, ``L_sp = MSE(A_sp(S), A_sp(T))`` (attention transfer in the sense of
  Zagoruyko & Komodakis, ICLR 2017).

Differences from the original: label-255 positions are left out of every mean, maximum and pooling so that
predictions there have no effect; the teacher side is detached by the caller unless mutual learning is on (the
original detached nothing here). Kept as in the original, knowingly: S and T are post-ReLU (≥ 0), so the
sigmoid attentions start at ≥ 0.5 and these two terms are small; the unused alpha/beta/gamma flags are gone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._masks import label_at, masked_mean

_NEG = -1e4  # stands for −∞ in masked maxima (finite, so fully masked samples stay NaN-free)


def difference_map(f1: Tensor, f2: Tensor, valid: Tensor | None = None) -> Tensor:
    """``[N, 1, h, w]`` max-normalised difference map (L2 distance + cosine distance) of two feature maps.

    ``valid`` (``[N, 1, h, w]`` bool) restricts the normalising maximum to valid positions.
    """
    f1, f2 = f1.float(), f2.float()
    l2 = torch.sqrt(((f1 - f2) ** 2).sum(dim=1, keepdim=True) + 1e-6)
    cos = F.cosine_similarity(f1, f2, dim=1, eps=1e-8).unsqueeze(1)
    d = 0.5 * (l2 + (1.0 - cos))
    ref = d if valid is None else torch.where(valid, d, torch.zeros_like(d))
    return d / (ref.amax(dim=(2, 3), keepdim=True) + 1e-6)


def channel_attention(feat: Tensor, valid: Tensor | None = None) -> Tensor:
    """``σ((GAP + GMP) / 2)`` per channel, ``[N, C]``; pooling over valid positions only."""
    feat = feat.float()
    if valid is None:
        gap, gmp = feat.mean(dim=(2, 3)), feat.amax(dim=(2, 3))
    else:
        v = valid.to(feat.dtype)
        gap = (feat * v).sum(dim=(2, 3)) / v.sum(dim=(2, 3)).clamp_min(1.0)
        gmp = torch.where(valid, feat, torch.full_like(feat, _NEG)).amax(dim=(2, 3))
        gmp = torch.where(valid.any(dim=(2, 3)), gmp, torch.zeros_like(gmp))
    return torch.sigmoid((gap + gmp) / 2)


def spatial_attention(feat: Tensor) -> Tensor:
    """``σ(mean_c F + max_c F)`` per pixel, ``[N, 1, h, w]``."""
    feat = feat.float()
    return torch.sigmoid(feat.mean(dim=1, keepdim=True) + feat.amax(dim=1, keepdim=True))


class DifferenceAttentionLoss(nn.Module):
    """``forward(feat_a, feat_b, feat_c, student_feat, teacher_feat, target) -> (L_map, L_ch, L_sp)``.

    feat_a/b/c: per-branch features of optical t1, SAR t2, optical t2 (``[N, C1, h, w]``); student_feat /
    teacher_feat: enhanced features S and T (``[N, C2, h', w']``); target: ``[N, H, W]`` label.
    The caller passes already-detached teacher tensors when the teacher must not learn from these terms.
    """

    def __init__(self, ignore_index: int = 255) -> None:
        super().__init__()
        self.ignore_index = ignore_index

    def _valid(self, target: Tensor, size: torch.Size) -> Tensor:
        return (label_at(target, size) != self.ignore_index).unsqueeze(1)

    def forward(
        self,
        feat_a: Tensor,
        feat_b: Tensor,
        feat_c: Tensor,
        student_feat: Tensor,
        teacher_feat: Tensor,
        target: Tensor,
        teacher_feat_a: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``teacher_feat_a``: the optical-t1 features used in the teacher map (default ``feat_a``; GoldLoss
        passes a detached copy so that the teacher map is a fixed target)."""
        va = self._valid(target, feat_a.shape[-2:])
        d_s = difference_map(feat_a, feat_b, va)
        d_t = difference_map(feat_a if teacher_feat_a is None else teacher_feat_a, feat_c, va)
        l_map = masked_mean((d_s - d_t) ** 2, va)
        vs = self._valid(target, student_feat.shape[-2:])
        l_ch = ((channel_attention(student_feat, vs) - channel_attention(teacher_feat, vs)) ** 2).mean()
        l_sp = masked_mean((spatial_attention(student_feat) - spatial_attention(teacher_feat)) ** 2, vs)
        return l_map, l_ch, l_sp
