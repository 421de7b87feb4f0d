"""Training: a seeded, resumable loop over the tile index, for every registered change model.

What GOLD's trainer got wrong and this loop does not (gold.md §12): it trains in train mode (GOLD
called ``model.eval()`` before its training loop), it resumes the LR schedule instead of restarting
it, it picks the best checkpoint on the validation split and evaluates test only once at the end,
and the split comes from the spatially blocked tile index.

The same code runs single-process or under ``torchrun`` (DDP; NCCL on GPU, gloo on CPU): only
rank 0 writes files.
"""

from __future__ import annotations

import csv
import inspect
import json
import logging
import math
import os
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

import models
from models.losses import build_loss
from models.registry import model_class
from pipeline.config import TrainConfig
from pipeline.errors import ConfigError, InputError
from pipeline.io.atomic import write_atomic
from pipeline.io.validity import POLICY_KEY
from pipeline.io.write_errors import output_errors, writable_folder
from pipeline.learn.augment import AugmentSettings
from pipeline.learn.checkpoint import load_checkpoint, save_checkpoint
from pipeline.learn.dataset import (
    TileDataset,
    changed_tiles,
    check_index,
    fit_normalization,
    load_index,
    split_change_counts,
    split_has_change,
    tile_size,
    validity_policy,
)
from pipeline.learn.device import resolve_device
from pipeline.learn.metrics import as_floats, change_metrics
from pipeline.learn.normalization import BandStats
from pipeline.learn.pseudo_labels import ROUND_ONE, build_pseudo_labels, with_pseudo_labels, write_pseudo_labels
from pipeline.learn.sampling import DrawnSamples, epoch_draws, planned_epochs, steps_per_epoch
from pipeline.learn.semantic_metrics import SemanticChangeMetrics

METRICS_CSV = "metrics.csv"
SPLITS = ("train", "val", "test")
# How long the other ranks wait for rank 0's validation and checkpoints (see rank_0_wait_group).
RANK_0_WAIT = timedelta(hours=24)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Distributed:
    """Where this process stands in a ``torchrun`` job: its global rank, the process count and its local rank."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the process that validates and writes files."""
        return self.rank == 0


