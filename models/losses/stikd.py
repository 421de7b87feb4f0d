"""STIKDNet's self-distillation objective: teacher + student pixel losses and a teacher→student term.

What (spec §4): with the clean-pass ("teacher") logits z_T and the perturbed-t2 ("student") logits z_S of the
same network (:class:`models.stikdnet.STIKDNet`),

    L = w_T · L_pix(z_T, y) + w_S · L_pix(z_S, y) + w_KD · L_KD(z_S, z_T) [+ w_F · L_feat],  w = (1, 0.9, 0.1)

with the pixel loss ``L_pix = 0.75 · BCE + 0.25 · (1 − Dice)`` of the original ``BCEDiceLoss``: the label is
one-hot encoded over the 2 channels, BCE-with-logits is averaged over both channels (each an independent
sigmoid), Dice = (2 Σ p·t + s) / (Σ p + Σ t + s) per sample over the flattened 2×H×W map (p = sigmoid,
background channel included, s = 1e-5), averaged over the batch.

KD target (``kd_target``):
- ``"argmax"`` (default, fixed): the pixel loss of the student against the teacher's decision argmax(z_T);
- ``"soft"``: T²·KL(softmax(z_T/T) ‖ softmax(z_S/T)) per pixel (:class:`.kl.LogitDistillationLoss`);
- ``"reference"`` (bug B3): the original ``NewBCEDice`` target [(z_T,0 + z_T,1)/2 > 0.5]. With one-hot BCE the
  two logits get opposite signs, so their mean stays small and the target is mostly "no change": a weak
  no-change prior rather than distillation.
The teacher is always detached in L_KD (the original's thresholding had the same effect), so L_KD trains only
the student pass. The component ``kd_change`` logs the fraction of "change" in the KD target, which shows B3
directly in a training log.

Optional feature term (``feature_weight`` > 0 and the model returns ``"features"``/``"student_features"``,
i.e. ``STIKDNet(feature_distillation=True)``): the mean over the four ST-DEM levels of MSE or (1 − cosine
over channels) between the detached clean features and the perturbed ones, ignored pixels masked — the
inter-layer distillation the paper's title suggests but its code does not contain (spec §11).

Deliberate differences from the original code:
- **label 255 is ignored** (masked out of BCE, Dice, the KD term and the feature term); the original one-hot
  encoding would crash on it. A sample without valid pixels does not enter the Dice mean; a batch without
  valid pixels gives a zero loss (with a graph) instead of NaN.
- **B3 fixed by default** (``kd_target="argmax"``); the original target is ``"reference"``.
- The KD target also ignores the label-255 pixels (nodata is not worth distilling).
- Without ``"student_logits"`` in the outputs (``self_distillation=False``) the loss is the pixel loss of
  ``"logits"`` alone.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._masks import check_target, label_at, masked_mean
from .kl import LogitDistillationLoss

KDTarget = Literal["argmax", "soft", "reference"]
FeatureLoss = Literal["mse", "cosine"]


class BCEDiceLoss(nn.Module):
    """``bce_weight · BCE + dice_weight · (1 − Dice)`` on one-hot 2-channel logits; label 255 ignored.

    ``forward(logits [N, 2, H, W], target [N, H, W]) -> scalar``.
    """

    def __init__(
        self, bce_weight: float = 0.75, dice_weight: float = 0.25, smooth: float = 1e-5, ignore_index: int = 255
    ) -> None:
        super().__init__()
        self.bce_weight = bce_weight
        self.dice_weight = dice_weight
        self.smooth = smooth
        self.ignore_index = ignore_index

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        target = check_target(target, logits.shape[-2:], "BCEDiceLoss")
        logits = logits.float()
        valid = target != self.ignore_index  # [N, H, W]
        if not bool(valid.any()):
            return logits.sum() * 0.0
        classes = logits.shape[1]
        onehot = F.one_hot(target.where(valid, 0).clamp(0, classes - 1), classes).permute(0, 3, 1, 2).to(logits.dtype)
        mask = valid[:, None].to(logits.dtype).expand_as(logits)
        bce = F.binary_cross_entropy_with_logits(logits, onehot, reduction="none")
        bce = (bce * mask).sum() / mask.sum()
        p = torch.sigmoid(logits) * mask
        t = onehot * mask
        inter = (p * t).flatten(1).sum(1)
        dice = (2.0 * inter + self.smooth) / (p.flatten(1).sum(1) + t.flatten(1).sum(1) + self.smooth)
        has_pixels = valid.flatten(1).any(1)
        dice = dice[has_pixels].mean()
        return self.bce_weight * bce + self.dice_weight * (1.0 - dice)


def kd_target_map(
    teacher_logits: Tensor, mode: KDTarget, target: Tensor | None = None, ignore_index: int = 255
) -> Tensor:
    """The hard KD target [N, H, W] of ``"argmax"`` / ``"reference"`` (B3); ignored label pixels stay ignored."""
    z = teacher_logits.detach().float()
    if mode == "argmax":
        kd = z.argmax(dim=1)
    elif mode == "reference":
        kd = (z.mean(dim=1) > 0.5).long()
    else:
        raise ValueError(f"no hard KD target for mode {mode!r}")
    if target is not None:
        kd = kd.masked_fill(target == ignore_index, ignore_index)
    return kd


def feature_distance(student: Tensor, teacher: Tensor, kind: FeatureLoss, valid: Tensor | None = None) -> Tensor:
    """Mean MSE or (1 − channel cosine) per pixel between ``student`` and the detached ``teacher`` [N, C, h, w]."""
    teacher = teacher.detach().float()
    student = student.float()
    if kind == "mse":
        per_pixel = (student - teacher).pow(2).mean(dim=1)
    elif kind == "cosine":
        per_pixel = 1.0 - F.cosine_similarity(student, teacher, dim=1, eps=1e-6)
    else:
        raise ValueError(f"feature_loss must be 'mse' or 'cosine', got {kind!r}")
    if valid is None:
        return per_pixel.mean()
    return masked_mean(per_pixel, valid)


class StikdLoss(nn.Module):
    """STIKDNet's objective; see the module docstring.

    Args:
        teacher_weight, student_weight, kd_weight: 1.0, 0.9, 0.1 (the original's fixed weights).
        kd_target: "argmax" (default), "soft" (KL with ``temperature``) or "reference" (B3).
        temperature: T of the "soft" target.
        bce_weight, dice_weight, dice_smooth: the pixel loss (0.75, 0.25, 1e-5).
        feature_weight: weight of the feature term (used only when the outputs carry features).
        feature_loss: "cosine" (default, scale-free) or "mse".
        ignore_index: 255.

    ``forward(outputs, target, epoch=None) -> (total, components)``, components (floats): ``teacher``,
    ``student``, ``kd``, ``kd_change`` (fraction of change in the KD target), ``feature`` (if present),
    ``total``; without ``"student_logits"`` only ``teacher`` and ``total``.
    """

    def __init__(
        self,
        teacher_weight: float = 1.0,
        student_weight: float = 0.9,
        kd_weight: float = 0.1,
        kd_target: KDTarget = "argmax",
        temperature: float = 2.0,
        bce_weight: float = 0.75,
        dice_weight: float = 0.25,
        dice_smooth: float = 1e-5,
        feature_weight: float = 0.1,
        feature_loss: FeatureLoss = "cosine",
        ignore_index: int = 255,
    ) -> None:
        super().__init__()
        if kd_target not in ("argmax", "soft", "reference"):
            raise ValueError(f"kd_target must be 'argmax', 'soft' or 'reference', got {kd_target!r}")
        if feature_loss not in ("mse", "cosine"):
            raise ValueError(f"feature_loss must be 'mse' or 'cosine', got {feature_loss!r}")
        self.teacher_weight = teacher_weight
        self.student_weight = student_weight
        self.kd_weight = kd_weight
        self.kd_target = kd_target
        self.feature_weight = feature_weight
        self.feature_loss = feature_loss
        self.ignore_index = ignore_index
        self.pixel = BCEDiceLoss(bce_weight, dice_weight, dice_smooth, ignore_index)
        self.kl = LogitDistillationLoss(temperature, ignore_index)

    def kd(self, student_logits: Tensor, teacher_logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """(L_KD, fraction of "change" in the KD target over valid pixels); the teacher is detached."""
        valid = target != self.ignore_index
        if self.kd_target == "soft":
            teacher = teacher_logits.detach()
            rate = masked_mean((teacher.argmax(dim=1) == 1).float(), valid)
            return self.kl(student_logits, teacher, target), rate
        kd = kd_target_map(teacher_logits, self.kd_target, target, self.ignore_index)
        rate = masked_mean((kd == 1).float(), valid)
        return self.pixel(student_logits, kd), rate

    def forward(
        self, outputs: dict[str, Tensor], target: Tensor, epoch: float | None = None
    ) -> tuple[Tensor, dict[str, float]]:
        logits = outputs["logits"]
        target = check_target(target, logits.shape[-2:], "StikdLoss")
        teacher = self.pixel(logits, target)
        if "student_logits" not in outputs:
            return teacher, {"teacher": float(teacher.detach()), "total": float(teacher.detach())}
        student_logits = outputs["student_logits"]
        student = self.pixel(student_logits, target)
        kd, rate = self.kd(student_logits, logits, target)
        total = self.teacher_weight * teacher + self.student_weight * student + self.kd_weight * kd
        parts = {"teacher": teacher, "student": student, "kd": kd, "kd_change": rate}
        if "features" in outputs and "student_features" in outputs and self.feature_weight:
            levels = []
            valid = target != self.ignore_index
            for s_feat, t_feat in zip(outputs["student_features"], outputs["features"]):
                mask = label_at(valid.long(), s_feat.shape[-2:]).bool()
                levels.append(feature_distance(s_feat, t_feat, self.feature_loss, mask))
            feature = torch.stack(levels).mean()
            total = total + self.feature_weight * feature
            parts["feature"] = feature
        parts["total"] = total
        values = torch.stack([v.detach().float() for v in parts.values()]).tolist()
        return total, dict(zip(parts, values))
