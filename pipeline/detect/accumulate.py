"""Blending: window predictions summed into per-block accumulators, finished blocks turned into rasters.

Each window's prediction is weighted by the importance map times the joint valid mask (0 wherever
any input is nodata, so such pixels end as nodata) and added to the accumulator of the block owning
the window: the weighted sums (change probability, and the class posteriors of semantic models)
plus the weight sum, over the block and one window of margin to the right and below
(:func:`own_sums`). The margin is handed on as two carries (see
:class:`~pipeline.detect.staging.Carries`); a block's own pixels are complete once the carries of
the blocks left, above-left and above it are added to its own sums (:func:`finish_block`), because
windows of later blocks do not reach back into it (``block_size >= window``).

Every pixel is therefore summed in one fixed order: its own block's windows in row-major order, then
the right carry, the above-left and the above bottom carries; and the completed sums are finalised on
the CPU. A block's own sums depend on nothing but its windows, so blocks can be computed in any order,
in other processes or on other machines (:mod:`~pipeline.detect.blocks`), and still give the same bits
as this module's streaming, one-block-after-the-other run (:func:`accumulate_blocks`).

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


def own_sums(block: Block, layout: Layout, blender: Blender, batches: Iterator[tuple[list[Offset], Batch]],
             batch_size: int) -> torch.Tensor:
    """The weighted sums of the windows ``block`` owns, over its extended rectangle.

    Args:
        block: (row, col) of the block.
        layout: the scene's layout.
        blender: adds batches to an accumulator.
        batches: the block's window batches next, in order (:meth:`Layout.batches`).
        batch_size: windows per batch, as ``batches`` were cut.

    Returns:
        The accumulator from :meth:`Blender.accumulator` over :meth:`Layout.extended`, holding only
        this block's windows (zero where none reaches).
    """
    ext = layout.extended(*block)
    acc = blender.accumulator(ext)
    for _ in range(0, len(layout.owned.get(block, [])), batch_size):
        offsets, batch = next(batches)
        blender.add(acc, (ext[0], ext[1]), offsets, batch)
    return acc


def hand_on(acc: torch.Tensor, layout: Layout, carries: Carries, i: int, j: int) -> torch.Tensor:
    """Stage the margins of block (i, j)'s own sums as its right and bottom carries.

    Args:
        acc: the block's own sums (:func:`own_sums`).
        layout: the scene's layout.
        carries: where the carries are kept and staged.
        i: the block's row index.
        j: the block's column index.

    Returns:
        The sums over the block's own pixels, on the CPU (a view of ``acc`` when it is there).
    """
    core = layout.core(i, j)
    split = (core[2] - core[0], core[3] - core[1])
    right = acc[:, :split[0], split[1]:]
    bottom = acc[:, split[0]:, :]
    # Copies: a view would keep the block's whole accumulator alive (a row of bottom carries then
    # held 10 × 52 MB at 20000 px instead of 10 × 10 MB).
    if right.shape[2]:
        carries.put("right", i, j, right.cpu().numpy().copy())
    if bottom.shape[1]:
        carries.put("bottom", i, j, bottom.cpu().numpy().copy())
    return acc[:, :split[0], :split[1]].cpu()


def finish_block(sums: torch.Tensor, layout: Layout, carries: Carries, staging: Staging,
                 encoding: tuple[ProbabilityDtype, float], i: int, j: int) -> None:
    """Complete block (i, j) with the earlier blocks' carries, finalise it, stage it and drop used carries.

    Args:
        sums: the block's own sums over its own pixels, on the CPU (added to in place).
        layout: the scene's layout.
        carries: the carries of the blocks left, above-left and above (staged or in memory).
        staging: where the finished block is staged and recorded.
        encoding: (probability dtype, class threshold) for :func:`finalise`.
        i: the block's row index.
        j: the block's column index.
    """
    b, core = layout.block, layout.core(i, j)
    origin = (core[0], core[1])
    # Contributions of earlier blocks' windows after the block's own, always in this order: the sums
    # are the same bits however the blocks were computed.
    add_piece(sums, origin, core, carries.get("right", i, j - 1), (i * b, j * b))
    add_piece(sums, origin, core, carries.get("bottom", i - 1, j - 1), (i * b, (j - 1) * b))
    add_piece(sums, origin, core, carries.get("bottom", i - 1, j), (i * b, j * b))
    staging.finish_block(block_id(i, j), finalise(sums, *encoding))
    carries.forget("right", i, j - 1)
    carries.forget("bottom", i - 1, j - 1)
    if j == layout.block_cols - 1:
        carries.forget("bottom", i - 1, j)


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
    carries = Carries(staging)
    for i, j in blocks:
        acc = own_sums((i, j), layout, blender, batches, batch_size)
        sums = hand_on(acc, layout, carries, i, j)  # carries are staged before the journal records the block
        finish_block(sums, layout, carries, staging, encoding, i, j)
        on_block(staging.done)
