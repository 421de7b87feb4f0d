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

IGNORE_INDEX = 255


def change_metrics(device: torch.device | str = "cpu") -> MetricCollection:
    """A fresh metric collection on ``device``; feed it change probabilities and labels."""
    return MetricCollection(
        {
            "precision": BinaryPrecision(ignore_index=IGNORE_INDEX),
            "recall": BinaryRecall(ignore_index=IGNORE_INDEX),
            "f1": BinaryF1Score(ignore_index=IGNORE_INDEX),
            "iou": BinaryJaccardIndex(ignore_index=IGNORE_INDEX),
            "oa": BinaryAccuracy(ignore_index=IGNORE_INDEX),
            "kappa": BinaryCohenKappa(ignore_index=IGNORE_INDEX),
        }
    ).to(device)


def as_floats(values: dict[str, torch.Tensor]) -> dict[str, float]:
    return {name: float(value) for name, value in values.items()}
