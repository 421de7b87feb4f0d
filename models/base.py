"""Common interface of the change-detection networks.

Every change model takes the two dates as separate tensors, ``forward(t1, t2) -> dict``, and returns at least
``"logits"``: a ``[N, 2, H, W]`` tensor (class 0 = no change, class 1 = change) at the input resolution, raw
(no softmax / log-softmax), so that losses, metrics and sliding-window blending all see the same thing.
Models trained with an extra teacher input (GOLD) take it as an optional third argument and declare it with
``has_teacher = True``. Text-conditioned models (SegChange-R1) take ``text=[N, L, D]`` and ``text_mask=[N, L]``
keyword arguments (``text_conditioned = True``). Semantic change models (ClearSCD) declare
``semantic_classes = K`` and also return ``"semantic_t1"`` / ``"semantic_t2"`` logits ``[N, K, H, W]``; their loss
gets the targets as ``{"change", "t1", "t2"}`` (255 = ignore everywhere).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch.nn.functional as F
from torch import Tensor, nn


class ChangeModel(nn.Module, ABC):
    """Base class: class attributes describe how a training loop should call the model.

    Attributes:
        has_teacher: ``forward`` accepts a third input (optical t2, "C") and then also returns teacher outputs.
        default_loss: name for :func:`models.build_loss` of the loss this model is trained with.
        num_classes: always 2 (binary change).
        text_conditioned: ``forward`` accepts ``text`` / ``text_mask`` prompt embeddings.
        semantic_classes: K > 0 for semantic change models (per-date land-cover classes), else 0.
    """

    has_teacher: bool = False
    text_conditioned: bool = False
    semantic_classes: int = 0
    default_loss: str = "change"
    num_classes: int = 2

    @property
    @abstractmethod
    def in_channels(self) -> tuple[int, ...]:
        """Band counts expected for each input, in ``forward`` order."""


def pad_to_multiple(x: Tensor, multiple: int) -> tuple[Tensor, tuple[int, int]]:
    """Replicate-pad H and W at the bottom/right up to a multiple of ``multiple``; return the original size.

    Why: U-Net style encoders with k pooling levels need sizes divisible by 2^k so that skip connections
    line up; padding at the far edges and cropping afterwards keeps pixel (0, 0) where it was.
    """
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    return x, (h, w)


def check_input(x: Tensor, channels: int, what: str) -> None:
    """Raise ValueError with a readable message if ``x`` is not ``[N, channels, H, W]``."""
    if x.ndim != 4 or x.shape[1] != channels:
        raise ValueError(f"{what}: expected a [N, {channels}, H, W] tensor, got shape {tuple(x.shape)}")
