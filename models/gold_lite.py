"""Lightweight GOLD: half-width encoders, BCA (reduction 32) at the deepest scale, ChangeFormer-style decoders.

Paper: T. Yan, GOLD (ISPRS J. 2025), lightweight variant ``LightweightTripleEUNet`` of Mriris/HeteroCD-GOLD
(spec §3.3): "channels −50 %, reduction 16→32, some concat→add, distil only key layers". The decoder is the
difference decoder of ChangeFormer (Bandara & Patel, IGARSS 2022).

Architecture (A = optical t1, B = SAR t2, C = optical t2):
- two deep-stem ResNet-18 encoders at half width (stem 32/32/64, stages 32/64/128/256): one optical encoder
  shared by A and C, one SAR encoder for B;
- BCA (reduction 32) on the stride-32 features: (A₄, B₄) for the student, (A₄.detach(), C₄) for the teacher;
- a difference decoder per head (student on (A, B), teacher on (A, C)): per scale a 1×1 projection shared by
  both dates, conv3×3(2C→E)+ReLU+BN+conv3×3(E→E)+ReLU on the pair, top-down sum with the upsampled coarser
  map, all four maps resized to stride 4, concat → 1×1 conv → E + BN → residual block → 3×3 conv → 2 logits.
  E = 32. The fused embedding before the classifier is the "enhanced feature" used for distillation.

``forward(a, b, c=None) -> dict`` with the same keys as :class:`models.gold.GOLD`: ``"logits"`` (student,
``[N, 2, H, W]``); with ``c``: ``"teacher_logits"``, ``"student_feat"``/``"teacher_feat"`` (see
``distill_features``), ``"feat_a"``/``"feat_b"``/``"feat_c"`` = the stride-4 encoder features of A, B, C
(32 ch) for the difference-map transfer.

Deliberate differences from the original code (besides those listed for :mod:`models.gold`, which all apply):
- **Distillation between the SAR and optical branches.** The original's "student"/"teacher" features were the
  stride-4 features of optical t1 and optical t2, so the feature loss pulled optical t1 toward optical t2 and
  carried no SAR information at all. Here ``distill_features="fused"`` (default) distils the student's fused
  change embedding (from A, B — it depends on the SAR branch) toward the teacher's (from A, C), exactly as full
  GOLD distils S_enh toward T_enh; ``"branch"`` distils the SAR encoder's stride-4 features toward the optical
  t2 features of the same date (a cross-modal alignment of the SAR branch).
- **No SAR leak into the teacher, same date order**: the original replaced A₄ in place by its SAR-mixed BCA
  output and ran the teacher decoder on (C, A) — reversed. The teacher here sees (A, C) with its own BCA pass, so
  student and teacher embeddings are comparable.
- **Dead modules not built**: FrequencyEnh (with a debug ``print`` in forward), MLP, FrequencyMixEnh and the
  decoders' unused auxiliary per-scale predictors.
- **Raw logits**, not log_softmax (harmless for CE/KL in the original, but inconsistent with the other models).
- **Any input size**: the top-down sums resize to the finer map's size instead of a fixed ×2, so H, W need not
  be multiples of 32.
- Encoders: random init (as the original) or a local half-width checkpoint; there is no published one.
Measured 6.57 M parameters at HEAD (two 2.834 M encoders, two 0.427 M decoders, BCA, ~0.04 M dead modules);
this implementation has ~6.52 M.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import BidirectionalChannelAttention
from .base import ChangeModel, check_input
from .gold import upsample_to
from .registry import register
from .resnet import DeepStemResNet18

DistillFeatures = Literal["fused", "branch"]


def _resize(x: Tensor, size: torch.Size) -> Tensor:
    return x if x.shape[-2:] == size else F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class ResidualBlock(nn.Module):
    """x + 0.1 · conv(ReLU(conv(x))) — the ChangeFormer refinement block."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + 0.1 * self.conv2(F.relu(self.conv1(x)))


class DifferenceDecoder(nn.Module):
    """ChangeFormer-style decoder over 4 scales of a bi-temporal feature pyramid.

    ``forward(feats1, feats2) -> (logits at the first scale's stride, fused embedding [N, E, h, w])``.
    """

    def __init__(self, in_channels: list[int], embed_dim: int, num_classes: int = 2) -> None:
        super().__init__()
        # Token-wise Linear(C→C) of the original == a 1×1 conv with bias, shared by both dates.
        self.proj = nn.ModuleList(nn.Conv2d(c, c, 1) for c in in_channels)
        self.diff = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(2 * c, embed_dim, 3, padding=1),
                nn.ReLU(inplace=True),
                nn.BatchNorm2d(embed_dim),
                nn.Conv2d(embed_dim, embed_dim, 3, padding=1),
                nn.ReLU(inplace=True),
            )
            for c in in_channels
        )
        self.fuse = nn.Sequential(nn.Conv2d(embed_dim * len(in_channels), embed_dim, 1), nn.BatchNorm2d(embed_dim))
        self.refine = ResidualBlock(embed_dim)
        self.classifier = nn.Conv2d(embed_dim, num_classes, 3, padding=1)

    def forward(self, feats1: list[Tensor], feats2: list[Tensor]) -> tuple[Tensor, Tensor]:
        size = feats1[0].shape[-2:]
        maps: list[Tensor] = []
        prev: Tensor | None = None
        for i in reversed(range(len(feats1))):
            d = self.diff[i](torch.cat([self.proj[i](feats1[i]), self.proj[i](feats2[i])], dim=1))
            if prev is not None:
                d = d + _resize(prev, d.shape[-2:])
            prev = d
            maps.append(_resize(d, size))
        emb = self.refine(self.fuse(torch.cat(maps, dim=1)))
        return self.classifier(emb), emb


