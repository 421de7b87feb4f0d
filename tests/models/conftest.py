"""Shared helpers for the model tests: small deterministic inputs, CPU only."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def images(n: int, c: int, h: int = 64, w: int = 64) -> torch.Tensor:
    """A batch of random 'images'."""
    return torch.randn(n, c, h, w)


def change_label(n: int = 2, h: int = 64, w: int = 64, ignore_rows: int = 0) -> torch.Tensor:
    """A 0/1 label with a changed square per sample and optionally ignored (255) top rows."""
    y = torch.zeros(n, h, w, dtype=torch.long)
    y[:, h // 4 : h // 2, w // 4 : w // 2] = 1
    if ignore_rows:
        y[:, :ignore_rows] = 255
    return y
