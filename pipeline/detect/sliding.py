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
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from functools import partial
from pathlib import Path

import torch
from torch import nn

from pipeline.config import DetectConfig
from pipeline.detect.accumulate import Blender, ProbabilityDtype, accumulate_blocks
from pipeline.detect.inference import TextTensors, build_model, prompt_embedding, semantic_classes
from pipeline.detect.inputs import GroupInputs, check_inputs, default_provenance
from pipeline.detect.output import OutputPaths, existing_run, write_rasters
from pipeline.detect.reading import window_batches
from pipeline.detect.staging import PARTIAL_DIR, Staging, fingerprint
from pipeline.detect.windows import Block, Layout, Weighting, block_id, default_window, importance_map, plan
from pipeline.io.raster import bounded_gdal_cache
from pipeline.learn.checkpoint import file_sha256, load_checkpoint
from pipeline.learn.device import resolve_device
from pipeline.learn.normalization import BandStats

__all__ = ["DetectSettings", "DetectionResult", "Progress", "detect_group"]

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class DetectSettings:
    """How a group is detected (the inference keys of :class:`~pipeline.config.DetectConfig`).

    Attributes:
        window: window size in pixels; None for the checkpoint's training tile size.
        overlap: the fraction two neighbouring windows share, in [0, 1).
        batch_size: windows per forward pass.
        tta: also predict the h / v / hv flips and average.
        device: "auto", "cpu", "cuda" or "cuda:N".
        block_size: output block size in pixels (memory grows with its square).
        probability_dtype: "uint8" (p × 254, 255 nodata) or "float32" (NaN nodata).
        threshold: change where the probability exceeds it.
        weighting: "gaussian" or "uniform" blending weights.
        prompt: text-guided models: the prompt (None: the checkpoint's prompt for the group).

    Raises:
        ValueError: for an overlap, probability dtype, batch size or weighting out of range.
    """

    window: int | None = None
    overlap: float = 0.5
    batch_size: int = 8
    tta: bool = False
    device: str = "auto"
    block_size: int = 2048
    probability_dtype: ProbabilityDtype = "uint8"
    threshold: float = 0.5
    weighting: Weighting = "gaussian"
    prompt: str | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), not {self.overlap}")
        if self.probability_dtype not in ("uint8", "float32"):
            raise ValueError(f"probability_dtype must be 'uint8' or 'float32', not {self.probability_dtype!r}")
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        importance_map(1, 1, self.weighting)  # validates the name

    @classmethod
    def from_config(cls, config: DetectConfig) -> DetectSettings:
        """The settings of a validated detect config.

        Args:
            config: the ``detect`` config.

        Returns:
            Its inference keys as settings.

        Raises:
            ValueError: as the constructor.
        """
        return cls(**{field.name: getattr(config, field.name) for field in fields(cls)})


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


@dataclass(frozen=True)
class _Run:
    """Everything checked and loaded before the first window."""

    inputs: GroupInputs
    stats: dict[str, BandStats]
    device: torch.device
    model: nn.Module
    text: TextTensors | None
    prompt: str | None
    classes_k: int
    layout: Layout
    fingerprint: str
    tags: dict[str, str]  # provenance and settings, without the run id


