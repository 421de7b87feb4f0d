"""Benchmark the training loop against the bare forward + backward of the same model.

For each model (``--models``, default fc_siam_diff gold gold_lite) the benchmark measures

1. **bare**: the training step alone — forward (under the same autocast as training), the model's
   training loss, backward, gradient clipping and the optimizer step — on ONE real batch that is
   already on the device, repeated. This is the ceiling: what the GPU (or CPU) can do with no data
   pipeline at all;
2. **loop**: the same step fed by the real data path of ``pipeline.learn.train.train``: the
   ``DataLoader`` built by ``pipeline.learn.train._loader`` (config's workers, shuffle, pinned memory when
   CUDA is present) over ``TileDataset`` (GeoTIFF reads with valid masks, normalisation,
   augmentation) and the host → device copy, once per ``--workers`` value;

and reports ``ratio = loop tiles/s ÷ bare tiles/s`` (goal ≥ 0.9: the data pipeline must not be the
bottleneck). Model, loss and optimizer come from ``pipeline.learn.train`` (``build_model``,
``build_loss``/``default_loss``, ``_optimizer``, ``_forward``, ``_autocast``, ``_loader``); the step
below is the body of ``train()``'s inner loop, line for line.

Timing: ``--warmup`` steps are run first and not timed (cuDNN autotuning, allocator, worker
start-up), then ``--iterations`` steps are timed, with ``torch.cuda.synchronize()`` around the
timed window on CUDA. The losses turn their components into Python floats every step (a device
sync), so the time spent in ``next(loader)`` is the time the step waited for data.

``train()`` builds a new ``DataLoader`` (non-persistent workers) over each epoch's draws
(``pipeline.learn.sampling``: class-balanced crops when ``sampling.change_share`` is set). To time the
steady state, the timed window lies inside one epoch: the benchmark draws warm-up + timed steps' worth
of samples as one epoch, exactly as ``train()`` draws them; the epoch start (worker start-up until the
first batch) is timed separately and reported with the throughput amortised over the real epoch of the
data. Validation and checkpointing, once per epoch
in ``train()``, are not part of training throughput and are not timed.

It also reports the single-process cost of one ``TileDataset`` sample (reads vs normalisation and
augmentation), which says how many workers a given step rate needs, and the parameters and FLOPs of
every registered model per 512² tile (``models.complexity`` on the meta device: inference = A + B,
training forward = A + B + C for GOLD models), for the constructor defaults (3 + 3 bands, the
papers' setting) and for the band counts of the benchmark data.

Data: by default a synthetic GF-2 / GF-3 / Sentinel-2 group (``changeflow synthetic``, ``--scene-size``
px) prepared into 512² tiles with ``changeflow prepare`` (``split.block_tiles: 1``) under ``--work``,
in subprocesses; reused when already there. ``--data DIR`` uses an existing prepare output (or a
LEVIR-style folder: A and B optical, teacher models skipped).

Usage (from the repository root)::

    # 2 shared CPU cores: one intra-op thread (see --threads), small crops
    .venv/bin/python benchmarks/train_benchmark.py --device cpu --threads 1 --batch-size 2 --crop 256 \\
        --workers 0 1 2 --iterations 10 --warmup 2 --rounds 2 --json out/train-benchmark/cpu.json
    # a GPU (bf16 autocast as in train()), whole 512 px tiles, the config's 2 workers and more
    python benchmarks/train_benchmark.py --device cuda --batch-size 8 --workers 2 8 14 \\
        --iterations 100 --warmup 10 --rounds 2 --json out/train-benchmark/cuda.json
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import models  # noqa: E402
from models.registry import model_class  # noqa: E402
from pipeline.config import TrainConfig  # noqa: E402
from pipeline.learn.augment import AugmentSettings, optical_jitter, paired_geometry  # noqa: E402
from pipeline.learn.dataset import (  # noqa: E402
    TileDataset,
    _read,
    changed_tiles,
    check_index,
    fit_normalization,
    load_index,
)
from pipeline.learn.device import resolve_device  # noqa: E402
from pipeline.learn.normalization import normalize  # noqa: E402
from pipeline.learn.sampling import DrawnSamples, epoch_draws  # noqa: E402
from pipeline.learn.train import (  # noqa: E402
    _autocast,
    _forward,
    _loader,
    _optimizer,
    build_loss,
    build_model,
    channel_options,
    model_roles,
)

DEFAULT_MODELS = ["fc_siam_diff", "gold", "gold_lite"]
TILE = 512
PREPARE_YAML = """\
# Written by benchmarks/train_benchmark.py: the synthetic group in 512 px tiles.
scene_list: {scene_list}
tiling: {{size: 512, stride: 256}}
split: {{train: 0.7, val: 0.15, test: 0.15, block_tiles: 1, seed: 666}}
"""


# --------------------------------------------------------------------------------------------------
# Data


def _cli(*args: str) -> None:
    """Run the changeflow CLI in a child process (keeps Prefect's server threads out of this process,
    which forks DataLoader workers later)."""
    cmd = [sys.executable, "-c", "from flows.cli import app; app()", *args]
    print("$ changeflow " + " ".join(args), flush=True)
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"changeflow {args[0]} failed (rc {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    print(f"  done in {time.perf_counter() - start:.1f} s", flush=True)


def prepare_synthetic(work: Path, size: int, seed: int) -> Path:
    """A prepared synthetic group under ``work`` (reused when its catalog exists)."""
    prepared = work / f"prepared-{size}-s{seed}"
    if (prepared / "catalog.gpkg").exists():
        print(f"reusing prepared tiles in {prepared}")
        return prepared
    scenes = work / f"scenes-{size}-s{seed}"
    if not (scenes / "demo_scenes.yaml").exists():
        _cli("synthetic", "--out", str(scenes), "--size", str(size), "--seed", str(seed))
    config = work / f"prepare-{size}-s{seed}.yaml"
    config.write_text(PREPARE_YAML.format(scene_list=(scenes / "demo_scenes.yaml").resolve()))
    _cli("prepare", "--config", str(config), "--out", str(prepared))
    return prepared


# --------------------------------------------------------------------------------------------------
# The training step: what pipeline.learn.train._train_step does


class Trainee:
    """Model, loss and optimizer exactly as ``train()`` builds them, and one training step."""

    def __init__(self, config: TrainConfig, channels: dict[str, int], device: torch.device, teacher: bool) -> None:
        self.config, self.device, self.teacher = config, device, teacher
        torch.manual_seed(config.seed)
        self.model = build_model(config.model, config.model_options, channels).to(device)
        self.loss_name = getattr(self.model, "default_loss", "change")
        self.loss_fn = build_loss(self.loss_name, **config.loss_options).to(device)
        self.optimizer = _optimizer(self.model, self.loss_fn, config)
        self.model.train()

    def step(self, batch: dict[str, torch.Tensor], epoch: int, step: int, steps_per_epoch: int) -> dict[str, float]:
        config, model, loss_fn, optimizer = self.config, self.model, self.loss_fn, self.optimizer
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        with _autocast(self.device, config.amp):
            outputs = _forward(model, batch, config, self.teacher)
        loss, parts = loss_fn({k: v.float() for k, v in outputs.items()}, batch["label"], epoch + step / max(1, steps_per_epoch))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip:
            nn.utils.clip_grad_norm_(list(model.parameters()) + list(loss_fn.parameters()), config.grad_clip)
        optimizer.step()
        return parts


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def loop_warmup(warmup: int, workers: int, prefetch_factor: int = 2) -> int:
    """Warm-up steps of a loop measurement: at least the batches the workers prefetch at start-up, so
    that this initial backlog is not counted as throughput."""
    return max(warmup, prefetch_factor * workers)


def _summary(step_s: list[float], tiles: int) -> dict[str, Any]:
    seconds = sum(step_s)
    return {
        "iterations": len(step_s),
        "seconds": seconds,
        "step_ms": 1000 * seconds / len(step_s),
        "step_ms_median": 1000 * statistics.median(step_s),
        "tiles_per_s": tiles / seconds,
    }


def measure_bare(trainee: Trainee, batch: dict[str, torch.Tensor], warmup: int, iterations: int) -> dict[str, Any]:
    """Steps on one batch already on the device; per-step wall times (the loss syncs every step)."""
    device = trainee.device
    batch = {k: v.to(device) for k, v in batch.items()}
    size = batch["label"].shape[0]
    for i in range(warmup):
        trainee.step(batch, 0, i, warmup + iterations)
    _sync(device)
    step_s = []
    last = time.perf_counter()
    for i in range(iterations):
        trainee.step(batch, 0, warmup + i, warmup + iterations)
        if i == iterations - 1:
            _sync(device)
        now = time.perf_counter()
        step_s.append(now - last)
        last = now
    return {**_summary(step_s, size * iterations), "step_s": step_s, "load_avg": os.getloadavg()[0]}


def drawn_loader(dataset: TileDataset, changed: list[int], config: TrainConfig, steps: int):
    """train()'s DataLoader over one epoch of ``steps`` batches drawn as train() draws them."""
    dataset.set_epoch(0)
    draws = epoch_draws(len(dataset), changed, steps * config.batch_size, config.sampling.change_share,
                        config.seed, 0)
    return _loader(DrawnSamples(dataset, draws), config)


