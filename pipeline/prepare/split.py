"""Split: spatially blocked, seeded train/val/test assignment with matched change fractions.

GOLD shuffled tiles (not places) and assigned them greedily to match the global change ratio, so
50 %-overlapping neighbours landed in train and val, and its test split was a copy of val. Here
whole blocks are assigned (``pipeline.prepare.tiling`` keeps tiles of different blocks apart), with
GOLD's greedy objective: the split's share of tiles close to its ratio and its change fraction
close to the global one (as a relative error, so that rare change still weighs). Block keys are sorted
before a seeded shuffle, so the result is the same on every run and machine (GOLD depended on Python's
string-hash seed). When the data allow it, every split gets some change: a split without change pixels
cannot be trained on or evaluated. Blocks too large for the ratios are shrunk (:func:`fit_block_tiles`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from shapely import STRtree
from shapely.geometry.base import BaseGeometry

from pipeline.prepare.tiling import block_extents

BlockKey = tuple[str, int, int]  # (group, block column, block row)
SPLITS = ("train", "val", "test")
# Relative change-fraction error weighs less than the tile share: ratios come first.
CHANGE_WEIGHT = 0.3


@dataclass(frozen=True)
class BlockStats:
    """Content of one spatial block: kept tiles, changed and labelled (not 255) label pixels."""

    tiles: int
    change_pixels: int
    labelled_pixels: int


def _cost(
    counts: dict[str, float], change: dict[str, float], labelled: dict[str, float],
    ratios: dict[str, float], global_change: float,
) -> float:
    total = sum(counts.values())
    cost = sum(abs(counts[s] / total - ratios[s]) for s in ratios)
    if global_change > 0:
        for split in ratios:
            if labelled[split] > 0:
                # Capped: with rare change, one changed block makes a split's fraction many times the
                # global one, and an uncapped error would outweigh the tile shares.
                cost += CHANGE_WEIGHT * min(1.0, abs(change[split] / labelled[split] / global_change - 1.0))
    return cost


def assign_splits(blocks: dict[BlockKey, BlockStats], ratios: dict[str, float], seed: int) -> dict[BlockKey, str]:
    """Split of every block; each split with a positive ratio gets a block, and change, when there are enough.

    Blocks are taken in a seeded shuffle of their sorted keys and each goes to the split that keeps
    the tile shares closest to ``ratios`` and the change fractions closest to the global one (GOLD's
    greedy objective); ties go to train, then val, then test. Two constraints narrow the choice when
    the remaining blocks are just enough: a split still without a block gets one, and a split still
    without change pixels gets a changed block (train first, then val, then test when fewer blocks
    than splits hold change); the first constraint wins when they disagree.

    Args:
        blocks: the stats of every block, by (group, block column, block row).
        ratios: the wanted share of tiles per split (``train``, ``val``, ``test``), summing to 1.
        seed: seed of the block order.

    Returns:
        The split name of every block.
    """
    active = {s: r for s, r in ratios.items() if r > 0}
    keys = sorted(blocks)
    order = [keys[i] for i in np.random.default_rng(seed).permutation(len(keys))]
    total_change = sum(b.change_pixels for b in blocks.values())
    total_labelled = sum(b.labelled_pixels for b in blocks.values())
    global_change = total_change / total_labelled if total_labelled else 0.0
    counts = dict.fromkeys(active, 0.0)
    change = dict.fromkeys(active, 0.0)
    labelled = dict.fromkeys(active, 0.0)
    changed_left = sum(1 for b in blocks.values() if b.change_pixels > 0)
    # The splits that should hold change: all of them when enough blocks are changed.
    wants_change = [s for s in SPLITS if s in active][:changed_left]
    assignment: dict[BlockKey, str] = {}
    for position, key in enumerate(order):
        stats = blocks[key]
        empty = [s for s in active if counts[s] == 0]
        remaining = len(order) - position
        candidates = empty if 0 < len(empty) >= remaining else list(active)
        if stats.change_pixels > 0:
            lacking = [s for s in wants_change if change[s] == 0]
            if 0 < len(lacking) >= changed_left and set(lacking) & set(candidates):
                candidates = [s for s in candidates if s in lacking]
            changed_left -= 1

        def cost_if(split: str) -> float:
            trial_counts = {**counts, split: counts[split] + stats.tiles}
            trial_change = {**change, split: change[split] + stats.change_pixels}
            trial_labelled = {**labelled, split: labelled[split] + stats.labelled_pixels}
            return _cost(trial_counts, trial_change, trial_labelled, active, global_change)

        best = min(candidates, key=lambda s: (cost_if(s), SPLITS.index(s)))
        assignment[key] = best
        counts[best] += stats.tiles
        change[best] += stats.change_pixels
        labelled[best] += stats.labelled_pixels
    return assignment


@dataclass(frozen=True)
class BlockPlan:
    """The split block size used: ``requested`` and ``used`` in tile sizes, the blocks it gives and needs."""

    requested: int
    used: int
    blocks: int
    needed: int
    note: str | None


def _count_blocks(extents: list[tuple[int, int]], size: int, block_tiles: int) -> int:
    block = block_tiles * size
    return sum(
        len(block_extents(width, block)) * len(block_extents(height, block))
        for width, height in extents if min(width, height) >= size
    )


def fit_block_tiles(
    extents: list[tuple[int, int]], size: int, block_tiles: int, ratios: dict[str, float]
) -> BlockPlan:
    """The largest block size, at most ``block_tiles``, that gives enough blocks for the ratios.

    Enough is one block for the smallest positive share (``ceil(1 / min ratio)``, at least one per
    split with a positive ratio). When no size gives that many, the size giving the most blocks is used.
    Blocks are counted on the grids' extents, before black tiles are dropped. Too few blocks for every
    split is a note, not an error: a small scene may be prepared only to run detection on it.

    Args:
        extents: (width, height) of every group grid, px.
        size: the tile size, px.
        block_tiles: the configured block side (``split.block_tiles``), in tile sizes.
        ratios: the split shares (``train``, ``val``, ``test``).

    Returns:
        The plan; its ``note`` explains a shrink or says which splits will stay empty (None when the
        configured size gives enough blocks).
    """
    shares = [r for r in ratios.values() if r > 0]
    needed = max(len(shares), math.ceil(1 / min(shares) - 1e-9))
    counts = {b: _count_blocks(extents, size, b) for b in range(block_tiles, 0, -1)}
    # The largest size reaching the goal, or the most blocks any size gives (counts run large to small).
    used = next(b for b, n in counts.items() if n >= min(needed, max(counts.values())))
    note = None
    if counts[used] < len(shares):
        note = (
            f"only {counts[used]} split block(s) even with split.block_tiles 1 (one {size} px tile), fewer than "
            f"the {len(shares)} splits with a positive ratio: some splits stay empty (training needs train and "
            "val tiles); use a smaller tiling.size or more scenes"
        )
    elif used != block_tiles:
        note = (
            f"split.block_tiles {block_tiles} gives {counts[block_tiles]} block(s), too few for the ratios "
            f"(at least {needed}); used block_tiles {used} ({counts[used]} blocks)"
        )
    return BlockPlan(block_tiles, used, counts[used], needed, note)


def isolation_conflicts(tiles: list[tuple[str, str, BaseGeometry]]) -> list[str]:
    """Tiles that overlap or touch a tile of another split (e.g. across overlapping groups).

    Evaluation splits win: a conflicting train tile is dropped before a val one, a val tile before a
    test one; a dropped tile causes no further drops.

    Args:
        tiles: (tile_id, split, geometry) of every kept tile, geometries in one CRS; split is
            ``train``, ``val`` or ``test``.

    Returns:
        The ids of the tiles to drop, sorted.
    """
    priority = {"test": 0, "val": 1, "train": 2}
    ordered = sorted(tiles, key=lambda t: (priority[t[1]], t[0]))
    geometries = [geometry for _, _, geometry in ordered]
    tree = STRtree(geometries)
    dropped: set[int] = set()
    for index, (_, split, geometry) in enumerate(ordered):
        if index in dropped:
            continue
        for other in tree.query(geometry, predicate="intersects"):
            if other > index and ordered[other][1] != split:
                dropped.add(int(other))
    return sorted(ordered[i][0] for i in dropped)