def _set_up(group_dir: Path, checkpoint: Path, settings: DetectSettings, provenance: dict[str, str] | None) -> _Run:
    """Check the inputs against the checkpoint, rebuild the model and lay out the scene."""
    payload = load_checkpoint(checkpoint)
    inputs = check_inputs(group_dir, checkpoint, payload)
    stats = {role: BandStats.from_dict(payload["normalization"][role]) for role in inputs.paths}
    device = resolve_device(settings.device)
    model = build_model(checkpoint, payload, device)
    text, prompt = prompt_embedding(checkpoint, payload, inputs.group, settings.prompt, device, model)
    classes_k = semantic_classes(checkpoint, payload)
    window = int(settings.window or default_window(payload))
    if window < 1:
        raise ValueError(f"window must be positive, not {window}")
    layout = plan(inputs.height, inputs.width, window, settings.overlap, settings.block_size)
    checkpoint_sha = file_sha256(checkpoint)
    fingerprinted = {
        "window": list(layout.window), "overlap": settings.overlap, "weighting": settings.weighting,
        "tta": settings.tta, "block_size": settings.block_size, "probability_dtype": settings.probability_dtype,
        "threshold": settings.threshold, "inputs": list(inputs.paths),
        **({"prompt": prompt} if prompt is not None else {}),
    }
    run_fingerprint = fingerprint(checkpoint_sha, inputs, fingerprinted)
    detect_settings = {**fingerprinted, "batch_size": settings.batch_size, "device": device.type}
    tags = {
        **(provenance if provenance is not None else default_provenance(group_dir)),
        "GROUP": inputs.group,
        "MODEL": payload["model_name"],
        "CHECKPOINT": checkpoint.name,
        "CHECKPOINT_SHA256": checkpoint_sha,
        "CHECKPOINT_EPOCH": str(payload.get("epoch", "")),
        "DETECT_SETTINGS": json.dumps(detect_settings, sort_keys=True),
        "DETECT_FINGERPRINT": run_fingerprint,
    }
    return _Run(inputs, stats, device, model, text, prompt, classes_k, layout, run_fingerprint, tags)


def _announce(progress: Progress | None, description: str, total: int, done: int) -> None:
    """Report ``done`` of ``total`` blocks finished, when there is a progress callback."""
    if progress is not None:
        progress(description, done, total)


def _compute_blocks(
    run: _Run, settings: DetectSettings, blocks: list[Block], staging: Staging, on_block: Callable[[int], None]
) -> None:
    """Run the model over the windows of ``blocks``, staging each finished block."""
    weights = torch.from_numpy(importance_map(*run.layout.window, settings.weighting)).to(run.device)
    blender = Blender(run.model, weights, 1 + 2 * run.classes_k, settings.tta, run.text, run.device)
    jobs = run.layout.batches(blocks, settings.batch_size)
    encoding = (settings.probability_dtype, settings.threshold)
    with window_batches(run.inputs, run.stats, run.layout.window, run.device, jobs) as batches, \
            bounded_gdal_cache(), torch.inference_mode():
        accumulate_blocks(blocks, run.layout, blender, batches, staging, encoding, settings.batch_size, on_block)


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
    started = time.perf_counter()
    group_dir, checkpoint, out_dir = Path(group_dir), Path(checkpoint), Path(out_dir)
    run = _set_up(group_dir, checkpoint, settings, provenance)
    paths = OutputPaths.in_folder(out_dir, run.classes_k)
    blocks = run.layout.blocks()
    megapixels = run.inputs.height * run.inputs.width / 1e6
    staging = Staging(Path(staging_dir) if staging_dir is not None else out_dir / PARTIAL_DIR)
    if not staging.root.exists():  # finished outputs of the same run are kept (a rerun is a no-op)
        previous = existing_run(paths, {**run.tags, **({"RUN_ID": run_id} if run_id else {})})
        if previous is not None:
            return DetectionResult(paths.probability, paths.classes, 0, len(blocks), time.perf_counter() - started,
                                   megapixels, len(blocks), previous, paths.semantic, run.prompt)

    out_dir.mkdir(parents=True, exist_ok=True)
    done, run_id = staging.open(run.fingerprint, run_id, [block_id(i, j) for i, j in blocks])
    todo = blocks[len(done):]
    announce = partial(_announce, progress, f"detect {run.inputs.group}", len(blocks))
    announce(len(done))
    _compute_blocks(run, settings, todo, staging, announce)
    encoding = (settings.probability_dtype, settings.threshold)
    write_rasters(paths, staging, run.layout, run.inputs, {**run.tags, "RUN_ID": run_id}, encoding, run.classes_k)
    shutil.rmtree(staging.root, ignore_errors=True)
    return DetectionResult(paths.probability, paths.classes, len(todo), len(blocks),
                           time.perf_counter() - started, megapixels, len(done), run_id, paths.semantic, run.prompt)
