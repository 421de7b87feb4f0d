"""Detection: streamed sliding-window inference over a whole co-registered scene group.

What it does (anchors §6, nnU-Net's recipe):

- windows of the model's tile size, ``overlap`` apart (50 % by default), spread evenly so that the last
  window sits flush with the image edge (no padding);
- each window's change probability (softmax, optionally averaged over flips) is blended with a
  Gaussian importance map (σ = size/8, normalised to a maximum of 1, zero weights raised to the
  smallest non-zero one) or a uniform one; the weight is 0 wherever any input is nodata, so such
  pixels end as nodata;
- the outputs are a probability COG (uint8 0–254 with 255 = nodata, or float32 with NaN) and a class
  COG (0 no change, 1 change, 255 nodata), with overviews, the group's georeferencing and provenance.

Streaming and bounded memory
----------------------------
The scene is cut into output blocks of ``block_size`` px, processed in row-major order. Every window
is computed exactly once, by the block holding its top-left pixel (its *owner*). The owner keeps an
accumulator (weighted probability sum, weight sum) over its block plus one window of margin to the
right and below. When its windows are done:

- the block's own pixels are complete, because windows of blocks further on in row-major order do
  not reach back into it (``block_size >= window``); they are finalised and recorded;
- the margin is handed on as two *carries*: ``right`` (the strip over the next block in the row)
  and ``bottom`` (the strip over the blocks below, corner included).

Live memory is one accumulator of (block + window)² × 2 float32 (52 MB at 2048 + 512), the bottom
carries of one block row (≈ scene width × window × 8 bytes, 100 MB for 20 000 px at 512), a few
batches of normalised windows, and GDAL's block cache, capped at ``GDAL_CACHE_MB``; it does not
grow with the scene height. On a GPU, inputs are read window by window in background threads (one
rasterio dataset per thread) a few batches ahead of the model, so reading and normalising overlap
compute. On a CPU whose cores torch already uses, they are read in the main thread between batches:
reading costs 25–35 ms per 512² window (4-band A + SAR B) against 0.7–1.5 s of forward, and reader
threads there only take cores from torch (measured at 2000² on 2 busy cores: end-to-end / bare
forward 0.96 FC-Siam-diff and 0.86 GOLD-lite in the main thread, 1.04 and 0.91 with two reader
threads, which also cost 300 MB more memory).
Staged blocks take 2 bytes per pixel on disk (5 with float32 probabilities) until the COGs are
written.

Resume
------
``out_dir/.detect-partial/`` holds, per finished block, its outputs (``blocks/r{i}_c{j}.npz``) and
its carries (``carries/*.npy``), each written to a temporary name and renamed, then the block id is
appended to ``journal.json`` (also replaced atomically). A killed run restarts at the first block
not in the journal, taking the carries of finished blocks from disk: the accumulation is the same
sum in the same order, so the rasters are byte-identical to an uninterrupted run and finished blocks
are never recomputed. The journal carries a fingerprint of the checkpoint, the inputs and the
output-affecting settings; a mismatch discards the partial work. When every block is done the
staged blocks are written to tiled GTiffs, converted to COGs and renamed into ``out_dir``, and the
partial folder is removed.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import threading
import time
import uuid
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import rasterio
import torch
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window
from torch import nn

import models
from pipeline.config import TextConfig, TilingConfig
from pipeline.errors import ChangeflowError, ConfigError, GroupError, InputError
from pipeline.io.cog import write_cog_from_blocks
from pipeline.io.raster import NODATA_U8, bounded_gdal_cache, is_integer, read_window
from pipeline.learn.checkpoint import file_sha256, load_checkpoint
from pipeline.learn.device import resolve_device
from pipeline.learn.normalization import BandStats, normalize

PROBABILITY_FILE = "change_probability.tif"
CLASS_FILE = "change_class.tif"
# Semantic change models only: class maps per date, and the from→to code of changed pixels.
SEMANTIC_FILES = {"semantic_t1": "semantic_t1.tif", "semantic_t2": "semantic_t2.tif", "transitions": "semantic_change.tif"}
MAX_TRANSITION_CLASSES = 15  # 1 + K·from + to must fit uint8 below the nodata value
PARTIAL_DIR = ".detect-partial"
JOURNAL = "journal.json"
DEFAULT_WINDOW = 512
PROBABILITY_SCALE = 254  # uint8 probability: round(p × 254); 255 is nodata
READ_THREADS = 2
# GDAL's block cache defaults to 5 % of RAM and would grow with the scene; windows are read in block
# order, so a cache of a few block rows of input tiles is all the reuse there is. A GDAL_CACHEMAX
# set in the environment wins.
GDAL_CACHE_MB = 128

Weighting = Literal["gaussian", "uniform"]
ProbabilityDtype = Literal["uint8", "float32"]
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


# --------------------------------------------------------------------------- windows and weights


def window_starts(size: int, window: int, overlap: float) -> list[int]:
    """Window offsets along one axis, nnU-Net style: evenly spread, the last flush with the edge."""
    if window >= size:
        return [0]
    target_step = window * (1.0 - overlap)
    count = math.ceil((size - window) / target_step) + 1
    step = (size - window) / (count - 1)
    return [int(round(step * i)) for i in range(count)]


def importance_map(height: int, width: int, weighting: Weighting = "gaussian") -> np.ndarray:
    """Blending weights of one window: a Gaussian (σ = size/8, max 1) with a floor, or ones.

    As in nnU-Net, weights that underflow to 0 are raised to the smallest non-zero weight, so every
    pixel a window covers has a positive weight (no division by zero where only window corners
    reach). The Gaussian is centred between the two middle pixels, so it is flip-symmetric.
    """
    if weighting == "uniform":
        return np.ones((height, width), np.float32)
    if weighting != "gaussian":
        raise ValueError(f"weighting must be 'gaussian' or 'uniform', not {weighting!r}")

    def axis(n: int) -> np.ndarray:
        x = np.arange(n, dtype=np.float64) - (n - 1) / 2.0
        sigma = max(n / 8.0, 1e-6)
        return np.exp(-0.5 * (x / sigma) ** 2)

    gauss = np.outer(axis(height), axis(width))
    gauss = (gauss / gauss.max()).astype(np.float32)
    zero = gauss == 0
    if zero.any():
        gauss[zero] = gauss[~zero].min()
    return gauss


@dataclass(frozen=True)
class _Layout:
    """Blocks and windows of one scene."""

    height: int
    width: int
    block: int
    window: tuple[int, int]  # (rows, cols) of every window
    owned: dict[tuple[int, int], list[tuple[int, int]]]  # block -> window offsets (row, col), row-major

    @property
    def block_rows(self) -> int:
        return math.ceil(self.height / self.block)

    @property
    def block_cols(self) -> int:
        return math.ceil(self.width / self.block)

    def blocks(self) -> list[tuple[int, int]]:
        return [(i, j) for i in range(self.block_rows) for j in range(self.block_cols)]

    def core(self, i: int, j: int) -> tuple[int, int, int, int]:
        """(row0, col0, row1, col1) of block (i, j)."""
        b = self.block
        return i * b, j * b, min(self.height, (i + 1) * b), min(self.width, (j + 1) * b)

    def extended(self, i: int, j: int) -> tuple[int, int, int, int]:
        """The block plus the margin its windows reach into (right and below)."""
        b, (wh, ww) = self.block, self.window
        return i * b, j * b, min(self.height, (i + 1) * b + wh), min(self.width, (j + 1) * b + ww)


def plan(height: int, width: int, window: int, overlap: float, block: int) -> _Layout:
    shape = (min(window, height), min(window, width))
    if block < max(shape):
        raise ValueError(f"block_size ({block}) must be at least the window ({max(shape)})")
    owned: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for row in window_starts(height, shape[0], overlap):
        for col in window_starts(width, shape[1], overlap):
            owned.setdefault((row // block, col // block), []).append((row, col))
    return _Layout(height, width, block, shape, owned)


# --------------------------------------------------------------------------- inputs and checks


@dataclass(frozen=True)
class _Inputs:
    group: str
    paths: dict[str, Path]  # role -> grid raster, in forward order
    black_values: dict[str, float | None]
    crs: Any
    transform: Any
    height: int
    width: int


def _manifest(group_dir: Path) -> dict:
    path = group_dir / "manifest.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _missing_role(group_dir: Path, role: str) -> GroupError:
    records = [r for r in _manifest(group_dir).get("coregistration", []) if r.get("role") == role]
    refused = [r for r in records if not r.get("accepted", True)]
    if refused:
        reason = "; ".join(f"{r.get('image')}: {r.get('reason')}" for r in refused)
        return GroupError(group_dir.name, f"has no {role} image (it failed co-registration: {reason})")
    return GroupError(
        group_dir.name,
        f"has no {role} image ({group_dir / 'grid' / f'{role}.tif'} is missing; "
        "the group has no such scene or it failed co-registration)",
    )


def _check_inputs(group_dir: Path, checkpoint_path: Path, checkpoint: dict) -> _Inputs:
    """The group's grid rasters for the checkpoint's inputs, checked against its band layout."""
    for key in ("bands", "inputs"):
        if key not in checkpoint:
            raise InputError(checkpoint_path, f"not an inference-ready checkpoint (missing '{key}')")
    roles = list(checkpoint["inputs"])
    if len(roles) != 2:
        raise InputError(checkpoint_path, f"expects two inputs (t1, t2), lists {roles}")
    group = group_dir.name
    if not group_dir.is_dir():
        raise InputError(group_dir, "group folder not found")
    black = TilingConfig().black_value
    paths, black_values, reference = {}, {}, None
    for role in roles:
        path = group_dir / "grid" / f"{role}.tif"
        if not path.exists():
            raise _missing_role(group_dir, role)
        expected = checkpoint["bands"].get(role)
        if role not in checkpoint["normalization"]:
            raise InputError(checkpoint_path, f"has no normalization statistics for input {role}")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                with rasterio.open(path) as dataset:
                    grid = (dataset.crs, dataset.transform, dataset.height, dataset.width)
                    count, dtype = dataset.count, dataset.dtypes[0]
        except rasterio.errors.RasterioIOError as exc:
            raise InputError(path, f"not a readable raster ({exc})") from None
        if expected is not None and count != expected:
            raise InputError(
                path,
                f"has {count} band(s) but checkpoint {checkpoint_path.name} was trained on {expected}-band "
                f"{role} images (band layout {dict(checkpoint['bands'])})",
            )
        if reference is None:
            reference = grid
        elif grid != reference:
            raise GroupError(group, f"{path.name} is not on the grid of {roles[0]}.tif (CRS, transform or size differ)")
        paths[role] = path
        black_values[role] = black if is_integer(dtype) else None
    crs, transform, height, width = reference
    return _Inputs(group, paths, black_values, crs, transform, height, width)


def _build_model(checkpoint_path: Path, checkpoint: dict, device: torch.device) -> nn.Module:
    name = checkpoint["model_name"]
    try:
        model = models.build(name, **checkpoint["model_options"])
    except (TypeError, ValueError) as exc:
        raise InputError(checkpoint_path, f"cannot rebuild model '{name}': {exc}") from None
    try:
        model.load_state_dict(checkpoint["model"], strict=True)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise InputError(checkpoint_path, f"weights do not fit model '{name}': {exc}") from None
    return model.to(device).eval()


def _prompt_embedding(
    checkpoint_path: Path, checkpoint: dict, group: str, prompt: str | None, device: torch.device, model: nn.Module
) -> tuple[dict[str, torch.Tensor] | None, str | None]:
    """Prompt embedding of a text-guided model for one group (batch of 1) and the prompt used.

    The checkpoint's training text config says which encoder; ``prompt`` overrides its prompt table
    (looked up by group name, else its default prompt).
    """
    text = (checkpoint.get("config") or {}).get("text")
    if not getattr(model, "text_conditioned", False) or not text or text.get("source") == "none":
        if prompt is not None:
            raise ConfigError(f"a prompt was given but {checkpoint_path.name} is not a text-guided checkpoint")
        return None, None
    from pipeline.learn.prompts import embeddings_from_config  # the text extra only when text is used

    config = TextConfig.model_validate(text)
    if prompt is not None:
        config = config.model_copy(update={"prompt": prompt, "prompts": None})
    try:
        embeddings = embeddings_from_config(config, checkpoint_path.parent / "prompt_cache", model.text_dim)
        used = embeddings.prompt_for(group, group)
        values, mask = embeddings.lookup(group, group)
    except (ValueError, OSError) as exc:
        raise InputError(checkpoint_path, f"cannot embed the prompt: {exc}") from None
    tensors = {"text": torch.from_numpy(values)[None].to(device), "text_mask": torch.from_numpy(mask)[None].to(device)}
    return tensors, used


def default_window(checkpoint: dict) -> int:
    """The training tile size: the checkpoint's crop, else the tiling default (512)."""
    config = checkpoint.get("config") or {}
    return int(config.get("crop") or checkpoint.get("tile_size") or DEFAULT_WINDOW)