def distributed_from_env() -> Distributed:
    """This process's place in a torchrun job.

    Returns:
        RANK, WORLD_SIZE and LOCAL_RANK from the environment, or a single process without WORLD_SIZE
        (or with WORLD_SIZE 1).

    Raises:
        KeyError: when WORLD_SIZE > 1 but RANK is unset.
        ValueError: for a variable that is not an integer.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Distributed()
    return Distributed(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def model_roles(config: TrainConfig) -> tuple[list[str], bool]:
    """The roles read per sample and whether the model trains with a teacher input.

    Args:
        config: the training config.

    Returns:
        ``config.inputs`` (plus ``config.teacher_input`` for a model with a teacher) and whether it has one.

    Raises:
        ConfigError: for an unknown model, listing the available ones.
    """
    if config.model.lower().replace("-", "_") not in models.available():
        raise ConfigError(f"unknown model '{config.model}'; available: {', '.join(models.available())}")
    has_teacher = getattr(model_class(config.model), "has_teacher", False)
    roles = list(config.inputs) + ([config.teacher_input] if has_teacher else [])
    return roles, has_teacher


def channel_options(config: TrainConfig, bands: dict[str, int]) -> dict[str, int]:
    """Band counts in the keyword names the model's constructor uses.

    Args:
        config: the training config (its model and its two inputs, t1 then t2).
        bands: band count per role.

    Returns:
        ``{"t1_channels", "t2_channels"}`` or ``{"optical_channels", "sar_channels"}``.

    Raises:
        ConfigError: when the constructor takes neither pair.
        ValueError: for an unknown model.
    """
    parameters = inspect.signature(model_class(config.model).__init__).parameters
    t1, t2 = config.inputs
    if "t1_channels" in parameters:
        return {"t1_channels": bands[t1], "t2_channels": bands[t2]}
    if "optical_channels" in parameters:
        return {"optical_channels": bands[t1], "sar_channels": bands[t2]}
    raise ConfigError(f"model '{config.model}' does not declare its input channels")


def build_model(name: str, options: dict[str, Any], channels: dict[str, int]) -> nn.Module:
    """Build a registered model.

    Args:
        name: the registered model name.
        options: the config's model options.
        channels: the input band counts from :func:`channel_options` (they override ``options``).

    Returns:
        The model, on the CPU.

    Raises:
        ConfigError: naming the model, for an unknown name or a bad option.
    """
    try:
        return models.build(name, **{**options, **channels})
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model '{name}': {exc}") from None


def _forward(model: nn.Module, batch: dict[str, torch.Tensor], config: TrainConfig, teacher: bool) -> dict:
    t1, t2 = (batch[role] for role in config.inputs)
    text = {key: batch[key] for key in ("text", "text_mask") if key in batch}
    if teacher:
        return model(t1, t2, batch[config.teacher_input], **text)
    return model(t1, t2, **text)


def _as_float(value: Any) -> Any:
    """Model outputs in float32 for the loss (tensors, or lists of tensors such as per-level features)."""
    if isinstance(value, (list, tuple)):
        return [_as_float(v) for v in value]
    return value.float() if torch.is_tensor(value) else value


def loss_target(batch: dict[str, torch.Tensor], semantic: bool) -> torch.Tensor | dict[str, torch.Tensor]:
    """The loss target of a batch.

    Args:
        batch: the batch, with ``label`` (and ``semantic_t1``, ``semantic_t2`` for semantic models).
        semantic: whether the model is a semantic change model.

    Returns:
        The change label, or for semantic change models ``{"change", "t1", "t2"}``.
    """
    if not semantic:
        return batch["label"]
    return {"change": batch["label"], "t1": batch["semantic_t1"], "t2": batch["semantic_t2"]}


def semantic_classes(config: TrainConfig) -> int:
    """The semantic class count K of the configured model.

    Args:
        config: the training config (its model and model options).

    Returns:
        K from the options, else the constructor's default, else the class's; 0 for binary change models.

    Raises:
        ValueError: for an unknown model.
    """
    cls = model_class(config.model)
    if not getattr(cls, "semantic_classes", 0):
        return 0
    default = inspect.signature(cls.__init__).parameters.get("semantic_classes")
    fallback = default.default if default is not None else cls.semantic_classes
    return int(config.model_options.get("semantic_classes", fallback))


def _counts_text(index: pd.DataFrame, split: str) -> str:
    """``"{split}: {c} change of {n} labelled pixels in {t} tiles"`` for the error message."""
    change, labelled = split_change_counts(index, split)
    tiles = int((index.split == split).sum())
    return f"{split}: {change} change of {labelled} labelled pixels in {tiles} tile{'s' if tiles != 1 else ''}"


def check_learnable(index: pd.DataFrame, config: TrainConfig) -> None:
    """Refuse a split whose labels cannot teach or select a change model, before any training.

    A train split without change pixels teaches "never change"; a val split without them gives IoU 0
    every epoch, so ``best.pt`` stays at epoch 0. Splits without tiles are left to the other checks.

    Args:
        index: the tile index from :func:`~pipeline.learn.dataset.load_index`.
        config: the training config (``data`` names the index; ``allow_no_change`` only warns).

    Raises:
        InputError: naming ``config.data``, the splits without change and the change and labelled
            pixel counts of train and val, unless ``config.allow_no_change``.
    """
    empty = [s for s in ("train", "val") if (index.split == s).any() and not split_has_change(index, s)]
    if not empty:
        return
    counts = "; ".join(_counts_text(index, split) for split in ("train", "val"))
    subject = f"the {' and '.join(empty)} split{'s have' if len(empty) > 1 else ' has'}"
    problem = f"{subject} no change pixels ({counts}), so a model cannot learn or be selected on change"
    if config.allow_no_change:
        log.warning("%s: %s; training anyway (allow_no_change: true)", config.data, problem)
        return
    raise InputError(config.data, f"{problem}; re-split so that train and val both hold change pixels, "
                                  "or set allow_no_change: true to train anyway")


def trained_tile_size(index: pd.DataFrame, config: TrainConfig) -> int:
    """The side of the samples the model sees: the random crop when one applies, else the tile.

    Args:
        index: the tile index from :func:`~pipeline.learn.dataset.load_index`.
        config: the training config (``crop`` applies with ``augment`` when smaller than the tile).

    Returns:
        The side in pixels, stored in the checkpoint as ``tile_size`` (detection's default window).

    Raises:
        InputError: the index has no training tiles.
    """
    side = tile_size(index, config.inputs[0])
    crop = config.crop if config.augment else None
    return crop if crop is not None and crop < side else side


def build_prompts(config: TrainConfig, out: Path, text_dim: int) -> Any | None:
    """Prompt embeddings of a text-guided model, cached under ``out/prompt_cache``.

    Args:
        config: the training config (its ``text`` section).
        out: the run folder.
        text_dim: the model's ``text_dim``.

    Returns:
        The embeddings (a :class:`~pipeline.learn.prompts.PromptEmbeddings`), or None without a text
        config or with source "none".

    Raises:
        ConfigError: for a bad text source or prompts file, or an embedding problem (a PromptError).
        ImportError: for source "minilm" without the ``changeflow[text]`` extra.
        FileNotFoundError: for a missing embedding file or model folder.
    """
    from pipeline.learn.prompts import embeddings_from_config  # the text extra only when text is used

    if config.text is None:
        return None
    try:
        return embeddings_from_config(config.text, out / "prompt_cache", text_dim)
    except ValueError as exc:
        raise ConfigError(f"text prompts: {exc}") from None


def _loader(dataset: TileDataset | DrawnSamples, config: TrainConfig) -> DataLoader:
    """Batches in the dataset's order: an evaluation split, or an epoch's draws (already shuffled)."""
    return DataLoader(
        dataset,
        batch_size=config.batch_size,
        shuffle=False,
        num_workers=config.workers,
        persistent_workers=False,
        pin_memory=torch.cuda.is_available(),
    )


def _train_loader(run: _Run, epoch: int) -> DataLoader:
    """This process's batches of the epoch: ``steps_per_epoch`` batches of the epoch's draws."""
    config = run.config
    samples = run.steps_per_epoch * config.batch_size * run.ddp.world_size
    draws = epoch_draws(len(run.train_set), run.changed, samples, config.sampling.change_share, config.seed, epoch)
    return _loader(DrawnSamples(run.train_set, draws, run.ddp.rank, run.ddp.world_size), config)


def _autocast(device: torch.device, enabled: bool):
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: DataLoader, config: TrainConfig, device: torch.device, classes: int = 0
) -> dict[str, float]:
    """Change-class metrics of the model (student only) over a loader, in eval mode.

    Args:
        model: the model (not its DDP wrapper).
        loader: batches of the split to evaluate.
        config: the training config (inputs, AMP).
        device: where the model runs.
        classes: K of a semantic change model, 0 for a binary one.

    Returns:
        The change metrics (``iou`` among them); with ``classes`` > 0 also the semantic change metrics
        (SeK, Fscd, mIoU, ...; :mod:`pipeline.learn.semantic_metrics`) prefixed ``scd_``.
    """
    model.eval()
    metrics = change_metrics(device)
    semantic = SemanticChangeMetrics(classes) if classes else None
    for batch in loader:
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with _autocast(device, config.amp):
            outputs = _forward(model, batch, config, teacher=False)
        probability = torch.softmax(outputs["logits"].float(), dim=1)[:, 1]
        metrics.update(probability, batch["label"])
        if semantic is not None:
            semantic.update(
                outputs["semantic_t1"].argmax(1).cpu(), outputs["semantic_t2"].argmax(1).cpu(),
                batch["semantic_t1"].cpu(), batch["semantic_t2"].cpu(),
                pred_change=(probability > 0.5).long().cpu(), gt_change=batch["label"].cpu(),
            )
    values = as_floats(metrics.compute())
    if semantic is not None:
        values.update({f"scd_{k}": v for k, v in semantic.compute().items()})
    return values


def _schedule(optimizer: torch.optim.Optimizer, config: TrainConfig, epochs: int):
    if config.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 1.0)


def _optimizer(model: nn.Module, loss: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    groups = [{"params": [p for p in model.parameters() if p.requires_grad], "lr": config.lr}]
    loss_params = [p for p in loss.parameters() if p.requires_grad]
    if loss_params:
        # GOLD trains its loss weights at a tenth of the network's learning rate.
        groups.append({"params": loss_params, "lr": config.lr * 0.1, "weight_decay": 0.0})
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay)
    return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)


class _Log:
    """metrics.csv and TensorBoard, rank 0 only; CSV rows after ``start_epoch`` are dropped on resume."""

    def __init__(self, out: Path, start_epoch: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.csv = out / METRICS_CSV
        if self.csv.exists():
            with open(self.csv) as handle:
                rows = [r for r in csv.DictReader(handle) if int(r["epoch"]) < start_epoch]
            self._rewrite(rows)
        self.board = SummaryWriter(str(out / "tensorboard"), purge_step=start_epoch)

    def _rewrite(self, rows: list[dict]) -> None:
        if not rows:
            self.csv.unlink(missing_ok=True)
            return
        with open(self.csv, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)

    def write(self, epoch: int, values: dict[str, float]) -> None:
        row = {"epoch": epoch, **values}
        exists = self.csv.exists()
        with open(self.csv, "a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(row))
            if not exists:
                writer.writeheader()
            writer.writerow(row)
        for name, value in values.items():
            self.board.add_scalar(name, value, epoch)
        self.board.flush()

    def close(self) -> None:
        self.board.close()


@dataclass
class _Run:
    """What one training run holds: its inputs, model, loss, optimiser and where it stands."""

    config: TrainConfig
    out: Path
    ddp: Distributed
    device: torch.device
    teacher: bool  # the model trains with a teacher input
    classes: int  # semantic classes, 0 for binary change models
    bands: dict[str, int]
    channels: dict[str, int]
    stats: dict[str, BandStats]
    model: nn.Module
    wrapped: nn.Module  # the model, or its DistributedDataParallel wrapper
    loss_fn: nn.Module
    loss_name: str
    optimizer: torch.optim.Optimizer
    scheduler: Any
    train_set: TileDataset
    val_set: TileDataset
    test_set: TileDataset
    tile_size: int  # the side of the training samples (detection's default window)
    validity: dict[str, dict]  # the validity rule applied per image role (see pipeline.io.validity)
    changed: list[int]  # train tiles holding change (class-balanced draws)
    steps_per_epoch: int
    epochs: int  # planned: config.epochs, fewer under a step budget
    start_epoch: int = 0
    best_iou: float = -math.inf
    step: int = 0  # optimiser steps done, over every epoch
    seconds: float = 0.0  # training time of earlier sessions (resumed runs)
    started: float = 0.0  # time.monotonic() when this session's training began
    monitor_best: float = -math.inf  # early stopping: best value of its metric
    stale: int = 0  # early stopping: validations since it improved
    stopped: str | None = None  # why training ended before its planned epochs
    epochs_run: int = 0

    def elapsed(self) -> float:
        """Seconds of training over every session of the run."""
        return self.seconds + time.monotonic() - self.started

    def out_of_time(self) -> bool:
        """Whether the ``max_minutes`` budget is spent."""
        limit = self.config.max_minutes
        return limit is not None and self.elapsed() >= limit * 60

    def finished(self) -> bool:
        """Whether training is over before its planned epochs: stopped early, or a budget spent."""
        steps = self.config.max_steps
        return bool(self.stopped) or self.out_of_time() or (steps is not None and self.step >= steps)

    def payload(self, epoch: int) -> dict[str, Any]:
        """The checkpoint after ``epoch``: enough to resume exactly or to run inference.

        Args:
            epoch: the finished epoch (0-based).

        Returns:
            The payload for :func:`~pipeline.learn.checkpoint.save_checkpoint`.
        """
        config = self.config
        return {
            "model": self.model.state_dict(),
            "model_name": config.model,
            "model_options": {**config.model_options, **self.channels},
            "loss": self.loss_fn.state_dict(),
            "loss_name": self.loss_name,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": epoch,
            "best_iou": self.best_iou,
            "step": self.step,
            "train_seconds": self.elapsed(),
            "early_stopping": {"best": self.monitor_best, "stale": self.stale},
            "stopped": self.stopped,
            "normalization": {role: s.to_dict() for role, s in self.stats.items()},
            "bands": self.bands,
            "inputs": list(config.inputs),
            "semantic_classes": self.classes,
            "tile_size": self.tile_size,
            POLICY_KEY: self.validity,  # detection applies the same rule
            "config": config.model_dump(mode="json"),
        }


def train(
    config: TrainConfig,
    out: Path,
    *,
    resume: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Train ``config.model`` on the tile index of ``config.data`` into ``out``.

    Every input problem (missing tiles, band mismatch, unknown model, unreadable checkpoint) is
    raised before the first training step. Under ``torchrun`` only rank 0 validates and writes.
    Training ends after ``epochs`` epochs of :func:`~pipeline.learn.sampling.steps_per_epoch` steps, or
    earlier at ``max_steps``, ``max_minutes`` (checked after every step in one process, after every
    epoch under torchrun) or when early stopping's metric stops improving. With ``pseudo_labels`` the
    labels come from a label-free map first (:mod:`pipeline.learn.pseudo_labels`).

    Args:
        config: the validated training config.
        out: the run folder (checkpoints ``best.pt`` / ``last.pt``, ``metrics.csv``, ``metrics.json``).
        resume: continue from ``out/last.pt``.
        progress: called with (label, step, steps) after each training step on rank 0.

    Returns:
        On rank 0 the model name, best epoch, its validation IoU, the test metrics, the steps and epochs
        run, the training seconds and why training stopped; {} elsewhere.

    Raises:
        ConfigError: for an unknown model or bad model, loss or text options.
        InputError: for a bad tile index or an unreadable or foreign checkpoint.
    """
    ddp = distributed_from_env()
    device = resolve_device(config.device, ddp.local_rank)
    if ddp.world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    waits = rank_0_wait_group()
    if config.pseudo_labels is not None:
        _pseudo_labels(config, out, ddp, device, resume, progress)
        _wait_for_rank_0(waits)
    run = _setup(config, out, ddp, device, resume)
    writable_folder(out)
    with output_errors(out):  # metrics.csv and TensorBoard: a full disk is one line, not a traceback
        log = _Log(out, run.start_epoch) if ddp.is_main else None
        run.started = time.monotonic()
        for epoch in range(run.start_epoch, run.epochs):
            if _from_rank_0(run.finished(), waits):
                break
            train_values, lr = _train_epoch(run, epoch, progress)
            if ddp.is_main:
                _validate_and_checkpoint(run, epoch, train_values, lr, log)
            _wait_for_rank_0(waits)
            run.stopped = _from_rank_0(run.stopped, waits)
            run.epochs_run = epoch + 1
    result: dict[str, Any] = {}
    if ddp.is_main:
        log.close()
        result = _final_test(run)
    if ddp.world_size > 1:
        dist.destroy_process_group()
    return result


def _pseudo_labels(config: TrainConfig, out: Path, ddp: Distributed, device: torch.device, resume: bool,
                   progress: Callable[[str, int, int], None] | None) -> None:
    """Write the run's pseudo-labels (rank 0): from the label-free map, or, when self-training, from the
    confident pixels of a first round trained on them in ``out/round1`` (trained here unless finished)."""
    settings = config.pseudo_labels
    index = load_index(config.data, config.folder_labels)
    if not settings.self_training:
        if ddp.is_main:
            writable_folder(out)
            with output_errors(out):
                build_pseudo_labels(index, config, out)
        return
    if ddp.world_size > 1:
        raise ConfigError("pseudo_labels.self_training runs in one process; train without torchrun")
    first = out / ROUND_ONE
    if not (first / "metrics.json").exists():
        round_one = config.pseudo_labels.model_copy(update={"self_training": False})
        train(config.model_copy(update={"pseudo_labels": round_one}), first,
              resume=resume and (first / "last.pt").exists(), progress=progress)
    with output_errors(out):
        write_pseudo_labels(index, config, out, _tile_predictor(first / "best.pt", config, device),
                            f"self-training on {ROUND_ONE}/best.pt")


def _tile_predictor(checkpoint_path: Path, config: TrainConfig, device: torch.device) -> Callable[[dict], Any]:
    """A tile's change probabilities (H, W) by a trained checkpoint, from the tile's index row."""
    checkpoint = load_checkpoint(checkpoint_path, device)
    model = build_model(checkpoint["model_name"], checkpoint["model_options"], {}).to(device)
    model.load_state_dict(checkpoint["model"])
    model.eval()
    stats = {role: BandStats.from_dict(d) for role, d in checkpoint["normalization"].items()}
    index = with_pseudo_labels(load_index(config.data, config.folder_labels), checkpoint_path.parent)
    tiles = {split: TileDataset(index, split, stats, validity=checkpoint[POLICY_KEY]) for split in SPLITS}
    positions = {tile: (split, i) for split, dataset in tiles.items() for i, tile in enumerate(dataset.rows.tile_id)}

    @torch.no_grad()
    def probability_of(row: dict) -> Any:
        split, position = positions[row["tile_id"]]
        sample = tiles[split][position]
        batch = {key: value[None].to(device) for key, value in sample.items()}
        with _autocast(device, config.amp):
            logits = _forward(model, batch, config, teacher=False)["logits"]
        return torch.softmax(logits.float(), dim=1)[0, 1].cpu().numpy()

    return probability_of


def _setup(config: TrainConfig, out: Path, ddp: Distributed, device: torch.device, resume: bool) -> _Run:
    """Check the inputs, then build the datasets, model, loss and optimiser (restored when resuming)."""
    roles, teacher = model_roles(config)
    index = load_index(config.data, config.folder_labels)
    if config.pseudo_labels is not None:
        index = with_pseudo_labels(index, out)
    checkpoint = _resume_checkpoint(config, out) if resume else None
    classes = semantic_classes(config)
    bands = check_index(index, roles, checkpoint["bands"] if checkpoint else None, semantic=bool(classes))
    check_learnable(index, config)
    # A checkpoint written before the policy resumes under the data's.
    validity = (checkpoint or {}).get(POLICY_KEY) or validity_policy(config.data, index, roles)
    if checkpoint is not None:
        stats = {role: BandStats.from_dict(d) for role, d in checkpoint["normalization"].items()}
    else:
        modalities = {role: config.modalities[role] for role in roles}
        stats = fit_normalization(index, modalities, seed=config.seed, validity=validity)
    channels = channel_options(config, bands)
    torch.manual_seed(config.seed)  # the initial weights
    model = build_model(config.model, config.model_options, channels).to(device)
    prompts = build_prompts(config, out, int(getattr(model, "text_dim", 0))) if model.text_conditioned else None
    loss_name = getattr(model, "default_loss", "change")
    loss_fn = build_loss(loss_name, **config.loss_options).to(device)
    train_tiles = int((index.split == "train").sum())
    per_epoch = steps_per_epoch(config, train_tiles, ddp.world_size)
    epochs = planned_epochs(config, per_epoch)
    optimizer = _optimizer(model, loss_fn, config)
    scheduler = _schedule(optimizer, config, epochs)
    augment = AugmentSettings(crop=config.crop) if config.augment else None
    extras = {"semantic": bool(classes), "prompts": prompts, "validity": validity}
    train_set = TileDataset(index, "train", stats, augment=augment, seed=config.seed, **extras)
    val_set = TileDataset(index, "val", stats, **extras)
    test_set = TileDataset(index, "test", stats, **extras)
    if len(train_set) == 0 or len(val_set) == 0:
        raise InputError(config.data, "the tile index needs train and val tiles")
    changed = changed_tiles(index, "train") if config.sampling.change_share else []
    run = _Run(config, out, ddp, device, teacher, classes, bands, channels, stats, model, model, loss_fn,
               loss_name, optimizer, scheduler, train_set, val_set, test_set, trained_tile_size(index, config),
               validity, changed, per_epoch, epochs)
    if checkpoint is not None:
        _restore(checkpoint, run)
    run.wrapped = _wrap(model, ddp, device, unused_text=model.text_conditioned and prompts is None)
    return run


def _resume_checkpoint(config: TrainConfig, out: Path) -> dict[str, Any]:
    """``out/last.pt``, checked to be a checkpoint of ``config.model``."""
    checkpoint = load_checkpoint(out / "last.pt")
    if checkpoint["model_name"] != config.model:
        raise InputError(out / "last.pt", f"was trained with model '{checkpoint['model_name']}', not '{config.model}'")
    return checkpoint


def _restore(checkpoint: dict[str, Any], run: _Run) -> None:
    """Load weights, loss, optimiser, LR schedule and where the run stood (epoch, steps, time, early stopping).

    Checkpoints written before step budgets lack the step state: their steps are counted from the
    epochs done (one pass per epoch), their time from zero.
    """
    run.model.load_state_dict(checkpoint["model"])
    run.loss_fn.load_state_dict(checkpoint["loss"])
    run.optimizer.load_state_dict(checkpoint["optimizer"])
    run.scheduler.load_state_dict(checkpoint["scheduler"])
    run.start_epoch, run.best_iou = checkpoint["epoch"] + 1, checkpoint["best_iou"]
    run.epochs_run = run.start_epoch
    run.step = checkpoint.get("step", run.start_epoch * run.steps_per_epoch)
    run.seconds = checkpoint.get("train_seconds", 0.0)
    stopping = checkpoint.get("early_stopping", {})
    run.monitor_best, run.stale = stopping.get("best", -math.inf), stopping.get("stale", 0)
    # Budgets are checked against the config of this session (it may give more); early stopping stays.
    run.stopped = "early_stopping" if checkpoint.get("stopped") == "early_stopping" else None


def _wrap(model: nn.Module, ddp: Distributed, device: torch.device, unused_text: bool) -> nn.Module:
    """The model in DistributedDataParallel under torchrun, else the model itself."""
    if ddp.world_size == 1:
        return model
    return nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=unused_text,  # the text projector of a text model trained without prompts
    )


