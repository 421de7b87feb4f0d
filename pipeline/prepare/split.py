"""Split: spatially blocked, seeded train/val/test assignment with matched change fractions.

GOLD shuffled tiles (not places) and assigned them greedily to match the global change ratio, so
50 %-overlapping neighbours landed in train and val, and its test split was a copy of val. Here
whole blocks are assigned (``pipeline.prepare.tiling`` keeps tiles of different blocks apart), with
GOLD's greedy objective: the split's share of tiles close to its ratio and its change fraction
close to the global one (as a relative error, so that rare change still weighs). Block keys are sorted before a seeded shuffle, so the result is the same
on every run and machine (GOLD depended on Python's string-hash seed).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from shapely import STRtree
from shapely.geometry.base import BaseGeometry

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
                cost += CHANGE_WEIGHT * abs(change[split] / labelled[split] / global_change - 1.0)
    return cost


def assign_splits(blocks: dict[BlockKey, BlockStats], ratios: dict[str, float], seed: int) -> dict[BlockKey, str]:
    """Split of every block; each split with a positive ratio gets a block when there are enough.

    Blocks are taken in a seeded shuffle of their sorted keys and each goes to the split that keeps
    the tile shares closest to ``ratios`` and the change fractions closest to the global one (GOLD's
    greedy objective); ties go to train, then val, then test.

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
    assignment: dict[BlockKey, str] = {}
    for position, key in enumerate(order):
        stats = blocks[key]
        empty = [s for s in active if counts[s] == 0]
        remaining = len(order) - position
        candidates = empty if 0 < len(empty) >= remaining else list(active)

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
