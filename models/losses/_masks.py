"""Label helpers shared by the losses: valid-pixel masks and labels at feature resolution.

Why: label 255 means "ignore" (nodata, rotation fill, unlabelled). Every loss here must give exactly the same
value whatever the prediction is on ignored pixels, so they all build their masks the same way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def check_target(target: Tensor, size: torch.Size | tuple[int, int], what: str) -> Tensor:
    """Return ``target`` as a long ``[N, H, W]`` tensor, checking that it matches the prediction size."""
    if target.ndim == 4 and target.shape[1] == 1:
        target = target[:, 0]
    if target.ndim != 3:
        raise ValueError(f"{what}: target must be [N, H, W] (0/1, 255 = ignore), got shape {tuple(target.shape)}")
    if target.shape[-2:] != tuple(size):
        raise ValueError(f"{what}: target is {tuple(target.shape[-2:])} but the prediction is {tuple(size)}")
    return target.long()


def label_at(target: Tensor, size: torch.Size | tuple[int, int]) -> Tensor:
    """Nearest-neighbour resize of a ``[N, H, W]`` label to ``size`` (as the original does for feature masks)."""
    if target.shape[-2:] == tuple(size):
        return target
    return F.interpolate(target[:, None].float(), size=tuple(size), mode="nearest")[:, 0].long()


def masked_mean(x: Tensor, valid: Tensor) -> Tensor:
    """Mean of ``x`` over the positions where ``valid`` (broadcastable, bool) is true; 0 if there are none."""
    valid = valid.to(x.dtype).expand_as(x)
    return (x * valid).sum() / valid.sum().clamp_min(1.0)
