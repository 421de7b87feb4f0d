"""Training draws: steps per epoch under a step budget, class-balanced draws, crops around change."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import TrainConfig
from pipeline.learn.augment import AugmentSettings, paired_geometry
from pipeline.learn.dataset import TileDataset, changed_tiles, fit_normalization, load_index
from pipeline.learn.sampling import DrawnSamples, epoch_draws, planned_epochs, steps_per_epoch
from tests.conftest import write_folder_dataset


def _config(**settings) -> TrainConfig:
    return TrainConfig(data="data", **settings)


def test_a_step_budget_on_four_tiles_does_not_force_hundreds_of_epochs():
    # Issue 11: a 4-tile half scene with batch 8 is one step per pass; 600 steps forced 600 epochs.
    config = _config(max_steps=600, epochs=20, batch_size=8)
    per_epoch = steps_per_epoch(config, tiles=4)
    assert (per_epoch, planned_epochs(config, per_epoch)) == (30, 20)
    # A large set keeps one pass per epoch; the budget then ends training before `epochs`.
    config = _config(max_steps=600, epochs=20, batch_size=8)
    assert steps_per_epoch(config, tiles=800) == 100 and planned_epochs(config, 100) == 6
    # Without a budget: one pass (at least one step); DDP processes share the pass.
    assert steps_per_epoch(_config(batch_size=8), tiles=4) == 1
    assert steps_per_epoch(_config(batch_size=8), tiles=800, world_size=2) == 50
    assert steps_per_epoch(_config(steps_per_epoch=7, max_steps=600), tiles=4) == 7


def test_change_share_draws_that_many_crops_around_change():
    draws = epoch_draws(tiles=10, changed=[2, 7], samples=40, change_share=0.5, seed=0, epoch=3)
    focused = [tile for tile, focus in draws if focus]
    assert len(draws) == 40 and len(focused) == 20
    assert set(focused) == {2, 7} and focused.count(2) == focused.count(7) == 10  # shuffled passes
    assert {tile for tile, focus in draws if not focus} == set(range(10))
    # The draws depend on (seed, epoch) only: a resumed run sees the same ones.
    assert draws == epoch_draws(10, [2, 7], 40, 0.5, seed=0, epoch=3)
    assert draws != epoch_draws(10, [2, 7], 40, 0.5, seed=0, epoch=4)


def test_without_change_share_an_epoch_is_shuffled_passes_over_every_tile():
    draws = epoch_draws(tiles=6, changed=[1], samples=12, change_share=None, seed=0, epoch=0)
    tiles = [tile for tile, focus in draws]
    assert not any(focus for _, focus in draws)
    assert sorted(tiles[:6]) == sorted(tiles[6:]) == list(range(6))
    # No changed tile: the share cannot be met, every draw is plain.
    assert not any(focus for _, focus in epoch_draws(6, [], 12, 0.5, 0, 0))


def test_processes_read_disjoint_parts_of_the_epoch():
    draws = epoch_draws(tiles=5, changed=[0], samples=8, change_share=0.5, seed=1, epoch=0)
    ranks = [DrawnSamples(None, draws, rank, 2) for rank in range(2)]
    assert [len(r) for r in ranks] == [4, 4]
    assert sorted(ranks[0].positions + ranks[1].positions) == list(range(8))


def test_a_focused_crop_holds_the_focus_pixel_and_no_focus_keeps_the_old_draws():
    label = np.zeros((64, 64), np.int64)
    label[60, 2] = 1  # one change pixel near a corner
    arrays = {"A": np.random.default_rng(0).random((2, 64, 64)), "label": label}
    settings = AugmentSettings(crop=16)
    for seed in range(30):
        out = paired_geometry(arrays, settings, np.random.default_rng(seed), focus=label == 1)
        assert out["label"].shape == (16, 16) and out["label"].sum() == 1
        plain = paired_geometry(arrays, settings, np.random.default_rng(seed))
        again = paired_geometry(arrays, settings, np.random.default_rng(seed), focus=np.zeros((64, 64), bool))
        assert np.array_equal(plain["A"], again["A"])


@pytest.fixture
def tiles(tmp_path):
    index = load_index(write_folder_dataset(tmp_path / "data", tiles=3))
    stats = fit_normalization(index, {"A": "optical", "B": "optical"})
    return index, TileDataset(index, "train", stats, augment=AugmentSettings(crop=16), seed=0)


def test_samples_drawn_around_change_hold_change(tiles):
    index, dataset = tiles
    assert changed_tiles(index, "train") == [0, 1, 2]
    focused = [dataset.sample(k % 3, k, focus_change=True)["label"] for k in range(24)]
    plain = [dataset.sample(k % 3, k)["label"] for k in range(24)]
    assert all((label == 1).any() for label in focused)
    assert sum(bool((label == 1).any()) for label in plain) < 24  # 3 squares of 12² in 64²: crops miss them
    # The same tile drawn at two places in an epoch gets two augmentations; dataset[i] keeps its draw.
    assert not np.array_equal(dataset.sample(0, 1)["A"], dataset.sample(0, 2)["A"])
    assert np.array_equal(dataset[0]["A"], dataset.sample(0)["A"])
