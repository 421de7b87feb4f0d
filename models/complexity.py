"""Parameter and FLOP counts, e.g. per 512 × 512 tile for the benchmark.

FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` (convolutions, matrix products; 2 FLOPs
per multiply-accumulate; element-wise ops, pooling and interpolation are not counted) — the same method as the
[measured] figures of the GOLD spec. The counts need no real computation: build the model under
``torch.device("meta")`` and the count takes well under a second even for 512² tiles.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_parameters(model: nn.Module, *, inference: bool = False) -> int:
    """Number of parameters; ``inference=True`` leaves out teacher-only modules (``model.teacher_modules``)."""
    total = sum(p.numel() for p in model.parameters())
    if inference:
        for name in getattr(model, "teacher_modules", ()):
            total -= sum(p.numel() for p in getattr(model, name).parameters())
    return total


@torch.no_grad()
def count_flops(model: nn.Module, input_shapes: Sequence[Sequence[int]]) -> int:
    """FLOPs of one eval-mode forward on zero tensors of ``input_shapes`` (model's device and dtype)."""
    p = next(model.parameters())
    inputs = [torch.zeros(tuple(s), device=p.device, dtype=p.dtype) for s in input_shapes]
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            model(*inputs)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def complexity(model: nn.Module, input_shapes: Sequence[Sequence[int]]) -> tuple[int, int]:
    """``(params, flops)`` of a forward with inputs of ``input_shapes``.

    ``params`` counts what that forward uses: for a model with a teacher (GOLD) called with two inputs
    (inference: A and B), the teacher-only modules are left out; with three inputs (training forward) all
    parameters count. Example: ``complexity(model, [(1, 3, 512, 512)] * 2)`` = per-tile inference cost.
    """
    has_teacher = getattr(model, "has_teacher", False)
    inference = has_teacher and len(input_shapes) < 3
    return count_parameters(model, inference=inference), count_flops(model, input_shapes)
