"""GOLD: optical t1 + SAR t2 change detection, distilled online from an optical t1 + optical t2 teacher.

Paper: T. Yan, "GOLD: Guided Online Learning for Distillation for Heterogeneous Remote Sensing Image Change
Detection", ISPRS J. Photogramm. Remote Sens., 2025 (code: Mriris/HeteroCD-GOLD, ``TripleEUNet`` at HEAD
acacc08; spec: ../shared/specs/gold.md §3–§5, §12).

Architecture (spec §3.2; letters as in the data layout: A = optical t1, B = SAR t2, C = optical t2):
- two deep-stem ResNet-18 encoders: ``encoder_opt`` shared by A and C, ``encoder_sar`` for B;
- per-branch multi-scale fusion: each of layer1..layer4 → 1×1 conv (→128) + BN + ReLU, bilinear resize to
  stride 4, concat (512) → 1×1 conv → 128 + BN (no activation). A and C share the optical fusion convs, B has
  its own. Outputs o1 (A), o2 (B), o3 (C), each ``[N, 128, H/4, W/4]``;
- one bidirectional channel attention (reduction 16), shared by the student pair (o1, o2) and the teacher pair
  (o1.detach(), o3) — the detach keeps the teacher's supervised loss out of A's features, as in the original;
- student head on [BCA(o1, o2)] (256 ch): diff map m = σ(1×1(ReLU(BN(3×3 256→128)))), enhanced features
  S = ReLU(BN(3×3 [cat, m] 257→256)), logits = 1×1 128→2 ∘ ReLU∘BN∘3×3 256→128 ∘ Dropout2d(0.1);
- teacher head on (o1.detach(), o3): its own diff module, fusion and classifier (the classifier initialised as
  a copy of the student's, element-wise dropout 0.05) giving T and teacher logits.

``forward(a, b, c=None) -> dict``:
- ``"logits"``: student logits ``[N, 2, H, W]`` (stride-4 logits bilinearly upsampled to the input size);
- only when ``c`` is given (training): ``"teacher_logits"`` ``[N, 2, H, W]``, ``"student_feat"`` S and
  ``"teacher_feat"`` T (``[N, 256, H/4, W/4]``, feature distillation and attention transfer), ``"feat_a"``,
  ``"feat_b"``, ``"feat_c"`` = o1, o2, o3 (``[N, 128, H/4, W/4]``, difference-map transfer).
Inference needs only A and B; the teacher modules (``teacher_modules``) are unused then.

Deliberate differences from the original code — every model/loss/training item of spec §12:
- **Eval-mode training** (``get_teacher_pred`` leaves the net in eval mode for almost all of training): no code
  here ever calls ``eval()``/``train()``; the teacher logits needed for logging come out of the same training
  forward, so the second logging forward (and its mode switch) is unnecessary. The training loop must call
  ``model.train()`` before every training epoch.
- **Broken Dice** (class-agnostic, minimised at p = 0.5): ``models.losses.SoftDiceLoss`` is the soft Dice of
  the change class, minimised by the true mask.
- **Pseudo-uncertainty weighting** (no log-σ regulariser, drifts toward the smallest loss, not checkpointed):
  ``weighting="gold"`` reproduces it faithfully (it is what the paper trained with), ``weighting="uncertainty"``
  is Kendall et al.'s L/(2σ²) + log σ. Both are ``nn.Module``s inside ``GoldLoss``, so their state is in
  ``GoldLoss.state_dict()`` and belongs in every checkpoint (the original saved only the network).
- **Teacher not detached** in the feature, attention and difference-map losses: detached by default in
  ``GoldLoss`` (``detach_teacher=False`` = mutual learning).
- **KL with reduction 'mean'** (a silent 1/(2·H·W) scale): per-pixel KL summed over classes, averaged over the
  pixels of the batch ("batchmean" with pixels folded into the batch), times T².
- **Dead MixFFN "discriminators"** (0.335 M parameters, never called): not built. Hence 25.40 M parameters here
  against the measured 25.74 M of HEAD; the student inference path is the same 24.22 M.
- **Resume resets the LR schedule and loses optimizer and loss-weight state; backward skipped on loss > 1000
  while the optimizer still steps; test ≡ val and a spatially leaking tile split; SAR given ImageNet statistics,
  hue/saturation jitter and an optical↔SAR "time swap"**: not model code. This package makes the fixes
  possible (loss weights are module state; ``GoldLoss`` returns the total as a tensor so the loop can check it
  is finite and skip the *whole* step; any SAR band count, no 3-channel false colour needed); the training
  loop and the tile index (spatially blocked split, separate test set) do the rest.
Further differences:
- any band count per modality (``optical_channels`` 3–4 for GF-2/S2, ``sar_channels`` 1–4 polarisations);
- encoders start from random init unless a local checkpoint path is given (nothing is downloaded; the original
  loaded CSAIL ImageNet weights into both encoders — pass the same path twice to reproduce that);
- logits are upsampled with ``align_corners=False`` (pixel-centre aligned for any input size) instead of
  ``True``, and any H, W works (features are resized to layer1's size, logits to the input size);
- the teacher is computed whenever ``c`` is passed (the original also needed ``is_training=True``);
- two encoders as at HEAD (the thesis results used three: a separate optical-t2 encoder and fusion, 37.25 M).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import BidirectionalChannelAttention
from .base import ChangeModel, check_input
from .registry import register
from .resnet import DeepStemResNet18


class MultiScaleFusion(nn.Module):
    """GOLD's per-branch fusion: 1×1 conv+BN+ReLU per scale, resize to the first scale, concat, 1×1 conv+BN."""

    def __init__(self, in_channels: list[int], channels: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, channels, 1), nn.BatchNorm2d(channels), nn.ReLU(inplace=True))
            for c in in_channels
        )
        self.fuse = nn.Sequential(nn.Conv2d(channels * len(in_channels), channels, 1), nn.BatchNorm2d(channels))

    def forward(self, feats: list[Tensor]) -> Tensor:
        size = feats[0].shape[-2:]
        outs = []
        for conv, f in zip(self.convs, feats):
            y = conv(f)
            if y.shape[-2:] != size:
                y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
            outs.append(y)
        return self.fuse(torch.cat(outs, dim=1))


