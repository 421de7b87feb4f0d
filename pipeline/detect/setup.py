"""Everything a detection checks and loads before its first window, in whichever process computes blocks.

:func:`set_up` is called by the process that writes a group's rasters and by every process that computes
some of its blocks (a Dask worker, a torchrun rank): each checks the inputs against the checkpoint, takes
the model from its process cache (:func:`~pipeline.detect.inference.cached_model`) and lays the scene out
the same way, so the block plan and the run's fingerprint agree everywhere.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from torch import nn

from pipeline.config import DetectConfig
from pipeline.detect.accumulate import ProbabilityDtype
from pipeline.detect.allocator import keep_large_buffers_on_heap
from pipeline.detect.inference import TextTensors, cached_model, prompt_embedding, semantic_classes
from pipeline.detect.inputs import GroupInputs, check_inputs, default_provenance
from pipeline.detect.staging import fingerprint
from pipeline.detect.windows import Layout, Weighting, default_window, importance_map, plan
from pipeline.errors import InputError
from pipeline.learn.checkpoint import file_sha256
from pipeline.learn.device import resolve_device
from pipeline.learn.normalization import BandStats

__all__ = ["DetectSettings", "Run", "set_up", "torch_threads"]


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
        block_tasks: with a Dask client at hand, compute the scene's blocks as tasks on the cluster.
        threads: torch intra-op threads while detecting (None: the process's setting).

    Raises:
        ValueError: for an overlap, probability dtype, batch size, thread count or weighting out of range.
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
    block_tasks: bool = False
    threads: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), not {self.overlap}")
        if self.probability_dtype not in ("uint8", "float32"):
            raise ValueError(f"probability_dtype must be 'uint8' or 'float32', not {self.probability_dtype!r}")
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, not {self.threads}")
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
class Run:
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


def _checkpoint_sha(checkpoint: Path) -> str:
    """The checkpoint's SHA-256, or an InputError naming it."""
    if not checkpoint.exists():
        raise InputError(checkpoint, "checkpoint not found")
    try:
        return file_sha256(checkpoint)
    except OSError as exc:
        raise InputError(checkpoint, f"checkpoint cannot be read ({exc.strerror or exc})") from None


def set_up(group_dir: Path, checkpoint: Path, settings: DetectSettings, provenance: dict[str, str] | None,
           tag_device: str | None = None) -> Run:
    """Check the inputs against the checkpoint, take the model and lay out the scene.

    Under torchrun a bare ``cuda`` (or ``auto``) is the rank's GPU (``LOCAL_RANK``).

    Args:
        group_dir: a prepared group folder.
        checkpoint: an inference-ready checkpoint.
        settings: the detection settings.
        provenance: tags for the outputs (default: the scene ids of the group's manifest).
        tag_device: the device type the tags name when the blocks are computed elsewhere (block tasks on
            GPU workers); None for this process's device.

    Returns:
        The run.

    Raises:
        InputError: naming the file, for a bad or unreadable checkpoint or input raster.
        GroupError: naming the group, for a missing role or mismatched grids.
        ConfigError: for a prompt given to a model without text, or a CUDA device where there is none.
        ValueError: for a window or block size that does not fit.
    """
    keep_large_buffers_on_heap()  # a Dask worker's allocator settings made detection 1.5x slower
    checkpoint_sha = _checkpoint_sha(checkpoint)
    device = resolve_device(settings.device, int(os.environ.get("LOCAL_RANK", "0")))
    payload, model = cached_model(checkpoint, checkpoint_sha, device)
    inputs = check_inputs(group_dir, checkpoint, payload)
    stats = {role: BandStats.from_dict(payload["normalization"][role]) for role in inputs.paths}
    text, prompt = prompt_embedding(checkpoint, payload, inputs.group, settings.prompt, device, model)
    classes_k = semantic_classes(checkpoint, payload)
    window = int(settings.window or default_window(payload))
    if window < 1:
        raise ValueError(f"window must be positive, not {window}")
    layout = plan(inputs.height, inputs.width, window, settings.overlap, settings.block_size)
    fingerprinted = {
        "window": list(layout.window), "overlap": settings.overlap, "weighting": settings.weighting,
        "tta": settings.tta, "block_size": settings.block_size, "probability_dtype": settings.probability_dtype,
        "threshold": settings.threshold, "inputs": list(inputs.paths),
        **({"prompt": prompt} if prompt is not None else {}),
    }
    run_fingerprint = fingerprint(checkpoint_sha, inputs, fingerprinted)
    detect_settings = {**fingerprinted, "batch_size": settings.batch_size, "device": tag_device or device.type}
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
    return Run(inputs, stats, device, model, text, prompt, classes_k, layout, run_fingerprint, tags)


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op threads set for the duration (a Dask worker's nanny leaves them at 1), then restored.

    Args:
        threads: the thread count, or None to leave the process's setting.

    Yields:
        Nothing.
    """
    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
