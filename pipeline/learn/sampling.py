"""Training draws: the tiles each epoch's optimiser steps see, with a share of crops around change.

On one scene, change is rare: most random crops hold none, and a model trained on them learns "never
change". Class-balanced sampling draws a configured share of the samples as crops that contain a
change pixel, and the rest uniformly (the foreground oversampling of nnU-Net, Isensee et al. 2021,
Nature Methods 18:203, which guarantees a foreground voxel in a third of its patches). An epoch
is a fixed number of optimiser steps, not a pass over the tiles: with a step budget on a handful of
tiles, an epoch repeats tiles (each repetition with its own augmentation) instead of the budget forcing
hundreds of epochs. The draws depend only on (seed, epoch), so a resumed run sees the same samples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from pipeline.config import TrainConfig
from pipeline.learn.dataset import TileDataset

Draw = tuple[int, bool]  # (tile row in the split, whether the crop must hold change)


def steps_per_epoch(config: TrainConfig, tiles: int, world_size: int = 1) -> int:
    """Optimiser steps between two validations.

    Args:
        config: the training config (``steps_per_epoch``, ``max_steps``, ``epochs``, ``batch_size``).
        tiles: the train tile count.
        world_size: the number of training processes (each draws a batch per step).

    Returns:
        ``config.steps_per_epoch`` when set; else one pass over the tiles (``tiles // global batch``, at
        least 1), raised to ``ceil(max_steps / epochs)`` under a step budget so ``epochs`` stays an upper bound.
    """
    if config.steps_per_epoch is not None:
        return config.steps_per_epoch
    one_pass = max(1, tiles // (config.batch_size * world_size))
    if config.max_steps is None:
        return one_pass
    return max(one_pass, math.ceil(config.max_steps / config.epochs))


def planned_epochs(config: TrainConfig, per_epoch: int) -> int:
    """The epochs a run plans for (the LR schedule's length): ``epochs``, fewer under a step budget.

    Args:
        config: the training config.
        per_epoch: the steps per epoch from :func:`steps_per_epoch`.

    Returns:
        ``min(epochs, ceil(max_steps / per_epoch))``, or ``epochs`` without a step budget.
    """
    if config.max_steps is None:
        return config.epochs
    return min(config.epochs, math.ceil(config.max_steps / per_epoch))


def _cycled(pool: Sequence[int], count: int, rng: np.random.Generator) -> list[int]:
    """``count`` items of ``pool``: shuffled passes over it, one after the other."""
    out: list[int] = []
    while len(out) < count:
        out += [int(pool[i]) for i in rng.permutation(len(pool))]
    return out[:count]


def epoch_draws(tiles: int, changed: Sequence[int], samples: int, change_share: float | None, seed: int,
                epoch: int) -> list[Draw]:
    """The samples of one epoch, in training order.

    Args:
        tiles: the train tile count.
        changed: the rows of the train tiles that hold change.
        samples: the samples to draw (steps × batch × processes).
        change_share: the share drawn as crops around change from ``changed``; None (or no changed
            tile): shuffled passes over every tile.
        seed: the training seed.
        epoch: the epoch (0-based).

    Returns:
        ``samples`` draws (tile row, crop around change); ``round(change_share × samples)`` of them are
        change draws, placed at random among the others.
    """
    rng = np.random.default_rng((seed, epoch))
    if not change_share or not changed:
        return [(tile, False) for tile in _cycled(range(tiles), samples, rng)]
    focused = round(change_share * samples)
    draws = [(tile, True) for tile in _cycled(changed, focused, rng)]
    draws += [(tile, False) for tile in _cycled(range(tiles), samples - focused, rng)]
    return [draws[i] for i in rng.permutation(samples)]


class DrawnSamples(Dataset):
    """One process's share of an epoch's draws, read from the train split's :class:`TileDataset`.

    Args:
        tiles: the train split (its epoch set by the caller).
        draws: the whole epoch's draws from :func:`epoch_draws`.
        rank: this process's rank; it reads draws ``rank, rank + world_size, ...``.
        world_size: the number of processes.
    """

    def __init__(self, tiles: TileDataset, draws: list[Draw], rank: int = 0, world_size: int = 1) -> None:
        self.tiles = tiles
        self.positions = list(range(rank, len(draws), world_size))
        self.draws = draws

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        position = self.positions[item]
        tile, focus = self.draws[position]
        return self.tiles.sample(tile, position, focus_change=focus)
