"""Dynamic loss weights for GOLD's seven loss terms, in two modes, plus the distillation ramp.

Terms (keys of the ``terms`` dict): ``student_cd``, ``teacher_cd`` (task group "cd"), ``feat``, ``kl`` (group
"dist"), ``map``, ``ch``, ``sp`` (group "att", the attention transfer).

Ramp (both modes; spec §4.4): ``ρ(e) = ½(1 − cos(π·min(e / e_w, 1)))`` with e_w = ``warmup_epochs`` (20). It
multiplies the teacher's supervised term and the whole distillation group: at epoch 0 neither the teacher nor
the distillation act, which avoids distilling from an untrained teacher.

``weighting: gold`` — :class:`GoldWeighting`, the original's hierarchical softplus weights, reproduced exactly
(spec §4.4). Four learnable vectors s (task level [cd, dist, att], inside cd [student, teacher], inside dist
[feat, kl], inside att [map, ch, sp]), initialised to 0. Per group with initial weights w0:
``p = softplus(−s) + 1e-8``; while e < e_w, ``α = ½(1 − cos(π e / e_w))`` and
``w = [(1 − α)·w0/Σw0 + α·p/Σp]·Σw0``; afterwards ``w = p/Σp·Σw0``. Task clamps with tot = Σw:
``w_cd ← max(w_cd, 0.6 tot)``, ``w_dist ← min(w_dist, 0.3 tot)``, ``w_att ← min(w_att, 0.2 tot)``, then rescale
to sum tot. Total ``L = w_cd(w_S L_S + ρ w_T L_T) + w_dist ρ (w_f L_feat + w_o L_KL) + w_att (w_m L_map + w_c L_ch
+ w_p L_sp)``. Known weakness (spec §12): there is no log-σ regulariser, so gradient descent on s moves weight
toward the numerically smallest loss; only the clamps keep the CD task dominant. Moreover, with s_task near 0
after warm-up all three clamps are active at once, so the task weights are pinned at [0.873, 0.436, 0.291] and
s_task receives no gradient — in practice only the inner weights adapt. It is kept because it is what the
published results used. The original optimised s with AdamW at 0.1 × lr and did not checkpoint it.

``weighting: uncertainty`` — :class:`UncertaintyWeighting`, homoscedastic uncertainty weighting (A. Kendall,
Y. Gal, R. Cipolla, "Multi-Task Learning Using Uncertainty to Weigh Losses", CVPR 2018) at the task level:
one learnable ``s_g = log σ_g²`` per group (cd, dist, att), ``L = Σ_g r_g·(½ e^{−s_g} L_g + ½ s_g)`` — i.e.
L_g/(2σ_g²) + log σ_g — with the inner weights of each group fixed at the original's initial values and
r = (1, ρ, 1). Scaling the whole Kendall term by the ramp leaves its optimum (σ_g² = L_g) unchanged and keeps
s_dist from running to −∞ while the distillation is still switched off. The total can be negative.

Both are ``nn.Module``s: their parameters (and the configured initial weights, as buffers) are in
``state_dict()`` and must be saved with every checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

TERMS = ("student_cd", "teacher_cd", "feat", "kl", "map", "ch", "sp")


def ramp(epoch: float, warmup_epochs: float) -> float:
    """Cosine ramp from 0 at epoch 0 to 1 at ``warmup_epochs`` (1 if warmup_epochs ≤ 0)."""
    if warmup_epochs <= 0:
        return 1.0
    x = min(max(epoch, 0.0) / warmup_epochs, 1.0)
    return 0.5 * (1.0 - math.cos(math.pi * x))


def _check_terms(terms: dict[str, Tensor]) -> None:
    missing = [k for k in TERMS if k not in terms]
    if missing:
        raise ValueError(f"loss weighting needs the terms {TERMS}; missing {missing}")


class GoldWeighting(nn.Module):
    """GOLD's softplus-normalised hierarchical weights with warm-up and task clamps (see module docstring)."""

    def __init__(
        self,
        warmup_epochs: float = 20,
        task_init: Sequence[float] = (1.0, 0.3, 0.3),
        cd_init: Sequence[float] = (1.0, 0.4),
        dist_init: Sequence[float] = (0.7, 0.3),
        att_init: Sequence[float] = (0.5, 0.3, 0.2),
        cd_min: float = 0.6,
        dist_max: float = 0.3,
        att_max: float = 0.2,
    ) -> None:
        super().__init__()
        self.warmup_epochs = float(warmup_epochs)
        self.cd_min, self.dist_max, self.att_max = cd_min, dist_max, att_max
        for name, init, n in (("task", task_init, 3), ("cd", cd_init, 2), ("dist", dist_init, 2), ("att", att_init, 3)):
            if len(init) != n or min(init) <= 0:
                raise ValueError(f"{name}_init must hold {n} positive weights, got {tuple(init)}")
            self.register_buffer(f"w0_{name}", torch.tensor([float(v) for v in init]))
            self.register_parameter(f"s_{name}", nn.Parameter(torch.zeros(n)))

    def _group(self, s: Tensor, w0: Tensor, epoch: float) -> Tensor:
        p = F.softplus(-s) + 1e-8
        total = w0.sum()
        if epoch < self.warmup_epochs:
            a = 0.5 * (1.0 - math.cos(math.pi * max(epoch, 0.0) / self.warmup_epochs))
            return ((1.0 - a) * w0 / total + a * p / p.sum()) * total
        return p / p.sum() * total

    def weights(self, epoch: float) -> dict[str, Tensor]:
        """Effective weights at ``epoch``: task ``cd``/``dist``/``att`` (after clamps) and the seven inner ones."""
        task = self._group(self.s_task, self.w0_task, epoch)
        tot = task.sum()
        cd = torch.maximum(task[0], self.cd_min * tot)
        dist = torch.minimum(task[1], self.dist_max * tot)
        att = torch.minimum(task[2], self.att_max * tot)
        clamped = torch.stack([cd, dist, att])
        task = clamped * (tot / clamped.sum())
        cdw = self._group(self.s_cd, self.w0_cd, epoch)
        dw = self._group(self.s_dist, self.w0_dist, epoch)
        aw = self._group(self.s_att, self.w0_att, epoch)
        return {
            "cd": task[0], "dist": task[1], "att": task[2],
            "student_cd": cdw[0], "teacher_cd": cdw[1], "feat": dw[0], "kl": dw[1],
            "map": aw[0], "ch": aw[1], "sp": aw[2],
        }  # fmt: skip

    def forward(self, terms: dict[str, Tensor], epoch: float) -> tuple[Tensor, dict[str, Tensor]]:
        """Weighted total and the effective weights (``w_*`` keys, plus ``ramp``)."""
        _check_terms(terms)
        w = self.weights(epoch)
        r = ramp(epoch, self.warmup_epochs)
        total = (
            w["cd"] * (w["student_cd"] * terms["student_cd"] + r * w["teacher_cd"] * terms["teacher_cd"])
            + w["dist"] * r * (w["feat"] * terms["feat"] + w["kl"] * terms["kl"])
            + w["att"] * (w["map"] * terms["map"] + w["ch"] * terms["ch"] + w["sp"] * terms["sp"])
        )
        logged = {f"w_{k}": v.detach() for k, v in w.items()}
        logged["ramp"] = torch.tensor(r)
        return total, logged