def measure_loop(
    trainee: Trainee, dataset: TileDataset, changed: list[int], workers: int, warmup: int, iterations: int
) -> dict[str, Any]:
    """Steps fed by train()'s DataLoader (``_loader`` over the epoch's draws, ``workers`` workers); the
    timed window lies inside one epoch. Per-step wall times include the wait for the batch."""
    device = trainee.device
    config = trainee.config.model_copy(update={"workers": workers})
    created = time.perf_counter()
    loader = drawn_loader(dataset, changed, config, warmup + iterations)
    steps_per_epoch = len(loader)
    if steps_per_epoch < warmup + iterations:
        raise RuntimeError(f"epoch of {steps_per_epoch} steps < warm-up + iterations ({warmup + iterations})")
    batches = iter(loader)
    batch = next(batches)
    epoch_start_s = time.perf_counter() - created
    trainee.step(batch, 0, 0, steps_per_epoch)
    for i in range(1, warmup):
        trainee.step(next(batches), 0, i, steps_per_epoch)
    _sync(device)
    waited, tiles, step_s = 0.0, 0, []
    last = time.perf_counter()
    for i in range(iterations):
        batch = next(batches)
        waited += time.perf_counter() - last
        tiles += batch["label"].shape[0]
        trainee.step(batch, 0, warmup + i, steps_per_epoch)
        if i == iterations - 1:
            _sync(device)
        now = time.perf_counter()
        step_s.append(now - last)
        last = now
    del batches, loader  # shuts the workers down
    return {
        **_summary(step_s, tiles),
        "workers": workers,
        "warmup": warmup,
        "data_wait_fraction": waited / sum(step_s),
        "epoch_start_s": epoch_start_s,
        "step_s": step_s,
        "load_avg": os.getloadavg()[0],
    }