# --------------------------------------------------------------------------- reading (background threads)


class _WindowReader:
    """Reads and normalises batches of windows; each thread opens its own datasets."""

    def __init__(self, inputs: _Inputs, stats: dict[str, BandStats], shape: tuple[int, int], pin: bool) -> None:
        self.inputs = inputs
        self.stats = stats
        self.shape = shape
        self.pin = pin
        self._local = threading.local()
        self._opened: list[Any] = []
        self._lock = threading.Lock()

    def _datasets(self) -> dict[str, Any]:
        datasets = getattr(self._local, "datasets", None)
        if datasets is None:
            datasets = {role: rasterio.open(path) for role, path in self.inputs.paths.items()}
            self._local.datasets = datasets
            with self._lock:
                self._opened.extend(datasets.values())
        return datasets

    def read(self, offsets: list[tuple[int, int]]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Normalised float32 tensors per role (N, C, h, w) and the joint valid mask (N, h, w)."""
        datasets = self._datasets()
        h, w = self.shape
        arrays = {role: np.empty((len(offsets), ds.count, h, w), np.float32) for role, ds in datasets.items()}
        valids = np.ones((len(offsets), h, w), bool)
        for k, (row, col) in enumerate(offsets):
            for role, dataset in datasets.items():
                data, valid = read_window(dataset, Window(col, row, w, h), black_value=self.inputs.black_values[role])
                arrays[role][k] = normalize(data, valid, self.stats[role])
                valids[k] &= valid
        tensors = [torch.from_numpy(arrays[role]) for role in datasets]
        mask = torch.from_numpy(valids)
        if self.pin:
            tensors, mask = [t.pin_memory() for t in tensors], mask.pin_memory()
        return tensors, mask

    def close(self) -> None:
        with self._lock:
            for dataset in self._opened:
                dataset.close()
            self._opened.clear()


def read_threads(device: torch.device) -> int:
    """Background reader threads: on a GPU always; on a CPU only for cores torch leaves idle."""
    if device.type != "cpu":
        return READ_THREADS
    spare = len(os.sched_getaffinity(0)) - torch.get_num_threads() if hasattr(os, "sched_getaffinity") else 0
    return max(0, min(READ_THREADS, spare))


def _prefetched(executor: ThreadPoolExecutor, read: Callable, jobs: Iterable, depth: int) -> Iterator:
    """Results of ``read(job)`` in order, with up to ``depth`` jobs running ahead."""
    pending: deque = deque()
    iterator = iter(jobs)
    try:
        for job in iterator:
            pending.append(executor.submit(read, job))
            if len(pending) >= depth:
                break
        while pending:
            future = pending.popleft()
            job = next(iterator, None)
            if job is not None:
                pending.append(executor.submit(read, job))
            yield future.result()
    finally:
        for future in pending:
            future.cancel()


# --------------------------------------------------------------------------- model


def _predict(
    model: nn.Module, t1: torch.Tensor, t2: torch.Tensor, tta: bool, text: dict[str, torch.Tensor] | None = None
) -> torch.Tensor:
    """Probabilities (N, 1 + 2K, h, w), averaged over the identity and h / v / hv flips with TTA.

    Channel 0 is the change probability; semantic change models (K classes) add the class posteriors
    at t1 (channels 1..K) and t2 (K+1..2K). ``text``: prompt embeddings broadcast over the batch.
    """
    flips: list[tuple[int, ...]] = [()] + ([(-1,), (-2,), (-2, -1)] if tta else [])
    extra = {}
    if text is not None:
        extra = {key: value.expand(t1.shape[0], *value.shape[1:]) for key, value in text.items()}
    total = None
    for dims in flips:
        a, b = (t1.flip(dims), t2.flip(dims)) if dims else (t1, t2)
        outputs = model(a, b, **extra)
        logits = outputs["logits"].float()
        if logits.shape[1] != 2:
            raise ChangeflowError(f"model returns {logits.shape[1]} classes; detection handles binary change (2)")
        parts = [torch.softmax(logits, dim=1)[:, 1:]]
        if "semantic_t1" in outputs:
            parts += [torch.softmax(outputs[key].float(), dim=1) for key in ("semantic_t1", "semantic_t2")]
        p = torch.cat(parts, dim=1)
        p = p.flip(dims) if dims else p
        total = p if total is None else total + p
    return total / len(flips)


# --------------------------------------------------------------------------- staging and journal


def _atomic_write(path: Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    partial = path.with_name(path.name + ".tmp")
    with open(partial, mode) as handle:
        write(handle)
    os.replace(partial, path)


class _Staging:
    """``.detect-partial/``: finished blocks, their carries and the journal."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blocks = root / "blocks"
        self.carries = root / "carries"

    def open(self, fingerprint: str, run_id: str | None, order: list[str]) -> tuple[list[str], str]:
        """Finished block ids (a prefix of ``order``) and the run id.

        A journal of other inputs or settings, or an unreadable one, restarts from scratch; a run id
        given by the caller replaces the journal's, otherwise the interrupted run's id is kept.
        """
        journal = self._journal()
        if journal is not None and journal.get("fingerprint") == fingerprint and journal.get("blocks") == order:
            done: list[str] = []
            for expected, recorded in zip(order, journal.get("done", [])):
                if expected != recorded or not (self.blocks / f"{recorded}.npz").exists():
                    break
                done.append(recorded)
            self.state = {**journal, "done": done, "run_id": run_id or journal["run_id"]}
            self._write_journal()
            return list(done), self.state["run_id"]
        shutil.rmtree(self.root, ignore_errors=True)
        self.blocks.mkdir(parents=True)
        self.carries.mkdir()
        run_id = run_id or new_run_id()
        self.state = {"fingerprint": fingerprint, "run_id": run_id, "blocks": order, "done": []}
        self._write_journal()
        return [], run_id

    def _journal(self) -> dict | None:
        try:
            return json.loads((self.root / JOURNAL).read_text())
        except (OSError, ValueError):
            return None

    def _write_journal(self) -> None:
        _atomic_write(self.root / JOURNAL, lambda h: h.write(json.dumps(self.state, indent=1)), "w")

    def carry_path(self, kind: str, block_id: str) -> Path:
        return self.carries / f"{block_id}.{kind}.npy"

    def save_carry(self, kind: str, block_id: str, array: np.ndarray) -> None:
        _atomic_write(self.carry_path(kind, block_id), lambda h: np.save(h, array))

    def load_carry(self, kind: str, block_id: str) -> np.ndarray | None:
        path = self.carry_path(kind, block_id)
        return np.load(path) if path.exists() else None

    def drop_carry(self, kind: str, block_id: str) -> None:
        self.carry_path(kind, block_id).unlink(missing_ok=True)

    def finish_block(self, block_id: str, rasters: dict[str, np.ndarray]) -> None:
        _atomic_write(self.blocks / f"{block_id}.npz", lambda h: np.savez(h, **rasters))
        self.state["done"].append(block_id)
        self._write_journal()

    def block(self, block_id: str, name: str) -> np.ndarray:
        with np.load(self.blocks / f"{block_id}.npz") as data:
            return data[name]


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:8]


