"""GOLD's complete training objective: supervised CD for student and teacher, online distillation, attention
transfer, combined by dynamic weights.

Paper: T. Yan, GOLD (ISPRS J. 2025), ``GOLD.compute_losses`` of Mriris/HeteroCD-GOLD (spec §4). Terms:
- ``student_cd`` = CE_w + 1.5·Dice on the student logits; ``teacher_cd`` = the same on the teacher logits
  (+ optional ``teacher_entropy_weight`` × mean per-pixel entropy, 0 by default as in the original);
- ``feat`` = change-weighted feature MSE + global cosine between S and T (:mod:`.feature`);
- ``kl`` = T²-scaled per-pixel KL from teacher to student logits, T = 2 (:mod:`.kl`);
- ``map``, ``ch``, ``sp`` = difference-map, channel- and spatial-attention transfer (:mod:`.attention_transfer`);
combined by :class:`GoldWeighting` (``weighting="gold"``) or :class:`UncertaintyWeighting` (``"uncertainty"``).

Deliberate differences from the original (spec §12):
- the Dice is the soft Dice of the change class (the original's was class-agnostic and minimised by p = 0.5);
- the teacher is **detached** in every distillation term by default — features, logits, difference map and
  attentions — so the student learns from the teacher and not the reverse; ``detach_teacher=False`` gives
  mutual learning (the teacher then also receives the KL gradient, as in Deep Mutual Learning; the original
  detached the teacher in the KL only, and nowhere else);
- KL averaged per pixel ("batchmean" over pixels), not ``reduction='mean'`` over classes too;
- label 255 is ignored by every term; the loss weights are module state (``state_dict()``) to be checkpointed;
- ``weighting="uncertainty"`` offers true Kendall weighting next to the original scheme.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ._masks import check_target, masked_mean
from .attention_transfer import DifferenceAttentionLoss
from .change import ChangeLoss
from .feature import FeatureDistillationLoss
from .kl import LogitDistillationLoss
from .weighting import build_weighting

Weighting = Literal["gold", "uncertainty"]
TEACHER_KEYS = ("teacher_logits", "student_feat", "teacher_feat", "feat_a", "feat_b", "feat_c")


class GoldLoss(nn.Module):
    """GOLD objective. ``forward(outputs, target, epoch=None) -> (total, components)``.

    ``outputs``: the dict of :class:`models.gold.GOLD` / :class:`models.gold_lite.GOLDLite`. With only
    ``"logits"`` (validation, or a forward without C) the loss is the student CD loss alone and ``epoch`` may be
    omitted; with the teacher keys it is the full weighted objective and ``epoch`` (float; fractions allowed)
    drives warm-up and ramp. ``target``: ``[N, H, W]`` long, 0/1 with 255 = ignore.
    ``components``: floats for logging — ``loss``, every term, their CE/Dice/MSE/cosine parts and the
    effective weights ``w_*`` and ``ramp``.

    Args:
        weighting: "gold" or "uncertainty"; ``weighting_options`` go to that module (e.g. clamps, inits).
        warmup_epochs: weight warm-up and distillation ramp length (20).
        detach_teacher: stop distillation gradients into the teacher (True) or mutual learning (False).
        ce_class_weights, ce_weight, dice_weight, dice_smooth: the CD loss (0.1/0.9, 1.0, 1.5, 1.0).
        teacher_entropy_weight: weight of the teacher's mean prediction entropy (0).
        temperature: KL temperature (2).
        feature_pos_weight, feature_neg_weight, feature_mse_weight, feature_cos_weight: (4.0, 0.5, 0.7, 0.3).
        ignore_index: 255.
    Optimise ``GoldLoss.parameters()`` (the weighting's) alongside the model; the original used 0.1 × the
    network's learning rate for them.
    """

    def __init__(
        self,
        weighting: Weighting = "gold",
        warmup_epochs: float = 20,
        detach_teacher: bool = True,
        ce_class_weights: Sequence[float] | None = (0.1, 0.9),
        ce_weight: float = 1.0,
        dice_weight: float = 1.5,
        dice_smooth: float = 1.0,
        teacher_entropy_weight: float = 0.0,
        temperature: float = 2.0,
        feature_pos_weight: float = 4.0,
        feature_neg_weight: float = 0.5,
        feature_mse_weight: float = 0.7,
        feature_cos_weight: float = 0.3,
        ignore_index: int = 255,
        weighting_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.detach_teacher = detach_teacher
        self.teacher_entropy_weight = teacher_entropy_weight
        self.ignore_index = ignore_index
        self.weighting_mode = weighting
        self.cd = ChangeLoss(ce_class_weights, ce_weight, dice_weight, dice_smooth, ignore_index)
        self.feature = FeatureDistillationLoss(
            feature_pos_weight, feature_neg_weight, feature_mse_weight, feature_cos_weight, ignore_index
        )
        self.kl = LogitDistillationLoss(temperature, ignore_index)
        self.attention = DifferenceAttentionLoss(ignore_index)
        self.weighting = build_weighting(weighting, warmup_epochs=warmup_epochs, **(weighting_options or {}))

    def _teacher(self, x: Tensor) -> Tensor:
        return x.detach() if self.detach_teacher else x

    def forward(
        self, outputs: dict[str, Tensor], target: Tensor, epoch: float | None = None
    ) -> tuple[Tensor, dict[str, float]]:
        s_logits = outputs["logits"]
        target = check_target(target, s_logits.shape[-2:], "GoldLoss")
        s_cd, s_ce, s_dice = self.cd.terms(s_logits, target)
        parts: dict[str, Tensor] = {"student_cd": s_cd, "student_ce": s_ce, "student_dice": s_dice}
        present = [k for k in TEACHER_KEYS if k in outputs]
        if not present:
            return s_cd, self._log(s_cd, parts)
        if len(present) != len(TEACHER_KEYS):
            missing = sorted(set(TEACHER_KEYS) - set(present))
            raise ValueError(f"GoldLoss: model outputs have some teacher entries but not {missing}")
        if epoch is None:
            raise ValueError("GoldLoss: epoch is required when the outputs include the teacher (training)")

        t_logits = outputs["teacher_logits"]
        t_cd, t_ce, t_dice = self.cd.terms(t_logits, target)
        if self.teacher_entropy_weight:
            p = torch.softmax(t_logits.float(), dim=1)
            entropy = -(p * torch.log(p.clamp_min(1e-8))).sum(dim=1)
            ent = masked_mean(entropy, target != self.ignore_index)
            t_cd = t_cd + self.teacher_entropy_weight * ent
            parts["teacher_entropy"] = ent
        parts.update(teacher_cd=t_cd, teacher_ce=t_ce, teacher_dice=t_dice)

        parts.update(self.distillation_terms(outputs, target))
        total, weights = self.weighting(parts, float(epoch))
        parts.update(weights)
        return total, self._log(total, parts)

    def distillation_terms(self, outputs: dict[str, Tensor], target: Tensor) -> dict[str, Tensor]:
        """The unweighted distillation and attention-transfer terms (tensors): ``feat`` (with its ``feat_mse``
        and ``feat_cos`` parts), ``kl``, ``map``, ``ch``, ``sp``. Teacher tensors are detached unless
        ``detach_teacher`` is False."""
        target = check_target(target, outputs["logits"].shape[-2:], "GoldLoss")
        s_feat, t_feat = outputs["student_feat"], self._teacher(outputs["teacher_feat"])
        feat, feat_mse, feat_cos = self.feature(s_feat, t_feat, target)
        kl = self.kl(outputs["logits"], self._teacher(outputs["teacher_logits"]), target)
        fa = outputs["feat_a"]
        l_map, l_ch, l_sp = self.attention(
            fa, outputs["feat_b"], self._teacher(outputs["feat_c"]), s_feat, t_feat, target,
            teacher_feat_a=self._teacher(fa),
        )  # fmt: skip
        return {
            "feat": feat, "feat_mse": feat_mse, "feat_cos": feat_cos, "kl": kl, "map": l_map, "ch": l_ch, "sp": l_sp
        }  # fmt: skip

    @staticmethod
    def _log(total: Tensor, parts: dict[str, Tensor]) -> dict[str, float]:
        keys = ["loss", *parts]
        tensors = [total, *parts.values()]
        values = torch.stack([v.detach().float().to(total.device) for v in tensors])
        return dict(zip(keys, values.tolist()))