def _combine(runs: list[dict[str, Any]], batch_size: int) -> dict[str, Any]:
    """Rounds pooled: tiles/s over all timed steps, the median step, and the rounds themselves."""
    step_s = [s for run in runs for s in run["step_s"]]
    tiles = sum(run["tiles_per_s"] * run["seconds"] for run in runs)
    out = {**_summary(step_s, round(tiles)), "rounds": runs}
    out["tiles_per_s_median_step"] = batch_size / statistics.median(step_s)
    out["tiles_per_s_best_step"] = batch_size / min(step_s)
    for key in ("data_wait_fraction", "epoch_start_s"):
        if key in runs[0]:
            out[key] = sum(run[key] * (run["seconds"] if key == "data_wait_fraction" else 1) for run in runs) / (
                out["seconds"] if key == "data_wait_fraction" else len(runs)
            )
    if "workers" in runs[0]:
        out["workers"], out["warmup"] = runs[0]["workers"], runs[0]["warmup"]
    return out


def sample_cost(dataset: TileDataset, samples: int) -> dict[str, Any]:
    """Single-process cost of one sample (page cache warm): the whole ``__getitem__``, and its parts
    timed through the same functions it calls (raster reads per role, normalisation, paired geometry,
    optical jitter); plus the bytes one sample puts through collate, pinning and the host → device copy."""
    count = min(samples, len(dataset))
    for item in range(count):  # warm the page cache and GDAL
        dataset[item]
    start = time.perf_counter()
    for item in range(count):
        sample = dataset[item]
    total = (time.perf_counter() - start) / count
    parts: dict[str, float] = {}

    def timed(key: str, fn, *args):
        before = time.perf_counter()
        out = fn(*args)
        parts[key] = parts.get(key, 0.0) + time.perf_counter() - before
        return out

    rng = np.random.default_rng(0)
    for item in range(count):
        row = dataset.rows.iloc[item]
        images = {role: timed(f"read_{role}", _read, Path(row[role])) for role in dataset.stats}
        timed("read_label", _read, Path(row["label"]))
        arrays = {role: timed("normalize", normalize, d, v, dataset.stats[role]) for role, (d, v) in images.items()}
        if dataset.augment is not None:
            arrays.update({f"{role}_valid": v for role, (_, v) in images.items()})
            arrays = timed("geometry", paired_geometry, arrays, dataset.augment, rng)
            for role in images:
                if dataset.stats[role].modality == "optical":
                    arrays[role] = timed("jitter", optical_jitter, arrays[role], arrays[f"{role}_valid"], dataset.augment, rng)
    out: dict[str, Any] = {"samples": count, "getitem_ms": 1000 * total}
    out.update({f"{key}_ms": 1000 * value / count for key, value in parts.items()})
    out["read_ms"] = sum(v for k, v in out.items() if k.startswith("read_") and k != "read_ms")
    out["rest_ms"] = out["getitem_ms"] - out["read_ms"]
    out["sample_mib"] = sum(t.numel() * t.element_size() for t in sample.values()) / 2**20
    out["label_mib"] = sample["label"].numel() * sample["label"].element_size() / 2**20
    return out


