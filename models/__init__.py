"""changeflow.models — pure PyTorch change-detection networks, their losses and a registry.

Knows nothing of files, CRSs or configs beyond keyword options; imports only torch (and numpy).

Public API:
- ``build(name, *, weights=None, **cfg) -> nn.Module`` and ``available() -> list[str]``: the model registry
  ("clearscd", "fc_ef", "fc_siam_conc", "fc_siam_diff", "gold", "gold_lite", "segchange_r1", "stikdnet"); an unknown
  name or option raises ValueError;
- ``build_loss(name, **cfg)`` / ``available_losses()``: "change" (CE + Dice), "gold" (:class:`GoldLoss`), "stikd",
  "segchange", "clearscd"; each model class names its loss in ``default_loss``;
- ``complexity(model, input_shapes) -> (params, flops)``, ``count_parameters``, ``count_flops``.

Every change model: ``forward(t1, t2) -> {"logits": [N, 2, H, W], ...}``; GOLD models take an optional third
input (optical t2) during training (``has_teacher = True``). See :mod:`models.base`.
"""

from __future__ import annotations

from . import clearscd, fc, gold, gold_lite  # noqa: F401  (registers the models)
from .base import ChangeModel
from .clearscd import ClearSCD
from .complexity import complexity, count_flops, count_parameters
from .fc import FCEF, FCSiamConc, FCSiamDiff
from .gold import GOLD
from .gold_lite import GOLDLite
from .losses import GoldLoss, available_losses, build_loss
from .registry import available, build, register
from .segchange import SegChangeR1  # registers "segchange_r1"
from .stikdnet import STIKDNet  # registers "stikdnet"

__all__ = [
    "ClearSCD",
    "FCEF",
    "GOLD",
    "ChangeModel",
    "FCSiamConc",
    "FCSiamDiff",
    "GOLDLite",
    "GoldLoss",
    "STIKDNet",
    "available",
    "available_losses",
    "build",
    "build_loss",
    "complexity",
    "count_flops",
    "count_parameters",
    "register",
    "SegChangeR1",
]
