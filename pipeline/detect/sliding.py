"""Detection: streamed sliding-window inference over a whole co-registered scene group.

What it does (anchors §6, nnU-Net's recipe):

- windows of the model's tile size, ``overlap`` apart (50 % by default), spread evenly so that the last
  window sits flush with the image edge (no padding; :mod:`~pipeline.detect.windows`);
- each window's change probability (softmax, optionally averaged over flips;
  :mod:`~pipeline.detect.inference`) is blended with a Gaussian importance map (σ = size/8,
  normalised to a maximum of 1, zero weights raised to the smallest non-zero one) or a uniform one;
  the weight is 0 wherever any input is nodata, so such pixels end as nodata
  (:mod:`~pipeline.detect.accumulate`);
- the outputs are a probability COG (uint8 0–254 with 255 = nodata, or float32 with NaN) and a class
  COG (0 no change, 1 change, 255 nodata), with overviews, the group's georeferencing and provenance
  (:mod:`~pipeline.detect.output`).

The scene is streamed block by block with bounded memory (:mod:`~pipeline.detect.accumulate`), its
windows read ahead of the model (:mod:`~pipeline.detect.reading`), and every finished block is staged
so that a killed run resumes to byte-identical rasters (:mod:`~pipeline.detect.staging`). When every
block is done the staged blocks are written to COGs in ``out_dir`` and the partial folder is removed.

The blocks can also be computed elsewhere, to the same bits: as tasks on the Dask cluster at hand
(``block_tasks``; :mod:`~pipeline.detect.cluster`, :mod:`~pipeline.detect.blocks`) or shared by
torchrun's ranks (:mod:`~pipeline.detect.shard`); this process then completes them and writes the COGs.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch

from pipeline.detect.accumulate import Blender, accumulate_blocks
from pipeline.detect.blocks import BlockJob, assemble
from pipeline.detect.cluster import dask_client, stage_on_cluster, worker_device
from pipeline.detect.output import OutputPaths, existing_run, write_rasters
from pipeline.detect.reading import window_batches
from pipeline.detect.setup import DetectSettings, Run, set_up, torch_threads
from pipeline.detect.shard import Shard, stage_shard
from pipeline.detect.staging import PARTIAL_DIR, Staging
from pipeline.detect.windows import Block, block_id, importance_map
from pipeline.io.raster import bounded_gdal_cache

__all__ = ["DetectSettings", "DetectionResult", "Progress", "detect_group"]

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class DetectionResult:
    """Where the rasters are and what the call did.

    ``blocks_done`` blocks were computed by this call, ``blocks_resumed`` came from an interrupted
    earlier run (or all of them when the outputs were already up to date).
    """

    probability: Path
    classes: Path
    blocks_done: int
    blocks_total: int
    seconds: float
    megapixels: float
    blocks_resumed: int = 0
    run_id: str = ""
    semantic: dict[str, Path] | None = None  # semantic change models: SEMANTIC_FILES keys → paths
    prompt: str | None = None  # text-guided models: the prompt used


def _announce(progress: Progress | None, description: str, total: int, done: int) -> None:
    """Report ``done`` of ``total`` blocks finished, when there is a progress callback."""
    if progress is not None:
        progress(description, done, total)


def _compute_blocks(
    run: Run, settings: DetectSettings, blocks: list[Block], staging: Staging, on_block: Callable[[int], None]
) -> None:
    """Run the model over the windows of ``blocks`` in this process, staging each finished block."""
    weights = torch.from_numpy(importance_map(*run.layout.window, settings.weighting)).to(run.device)
    blender = Blender(run.model, weights, 1 + 2 * run.classes_k, settings.tta, run.text, run.device)
    jobs = run.layout.batches(blocks, settings.batch_size)
    encoding = (settings.probability_dtype, settings.threshold)
    with window_batches(run.inputs, run.stats, run.layout.window, run.device, jobs) as batches, \
            bounded_gdal_cache(), torch.inference_mode():
        accumulate_blocks(blocks, run.layout, blender, batches, staging, encoding, settings.batch_size, on_block)


@contextmanager
def _block_cluster(settings: DetectSettings) -> Iterator[Any]:
    """The Dask client block tasks go to: only with ``block_tasks``, outside torchrun, when one is at hand."""
    if not settings.block_tasks or Shard.from_env().world_size > 1:
        yield None
        return
    with dask_client() as client:
        yield client


def _compute(run: Run, job: BlockJob, blocks: list[Block], staging: Staging, on_block: Callable[[int], None],
             client: Any) -> None:
    """Compute ``blocks``: shared by torchrun's ranks, as tasks on the Dask ``client``, or here one by one."""
    shard = Shard.from_env()
    if shard.world_size > 1:
        stage_shard(run, job, shard, staging)
    elif client is not None:
        stage_on_cluster(client, job, blocks, staging)
    else:
        _compute_blocks(run, job.settings, blocks, staging, on_block)
        return
    assemble(staging, run, (job.settings.probability_dtype, job.settings.threshold), blocks, on_block)