# --------------------------------------------------------------------------------------------------
# Complexity


def complexity_rows(bands: dict[str, int] | None, size: int = TILE) -> list[dict[str, Any]]:
    """Params and FLOPs per ``size``² tile of every registered model, for the default and the data's bands."""
    rows = []
    settings: list[tuple[str, dict[str, int] | None]] = [("default (3+3 bands)", None)]
    if bands is not None:
        settings.append(("data (" + "+".join(f"{r}:{n}" for r, n in bands.items() if r != "label") + ")", bands))
    for label, band_counts in settings:
        for name in models.available():
            options: dict[str, int] = {}
            if band_counts is not None:
                config = TrainConfig(data=Path("."), model=name)
                roles = [r for r in (*config.inputs, config.teacher_input) if r in band_counts]
                if getattr(model_class(name), "has_teacher", False) and config.teacher_input not in band_counts:
                    continue
                if any(r not in band_counts for r in config.inputs) or not roles:
                    continue
                options = channel_options(config, band_counts)
            with torch.device("meta"):
                model = models.build(name, **options)
            shapes = [(1, c, size, size) for c in model.in_channels]
            params_inf, flops_inf = models.complexity(model, shapes[:2])
            row = {"bands": label, "model": name, "params_inference": params_inf, "gflops_inference": flops_inf / 1e9}
            if len(shapes) > 2:
                params_train, flops_train = models.complexity(model, shapes)
            else:
                params_train, flops_train = params_inf, flops_inf
            row.update(params_training=params_train, gflops_training_forward=flops_train / 1e9)
            rows.append(row)
    return rows


def training_gflops(name: str, channels: dict[str, int], size: tuple[int, int], teacher: bool) -> float:
    """Forward FLOPs of one training sample (with the teacher input) of ``size`` px, in GFLOPs."""
    with torch.device("meta"):
        model = models.build(name, **channels)
    shapes = [(1, c, *size) for c in model.in_channels]
    return models.count_flops(model, shapes if teacher else shapes[:2]) / 1e9