class UncertaintyWeighting(nn.Module):
    """Kendall et al. (CVPR 2018) task-level uncertainty weighting (see module docstring).

    ``log_var`` holds s = log σ² for the groups (cd, dist, att); ``init_log_var`` sets their start.
    """

    def __init__(
        self,
        warmup_epochs: float = 20,
        cd_inner: Sequence[float] = (1.0, 0.4),
        dist_inner: Sequence[float] = (0.7, 0.3),
        att_inner: Sequence[float] = (0.5, 0.3, 0.2),
        init_log_var: float = 0.0,
    ) -> None:
        super().__init__()
        self.warmup_epochs = float(warmup_epochs)
        for name, inner, n in (("cd", cd_inner, 2), ("dist", dist_inner, 2), ("att", att_inner, 3)):
            if len(inner) != n or min(inner) < 0:
                raise ValueError(f"{name}_inner must hold {n} non-negative weights, got {tuple(inner)}")
            self.register_buffer(f"inner_{name}", torch.tensor([float(v) for v in inner]))
        self.log_var = nn.Parameter(torch.full((3,), float(init_log_var)))

    def weights(self, epoch: float) -> dict[str, Tensor]:
        """Effective multipliers ½e^{−s}·r of the three groups and the fixed inner weights."""
        r = torch.tensor([1.0, ramp(epoch, self.warmup_epochs), 1.0], device=self.log_var.device)
        task = 0.5 * torch.exp(-self.log_var) * r
        return {
            "cd": task[0], "dist": task[1], "att": task[2],
            "student_cd": self.inner_cd[0], "teacher_cd": self.inner_cd[1],
            "feat": self.inner_dist[0], "kl": self.inner_dist[1],
            "map": self.inner_att[0], "ch": self.inner_att[1], "sp": self.inner_att[2],
        }  # fmt: skip

    def forward(self, terms: dict[str, Tensor], epoch: float) -> tuple[Tensor, dict[str, Tensor]]:
        _check_terms(terms)
        rho = ramp(epoch, self.warmup_epochs)
        ic, idist, ia = self.inner_cd, self.inner_dist, self.inner_att
        groups = [
            ic[0] * terms["student_cd"] + rho * ic[1] * terms["teacher_cd"],
            idist[0] * terms["feat"] + idist[1] * terms["kl"],
            ia[0] * terms["map"] + ia[1] * terms["ch"] + ia[2] * terms["sp"],
        ]
        scale = (1.0, rho, 1.0)
        s = self.log_var
        total = sum(scale[g] * (0.5 * torch.exp(-s[g]) * groups[g] + 0.5 * s[g]) for g in range(3))
        logged = {f"w_{k}": v.detach() for k, v in self.weights(epoch).items()}
        logged["ramp"] = torch.tensor(rho)
        return total, logged


def build_weighting(mode: str, **options: object) -> nn.Module:
    """``"gold"`` → :class:`GoldWeighting`, ``"uncertainty"`` → :class:`UncertaintyWeighting`."""
    classes = {"gold": GoldWeighting, "uncertainty": UncertaintyWeighting}
    if mode not in classes:
        raise ValueError(f"unknown weighting {mode!r}; available: {', '.join(classes)}")
    return classes[mode](**options)  # type: ignore[arg-type]