def _train_epoch(
    run: _Run, epoch: int, progress: Callable[[str, int, int], None] | None
) -> tuple[dict[str, float], float]:
    """One epoch: ``steps_per_epoch`` steps over the epoch's draws, fewer when the step or time budget ends it.

    Returns the mean loss parts (``train_*``) and the epoch's LR.
    """
    config = run.config
    torch.manual_seed(config.seed + epoch)
    run.train_set.set_epoch(epoch)
    loader = _train_loader(run, epoch)
    budget = len(loader) if config.max_steps is None else min(len(loader), config.max_steps - run.step)
    run.wrapped.train()
    totals: dict[str, float] = {}
    steps = 0
    for step, batch in enumerate(loader):
        if step >= budget:
            break
        parts = _train_step(run, batch, epoch + step / max(1, len(loader)))
        for name, value in parts.items():
            totals[name] = totals.get(name, 0.0) + value
        steps += 1
        run.step += 1
        if progress is not None and run.ddp.is_main:
            progress(f"epoch {epoch + 1}/{run.epochs}", step + 1, budget)
        if run.ddp.world_size == 1 and run.out_of_time():  # under torchrun every rank stops at an epoch's end
            break
    if run.out_of_time():
        run.stopped = "max_minutes"
    lr = run.optimizer.param_groups[0]["lr"]
    run.scheduler.step()
    return {f"train_{k}": v / max(1, steps) for k, v in totals.items()}, lr


