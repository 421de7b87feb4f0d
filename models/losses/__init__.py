"""Losses of the change models, one concept per module, and a small registry.

- :class:`SoftDiceLoss` (:mod:`.dice`) — soft Dice on the change class, label 255 ignored;
- :class:`ChangeLoss` (:mod:`.change`) — class-weighted CE + Dice; the loss of the FC baselines;
- :class:`FeatureDistillationLoss` (:mod:`.feature`) — change-weighted feature MSE + global cosine;
- :class:`LogitDistillationLoss` (:mod:`.kl`) — T²·KL per pixel;
- :class:`DifferenceAttentionLoss` (:mod:`.attention_transfer`) — difference-map, channel and spatial attention;
- :class:`GoldWeighting`, :class:`UncertaintyWeighting` (:mod:`.weighting`) — dynamic weights;
- :class:`GoldLoss` (:mod:`.gold`) — GOLD's full objective;
- :class:`SegChangeLoss` (:mod:`.segchange`) — SegChange-R1's BCE + Dice + class-balanced focal.

Every training loss is called ``loss(outputs: dict, target, epoch=...) -> (total: Tensor, components: dict)``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..registry import check_options
from .attention_transfer import DifferenceAttentionLoss, channel_attention, difference_map, spatial_attention
from .change import ChangeLoss
from .clearscd import ClearSCDLoss
from .dice import SoftDiceLoss
from .feature import FeatureDistillationLoss
from .gold import GoldLoss
from .kl import LogitDistillationLoss
from .segchange import SegChangeLoss
from .stikd import StikdLoss
from .weighting import GoldWeighting, UncertaintyWeighting, build_weighting, ramp

_LOSSES: dict[str, type[nn.Module]] = {"change": ChangeLoss, "gold": GoldLoss, "segchange": SegChangeLoss}
_LOSSES["stikd"] = StikdLoss  # STIKDNet (models.stikdnet)
_LOSSES["clearscd"] = ClearSCDLoss  # ClearSCD (models.clearscd)


def available_losses() -> list[str]:
    """Names accepted by :func:`build_loss`."""
    return sorted(_LOSSES)


def build_loss(name: str, **cfg: Any) -> nn.Module:
    """Build a training loss by name ("change" or "gold"); ValueError listing the names if unknown."""
    key = name.strip().lower()
    if key not in _LOSSES:
        raise ValueError(f"unknown loss {name!r}; available losses: {', '.join(available_losses())}")
    check_options(_LOSSES[key], cfg, f"loss {key!r}")
    return _LOSSES[key](**cfg)


__all__ = [
    "ClearSCDLoss",
    "ChangeLoss",
    "DifferenceAttentionLoss",
    "FeatureDistillationLoss",
    "GoldLoss",
    "GoldWeighting",
    "LogitDistillationLoss",
    "SegChangeLoss",
    "SoftDiceLoss",
    "StikdLoss",
    "UncertaintyWeighting",
    "available_losses",
    "build_loss",
    "build_weighting",
    "channel_attention",
    "difference_map",
    "ramp",
    "spatial_attention",
]