@register("gold_lite")
class GOLDLite(ChangeModel):
    """Lightweight GOLD; see the module docstring for the paper, outputs and differences from the original.

    Args:
        optical_channels: bands of A and C. sar_channels: bands of B.
        width: encoder channel multiplier (0.5 = "channels −50 %").
        reduction: BCA reduction ratio (32).
        embed_dim: decoder width (default 64·width = 32).
        distill_features: "fused" (student vs teacher decoder embeddings) or "branch" (SAR vs optical-t2
            encoder features) — which tensors are returned as ``student_feat``/``teacher_feat``.
        encoder_weights, sar_encoder_weights: optional local checkpoints of half-width encoders.
    """

    has_teacher = True
    default_loss = "gold"
    teacher_modules: tuple[str, ...] = ("teacher_decoder",)

    def __init__(
        self,
        optical_channels: int = 3,
        sar_channels: int = 3,
        width: float = 0.5,
        reduction: int = 32,
        embed_dim: int | None = None,
        distill_features: DistillFeatures = "fused",
        encoder_weights: str | Path | None = None,
        sar_encoder_weights: str | Path | None = None,
    ) -> None:
        super().__init__()
        if distill_features not in ("fused", "branch"):
            raise ValueError(f"distill_features must be 'fused' or 'branch', got {distill_features!r}")
        self.optical_channels = optical_channels
        self.sar_channels = sar_channels
        self.distill_features = distill_features
        self.encoder_opt = DeepStemResNet18(optical_channels, width, encoder_weights)
        self.encoder_sar = DeepStemResNet18(sar_channels, width, sar_encoder_weights)
        chans = self.encoder_opt.out_channels
        emb = embed_dim or max(1, int(round(64 * width)))
        self.bca = BidirectionalChannelAttention(chans[-1], reduction)
        self.decoder = DifferenceDecoder(chans, emb, self.num_classes)
        self.teacher_decoder = DifferenceDecoder(chans, emb, self.num_classes)

    @property
    def in_channels(self) -> tuple[int, int, int]:
        return (self.optical_channels, self.sar_channels, self.optical_channels)

    def forward(self, a: Tensor, b: Tensor, c: Tensor | None = None) -> dict[str, Tensor]:
        """a: optical t1 ``[N, Co, H, W]``; b: SAR t2 ``[N, Cs, H, W]``; c: optical t2 (training only)."""
        check_input(a, self.optical_channels, "GOLD-lite input A (optical t1)")
        check_input(b, self.sar_channels, "GOLD-lite input B (SAR t2)")
        size = a.shape[-2:]
        if b.shape[-2:] != size:
            raise ValueError(f"GOLD-lite: A is {tuple(size)} but B is {tuple(b.shape[-2:])}")
        fa = self.encoder_opt(a)
        fb = self.encoder_sar(b)
        a4, b4 = self.bca(fa[3], fb[3])
        s_logits, s_emb = self.decoder(fa[:3] + [a4], fb[:3] + [b4])
        out = {"logits": upsample_to(s_logits, size)}
        if c is None:
            return out
        check_input(c, self.optical_channels, "GOLD-lite input C (optical t2)")
        if c.shape[-2:] != size:
            raise ValueError(f"GOLD-lite: A is {tuple(size)} but C is {tuple(c.shape[-2:])}")
        fc = self.encoder_opt(c)
        fa_t = [f.detach() for f in fa]
        ta4, c4 = self.bca(fa_t[3], fc[3])
        t_logits, t_emb = self.teacher_decoder(fa_t[:3] + [ta4], fc[:3] + [c4])
        if self.distill_features == "fused":
            s_feat, t_feat = s_emb, t_emb
        else:
            s_feat, t_feat = fb[0], fc[0]
        out.update(
            teacher_logits=upsample_to(t_logits, size),
            student_feat=s_feat,
            teacher_feat=t_feat,
            feat_a=fa[0],
            feat_b=fb[0],
            feat_c=fc[0],
        )
        return out
