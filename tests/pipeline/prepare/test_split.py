"""Split: blocked, seeded, balanced, and isolated."""

from __future__ import annotations

from shapely.geometry import box

from pipeline.prepare.split import BlockStats, assign_splits, isolation_conflicts

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
