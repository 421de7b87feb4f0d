"""One scene's output blocks as independent tasks: each computes its own sums, one writer completes them.

A block task (:func:`stage_block`) runs in any process that sees the group and the checkpoint (a Dask
worker, a torchrun rank): it sets the run up (the model from the process cache), reads its windows
directly with rasterio, sums them (:func:`~pipeline.detect.accumulate.own_sums`) and stages its right
and bottom carries, then its own sums (:meth:`~pipeline.detect.staging.Staging.save_sums`), into the
group's staging folder. Tasks do not depend on each other and may run in any order; a task that dies
leaves at most complete files of its own (atomic writes), so running it again is safe.

The writer (:func:`assemble`, the process that owns the journal) then completes the blocks in row-major
order with the same carries in the same order as a one-process run
(:func:`~pipeline.detect.accumulate.finish_block`): the rasters are bit for bit those of
:func:`~pipeline.detect.sliding.detect_group` run in one process.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.detect.accumulate import Blender, ProbabilityDtype, finish_block, hand_on, own_sums
from pipeline.detect.reading import window_batches
from pipeline.detect.setup import DetectSettings, Run, set_up, torch_threads
from pipeline.detect.staging import Carries, Staging
from pipeline.detect.windows import Block, block_id, importance_map
from pipeline.errors import ChangeflowError
from pipeline.io.raster import bounded_gdal_cache


@dataclass(frozen=True)
class BlockJob:
    """What a block task needs: paths and settings only (small to send; no weights, no arrays).

    Attributes:
        group_dir: the prepared group folder (as the task's host sees it).
        checkpoint: the checkpoint file (as the task's host sees it).
        settings: the detection settings.
        staging: the group's staging folder (``.detect-partial``), opened by the writer.
        fingerprint: the run's fingerprint; a task that computes another one refuses to stage.
    """

    group_dir: Path
    checkpoint: Path
    settings: DetectSettings
    staging: Path
    fingerprint: str


def pending(staging: Staging, blocks: list[Block]) -> list[Block]:
    """The blocks whose own sums are not staged yet.

    Args:
        staging: the group's staging.
        blocks: blocks not finished by the writer.

    Returns:
        Those of ``blocks`` without a staged sums file, in order.
    """
    return [block for block in blocks if not staging.sums_path(block_id(*block)).exists()]


def compute_sums(run: Run, settings: DetectSettings, blocks: list[Block], staging: Staging,
                 on_block: Callable[[Block], None] | None = None) -> None:
    """Compute and stage the own sums and carries of ``blocks``, in the given order.

    Args:
        run: the run, set up in this process.
        settings: the detection settings.
        blocks: the blocks to compute.
        staging: where carries and sums go.
        on_block: called with each block once its sums are staged.
    """
    weights = torch.from_numpy(importance_map(*run.layout.window, settings.weighting)).to(run.device)
    blender = Blender(run.model, weights, 1 + 2 * run.classes_k, settings.tta, run.text, run.device)
    carries = Carries(staging)
    jobs = run.layout.batches(blocks, settings.batch_size)
    with window_batches(run.inputs, run.stats, run.layout.window, run.device, jobs) as batches, \
            bounded_gdal_cache(), torch.inference_mode():
        for i, j in blocks:
            acc = own_sums((i, j), run.layout, blender, batches, settings.batch_size)
            sums = hand_on(acc, run.layout, carries, i, j)  # carries first: the sums file says "done"
            staging.save_sums(block_id(i, j), sums.numpy())
            if on_block is not None:
                on_block((i, j))


def stage_block(job: BlockJob, block: Block) -> str:
    """One block task: set up in this process, compute the block's own sums, stage them with its carries.

    Args:
        job: the group, checkpoint, settings and staging folder.
        block: (row, col) of the block.

    Returns:
        The block's id, once staged (at once when it already was).

    Raises:
        ChangeflowError: when this process's inputs or checkpoint give another fingerprint than the
            writer's (a changed file, or other files at the same paths on this host).
        InputError: naming the file, for a checkpoint or input this process cannot read.
    """
    staging = Staging(job.staging)
    if staging.sums_path(block_id(*block)).exists():
        return block_id(*block)
    with torch_threads(job.settings.threads):
        run = set_up(job.group_dir, job.checkpoint, job.settings, None)
        if run.fingerprint != job.fingerprint:
            raise ChangeflowError(f"{job.group_dir}: the checkpoint or input rasters seen by this process differ "
                                  "from the writer's (changed during the run, or not the same files on every host)")
        compute_sums(run, job.settings, [block], staging)
    return block_id(*block)


def assemble(staging: Staging, run: Run, encoding: tuple[ProbabilityDtype, float], blocks: list[Block],
             on_block: Callable[[int], None]) -> None:
    """Complete staged own sums into finished blocks, in row-major order, as the journal's owner.

    Args:
        staging: the group's staging, opened by this process (it owns the journal).
        run: the run (its layout).
        encoding: (probability dtype, class threshold).
        blocks: the blocks not yet finished, in row-major order; each has its sums staged.
        on_block: called with the number of finished blocks after each.

    Raises:
        ChangeflowError: when a block's sums are missing (a block task did not run).
    """
    missing = pending(staging, blocks)
    if missing:
        raise ChangeflowError(f"{staging.root}: {len(missing)} block(s) were not computed, first {block_id(*missing[0])}")
    carries = Carries(staging)
    for i, j in blocks:
        sums = torch.from_numpy(staging.load_sums(block_id(i, j)))
        finish_block(sums, run.layout, carries, staging, encoding, i, j)
        staging.sums_path(block_id(i, j)).unlink()
        on_block(staging.done)
