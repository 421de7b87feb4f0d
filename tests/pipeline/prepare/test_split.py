"""Split: blocked, seeded, balanced, and isolated."""

from __future__ import annotations

import pytest
from affine import Affine
from shapely.geometry import box

from pipeline.config import TilingConfig
from pipeline.prepare.grid import GroupGrid
from pipeline.prepare.split import BlockStats, assign_splits, fit_block_tiles, isolation_conflicts
from pipeline.prepare.tiling import tile_windows

RATIOS = {"train": 0.7, "val": 0.15, "test": 0.15}


def _blocks(n: int) -> dict:
    return {("g", i % 10, i // 10): BlockStats(12, 1000 * (i % 7), 12 * 512 * 512) for i in range(n)}


def test_split_is_seeded_and_reproducible():
    blocks = _blocks(60)
    assert assign_splits(blocks, RATIOS, 666) == assign_splits(dict(reversed(list(blocks.items()))), RATIOS, 666)
    assert assign_splits(blocks, RATIOS, 666) != assign_splits(blocks, RATIOS, 1)


def test_split_ratios_and_change_fraction_match_the_global_ones():
    blocks = _blocks(60)
    splits = assign_splits(blocks, RATIOS, 666)
    total = sum(b.tiles for b in blocks.values())
    global_change = sum(b.change_pixels for b in blocks.values()) / sum(b.labelled_pixels for b in blocks.values())
    for split, ratio in RATIOS.items():
        chosen = [b for k, b in blocks.items() if splits[k] == split]
        assert abs(sum(b.tiles for b in chosen) / total - ratio) < 0.05
        change = sum(b.change_pixels for b in chosen) / sum(b.labelled_pixels for b in chosen)
        assert abs(change - global_change) < 0.1 * global_change


def test_every_split_gets_a_block_when_there_are_enough():
    splits = assign_splits(_blocks(3), RATIOS, 666)
    assert sorted(splits.values()) == ["test", "train", "val"]


def test_tiles_that_touch_across_splits_are_dropped_evaluation_splits_first_kept():
    tiles = [
        ("t1", "train", box(0, 0, 10, 10)),
        ("v1", "val", box(10, 0, 20, 10)),  # touches t1
        ("x1", "test", box(15, 0, 25, 10)),  # overlaps v1
        ("t2", "train", box(40, 0, 50, 10)),
    ]
    # x1 (test) wins over v1 (val); with v1 gone, t1 no longer touches another split.
    assert isolation_conflicts(tiles) == ["v1"]
    assert isolation_conflicts(tiles[:2] + tiles[3:]) == ["t1"]


def _sparse_change_blocks(changed: set[int], n: int = 20) -> dict:
    """Twenty equal blocks; only those in ``changed`` hold change pixels (rare change)."""
    return {("g", i, 0): BlockStats(4, 500 if i in changed else 0, 4 * 4096) for i in range(n)}


@pytest.mark.parametrize("seed", [0, 1, 2, 666])
def test_every_split_gets_change_when_there_are_enough_changed_blocks(seed):
    # Three changed blocks among twenty: the ratio-only greedy put two or three of them in train.
    blocks = _sparse_change_blocks({2, 9, 15})
    splits = assign_splits(blocks, {"train": 0.6, "val": 0.2, "test": 0.2}, seed)
    assert sorted(splits[("g", i, 0)] for i in (2, 9, 15)) == ["test", "train", "val"]
    counts = {s: sum(b.tiles for k, b in blocks.items() if splits[k] == s) for s in ("train", "val", "test")}
    assert counts["train"] >= 40 and min(counts["val"], counts["test"]) >= 12


def test_two_changed_blocks_go_to_train_and_val():
    splits = assign_splits(_sparse_change_blocks({4, 11}), {"train": 0.6, "val": 0.2, "test": 0.2}, 666)
    assert sorted(splits[("g", i, 0)] for i in (4, 11)) == ["train", "val"]


RATIOS_622 = {"train": 0.6, "val": 0.2, "test": 0.2}


def test_blocks_shrink_until_the_ratios_can_be_met():
    # Issue 11: one 800 x 800 grid, 256 px tiles, block_tiles 4: a single block, all tiles in train.
    plan = fit_block_tiles([(800, 800)], size=256, block_tiles=4, ratios=RATIOS_622)
    assert (plan.requested, plan.used, plan.blocks, plan.needed) == (4, 1, 9, 5)
    assert "split.block_tiles 4 gives 1 block" in plan.note and "block_tiles 1" in plan.note
    # Enough blocks already: nothing changes and nothing is said.
    plan = fit_block_tiles([(4100, 4100)], size=256, block_tiles=4, ratios=RATIOS_622)
    assert (plan.used, plan.blocks, plan.note) == (4, 16, None)


def test_too_few_blocks_even_at_one_tile_is_a_note_not_an_error():
    # A small scene may be prepared only to detect on it: its tiles go to train, and the report says why.
    plan = fit_block_tiles([(256, 256), (300, 256)], size=256, block_tiles=4, ratios=RATIOS_622)
    assert (plan.used, plan.blocks) == (4, 2)
    assert plan.note.startswith("only 2 split block(s) even with split.block_tiles 1 (one 256 px tile)")
    assert "some splits stay empty" in plan.note
    # One-tile blocks help even when they are still too few: two splits instead of one.
    plan = fit_block_tiles([(600, 256)], size=256, block_tiles=4, ratios=RATIOS_622)
    assert (plan.used, plan.blocks) == (1, 2) and "some splits stay empty" in plan.note


def _split_scene(width: int, height: int, size: int, stride: int, block_tiles: int, ratios: dict) -> tuple:
    """Prepare's split path on one pixel-space grid: block plan → windows → block splits → isolation.

    Every third block holds change, so the change constraint is exercised as well as the ratios.
    """
    plan = fit_block_tiles([(width, height)], size, block_tiles, ratios)
    windows = tile_windows("g", GroupGrid(None, Affine.identity(), width, height), TilingConfig(size=size, stride=stride),
                           plan.used)
    blocks = {}
    for window in windows:
        key = ("g", *window.block)
        old = blocks.get(key, BlockStats(0, 0, 0))
        change = 100 if (window.block[0] + window.block[1]) % 3 == 0 else 0
        blocks[key] = BlockStats(old.tiles + 1, old.change_pixels + change, old.labelled_pixels + size * size)
    block_split = assign_splits(blocks, ratios, 666)
    splits = {w.tile_id: block_split[("g", *w.block)] for w in windows}
    footprints = [(w.tile_id, splits[w.tile_id], box(w.window.col_off, w.window.row_off,
                                                     w.window.col_off + size, w.window.row_off + size))
                  for w in windows]
    return plan, splits, isolation_conflicts(footprints)


# (width, height) of scenes of 1, 2, 4 and 9 blocks' worth of tiles at block_tiles 4 (a 1024 px block,
# 1 px gap between blocks), and issue 11's 800² scene (less than one block).
SCENES = {"800² (issue 11)": (800, 800), "1 block": (1024, 1024), "2 blocks": (2049, 1024),
          "4 blocks": (2049, 2049), "9 blocks": (3074, 3074)}


@pytest.mark.parametrize("scene", list(SCENES))
@pytest.mark.parametrize("ratios", [RATIOS_622, RATIOS], ids=["60-20-20", "70-15-15"])
def test_every_split_gets_tiles_and_splits_never_touch_at_any_scene_size(scene, ratios):
    plan, splits, conflicts = _split_scene(*SCENES[scene], size=256, stride=128, block_tiles=4, ratios=ratios)
    counts = {split: sum(1 for s in splits.values() if s == split) for split in ("train", "val", "test")}
    assert min(counts.values()) > 0, (scene, plan, counts)
    assert counts["train"] > max(counts["val"], counts["test"])
    assert conflicts == []  # blocks are 1 px apart: no tile of one split touches another split's
    assert plan.blocks >= plan.needed and (plan.note is None) == (plan.used == 4)


def test_the_800_px_scene_of_issue_11_gets_36_tiles_in_all_three_splits():
    plan, splits, _ = _split_scene(800, 800, size=256, stride=128, block_tiles=4, ratios=RATIOS_622)
    counts = {split: sum(1 for s in splits.values() if s == split) for split in ("train", "val", "test")}
    assert (plan.used, plan.blocks, len(splits)) == (1, 9, 36)  # 9 one-tile blocks of 2 × 2 windows
    assert counts == {"train": 20, "val": 8, "test": 8}


def test_nine_blocks_keep_the_configured_block_size():
    plan, splits, _ = _split_scene(3074, 3074, size=256, stride=128, block_tiles=4, ratios=RATIOS_622)
    assert (plan.used, plan.blocks, plan.note) == (4, 9, None)
    assert len(splits) == 9 * 7 * 7  # 7 × 7 windows of stride 128 in each 1024 px block
