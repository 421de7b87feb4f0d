"""Change-class pixel metrics with torchmetrics: precision, recall, F1, IoU, OA and Cohen's kappa.

Label 255 is ignored. With no positive pixels at all (e.g. the all-zero LEVIR crop), precision,
recall, F1 and IoU are 0 by torchmetrics' convention; OA and kappa still describe the map.
"""

from __future__ import annotations

import torch
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryCohenKappa,
    BinaryF1Score,
    BinaryJaccardIndex,
    BinaryPrecision,
    BinaryRecall,
)

from pipeline.io.raster import NODATA_U8


def change_metrics(device: torch.device | str = "cpu", *, sync: bool = False) -> MetricCollection:
    """A fresh metric collection on ``device``; feed it change probabilities and labels.

    ``sync=False`` (default) computes on this process's data only: under DDP, evaluation runs on
    rank 0 alone, and a cross-process sync would wait forever for the other ranks.

    Args:
        device: the device the metric states live on (that of the predictions fed in).
        sync: whether ``compute()`` gathers the states of every DDP process.

    Returns:
        A MetricCollection of binary ``precision``, ``recall``, ``f1``, ``iou``, ``oa`` and ``kappa``,
        ignoring label 255.
    """
    options = {"ignore_index": NODATA_U8, "sync_on_compute": sync}
    return MetricCollection(
        {
            "precision": BinaryPrecision(**options),
            "recall": BinaryRecall(**options),
            "f1": BinaryF1Score(**options),
            "iou": BinaryJaccardIndex(**options),
            "oa": BinaryAccuracy(**options),
            "kappa": BinaryCohenKappa(**options),
        }
    ).to(device)


def as_floats(values: dict[str, torch.Tensor]) -> dict[str, float]:
    """Metric values as plain floats (for JSON and logs).

    Args:
        values: scalar tensors by metric name, e.g. the result of ``change_metrics().compute()``.

    Returns:
        The same names with float values.
    """
    return {name: float(value) for name, value in values.items()}