def _train_step(run: _Run, batch: dict[str, torch.Tensor], progress: float) -> dict[str, float]:
    """Forward, loss, backward and optimiser step on one batch; returns the loss parts.

    ``progress`` is the fractional epoch, which losses with a warm-up or schedule use.
    """
    config, device = run.config, run.device
    batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    with _autocast(device, config.amp):
        outputs = _forward(run.wrapped, batch, config, run.teacher)
    target = loss_target(batch, bool(run.classes))
    loss, parts = run.loss_fn(_as_float(outputs), target, progress)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if config.grad_clip:
        nn.utils.clip_grad_norm_(list(run.model.parameters()) + list(run.loss_fn.parameters()), config.grad_clip)
    run.optimizer.step()
    return parts


def rank_0_wait_group() -> dist.ProcessGroup | None:
    """Under torchrun, a CPU (gloo) group for the ranks to wait on while rank 0 validates and saves.

    Its own timeout (:data:`RANK_0_WAIT`), not the training collectives' (NCCL: 10 min by default),
    bounds that wait: a validation longer than the NCCL timeout no longer kills the job. Every rank
    must call it, at the same point.

    Returns:
        The group, or None without a process group.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return None
    return dist.new_group(backend="gloo", timeout=RANK_0_WAIT)


def _wait_for_rank_0(group: dist.ProcessGroup | None) -> None:
    """Under torchrun, every rank waits here while rank 0 validates and saves.

    Without it the other ranks run on into the next epoch's gradient all-reduce and wait there,
    out of step with rank 0, under the collectives' timeout.
    """
    if group is not None:
        dist.barrier(group=group)


def _from_rank_0(value: Any, group: dist.ProcessGroup | None) -> Any:
    """Rank 0's value on every rank (under torchrun; the value itself otherwise)."""
    if group is None:
        return value
    shared = [value]
    dist.broadcast_object_list(shared, src=0, group=group)
    return shared[0]