# --------------------------------------------------------------------------------------------------
# Main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, help="A prepare output folder (or LEVIR-style folder) to reuse.")
    parser.add_argument("--work", type=Path, default=REPO / "out" / "train-benchmark",
                        help="Where the synthetic group and its tiles are written (default out/train-benchmark).")
    parser.add_argument("--scene-size", type=int, default=3072, help="Synthetic scene side in px (3072: ~68 train tiles).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="+", default=[2],
                        help="DataLoader workers; several values measure the loop once per value (default 2, the config's).")
    parser.add_argument("--crop", type=int, default=None, help="Training crop (default: whole 512 px tiles).")
    parser.add_argument("--iterations", type=int, default=30, help="Timed steps per measurement.")
    parser.add_argument("--warmup", type=int, default=5, help="Untimed steps before each measurement.")
    parser.add_argument("--rounds", type=int, default=1,
                        help="Repeat bare and loop measurements alternately (a shared, noisy machine: 3).")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True,
                        help="bf16 autocast on CUDA as train() does (no effect on CPU, like train()).")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads of the training process (default: torch's, = cores). On a "
                             "shared 2-core machine 1 is stable; 2 stalls whenever another process runs.")
    parser.add_argument("--sample-cost", type=int, default=8, help="Samples timed for the per-tile dataset cost.")
    parser.add_argument("--json", type=Path, help="Write all figures to this JSON file.")
    args = parser.parse_args(argv)
    if args.iterations < 1 or args.warmup < 1 or args.rounds < 1:
        parser.error("--iterations, --warmup and --rounds must be >= 1")
    return args


def _environment(device: torch.device) -> dict[str, Any]:
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version()
    return env


def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def _rounds(name: str, trainee: Trainee, first: dict, dataset: TileDataset, changed: list[int],
            args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict[int, list[dict[str, Any]]]]:
    """Rounds alternating bare and loop, so that a shared machine's load changes hit both alike."""
    bare_runs: list[dict[str, Any]] = []
    loop_runs: dict[int, list[dict[str, Any]]] = {w: [] for w in args.workers}
    side = int(first["label"].shape[-1])
    for round_ in range(args.rounds):
        tag = f" (round {round_ + 1}/{args.rounds})" if args.rounds > 1 else ""
        print(f"{name}: bare step, {args.warmup} + {args.iterations} steps, batch {args.batch_size}, "
              f"{side}² px{tag} ...", flush=True)
        run = measure_bare(trainee, first, args.warmup, args.iterations)
        bare_runs.append(run)
        print(f"  bare: {run['tiles_per_s']:.2f} tiles/s ({run['step_ms']:.0f} ms/step)", flush=True)
        for workers in args.workers:
            warm = loop_warmup(args.warmup, workers)
            print(f"{name}: loop, {workers} workers, {warm} + {args.iterations} steps{tag} ...", flush=True)
            run = measure_loop(trainee, dataset, changed, workers, warm, args.iterations)
            loop_runs[workers].append(run)
            print(f"  loop: {run['tiles_per_s']:.2f} tiles/s, ratio {run['tiles_per_s'] / bare_runs[-1]['tiles_per_s']:.2f}, "
                  f"data wait {100 * run['data_wait_fraction']:.0f} %, epoch start {run['epoch_start_s']:.2f} s", flush=True)
    return bare_runs, loop_runs


def _loop_figures(runs: list[dict[str, Any]], bare_runs: list[dict[str, Any]], bare: dict[str, Any],
                  cost: dict[str, Any], epoch_tiles: int, batch_size: int) -> dict[str, Any]:
    """One worker count's loop throughput as ratios to the bare step, with the epoch start amortised."""
    loop = _combine(runs, batch_size)
    loop["ratio"] = loop["tiles_per_s"] / bare["tiles_per_s"]
    loop["ratio_median_step"] = loop["tiles_per_s_median_step"] / bare["tiles_per_s_median_step"]
    loop["ratio_best_step"] = loop["tiles_per_s_best_step"] / bare["tiles_per_s_best_step"]
    loop["ratio_per_round"] = [r["tiles_per_s"] / b["tiles_per_s"] for r, b in zip(runs, bare_runs)]
    loop["epoch_tiles"] = epoch_tiles
    loop["tiles_per_s_with_epoch_start"] = epoch_tiles / (epoch_tiles / loop["tiles_per_s"] + loop["epoch_start_s"])
    loop["ratio_with_epoch_start"] = loop["tiles_per_s_with_epoch_start"] / bare["tiles_per_s"]
    # workers needed so that sample preparation alone keeps up with the bare step
    loop["workers_needed_estimate"] = bare["tiles_per_s"] * cost["getitem_ms"] / 1000
    loop["host_to_device_gib_per_s_at_bare_rate"] = bare["tiles_per_s"] * cost["sample_mib"] / 1024
    return loop


