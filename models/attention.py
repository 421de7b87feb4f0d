"""Bidirectional channel attention (BCA) of GOLD.

What: for two feature maps x1, x2 (same shape ``[N, C, H, W]``),
- a shared MLP (1×1 conv C→C/r, ReLU, 1×1 conv C/r→C, no bias) gives per-branch channel weights
  ``W_i = σ(MLP(GAP x_i) + MLP(GMP x_i))`` (CBAM-style channel attention, Woo et al., ECCV 2018);
- a "specific" MLP (2C→C/r→C) on the concatenated pooled descriptors gives joint weights
  ``W_s = σ(MLP_s([GAP x1, GAP x2]) + MLP_s([GMP x1, GMP x2]))``;
- outputs ``x1' = x1·W2 + x1·W_s + x1`` and ``x2' = x2·W1 + x2·W_s + x2``: each branch is re-weighted by the
  *other* branch's channel attention (cross-modal), by the joint attention, plus a residual.

Why: it is the only place where the optical and SAR (or optical t2) streams exchange information before the
change head in GOLD (spec §3.2, ``BidirectionalChannelAttention`` in ``models/TripleEUNet.py``). This module
follows the original exactly; reduction 16 in full GOLD, 32 in the lightweight variant.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def _mlp(cin: int, hidden: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, hidden, 1, bias=False), nn.ReLU(inplace=True), nn.Conv2d(hidden, cout, 1, bias=False)
    )


class BidirectionalChannelAttention(nn.Module):
    """``forward(x1, x2) -> (x1', x2')``; see the module docstring for the formulas."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.shared_mlp = _mlp(channels, hidden, channels)
        self.specific_mlp = _mlp(2 * channels, hidden, channels)

    def forward(self, x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor]:
        avg1, max1 = x1.mean(dim=(2, 3), keepdim=True), x1.amax(dim=(2, 3), keepdim=True)
        avg2, max2 = x2.mean(dim=(2, 3), keepdim=True), x2.amax(dim=(2, 3), keepdim=True)
        w1 = torch.sigmoid(self.shared_mlp(avg1) + self.shared_mlp(max1))
        w2 = torch.sigmoid(self.shared_mlp(avg2) + self.shared_mlp(max2))
        ws = torch.sigmoid(
            self.specific_mlp(torch.cat([avg1, avg2], 1)) + self.specific_mlp(torch.cat([max1, max2], 1))
        )
        return x1 * w2 + x1 * ws + x1, x2 * w1 + x2 * ws + x2