def detect_group(
    group_dir: Path,
    checkpoint: Path,
    out_dir: Path,
    settings: DetectSettings = DetectSettings(),
    *,
    run_id: str | None = None,
    provenance: dict[str, str] | None = None,
    progress: Progress | None = None,
    staging_dir: Path | None = None,
) -> DetectionResult:
    """Sliding-window change detection over the grid rasters of ``group_dir`` into ``out_dir``.

    Finished outputs of the same run are kept (a rerun is a no-op); an interrupted run resumes.

    Args:
        group_dir: a prepare output ``OUT/groups/{group}`` (``grid/{A,B,C}.tif``).
        checkpoint: an inference-ready checkpoint; it names the two inputs (e.g. A and B).
        out_dir: where the rasters go (``change_probability.tif``, ``change_class.tif``; semantic
            change models also ``semantic_t1.tif``, ``semantic_t2.tif``, ``semantic_change.tif``).
        settings: window, overlap, blending, batch, device, encoding and prompt.
        run_id: the run id tagged on the outputs (default: an interrupted run's, else a new one).
        provenance: tags for the outputs (default: the scene ids of the group's manifest).
        progress: called as ``progress(description, blocks_finished, blocks_total)`` after each block.
        staging_dir: where finished blocks are staged for a resume (default ``out_dir/.detect-partial``);
            removed once the rasters are written.

    Returns:
        The paths of the rasters and what the call did.

    Raises:
        InputError: naming the file, for a bad checkpoint or input raster (before any inference).
        GroupError: naming the group, for a missing role or mismatched grids.
        ConfigError: for a prompt given to a model without text.
        ValueError: for a window or block size that does not fit.
    """
    with torch_threads(settings.threads):
        return _detect(Path(group_dir), Path(checkpoint), Path(out_dir), settings, run_id, provenance, progress,
                       Path(staging_dir) if staging_dir is not None else Path(out_dir) / PARTIAL_DIR)


def _detect(group_dir: Path, checkpoint: Path, out_dir: Path, settings: DetectSettings, run_id: str | None,
            provenance: dict[str, str] | None, progress: Progress | None, staging_dir: Path) -> DetectionResult:
    """:func:`detect_group` with its paths resolved, inside its thread setting."""
    started = time.perf_counter()
    with _block_cluster(settings) as client:
        # Checked before anything is staged; this process then only plans and writes, on the CPU.
        tag_device = worker_device(client, settings.device) if client is not None else None
        run = set_up(group_dir, checkpoint, replace(settings, device="cpu") if tag_device else settings, provenance,
                     tag_device)
        paths = OutputPaths.in_folder(out_dir, run.classes_k)
        blocks = run.layout.blocks()
        megapixels = run.inputs.height * run.inputs.width / 1e6
        staging = Staging(staging_dir)
        if not staging.root.exists():  # finished outputs of the same run are kept (a rerun is a no-op)
            previous = existing_run(paths, {**run.tags, **({"RUN_ID": run_id} if run_id else {})})
            if previous is not None:
                return DetectionResult(paths.probability, paths.classes, 0, len(blocks),
                                       time.perf_counter() - started, megapixels, len(blocks), previous,
                                       paths.semantic, run.prompt)

        out_dir.mkdir(parents=True, exist_ok=True)
        done, run_id = staging.open(run.fingerprint, run_id, [block_id(i, j) for i, j in blocks])
        todo = blocks[len(done):]
        announce = partial(_announce, progress, f"detect {run.inputs.group}", len(blocks))
        announce(len(done))
        _compute(run, BlockJob(group_dir, checkpoint, settings, staging.root, run.fingerprint), todo, staging,
                 announce, client)
    encoding = (settings.probability_dtype, settings.threshold)
    write_rasters(paths, staging, run.layout, run.inputs, {**run.tags, "RUN_ID": run_id}, encoding, run.classes_k)
    shutil.rmtree(staging.root, ignore_errors=True)
    return DetectionResult(paths.probability, paths.classes, len(todo), len(blocks),
                           time.perf_counter() - started, megapixels, len(done), run_id, paths.semantic, run.prompt)