def measure_model(name: str, config: TrainConfig, index: pd.DataFrame, stats, device: torch.device,
                  cost_of, args: argparse.Namespace) -> dict[str, Any]:
    """Bare and loop throughput of one model on the train split (``cost_of(dataset)``: the sample cost)."""
    roles, teacher = model_roles(config)
    channels = channel_options(config, check_index(index, roles))
    augment = AugmentSettings(crop=config.crop) if config.augment else None
    dataset = TileDataset(index, "train", stats, augment=augment, seed=config.seed)
    changed = changed_tiles(index, "train") if config.sampling.change_share else []
    cost = cost_of(dataset)
    # One real batch (first of a worker-less loader) for the bare reference.
    first = next(iter(drawn_loader(dataset, changed, config.model_copy(update={"workers": 0}), 1)))
    height, width = (int(n) for n in first["label"].shape[-2:])
    flops = training_gflops(name, channels, (height, width), teacher)
    entry: dict[str, Any] = {"roles": roles, "channels": channels, "sample_px": [height, width],
                             "train_forward_gflops_per_sample": flops}
    _release(device)
    trainee = Trainee(config, channels, device, teacher)
    entry["params"] = models.count_parameters(trainee.model)
    bare_runs, loop_runs = _rounds(name, trainee, first, dataset, changed, args)
    bare = _combine(bare_runs, args.batch_size)
    bare["achieved_tflops"] = 3 * flops * bare["tiles_per_s"] / 1e3  # forward + backward ≈ 3 × forward
    bare["peak_gpu_gib"] = _peak_gib(device)
    epoch_tiles = (len(dataset) // args.batch_size) * args.batch_size
    entry["bare"] = bare
    entry["loop"] = [_loop_figures(runs, bare_runs, bare, cost, epoch_tiles, args.batch_size)
                     for runs in loop_runs.values()]
    return entry


def print_throughput(results: dict[str, Any], device: torch.device, args: argparse.Namespace) -> None:
    """The throughput table: bare and loop tiles/s and their ratios per model and worker count."""
    env, amp = results["environment"], "bf16 autocast" if (args.amp and device.type == "cuda") else "fp32"
    side = next((e["sample_px"][0] for e in results["models"].values() if "sample_px" in e), TILE)
    print(f"\nTraining throughput on {env.get('gpu', 'CPU')} ({device}, {amp}), batch {args.batch_size}, "
          f"{side}² px samples, {args.rounds} x {args.iterations} timed steps after warm-up")
    header = (f"{'model':<14}{'workers':>8}{'bare t/s':>10}{'loop t/s':>10}{'ratio':>7}{'r(med)':>8}{'r(min)':>8}{'goal':>6}"
              f"{'wait %':>8}{'ep.start s':>11}{'r/epoch':>9}{'need w':>8}{'TFLOP/s':>9}{'GiB':>6}")
    print(header)
    print("-" * len(header))
    for name, entry in results["models"].items():
        if "skipped" in entry:
            print(f"{name:<14} skipped ({entry['skipped']})")
            continue
        bare = entry["bare"]
        for loop in entry["loop"]:
            print(f"{name:<14}{loop['workers']:>8}{bare['tiles_per_s']:>10.2f}{loop['tiles_per_s']:>10.2f}"
                  f"{loop['ratio']:>7.2f}{loop['ratio_median_step']:>8.2f}{loop['ratio_best_step']:>8.2f}{'ok' if loop['ratio'] >= 0.9 else 'NO':>6}"
                  f"{100 * loop['data_wait_fraction']:>8.0f}{loop['epoch_start_s']:>11.2f}"
                  f"{loop['ratio_with_epoch_start']:>9.2f}{loop['workers_needed_estimate']:>8.1f}"
                  f"{_fmt(bare['achieved_tflops'], '.3f'):>9}{_fmt(bare['peak_gpu_gib'], '.1f'):>6}")
    print("ratio = loop / bare tiles/s (goal >= 0.9; on the mean step); r(med), r(min): from the median and the "
          "fastest step\n(robust to a shared machine's load); wait %: time in next(loader); need w: workers whose single-process sample cost matches the bare step rate; "
          "TFLOP/s: 3 x training-forward FLOPs x bare tiles/s")
    print(f"r/epoch: with the epoch start (worker start-up, first batch) amortised over this data's epoch of "
          f"{results['data']['epoch_tiles']} tiles")


def print_costs(results: dict[str, Any]) -> None:
    """Single-process sample costs and the parameters and FLOPs of every model."""
    print()
    for roles, c in results["sample_cost_ms"].items():
        reads = ", ".join(f"{k[5:-3]} {v:.1f}" for k, v in c.items() if k.startswith("read_") and k != "read_ms")
        print(f"One TileDataset sample ({roles}), single process: {c['getitem_ms']:.1f} ms = reads {c['read_ms']:.1f} "
              f"({reads}) + normalise {c.get('normalize_ms', 0):.1f} + geometry {c.get('geometry_ms', 0):.1f} + "
              f"jitter {c.get('jitter_ms', 0):.1f} + rest; {c['sample_mib']:.1f} MiB per sample "
              f"(label int64 {c['label_mib']:.1f} MiB)")
    print()
    print(f"Parameters and FLOPs per {TILE}² tile (FlopCounterMode: conv + matmul, 2 FLOPs per MAC)")
    header = f"{'bands':<24}{'model':<14}{'params inf':>12}{'GFLOPs inf':>12}{'params train':>14}{'GFLOPs train fwd':>18}"
    print(header)
    print("-" * len(header))
    for row in results["complexity_512"]:
        print(f"{row['bands']:<24}{row['model']:<14}{row['params_inference'] / 1e6:>11.2f}M{row['gflops_inference']:>12.1f}"
              f"{row['params_training'] / 1e6:>13.2f}M{row['gflops_training_forward']:>18.1f}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    data = args.data.resolve() if args.data else prepare_synthetic(args.work.resolve(), args.scene_size, args.seed)
    index = load_index(data)
    base = TrainConfig(data=data, device=args.device)
    device = resolve_device(base.device)
    optical_b = "C" not in index.columns  # LEVIR-style: A and B are both optical, no teacher input
    modalities = {"A": "optical", "B": "optical"} if optical_b else dict(base.modalities)
    env = _environment(device)
    print(f"device {device}" + (f" ({env['gpu']})" if "gpu" in env else "") + f", torch {torch.__version__}, "
          f"{os.cpu_count()} CPUs; data {data}: " + ", ".join(f"{s} {n}" for s, n in index.split.value_counts().items()))
    train_tiles = int((index.split == "train").sum())
    bands_all = check_index(index, [r for r in ("A", "B", "C") if r in index.columns])
    results: dict[str, Any] = {
        "environment": env,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "data": {"path": str(data), "train_tiles": train_tiles, "tile_size": TILE, "bands": bands_all,
                 "epoch_tiles": (train_tiles // args.batch_size) * args.batch_size},
        "models": {},
    }
    crop = args.crop if args.crop and args.crop < TILE else None
    stats_cache: dict[tuple[str, ...], Any] = {}
    sample_costs: dict[str, Any] = {}
    for name in args.models:
        config = TrainConfig(data=data, model=name, batch_size=args.batch_size, workers=args.workers[0], crop=crop,
                             amp=args.amp, device=args.device, modalities=modalities)
        roles, _ = model_roles(config)
        if any(role not in index.columns for role in roles):
            print(f"{name}: skipped, the data has no {', '.join(r for r in roles if r not in index.columns)} tiles")
            results["models"][name] = {"skipped": "missing roles"}
            continue
        key = "+".join(roles)
        if key not in stats_cache:
            stats_cache[key] = fit_normalization(index, {r: config.modalities[r] for r in roles}, seed=config.seed)

        def cost_of(dataset: TileDataset, key: str = key) -> dict[str, Any]:
            return sample_costs.setdefault(key, sample_cost(dataset, args.sample_cost))

        results["models"][name] = measure_model(name, config, index, stats_cache[key], device, cost_of, args)
    results["sample_cost_ms"] = sample_costs
    results["complexity_512"] = complexity_rows(bands_all)
    print_throughput(results, device, args)
    print_costs(results)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))
        print(f"\nJSON: {args.json}")
    return results

if __name__ == "__main__":
    main()