def _block_id(i: int, j: int) -> str:
    return f"r{i}_c{j}"


# --------------------------------------------------------------------------- COG writing


# --------------------------------------------------------------------------- detection


def _fingerprint(checkpoint_sha: str, inputs: _Inputs, settings: dict[str, Any]) -> str:
    files = {role: [str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for role, p in inputs.paths.items()}
    text = json.dumps({"checkpoint": checkpoint_sha, "inputs": files, "settings": settings}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _default_provenance(group_dir: Path) -> dict[str, str]:
    """Scene ids per role from the group's prepare manifest, when it has them."""
    out: dict[str, str] = {}
    for record in _manifest(group_dir).get("coregistration", []):
        if record.get("reference"):
            out.setdefault("A_scene_id", str(record["reference"]))
        if record.get("accepted") and record.get("role") and record.get("image"):
            out[f"{record['role']}_scene_id"] = str(record["image"])
    return out


def _existing_run(out_dir: Path, expected: dict[str, str]) -> str | None:
    """The run id of finished outputs whose tags hold ``expected`` (same inputs, settings, provenance)."""
    try:
        with rasterio.open(out_dir / PROBABILITY_FILE) as p, rasterio.open(out_dir / CLASS_FILE) as c:
            tags = [p.tags(), c.tags()]
    except rasterio.errors.RasterioIOError:
        return None
    if all(t.get(k) == v for t in tags for k, v in expected.items()):
        return tags[0].get("RUN_ID", "")
    return None


def _add_piece(acc: torch.Tensor, origin: tuple[int, int], limit: tuple[int, int, int, int],
               piece: np.ndarray | torch.Tensor | None, piece_origin: tuple[int, int]) -> None:
    """acc[rect ∩ limit] += piece[rect ∩ limit], rectangles in scene coordinates."""
    if piece is None:
        return
    if isinstance(piece, np.ndarray):
        piece = torch.from_numpy(piece).to(acc.device)
    r0 = max(limit[0], piece_origin[0])
    c0 = max(limit[1], piece_origin[1])
    r1 = min(limit[2], piece_origin[0] + piece.shape[1])
    c1 = min(limit[3], piece_origin[1] + piece.shape[2])
    if r1 <= r0 or c1 <= c0:
        return
    acc[:, r0 - origin[0]:r1 - origin[0], c0 - origin[1]:c1 - origin[1]] += piece[
        :, r0 - piece_origin[0]:r1 - piece_origin[0], c0 - piece_origin[1]:c1 - piece_origin[1]
    ]


def _finalise(core: torch.Tensor, dtype: ProbabilityDtype, threshold: float) -> dict[str, np.ndarray]:
    """(weighted sums..., weight) → the block's rasters; weight 0 → nodata.

    "probability" in the output encoding and "classes" (change > threshold); with semantic channels
    also "semantic_t1" / "semantic_t2": the argmax of the blended class posteriors.
    """
    weighted, weight = core[0], core[-1]
    valid = weight > 0
    rasters = {}
    if core.shape[0] > 2:
        k = (core.shape[0] - 2) // 2
        nodata = torch.full_like(valid, NODATA_U8, dtype=torch.uint8)
        maps = [core[1 + index * k:1 + (index + 1) * k].argmax(0).to(torch.uint8) for index in (0, 1)]
        for name, classes_map in zip(("semantic_t1", "semantic_t2"), maps):
            rasters[name] = torch.where(valid, classes_map, nodata).cpu().numpy()[None]
        changed = weighted > threshold * weight
        code = (1 + k * maps[0].int() + maps[1].int()).to(torch.uint8)
        transitions = torch.where(changed, code, torch.zeros_like(code))
        rasters["transitions"] = torch.where(valid, transitions, nodata).cpu().numpy()[None]
    p = torch.where(valid, weighted / torch.where(valid, weight, torch.ones_like(weight)), torch.zeros_like(weight))
    p = p.clamp(0.0, 1.0)
    if dtype == "uint8":
        q = torch.floor(p * PROBABILITY_SCALE + 0.5).to(torch.uint8)
        probability = torch.where(valid, q, torch.full_like(q, NODATA_U8))
    else:
        probability = torch.where(valid, p, torch.full_like(p, float("nan")))
    classes = torch.where(valid, (p > threshold).to(torch.uint8), torch.full_like(valid, NODATA_U8, dtype=torch.uint8))
    return {"probability": probability.cpu().numpy()[None], "classes": classes.cpu().numpy()[None], **rasters}


def detect_group(
    group_dir: Path,
    checkpoint: Path,
    out_dir: Path,
    *,
    window: int | None = None,
    overlap: float = 0.5,
    batch_size: int = 8,
    tta: bool = False,
    device: str = "auto",
    block_size: int = 2048,
    probability_dtype: ProbabilityDtype = "uint8",
    threshold: float = 0.5,
    weighting: Weighting = "gaussian",
    run_id: str | None = None,
    provenance: dict[str, str] | None = None,
    progress: Progress | None = None,
    prompt: str | None = None,
) -> DetectionResult:
    """Sliding-window change detection over the grid rasters of ``group_dir`` into ``out_dir``.

    ``group_dir`` is a prepare output ``OUT/groups/{group}`` (``grid/{A,B,C}.tif``); the checkpoint
    names the two inputs (e.g. A and B). ``window`` defaults to the training tile size; ``overlap``
    is the fraction two neighbouring windows share; the class map is ``probability > threshold``.
    ``progress(description, blocks_finished, blocks_total)`` is called after each recorded block.
    Text-guided models take ``prompt`` (default: the checkpoint's prompt for this group). Semantic
    change models also write the per-date class maps ``semantic_t1.tif`` / ``semantic_t2.tif``.
    Every input problem raises before inference: InputError naming the file, GroupError naming the group.
    """
    started = time.perf_counter()
    group_dir, checkpoint, out_dir = Path(group_dir), Path(checkpoint), Path(out_dir)
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), not {overlap}")
    if probability_dtype not in ("uint8", "float32"):
        raise ValueError(f"probability_dtype must be 'uint8' or 'float32', not {probability_dtype!r}")
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    importance_map(1, 1, weighting)  # validates the name

    payload = load_checkpoint(checkpoint)
    inputs = _check_inputs(group_dir, checkpoint, payload)
    stats = {role: BandStats.from_dict(payload["normalization"][role]) for role in inputs.paths}
    torch_device = resolve_device(device)
    model = _build_model(checkpoint, payload, torch_device)
    text, prompt = _prompt_embedding(checkpoint, payload, inputs.group, prompt, torch_device, model)
    classes_k = int(payload.get("semantic_classes") or 0)
    if classes_k > MAX_TRANSITION_CLASSES:
        raise InputError(checkpoint, f"has {classes_k} semantic classes; detection handles up to {MAX_TRANSITION_CLASSES}")
    window = int(window or default_window(payload))
    if window < 1:
        raise ValueError(f"window must be positive, not {window}")
    layout = plan(inputs.height, inputs.width, window, overlap, block_size)
    checkpoint_sha = file_sha256(checkpoint)
    settings = {
        "window": list(layout.window), "overlap": overlap, "weighting": weighting, "tta": tta,
        "block_size": block_size, "probability_dtype": probability_dtype, "threshold": threshold,
        "inputs": list(inputs.paths),
        **({"prompt": prompt} if prompt is not None else {}),
    }
    fingerprint = _fingerprint(checkpoint_sha, inputs, settings)
    blocks = layout.blocks()
    megapixels = inputs.height * inputs.width / 1e6
    probability_path, class_path = out_dir / PROBABILITY_FILE, out_dir / CLASS_FILE
    semantic = {name: out_dir / file for name, file in SEMANTIC_FILES.items()} if classes_k else None
    staging = _Staging(out_dir / PARTIAL_DIR)
    description = f"detect {inputs.group}"

    tags = {
        **(provenance if provenance is not None else _default_provenance(group_dir)),
        "GROUP": inputs.group,
        "MODEL": payload["model_name"],
        "CHECKPOINT": checkpoint.name,
        "CHECKPOINT_SHA256": checkpoint_sha,
        "CHECKPOINT_EPOCH": str(payload.get("epoch", "")),
        "DETECT_SETTINGS": json.dumps({**settings, "batch_size": batch_size, "device": torch_device.type}, sort_keys=True),
        "DETECT_FINGERPRINT": fingerprint,
    }
    if not staging.root.exists():  # finished outputs of the same run are kept (a rerun is a no-op)
        previous = _existing_run(out_dir, {**tags, **({"RUN_ID": run_id} if run_id else {})})
        if previous is not None and all(path.exists() for path in (semantic or {}).values()):
            return DetectionResult(probability_path, class_path, 0, len(blocks), time.perf_counter() - started,
                                   megapixels, len(blocks), previous, semantic, prompt)

    out_dir.mkdir(parents=True, exist_ok=True)
    done, run_id = staging.open(fingerprint, run_id, [_block_id(i, j) for i, j in blocks])
    todo = blocks[len(done):]
    if progress is not None:
        progress(description, len(done), len(blocks))

    weights = torch.from_numpy(importance_map(*layout.window, weighting)).to(torch_device)
    channels = 1 + 2 * classes_k  # weighted sums; the weight sum is the last accumulator channel
    carries: dict[tuple[str, str], np.ndarray | None] = {}

    def carry(kind: str, i: int, j: int) -> np.ndarray | None:
        if i < 0 or j < 0:
            return None
        key = (kind, _block_id(i, j))
        if key not in carries:
            carries[key] = staging.load_carry(kind, key[1])
        return carries[key]

    def forget(kind: str, i: int, j: int) -> None:
        if i >= 0 and j >= 0:
            carries.pop((kind, _block_id(i, j)), None)
            staging.drop_carry(kind, _block_id(i, j))

    jobs = [(block, offsets[k:k + batch_size]) for block in todo
            for offsets in [layout.owned.get(block, [])] for k in range(0, len(offsets), batch_size)]
    reader = _WindowReader(inputs, stats, layout.window, pin=torch_device.type == "cuda")
    threads = read_threads(torch_device)
    executor = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="detect-read")
    read = lambda job: (job[1], reader.read(job[1]))  # noqa: E731
    batches = _prefetched(executor, read, jobs, depth=threads + 2) if threads else (read(job) for job in jobs)
    b, (wh, ww) = layout.block, layout.window
    try:
        with bounded_gdal_cache(GDAL_CACHE_MB), torch.inference_mode():
            for i, j in todo:
                ext = layout.extended(i, j)
                core = layout.core(i, j)
                origin = (ext[0], ext[1])
                acc = torch.zeros((channels + 1, ext[2] - ext[0], ext[3] - ext[1]), dtype=torch.float32, device=torch_device)
                # Contributions of earlier blocks' windows, always in this order.
                _add_piece(acc, origin, core, carry("right", i, j - 1), (i * b, j * b))
                _add_piece(acc, origin, core, carry("bottom", i - 1, j - 1), (i * b, (j - 1) * b))
                _add_piece(acc, origin, core, carry("bottom", i - 1, j), (i * b, j * b))
                owned = layout.owned.get((i, j), [])
                for _ in range(0, len(owned), batch_size):
                    offsets, (tensors, mask) = next(batches)
                    keep = mask.flatten(1).any(dim=1)
                    if not bool(keep.any()):
                        continue  # every window of the batch is nodata everywhere
                    if not bool(keep.all()):
                        tensors, mask = [t[keep] for t in tensors], mask[keep]
                        offsets = [o for o, k in zip(offsets, keep.tolist()) if k]
                    t1, t2 = (t.to(torch_device, non_blocking=True) for t in tensors)
                    mask = mask.to(torch_device, non_blocking=True)
                    w = weights * mask
                    wp = w[:, None] * _predict(model, t1, t2, tta, text)
                    for k, (row, col) in enumerate(offsets):
                        r, c = row - origin[0], col - origin[1]
                        acc[:channels, r:r + wh, c:c + ww] += wp[k]
                        acc[channels, r:r + wh, c:c + ww] += w[k]
                block_id = _block_id(i, j)
                split_r, split_c = core[2] - origin[0], core[3] - origin[1]
                right = acc[:, :split_r, split_c:]
                bottom = acc[:, split_r:, :]
                # Copies: a view would keep the block's whole accumulator alive (a row of bottom
                # carries then held 10 × 52 MB at 20000 px instead of 10 × 10 MB).
                if right.shape[2]:
                    carries[("right", block_id)] = right.cpu().numpy().copy()
                    staging.save_carry("right", block_id, carries[("right", block_id)])
                if bottom.shape[1]:
                    carries[("bottom", block_id)] = bottom.cpu().numpy().copy()
                    staging.save_carry("bottom", block_id, carries[("bottom", block_id)])
                staging.finish_block(block_id, _finalise(acc[:, :split_r, :split_c], probability_dtype, threshold))
                forget("right", i, j - 1)
                forget("bottom", i - 1, j - 1)
                if j == layout.block_cols - 1:
                    forget("bottom", i - 1, j)
                if progress is not None:
                    progress(description, len(staging.state["done"]), len(blocks))
    finally:
        batches.close()
        executor.shutdown(wait=True, cancel_futures=True)
        reader.close()

    tags["RUN_ID"] = run_id
    base = {"width": inputs.width, "height": inputs.height, "count": 1, "crs": inputs.crs, "transform": inputs.transform}

    def staged(name: str) -> Iterator[tuple[Window, np.ndarray]]:
        for i, j in blocks:
            r0, c0, r1, c1 = layout.core(i, j)
            yield Window(c0, r0, c1 - c0, r1 - r0), staging.block(_block_id(i, j), name)

    probability_profile = {
        **base, "dtype": probability_dtype,
        "nodata": NODATA_U8 if probability_dtype == "uint8" else float("nan"),
    }
    scale = "probability × 254 (255 = nodata)" if probability_dtype == "uint8" else "probability (NaN = nodata)"
    write_cog_from_blocks(probability_path, probability_profile, staged("probability"), staging=staging.root / "probability.tif",
                          categorical=False, tags={**tags, "VALUES": f"change {scale}"})
    write_cog_from_blocks(class_path, {**base, "dtype": "uint8", "nodata": NODATA_U8}, staged("classes"),
                          staging=staging.root / "classes.tif", categorical=True,
                          tags={**tags, "VALUES": f"0 no change, 1 change (probability > {threshold}), 255 nodata"})
    if semantic is not None:
        values = {
            "semantic_t1": f"class 0..{classes_k - 1} at t1, 255 nodata",
            "semantic_t2": f"class 0..{classes_k - 1} at t2, 255 nodata",
            "transitions": f"0 no change, 1 + {classes_k}·from_class + to_class where changed, 255 nodata",
        }
        for name, path in semantic.items():
            write_cog_from_blocks(path, {**base, "dtype": "uint8", "nodata": NODATA_U8}, staged(name),
                                  staging=staging.root / f"{name}.tif", categorical=True,
                                  tags={**tags, "VALUES": values[name], "SEMANTIC_CLASSES": str(classes_k)})
    shutil.rmtree(staging.root, ignore_errors=True)
    return DetectionResult(probability_path, class_path, len(todo), len(blocks),
                           time.perf_counter() - started, megapixels, len(done), run_id, semantic, prompt)
