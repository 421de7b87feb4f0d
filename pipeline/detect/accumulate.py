"""Blending: window predictions summed into per-block accumulators, finished blocks turned into rasters.

Each window's prediction is weighted by the importance map times the joint valid mask (0 wherever
any input is nodata, so such pixels end as nodata) and added to the accumulator of the block owning
the window: the weighted sums (change probability, and the class posteriors of semantic models)
plus the weight sum, over the block and one window of margin to the right and below. Blocks are
processed in row-major order. When a block's windows are done its own pixels are complete, because
windows of later blocks do not reach back into it (``block_size >= window``); they are finalised
and staged, and the margin is handed on as two carries (see :class:`~pipeline.detect.staging.Carries`).

Live memory is one accumulator of (block + window)² × 2 float32 (52 MB at 2048 + 512), the bottom
carries of one block row (≈ scene width × window × 8 bytes, 100 MB for 20 000 px at 512), a few
batches of normalised windows, and GDAL's block cache (``pipeline.io.raster.GDAL_CACHE_MB``); it
does not grow with the scene height.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from pipeline.detect.inference import TextTensors, predict
from pipeline.detect.reading import Batch
from pipeline.detect.staging import Carries, Staging
from pipeline.detect.vectorize import decode_uint8, is_change
from pipeline.detect.windows import Block, Layout, Offset, block_id
from pipeline.io.raster import NODATA_U8

PROBABILITY_SCALE = 254  # uint8 probability: round(p × 254); 255 is nodata

ProbabilityDtype = Literal["uint8", "float32"]
Rect = tuple[int, int, int, int]  # (row0, col0, row1, col1) in scene pixels


def add_piece(acc: torch.Tensor, origin: tuple[int, int], limit: Rect,
              piece: np.ndarray | torch.Tensor | None, piece_origin: tuple[int, int]) -> None:
    """``acc[rect ∩ limit] += piece[rect ∩ limit]``, rectangles in scene coordinates.

    Args:
        acc: an accumulator (C, h, w) whose pixel (0, 0) is scene pixel ``origin``.
        origin: (row, col) of the accumulator in the scene.
        limit: the part of the scene that may be added to.
        piece: (C, h', w') sums to add, or None (nothing to add).
        piece_origin: (row, col) of the piece in the scene.
    """
    if piece is None:
        return
    if isinstance(piece, np.ndarray):
        piece = torch.from_numpy(piece).to(acc.device)
    r0 = max(limit[0], piece_origin[0])
    c0 = max(limit[1], piece_origin[1])
    r1 = min(limit[2], piece_origin[0] + piece.shape[1])
    c1 = min(limit[3], piece_origin[1] + piece.shape[2])
    if r1 <= r0 or c1 <= c0:
        return
    acc[:, r0 - origin[0]:r1 - origin[0], c0 - origin[1]:c1 - origin[1]] += piece[
        :, r0 - piece_origin[0]:r1 - piece_origin[0], c0 - piece_origin[1]:c1 - piece_origin[1]
    ]


def _semantic_rasters(core: torch.Tensor, valid: np.ndarray, changed: np.ndarray) -> dict[str, np.ndarray]:
    """Per-date class maps (argmax of the blended posteriors) and from→to codes where changed."""
    k = (core.shape[0] - 2) // 2
    maps = [core[1 + index * k:1 + (index + 1) * k].argmax(0).to(torch.uint8).cpu().numpy() for index in (0, 1)]
    rasters = {}
    for name, classes_map in zip(("semantic_t1", "semantic_t2"), maps):
        rasters[name] = np.where(valid, classes_map, NODATA_U8).astype(np.uint8)[None]
    code = (1 + k * maps[0].astype(np.int32) + maps[1]).astype(np.uint8)
    transitions = np.where(changed, code, 0)
    rasters["transitions"] = np.where(valid, transitions, NODATA_U8).astype(np.uint8)[None]
    return rasters


def finalise(core: torch.Tensor, dtype: ProbabilityDtype, threshold: float) -> dict[str, np.ndarray]:
    """A finished block's sums → its rasters; weight 0 → nodata.

    Args:
        core: (weighted sums..., weight sum) over the block's own pixels.
        dtype: "uint8" (round(p × 254), 255 nodata) or "float32" (NaN nodata) probabilities.
        threshold: change where the written probability exceeds it (:func:`~pipeline.detect.vectorize.is_change`).

    Returns:
        (1, h, w) arrays: "probability" and "classes" (0, 1, 255 nodata); with semantic channels also
        "semantic_t1", "semantic_t2" and "transitions" (0 no change, 1 + K·from + to where changed).
    """
    weighted, weight = core[0], core[-1]
    valid_t = weight > 0
    p = torch.where(valid_t, weighted / torch.where(valid_t, weight, torch.ones_like(weight)), torch.zeros_like(weight))
    p = p.clamp(0.0, 1.0)
    valid = valid_t.cpu().numpy()
    if dtype == "uint8":
        q = torch.floor(p * PROBABILITY_SCALE + 0.5).to(torch.uint8).cpu().numpy()
        probability = np.where(valid, q, NODATA_U8).astype(np.uint8)
        stored = decode_uint8(q)
    else:
        stored = p.cpu().numpy().astype(np.float32)
        probability = np.where(valid, stored, np.float32(np.nan))
    # The rule applies to the probability as written, so thresholding the written raster again
    # (vectorize with a threshold, or a user in QGIS) gives this class raster pixel for pixel.
    changed = is_change(stored, threshold)
    classes = np.where(valid, changed, NODATA_U8).astype(np.uint8)
    rasters = _semantic_rasters(core, valid, changed) if core.shape[0] > 2 else {}
    return {"probability": probability[None], "classes": classes[None], **rasters}


@dataclass(frozen=True)
class Blender:
    """Adds model predictions, weighted by the importance map and the valid mask, to block sums."""

    model: nn.Module
    weights: torch.Tensor  # the importance map, on the device
    channels: int  # weighted sums (1 + 2K); the weight sum is the channel after them
    tta: bool
    text: TextTensors | None
    device: torch.device

    def accumulator(self, extended: Rect) -> torch.Tensor:
        """A zero accumulator over a block's extended rectangle.

        Args:
            extended: (row0, col0, row1, col1) of the block plus its margin, in scene pixels.

        Returns:
            float32 zeros (channels + 1, rows, cols) on the device: the weighted sums, then the weight sum.
        """
        shape = (self.channels + 1, extended[2] - extended[0], extended[3] - extended[1])
        return torch.zeros(shape, dtype=torch.float32, device=self.device)

    def add(self, acc: torch.Tensor, origin: tuple[int, int], offsets: list[Offset], batch: Batch) -> None:
        """Run the model on a batch and add its weighted windows, in order, to an accumulator.

        Windows that are nodata everywhere are left out before the forward pass.

        Args:
            acc: the block's accumulator from :meth:`accumulator`.
            origin: (row, col) of the accumulator in the scene.
            offsets: (row, col) of each window of the batch, in the scene.
            batch: the windows' normalised tensors and joint valid mask.
        """
        tensors, mask = batch
        keep = mask.flatten(1).any(dim=1)
        if not bool(keep.any()):
            return  # every window of the batch is nodata everywhere
        if not bool(keep.all()):
            tensors, mask = [t[keep] for t in tensors], mask[keep]
            offsets = [o for o, k in zip(offsets, keep.tolist()) if k]
        t1, t2 = (t.to(self.device, non_blocking=True) for t in tensors)
        mask = mask.to(self.device, non_blocking=True)
        w = self.weights * mask
        wp = w[:, None] * predict(self.model, t1, t2, self.tta, self.text)
        wh, ww = self.weights.shape
        for k, (row, col) in enumerate(offsets):
            r, c = row - origin[0], col - origin[1]
            acc[:self.channels, r:r + wh, c:c + ww] += wp[k]
            acc[self.channels, r:r + wh, c:c + ww] += w[k]


def _hand_on(acc: torch.Tensor, split: tuple[int, int], carries: Carries, i: int, j: int) -> None:
    """Keep the margin of block (i, j) past ``split`` (rows, cols) as its right and bottom carries."""
    right = acc[:, :split[0], split[1]:]
    bottom = acc[:, split[0]:, :]
    # Copies: a view would keep the block's whole accumulator alive (a row of bottom carries then
    # held 10 × 52 MB at 20000 px instead of 10 × 10 MB).
    if right.shape[2]:
        carries.put("right", i, j, right.cpu().numpy().copy())
    if bottom.shape[1]:
        carries.put("bottom", i, j, bottom.cpu().numpy().copy())


def accumulate_blocks(
    blocks: Iterable[Block],
    layout: Layout,
    blender: Blender,
    batches: Iterator[tuple[list[Offset], Batch]],
    staging: Staging,
    encoding: tuple[ProbabilityDtype, float],
    batch_size: int,
    on_block: Callable[[int], None],
) -> None:
    """Compute ``blocks`` in order, staging each finished block and handing its margins on.

    Args:
        blocks: the blocks still to do, in row-major order.
        layout: the scene's layout.
        blender: adds batches to an accumulator.
        batches: the blocks' window batches, in order (:func:`~pipeline.detect.reading.window_batches`).
        staging: where finished blocks, carries and the journal go.
        encoding: (probability dtype, class threshold) for :func:`finalise`.
        batch_size: windows per batch, as ``batches`` were cut.
        on_block: called with the number of finished blocks after each block is recorded.
    """
    carries, b = Carries(staging), layout.block
    for i, j in blocks:
        ext, core = layout.extended(i, j), layout.core(i, j)
        origin = (ext[0], ext[1])
        acc = blender.accumulator(ext)
        # Contributions of earlier blocks' windows, always in this order: the sums stay bit-identical.
        add_piece(acc, origin, core, carries.get("right", i, j - 1), (i * b, j * b))
        add_piece(acc, origin, core, carries.get("bottom", i - 1, j - 1), (i * b, (j - 1) * b))
        add_piece(acc, origin, core, carries.get("bottom", i - 1, j), (i * b, j * b))
        for _ in range(0, len(layout.owned.get((i, j), [])), batch_size):
            offsets, batch = next(batches)
            blender.add(acc, origin, offsets, batch)
        split = (core[2] - origin[0], core[3] - origin[1])
        _hand_on(acc, split, carries, i, j)  # carries are staged before the journal records the block
        staging.finish_block(block_id(i, j), finalise(acc[:, :split[0], :split[1]], *encoding))
        carries.forget("right", i, j - 1)
        carries.forget("bottom", i - 1, j - 1)
        if j == layout.block_cols - 1:
            carries.forget("bottom", i - 1, j)
        on_block(staging.done)
