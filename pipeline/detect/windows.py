"""Where the windows go: their offsets, their blending weights and the scene's block layout.

Windows of the model's tile size are spread evenly along each axis, ``overlap`` apart, the last one
flush with the image edge (nnU-Net's recipe, no padding). The scene is cut into output blocks of
``block`` px; every window belongs to the block holding its top-left pixel (its *owner*), which
computes it exactly once.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import numpy as np

DEFAULT_WINDOW = 512

Weighting = Literal["gaussian", "uniform"]
Block = tuple[int, int]  # (row, col) index of an output block
Offset = tuple[int, int]  # (row, col) of a window's top-left pixel in the scene


def window_starts(size: int, window: int, overlap: float) -> list[int]:
    """Window offsets along one axis, nnU-Net style: evenly spread, the last flush with the edge.

    Args:
        size: the image size along the axis, in pixels.
        window: the window size along the axis.
        overlap: the fraction two neighbouring windows share at least, in [0, 1).

    Returns:
        The offsets, ascending; ``[0]`` when one window covers the axis.
    """
    if window >= size:
        return [0]
    target_step = window * (1.0 - overlap)
    count = math.ceil((size - window) / target_step) + 1
    step = (size - window) / (count - 1)
    return [int(round(step * i)) for i in range(count)]


def _gaussian_axis(n: int) -> np.ndarray:
    """A Gaussian over ``n`` pixels, σ = n/8, centred between the two middle pixels (flip-symmetric)."""
    x = np.arange(n, dtype=np.float64) - (n - 1) / 2.0
    sigma = max(n / 8.0, 1e-6)
    return np.exp(-0.5 * (x / sigma) ** 2)


def importance_map(height: int, width: int, weighting: Weighting = "gaussian") -> np.ndarray:
    """Blending weights of one window: a Gaussian (σ = size/8, max 1) with a floor, or ones.

    As in nnU-Net, weights that underflow to 0 are raised to the smallest non-zero weight, so every
    pixel a window covers has a positive weight (no division by zero where only window corners
    reach).

    Args:
        height: window rows.
        width: window columns.
        weighting: "gaussian" or "uniform".

    Returns:
        float32 weights of shape (height, width).

    Raises:
        ValueError: for another weighting.
    """
    if weighting == "uniform":
        return np.ones((height, width), np.float32)
    if weighting != "gaussian":
        raise ValueError(f"weighting must be 'gaussian' or 'uniform', not {weighting!r}")
    gauss = np.outer(_gaussian_axis(height), _gaussian_axis(width))
    gauss = (gauss / gauss.max()).astype(np.float32)
    zero = gauss == 0
    if zero.any():
        gauss[zero] = gauss[~zero].min()
    return gauss


def default_window(checkpoint: dict) -> int:
    """The training tile size of a checkpoint.

    Args:
        checkpoint: a loaded checkpoint payload.

    Returns:
        Its ``tile_size`` (the side of the samples it was trained on); for checkpoints saved before
        that entry, its training crop, else ``DEFAULT_WINDOW``.
    """
    config = checkpoint.get("config") or {}
    return int(checkpoint.get("tile_size") or config.get("crop") or DEFAULT_WINDOW)


def block_id(i: int, j: int) -> str:
    """The name of block (i, j) in the journal and the staged files.

    Args:
        i: the block's row index.
        j: the block's column index.

    Returns:
        ``"r{i}_c{j}"``.
    """
    return f"r{i}_c{j}"


@dataclass(frozen=True)
class Layout:
    """Blocks and windows of one scene."""

    height: int
    width: int
    block: int
    window: tuple[int, int]  # (rows, cols) of every window
    owned: dict[Block, list[Offset]]  # block -> its windows' offsets, row-major

    @property
    def block_rows(self) -> int:
        """Rows of blocks (the last one may be short)."""
        return math.ceil(self.height / self.block)

    @property
    def block_cols(self) -> int:
        """Columns of blocks (the last one may be narrow)."""
        return math.ceil(self.width / self.block)

    def blocks(self) -> list[Block]:
        """Every block of the scene.

        Returns:
            (row, col) indices in row-major (processing) order.
        """
        return [(i, j) for i in range(self.block_rows) for j in range(self.block_cols)]

    def core(self, i: int, j: int) -> tuple[int, int, int, int]:
        """The pixels block (i, j) outputs.

        Args:
            i: the block's row index.
            j: the block's column index.

        Returns:
            (row0, col0, row1, col1), end-exclusive, clipped to the scene.
        """
        b = self.block
        return i * b, j * b, min(self.height, (i + 1) * b), min(self.width, (j + 1) * b)

    def extended(self, i: int, j: int) -> tuple[int, int, int, int]:
        """The block plus the margin its windows reach into (right and below).

        Args:
            i: the block's row index.
            j: the block's column index.

        Returns:
            (row0, col0, row1, col1), end-exclusive, clipped to the scene.
        """
        b, (wh, ww) = self.block, self.window
        return i * b, j * b, min(self.height, (i + 1) * b + wh), min(self.width, (j + 1) * b + ww)

    def batches(self, blocks: Iterable[Block], batch_size: int) -> list[tuple[Block, list[Offset]]]:
        """The inference batches of some blocks; a batch never mixes two owners.

        Args:
            blocks: the blocks, in processing order.
            batch_size: the most windows a batch holds.

        Returns:
            (owner, window offsets) of every batch, in processing order; blocks owning no window have none.
        """
        return [(block, offsets[k:k + batch_size]) for block in blocks
                for offsets in [self.owned.get(block, [])] for k in range(0, len(offsets), batch_size)]


def plan(height: int, width: int, window: int, overlap: float, block: int) -> Layout:
    """The block layout of a scene and the windows each block owns.

    Args:
        height: scene rows.
        width: scene columns.
        window: the window size (clipped to the scene).
        overlap: the fraction neighbouring windows share, in [0, 1).
        block: the output block size in pixels.

    Returns:
        The layout.

    Raises:
        ValueError: if ``block`` is smaller than the window (a later block's windows would reach
            back into a finished block).
    """
    shape = (min(window, height), min(window, width))
    if block < max(shape):
        raise ValueError(f"block_size ({block}) must be at least the window ({max(shape)})")
    owned: dict[Block, list[Offset]] = {}
    for row in window_starts(height, shape[0], overlap):
        for col in window_starts(width, shape[1], overlap):
            owned.setdefault((row // block, col // block), []).append((row, col))
    return Layout(height, width, block, shape, owned)