def diff_module(channels: int) -> nn.Sequential:
    """Difference-attention map: 3×3 conv (2C→C) + BN + ReLU + 1×1 conv (C→1) + sigmoid."""
    return nn.Sequential(
        nn.Conv2d(2 * channels, channels, 3, padding=1),
        nn.BatchNorm2d(channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(channels, 1, 1),
        nn.Sigmoid(),
    )


def fusion_block(channels: int) -> nn.Sequential:
    """Mixes the concatenated pair with its diff map: 3×3 conv (2C+1→2C) + BN + ReLU."""
    return nn.Sequential(
        nn.Conv2d(2 * channels + 1, 2 * channels, 3, padding=1), nn.BatchNorm2d(2 * channels), nn.ReLU(inplace=True)
    )


def seg_head(channels: int, num_classes: int) -> nn.Sequential:
    """Classifier: 3×3 conv (2C→C) + BN + ReLU + 1×1 conv (C→classes)."""
    return nn.Sequential(
        nn.Conv2d(2 * channels, channels, 3, padding=1),
        nn.BatchNorm2d(channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(channels, num_classes, 1),
    )


def upsample_to(x: Tensor, size: torch.Size | tuple[int, int]) -> Tensor:
    """Bilinear resize of logits to the input size (identity if already there)."""
    if x.shape[-2:] == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


@register("gold")
class GOLD(ChangeModel):
    """GOLD student/teacher network (``TripleEUNet`` at HEAD). See the module docstring for paper, outputs and
    every deliberate difference from the original code.

    Args:
        optical_channels: bands of A and C (3 RGB as in the paper; 4 for GF-2 MSS).
        sar_channels: bands of B (3 for the paper's false-colour composite; 1–4 polarisations).
        channels: fusion width (128).
        reduction: BCA reduction ratio (16).
        dropout: Dropout2d before the student classifier (0.1).
        teacher_dropout: element-wise dropout before the teacher classifier (0.05).
        encoder_weights: local deep-stem ResNet-18 checkpoint for the optical encoder (None = random init).
        sar_encoder_weights: the same for the SAR encoder.
    """

    has_teacher = True
    default_loss = "gold"
    teacher_modules: tuple[str, ...] = ("teacher_diff", "teacher_fusion", "teacher_head")

    def __init__(
        self,
        optical_channels: int = 3,
        sar_channels: int = 3,
        channels: int = 128,
        reduction: int = 16,
        dropout: float = 0.1,
        teacher_dropout: float = 0.05,
        encoder_weights: str | Path | None = None,
        sar_encoder_weights: str | Path | None = None,
    ) -> None:
        super().__init__()
        self.optical_channels = optical_channels
        self.sar_channels = sar_channels
        self.encoder_opt = DeepStemResNet18(optical_channels, 1.0, encoder_weights)
        self.encoder_sar = DeepStemResNet18(sar_channels, 1.0, sar_encoder_weights)
        self.fuse_opt = MultiScaleFusion(self.encoder_opt.out_channels, channels)
        self.fuse_sar = MultiScaleFusion(self.encoder_sar.out_channels, channels)
        self.bca = BidirectionalChannelAttention(channels, reduction)
        self.student_diff = diff_module(channels)
        self.student_fusion = fusion_block(channels)
        self.student_dropout = nn.Dropout2d(dropout)
        self.student_head = seg_head(channels, self.num_classes)
        self.teacher_diff = diff_module(channels)
        self.teacher_fusion = fusion_block(channels)
        self.teacher_dropout = nn.Dropout(teacher_dropout)
        self.teacher_head = copy.deepcopy(self.student_head)  # same start as the student's, as in the original

    @property
    def in_channels(self) -> tuple[int, int, int]:
        return (self.optical_channels, self.sar_channels, self.optical_channels)

    def _head(self, x1: Tensor, x2: Tensor, diff: nn.Module, fusion: nn.Module) -> Tensor:
        cat = torch.cat([x1, x2], dim=1)
        return fusion(torch.cat([cat, diff(cat)], dim=1))

    def forward(self, a: Tensor, b: Tensor, c: Tensor | None = None) -> dict[str, Tensor]:
        """a: optical t1 ``[N, Co, H, W]``; b: SAR t2 ``[N, Cs, H, W]``; c: optical t2 (training only)."""
        check_input(a, self.optical_channels, "GOLD input A (optical t1)")
        check_input(b, self.sar_channels, "GOLD input B (SAR t2)")
        size = a.shape[-2:]
        if b.shape[-2:] != size:
            raise ValueError(f"GOLD: A is {tuple(size)} but B is {tuple(b.shape[-2:])}; inputs must be co-registered")
        o1 = self.fuse_opt(self.encoder_opt(a))
        o2 = self.fuse_sar(self.encoder_sar(b))
        x1, x2 = self.bca(o1, o2)
        s_feat = self._head(x1, x2, self.student_diff, self.student_fusion)
        s_logits = self.student_head(self.student_dropout(s_feat))
        out = {"logits": upsample_to(s_logits, size)}
        if c is None:
            return out
        check_input(c, self.optical_channels, "GOLD input C (optical t2)")
        if c.shape[-2:] != size:
            raise ValueError(f"GOLD: A is {tuple(size)} but C is {tuple(c.shape[-2:])}; inputs must be co-registered")
        o3 = self.fuse_opt(self.encoder_opt(c))
        y1, y3 = self.bca(o1.detach(), o3)
        t_feat = self._head(y1, y3, self.teacher_diff, self.teacher_fusion)
        t_logits = self.teacher_head(self.teacher_dropout(t_feat))
        out.update(
            teacher_logits=upsample_to(t_logits, size),
            student_feat=s_feat,
            teacher_feat=t_feat,
            feat_a=o1,
            feat_b=o2,
            feat_c=o3,
        )
        return out