def _early_stopping(run: _Run, val: dict[str, float]) -> None:
    """Count validations without improvement of the early-stopping metric; set ``stopped`` at its patience."""
    settings = run.config.early_stopping
    if settings is None:
        return
    value = val[settings.metric]
    if value > run.monitor_best + settings.min_delta:
        run.monitor_best, run.stale = value, 0
        return
    run.stale += 1
    if run.stale >= settings.patience:
        run.stopped = "early_stopping"


def _validate_and_checkpoint(run: _Run, epoch: int, train_values: dict[str, float], lr: float, log: _Log) -> None:
    """Validate, log the epoch, save ``best.pt`` when the val IoU improves and ``last.pt`` always."""
    val = evaluate(run.model, _loader(run.val_set, run.config), run.config, run.device, run.classes)
    values = {**train_values, **{f"val_{k}": v for k, v in val.items()}, "lr": lr, "step": run.step}
    log.write(epoch, values)
    _early_stopping(run, val)
    if val["iou"] > run.best_iou:
        run.best_iou = val["iou"]
        save_checkpoint(run.out / "best.pt", run.payload(epoch))
    save_checkpoint(run.out / "last.pt", run.payload(epoch))


def _labels_used(run: _Run) -> dict[str, dict[str, int]]:
    """Per split, the tiles and the labelled (not 255 = ignore) and change pixels training used: with a
    label exported by ``changeflow review``, the labelled pixels are the reviewed ones."""
    used = {}
    for split, tiles in (("train", run.train_set), ("val", run.val_set), ("test", run.test_set)):
        change, labelled = split_change_counts(tiles.rows, split) if len(tiles.rows) else (0, 0)
        used[split] = {"tiles": len(tiles.rows), "labelled_pixels": labelled, "change_pixels": change}
    return used


def _final_test(run: _Run) -> dict[str, Any]:
    """Test metrics of the best checkpoint (once, at the end), written to ``metrics.json``."""
    best = load_checkpoint(run.out / "best.pt", run.device)
    run.model.load_state_dict(best["model"])
    test = {}
    if len(run.test_set):
        test = evaluate(run.model, _loader(run.test_set, run.config), run.config, run.device, run.classes)
    steps = run.config.max_steps
    stopped = run.stopped or ("max_steps" if steps is not None and run.step >= steps else "epochs")
    result = {"model": run.config.model, "best_epoch": best["epoch"], "val_iou": best["best_iou"], "test": test,
              "steps": run.step, "epochs_run": run.epochs_run,
              "train_seconds": round(run.elapsed(), 1), "stopped": stopped, "labels": _labels_used(run)}
    write_atomic(run.out / "metrics.json", json.dumps(result, indent=1))
    return result
