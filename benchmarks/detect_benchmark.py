"""Benchmark `detect_group`: end-to-end throughput against the bare model forward, and peak RSS.

For every scene size N in ``--sizes`` and every model in ``--models`` the benchmark

1. gets an N x N scene group: the A (GF-2-like 4-band uint16) and B (GF-3-like SAR sigma0 dB
   float32) images written by :func:`pipeline.synthetic.large.write_large_group` are already on one grid
   (A's), so they are hard-linked (symlinked across file systems) as ``grid/A.tif`` and
   ``grid/B.tif`` of a group folder with a minimal ``manifest.json``: what detection reads, without
   the prepare step. ``--scenes-dir N=DIR`` reuses an existing ``write_large_group`` folder (e.g.
   the one ``prepare_benchmark.py --keep`` leaves), ``--group-dir N=DIR`` takes a real prepare
   output group (``OUT/groups/{group}``, its COGs in ``grid/``);
2. writes a random-init checkpoint of the model (4-band A, 1-band B, normalisation statistics for
   the synthetic DN and dB ranges, the window as training crop);
3. **end to end**: runs :func:`pipeline.detect.sliding.detect_group` (reading, normalising, forward,
   Gaussian blending, staging, COG writing) in a subprocess, measured from outside: wall time, peak
   RSS of the process tree sampled every 0.1 s with psutil and the kernel's ``ru_maxrss``
   (``measure`` of ``prepare_benchmark.py``). Inside, light timers around detect's own functions
   split the time: model forward, time the main loop waits for input batches, reader-thread busy
   time, staging writes, blending (the rest of the loop), COG writing. On CUDA the forward timer
   synchronises the device (``--no-breakdown`` runs without any timer);
4. **reference**: in a second subprocess, the bare forward (``model(t1, t2)`` + softmax, i.e.
   detect's ``_predict``) of the same model, same device, dtype (float32), window, batch sizes and
   number of windows as detect computed (the exact sequence of batch sizes is replayed), on ONE
   batch of real windows already on the device, reused for every call, after one warm-up call.
   ``--reference-windows K`` times only the first K windows of that sequence and extrapolates
   per window (the output says so);
5. reports MP/s = N² / seconds for both, the ratio end-to-end / bare (goal >= 0.9: I/O and
   blending hidden behind compute), the peak RSS (overall and per phase: set-up, window loop, COG
   writing), and the CPU seconds of both sides: on a machine whose cores are saturated, time
   follows CPU work, so "CPU ratio" = bare forward CPU / detect CPU is the ratio detect can reach
   there however well it overlaps, and "forward x" (forward time inside detect / bare forward)
   shows how much the reader threads slow the forward down.

For peak RSS at ``--rss-sizes`` (default 20000) the model is ``--rss-model``, by default
``bench_tiny_conv``: ONE 3x3 convolution registered in the model registry by this benchmark only
(not a changeflow model), so that a 20 000² scene finishes on a CPU (measured on 2 busy cores:
11 min with ``--rss-overlap 0``, 1 600 windows; ~6 100 windows at overlap 0.5 would take ~40 min)
and the memory measured is that of the streaming machinery (readers, accumulators, carries,
staging, COG writing), not of a network. Its MP/s is the ceiling the pipeline itself reaches on the
machine; its "ratio" is not meaningful (the forward is nearly free) and is marked so.
``--rss-overlap 0`` runs those scenes with 4x fewer windows (each pixel read once instead of ~4
times) where the time is short; the accumulators, carries, staging and COGs are the same sizes.

Usage (from the repository root)::

    .venv/bin/python benchmarks/detect_benchmark.py --sizes 4000 --rss-sizes 20000 --json detect.json
    # on a GPU: the real model on the 20000² scene too
    .venv/bin/python benchmarks/detect_benchmark.py --device cuda --sizes 4000 8000 --batch-size 16 --rss-sizes 20000 --rss-model fc_siam_diff --json detect-gpu.json
    .venv/bin/python benchmarks/detect_benchmark.py --report detect.json detect-gpu.json   # tables again

The hidden sub-commands ``_detect-child`` and ``_reference-child`` are the measured processes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for _path in (str(REPO), str(HERE)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from prepare_benchmark import _fmt, _free_gb, _strip, measure  # noqa: E402

TINY_MODEL = "bench_tiny_conv"
A_BANDS, B_BANDS = 4, 1
# Normalisation of the synthetic scenes: GF-2-like DN ~100-1300, sigma0 in dB
A_STATS = ((100.0,) * A_BANDS, (1300.0,) * A_BANDS)
B_STATS = ((-25.0,), (5.0,))


# --------------------------------------------------------------------------------------------------
# Models and checkpoints


def register_tiny_model() -> None:
    """Register ``bench_tiny_conv`` (benchmark only): one 3x3 convolution over [t1, t2] -> 2 logits."""
    import torch
    from torch import nn

    from models import registry

    class BenchTinyConv(nn.Module):
        """ONE conv layer: stands in for a network where only the streaming machinery is measured."""

        def __init__(self, t1_channels: int = A_BANDS, t2_channels: int = B_BANDS) -> None:
            super().__init__()
            self.conv = nn.Conv2d(t1_channels + t2_channels, 2, 3, padding=1)

        def forward(self, t1, t2):
            return {"logits": self.conv(torch.cat([t1, t2], dim=1))}

    registry._REGISTRY.setdefault(TINY_MODEL, BenchTinyConv)


def model_options(name: str) -> dict:
    """Constructor options for A_BANDS-band optical t1 and B_BANDS-band SAR t2."""
    import inspect

    from models import registry

    params = inspect.signature(registry.model_class(name)).parameters
    for t1, t2 in (("t1_channels", "t2_channels"), ("optical_channels", "sar_channels"), ("in_channels", None)):
        if t1 in params and (t2 is None or t2 in params):
            return {t1: A_BANDS, t2: B_BANDS} if t2 else {t1: A_BANDS}
    raise ValueError(f"do not know how to give model {name!r} {A_BANDS}-band A and {B_BANDS}-band B inputs")


def write_checkpoint(path: Path, name: str, window: int, seed: int = 0) -> Path:
    """A random-init, inference-ready checkpoint (as tests/pipeline/test_detect.py builds them)."""
    import torch

    import models
    from pipeline.learn.checkpoint import save_checkpoint
    from pipeline.learn.normalization import BandStats

    register_tiny_model()
    torch.manual_seed(seed)
    options = model_options(name)
    model = models.build(name, **options)
    save_checkpoint(path, {
        "model": model.state_dict(),
        "model_name": name,
        "model_options": options,
        "normalization": {
            "A": BandStats("optical", *A_STATS, False).to_dict(),
            "B": BandStats("sar", *B_STATS, False).to_dict(),
        },
        "bands": {"A": A_BANDS, "B": B_BANDS, "label": 1},
        "inputs": ["A", "B"],
        "config": {"model": name, "crop": window},
        "epoch": 0,
    })
    return path


# --------------------------------------------------------------------------------------------------
# Scene groups


def _link(source: Path, target: Path) -> None:
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)  # survives the source folder being removed by its owner
    except OSError:
        target.symlink_to(source.resolve())


def group_for_size(size: int, args: argparse.Namespace, created: list[Path]) -> tuple[Path, dict]:
    """A group folder (``grid/A.tif``, ``grid/B.tif``) of an N x N scene, and how it was obtained."""
    if size in args.group_dir:
        return args.group_dir[size], {"source": f"prepare output {args.group_dir[size]}"}
    scenes = args.scenes_dir.get(size, args.workdir / f"n{size}" / "scenes")
    info: dict = {}
    if not (scenes / "large_A.tif").exists() or not (scenes / "large_B.tif").exists():
        need_gb = size * size * 11.5e-9 * 1.5  # A + B + C + label (~11.5 B/px), detect outputs + staging
        free = _free_gb(args.workdir)
        if free < need_gb:
            raise SystemExit(f"not enough disk in {args.workdir}: {free:.0f} GB free, ~{need_gb:.0f} GB needed")
        from pipeline.synthetic.large import write_large_group

        print(f"[{size}] writing the synthetic group in {scenes} ...", flush=True)
        t0 = time.time()
        write_large_group(scenes, size=size, seed=args.seed)
        info["generate_s"] = round(time.time() - t0, 1)
        created.append(scenes)
        info["source"] = f"write_large_group(size={size}, seed={args.seed}) in {scenes}"
    else:
        info["source"] = f"reused write_large_group output {scenes}"
    group = args.workdir / f"n{size}" / "group" / f"bench{size}"
    (group / "grid").mkdir(parents=True, exist_ok=True)
    for role in ("A", "B"):
        _link(scenes / f"large_{role}.tif", group / "grid" / f"{role}.tif")
    (group / "manifest.json").write_text(json.dumps({"group": group.name, "coregistration": [
        {"group": group.name, "image": "large_B", "role": "B", "reference": "large_A", "accepted": True,
         "reason": None}]}))
    created.append(group.parent)
    return group, info


# --------------------------------------------------------------------------------------------------
# Measured children


def _time_forward(stats: dict[str, Any], sync: Callable[[], None]) -> None:
    """Time every model forward inside detection (``accumulate.predict``)."""
    import pipeline.detect.accumulate as accumulate

    predict = accumulate.predict

    def timed_predict(model, t1, t2, tta, text=None):
        sync()
        t0 = time.perf_counter()
        out = predict(model, t1, t2, tta, text)
        sync()
        stats["forward_s"] += time.perf_counter() - t0
        stats["forward_calls"] += 1
        stats["windows"] += int(t1.shape[0])
        stats["batch_sizes"].append(int(t1.shape[0]))
        return out

    accumulate.predict = timed_predict


def _time_reads(stats: dict[str, Any]) -> None:
    """Time the window reads (reader threads: busy time) and the loop's waits for the next batch."""
    import pipeline.detect.reading as reading

    prefetched, read, lock = reading.prefetched, reading.WindowReader.read, threading.Lock()

    def timed_prefetched(*args, **kwargs):
        stats["t_loop"], stats["wall_loop"] = time.perf_counter(), time.time()
        inner = prefetched(*args, **kwargs)

        def waiting():
            try:
                while True:
                    t0 = time.perf_counter()
                    try:
                        item = next(inner)
                    except StopIteration:
                        return
                    stats["input_wait_s"] += time.perf_counter() - t0
                    yield item
            finally:
                inner.close()

        return waiting()

    def timed_read(self, offsets):
        t0 = time.perf_counter()
        try:
            return read(self, offsets)
        finally:
            with lock:
                stats["read_s"] += time.perf_counter() - t0
                stats["read_calls"] += 1

    reading.prefetched = timed_prefetched
    reading.WindowReader.read = timed_read


def _time_writes(stats: dict[str, Any]) -> None:
    """Time block staging (finished blocks, carries) and the COG writes."""
    import pipeline.detect.output as output
    from pipeline.detect.staging import Staging

    def timed_method(cls, name):
        method = getattr(cls, name)

        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                stats["staging_s"] += time.perf_counter() - t0

        setattr(cls, name, wrapper)

    write_cog = output.write_cog_from_blocks

    def timed_cog(*args, **kwargs):
        t0 = time.perf_counter()
        if stats["t_cog"] is None:
            stats["t_cog"], stats["wall_cog"] = t0, time.time()
        try:
            return write_cog(*args, **kwargs)
        finally:
            stats["cog_s"] += time.perf_counter() - t0

    for name in ("finish_block", "save_carry"):
        timed_method(Staging, name)
    output.write_cog_from_blocks = timed_cog


def _breakdown(stats: dict[str, Any], t0: float, t1: float) -> dict[str, Any]:
    """Where detection's time went, from the timers (setup, loop parts, COG write)."""
    setup = (stats["t_loop"] or t1) - t0
    loop = (stats["t_cog"] or t1) - (stats["t_loop"] or t0)
    return {
        "setup_s": setup,  # checkpoint, checks, model build, plan, fingerprint (hashes the checkpoint)
        "loop_s": loop,
        "forward_s": stats["forward_s"],
        "input_wait_s": stats["input_wait_s"],
        "staging_s": stats["staging_s"],
        "blend_other_s": loop - stats["forward_s"] - stats["input_wait_s"] - stats["staging_s"],
        "cog_s": stats["cog_s"],
        "read_busy_s": stats["read_s"],
        "read_calls": stats["read_calls"],
        "forward_calls": stats["forward_calls"],
        "windows": stats["windows"],
        "batch_sizes": stats["batch_sizes"],
    }


def detect_child(spec_path: str) -> int:
    """Runs in the measured subprocess: ``detect_group`` with timers around detect's functions."""
    spec = json.loads(Path(spec_path).read_text())
    t_process = time.time()
    import resource

    import torch

    import pipeline.detect.sliding as d
    from pipeline.learn.device import resolve_device

    if spec.get("torch_threads"):
        torch.set_num_threads(spec["torch_threads"])
    register_tiny_model()
    device = resolve_device(spec["kwargs"]["device"])
    cuda = device.type == "cuda"
    breakdown = spec.get("breakdown", True)
    stats = {"forward_s": 0.0, "forward_calls": 0, "windows": 0, "batch_sizes": [], "input_wait_s": 0.0,
             "read_s": 0.0, "read_calls": 0, "staging_s": 0.0, "cog_s": 0.0, "t_loop": None, "t_cog": None,
             "wall_loop": None, "wall_cog": None}
    if breakdown:
        _time_forward(stats, torch.cuda.synchronize if cuda else (lambda: None))
        _time_reads(stats)
        _time_writes(stats)

    t_imported = time.time()
    cpu0 = time.process_time()
    wall0 = time.time()
    t0 = time.perf_counter()
    result = d.detect_group(Path(spec["group"]), Path(spec["checkpoint"]), Path(spec["out"]),
                            d.DetectSettings(**spec["kwargs"]))
    t1 = time.perf_counter()
    if cuda:
        torch.cuda.synchronize()
    out = {
        "detect_s": t1 - t0,
        "detect_cpu_s": time.process_time() - cpu0,  # all threads of the process
        "phases_wall": {"start": wall0, "loop": stats["wall_loop"], "cog": stats["wall_cog"], "end": time.time()},
        "imports_s": t_imported - t_process,
        "megapixels": result.megapixels,
        "blocks": result.blocks_total,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "child_ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if cuda:
        out["cuda_peak_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
        out["gpu"] = torch.cuda.get_device_name(device)
    if breakdown:
        out.update(_breakdown(stats, t0, t1))
    Path(spec["result"]).write_text(json.dumps(out))
    return 0


def reference_child(spec_path: str) -> int:
    """Runs in the second subprocess: the bare forward over the same batches, inputs already on the device."""
    spec = json.loads(Path(spec_path).read_text())
    import torch

    from pipeline.detect.inference import build_model, predict
    from pipeline.detect.inputs import check_inputs
    from pipeline.detect.reading import WindowReader
    from pipeline.detect.windows import window_starts
    from pipeline.learn.checkpoint import load_checkpoint
    from pipeline.learn.device import resolve_device
    from pipeline.learn.normalization import BandStats

    if spec.get("torch_threads"):
        torch.set_num_threads(spec["torch_threads"])
    register_tiny_model()
    device = resolve_device(spec["device"])
    checkpoint = Path(spec["checkpoint"])
    payload = load_checkpoint(checkpoint)
    inputs = check_inputs(Path(spec["group"]), checkpoint, payload)
    stats = {role: BandStats.from_dict(payload["normalization"][role]) for role in inputs.paths}
    model = build_model(checkpoint, payload, device)
    window = spec["window"]
    shape = (min(window, inputs.height), min(window, inputs.width))
    sizes: list[int] = spec["batch_sizes"]
    biggest = max(sizes)
    # one batch of real windows from the middle of the scene, normalised as detect does
    rows = window_starts(inputs.height, shape[0], spec["overlap"])
    cols = window_starts(inputs.width, shape[1], spec["overlap"])
    r = rows[len(rows) // 2]
    offsets = [(r, cols[(len(cols) // 2 + k) % len(cols)]) for k in range(biggest)]
    reader = WindowReader(inputs, stats, shape, pin=False)
    (t1, t2), _ = reader.read(offsets)
    reader.close()
    t1, t2 = t1.to(device), t2.to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    cap = spec.get("max_windows") or 0
    timed_sizes, total = [], 0
    for n in sizes:
        if cap and total >= cap:
            break
        timed_sizes.append(n)
        total += n
    with torch.inference_mode():
        predict(model, t1[:biggest], t2[:biggest], spec["tta"])  # warm-up, not timed
        sync()
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        for n in timed_sizes:
            predict(model, t1[:n], t2[:n], spec["tta"])
        sync()
        seconds = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
    all_windows = sum(sizes)
    Path(spec["result"]).write_text(json.dumps({
        "timed_s": seconds,
        "timed_windows": total,
        "all_windows": all_windows,
        "seconds": seconds * all_windows / total,  # == timed_s when every window was timed
        "extrapolated": total < all_windows,
        "s_per_window": seconds / total,
        "forward_cpu_s": cpu * all_windows / total,  # CPU seconds of the process for all windows (extrapolated like seconds)
        "torch_threads": torch.get_num_threads(),
    }))
    return 0


# --------------------------------------------------------------------------------------------------
# One (size, model) measurement


def _layout_batches(group: Path, window: int, overlap: float, block: int, batch: int) -> list[int]:
    """Batch sizes detect would run without any nodata-only window (used with --no-breakdown)."""
    import rasterio

    from pipeline.detect.windows import plan

    with rasterio.open(group / "grid" / "A.tif") as dataset:
        layout = plan(dataset.height, dataset.width, window, overlap, block)
    return [min(batch, len(owned) - k) for _, owned in sorted(layout.owned.items())
            for k in range(0, len(owned), batch)]


def _phase_peaks(phases: dict, samples: list[tuple[float, float, float]]) -> dict:
    """Peak sampled RSS (MB, process tree) before detect_group, in its set-up, window loop and COG writing."""
    edges = [("imports", None, phases.get("start")), ("setup", phases.get("start"), phases.get("loop")),
             ("windows", phases.get("loop"), phases.get("cog")), ("cog", phases.get("cog"), phases.get("end"))]
    peaks = {}
    for name, t0, t1 in edges:
        inside = [s[2] for s in samples if (t0 is None or s[0] >= t0) and (t1 is None or s[0] <= t1)]
        if inside and (t0 or t1):
            peaks[name] = round(max(inside))
    return peaks


def run_one(size: int, group: Path, model: str, args: argparse.Namespace, *, purpose: str) -> dict:
    overlap = args.rss_overlap if purpose == "rss" and args.rss_overlap is not None else args.overlap
    work = args.workdir / f"n{size}" / f"{model}-{purpose}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    checkpoint = write_checkpoint(work / f"{model}.pt", model, args.window, args.seed)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    kwargs = {"window": args.window, "overlap": overlap, "batch_size": args.batch_size, "tta": args.tta,
              "device": args.device, "block_size": args.block_size}
    spec = {"group": str(group), "checkpoint": str(checkpoint), "out": str(work / "detect-out"),
            "kwargs": kwargs, "torch_threads": args.torch_threads, "breakdown": not args.no_breakdown,
            "result": str(work / "detect-result.json")}
    (work / "detect-spec.json").write_text(json.dumps(spec))
    row: dict = {"size": size, "model": model, "purpose": purpose, "window": args.window,
                 "batch_size": args.batch_size, "overlap": overlap, "tta": args.tta}
    print(f"[{size}] {model}: detect_group ...", flush=True)
    e2e = measure([sys.executable, str(Path(__file__).resolve()), "_detect-child", str(work / "detect-spec.json")],
                  log=work / "detect.log", env=env, cwd=REPO)
    row["e2e"] = {k: e2e[k] for k in ("wall_s", "peak_rss_tree_mb", "max_rss_mb", "rc", "cpu_s", "loadavg")}
    if e2e["rc"] != 0 or not Path(spec["result"]).exists():
        row["error"] = f"detect child failed (rc={e2e['rc']}); see {work / 'detect.log'}"
        print(row["error"], flush=True)
        return row
    inside = json.loads(Path(spec["result"]).read_text())
    row["e2e"].update(inside)
    row["e2e"]["phase_peak_rss_mb"] = _phase_peaks(inside.pop("phases_wall", {}), e2e["samples"])
    row["e2e"].pop("phases_wall", None)
    row["megapixels"] = inside["megapixels"]
    row["e2e_mps"] = inside["megapixels"] / inside["detect_s"]
    print(f"[{size}] {model}: detect {inside['detect_s']:.1f} s ({row['e2e_mps']:.2f} MP/s), peak RSS "
          f"{e2e['peak_rss_tree_mb']:.0f} MB (tree) / {e2e['max_rss_mb']:.0f} MB (ru_maxrss)", flush=True)
    if not args.keep:
        shutil.rmtree(spec["out"], ignore_errors=True)

    batch_sizes = row["e2e"].pop("batch_sizes", None) or _layout_batches(group, args.window, overlap,
                                                               args.block_size, args.batch_size)
    row["windows"] = sum(batch_sizes)
    if args.skip_reference:
        return row
    ref_spec = {"group": str(group), "checkpoint": str(checkpoint), "device": args.device, "window": args.window,
                "overlap": overlap, "tta": args.tta, "batch_sizes": batch_sizes,
                "max_windows": args.reference_windows, "torch_threads": args.torch_threads,
                "result": str(work / "reference-result.json")}
    (work / "reference-spec.json").write_text(json.dumps(ref_spec))
    print(f"[{size}] {model}: bare forward over {len(batch_sizes)} batches / {row['windows']} windows"
          + (f" (timing the first {args.reference_windows})" if args.reference_windows else "") + " ...", flush=True)
    ref = measure([sys.executable, str(Path(__file__).resolve()), "_reference-child", str(work / "reference-spec.json")],
                  log=work / "reference.log", env=env, cwd=REPO)
    row["reference"] = {k: ref[k] for k in ("wall_s", "peak_rss_tree_mb", "rc", "cpu_s", "loadavg")}
    if ref["rc"] != 0 or not Path(ref_spec["result"]).exists():
        row["error"] = f"reference child failed (rc={ref['rc']}); see {work / 'reference.log'}"
        print(row["error"], flush=True)
        return row
    row["reference"].update(json.loads(Path(ref_spec["result"]).read_text()))
    derive(row)
    print(f"[{size}] {model}: bare {row['reference']['seconds']:.1f} s ({row['bare_mps']:.2f} MP/s), "
          f"ratio {row['ratio']:.2f}", flush=True)
    return row


def derive(row: dict) -> dict:
    """Figures computed from the measured ones (also for rows read back by --report)."""
    e2e, ref = row.get("e2e", {}), row.get("reference", {})
    if "seconds" not in ref or "megapixels" not in row:
        return row
    row["bare_mps"] = row["megapixels"] / ref["seconds"]
    row["ratio"] = row["e2e_mps"] / row["bare_mps"]
    if "forward_s" in e2e:
        row["forward_slowdown"] = e2e["forward_s"] / ref["seconds"]
    # When the CPUs are the bottleneck, time follows CPU work: bare forward CPU / detect CPU bounds the
    # ratio. detect's own CPU time, else the whole child's (imports included: a slight underestimate).
    detect_cpu = e2e.get("detect_cpu_s") or e2e.get("cpu_s")
    if detect_cpu and ref.get("forward_cpu_s"):
        row["cpu_bound_ratio"] = ref["forward_cpu_s"] / detect_cpu
    return row


# --------------------------------------------------------------------------------------------------
# Report


def print_report(rows: list[dict], args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 220)
    devices = sorted({row["e2e"]["device"] for row in rows if "device" in row.get("e2e", {})}) or [args.device]
    table = Table(title=f"detect_group vs bare forward (window {args.window}, batch {args.batch_size}, block "
                        f"{args.block_size}, device {', '.join(devices)}, tta {args.tta}; ext. = bare forward timed "
                        "on the first windows and extrapolated)")
    for column in ("N", "model", "overlap", "windows", "e2e s", "e2e MP/s", "bare s", "bare MP/s", "ratio",
                   "peak RSS MB (tree)", "ru_maxrss MB", "load avg"):
        table.add_column(column, justify="right")
    for row in rows:
        e2e, ref = row.get("e2e", {}), row.get("reference", {})
        tiny = row["model"] == TINY_MODEL
        bare = _fmt(ref.get("seconds")) + (" ext." if ref.get("extrapolated") else "")
        ratio = _fmt(row.get("ratio"), ".2f") + (" (n/a: tiny)" if tiny and "ratio" in row else "")
        load = e2e.get("loadavg")
        table.add_row(str(row["size"]), row["model"] + (" *" if tiny else ""), str(row["overlap"]),
                      str(row.get("windows", "-")),
                      _fmt(e2e.get("detect_s")), _fmt(row.get("e2e_mps"), ".3f"), bare,
                      _fmt(row.get("bare_mps"), ".3f"), ratio, _fmt(e2e.get("peak_rss_tree_mb"), ".0f"),
                      _fmt(e2e.get("max_rss_mb"), ".0f"),
                      f"{load[0]:.1f}->{load[1]:.1f}" if load else "-")
    console.print(table)
    if any(r["model"] == TINY_MODEL for r in rows):
        console.print(f"* {TINY_MODEL}: one 3x3 conv registered by this benchmark only, to measure the memory "
                      "and the throughput ceiling of the streaming machinery, not a network.")
    split = Table(title="where the end-to-end time goes (s; forward x = forward inside detect / bare forward; "
                        "CPU = CPU seconds of all threads; CPU ratio = bare forward CPU / detect CPU)")
    for column in ("N", "model", "setup", "forward", "forward x", "input wait", "blend+other", "staging",
                   "COG write", "e2e - bare", "reader busy", "CPU detect", "CPU bare", "CPU ratio", "cores used",
                   "peak RSS MB: setup/windows/COG"):
        split.add_column(column, justify="right")
    for row in rows:
        e2e = row.get("e2e", {})
        if "forward_s" not in e2e:
            continue
        gap = e2e["detect_s"] - row["reference"]["seconds"] if "reference" in row and "seconds" in row["reference"] else None
        split.add_row(str(row["size"]), row["model"], _fmt(e2e["setup_s"]), _fmt(e2e["forward_s"]),
                      _fmt(row.get("forward_slowdown"), ".2f"), _fmt(e2e["input_wait_s"]),
                      _fmt(e2e["blend_other_s"]), _fmt(e2e["staging_s"]), _fmt(e2e["cog_s"]), _fmt(gap),
                      _fmt(e2e["read_busy_s"]), _fmt(e2e.get("detect_cpu_s") or e2e.get("cpu_s"), ".0f")
                      + ("" if e2e.get("detect_cpu_s") else " (process)"),
                      _fmt(row.get("reference", {}).get("forward_cpu_s"), ".0f"), _fmt(row.get("cpu_bound_ratio"), ".2f"),
                      _fmt(e2e["detect_cpu_s"] / e2e["detect_s"], ".2f") if e2e.get("detect_cpu_s")
                      else _fmt(e2e["cpu_s"] / e2e["wall_s"], ".2f") + " (process)",
                      "/".join(str(e2e.get("phase_peak_rss_mb", {}).get(k, "-")) for k in ("setup", "windows", "cog")))
    console.print(split)
    for row in rows:
        if "error" in row:
            console.print(f"[red]{row['size']} {row['model']}: {row['error']}")


# --------------------------------------------------------------------------------------------------


def _size_map(values: list[str] | None, what: str) -> dict[int, Path]:
    out = {}
    for value in values or []:
        size, sep, path = value.partition("=")
        if not sep or not size.isdigit():
            raise SystemExit(f"{what} takes N=DIR, not {value!r}")
        out[int(size)] = Path(path).resolve()
    return out


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The benchmark's options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[4000],
                        help="Scene sides (px) for throughput and ratio with --models.")
    parser.add_argument("--models", nargs="+", default=["fc_siam_diff", "gold_lite"],
                        help=f"Registered model names (random init); '{TINY_MODEL}' is the benchmark's 1-conv model.")
    parser.add_argument("--rss-sizes", type=int, nargs="*", default=[20000],
                        help="Scene sides (px) run with --rss-model for peak RSS.")
    parser.add_argument("--rss-model", default=TINY_MODEL, help="Model of the --rss-sizes runs.")
    parser.add_argument("--rss-overlap", type=float, metavar="F",
                        help="Window overlap of the --rss-sizes runs (default: --overlap). 0 reads every pixel "
                             "once instead of ~4 times: 4x fewer windows, same accumulators, carries and COGs.")
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--block-size", type=int, default=2048)
    parser.add_argument("--tta", action="store_true")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    parser.add_argument("--torch-threads", type=int, default=0, help="torch.set_num_threads in both children (0: torch's default).")
    parser.add_argument("--reference-windows", type=int, default=0, metavar="K",
                        help="Time the bare forward on the first K windows only and extrapolate (0: all windows).")
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument("--no-breakdown", action="store_true", help="No timers inside detect (no CUDA syncs).")
    parser.add_argument("--scenes-dir", action="append", metavar="N=DIR",
                        help="Reuse a write_large_group folder (large_A.tif, large_B.tif) for size N.")
    parser.add_argument("--group-dir", action="append", metavar="N=DIR",
                        help="Use a prepare output group folder (grid/A.tif, grid/B.tif) for size N.")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/changeflow-detect-bench"))
    parser.add_argument("--keep", action="store_true", help="Keep generated scenes and detect outputs.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="Write the figures to this JSON file.")
    parser.add_argument("--report", type=Path, nargs="+", metavar="JSON",
                        help="Only print the tables of earlier --json files (rows of several files together).")
    return parser.parse_args(argv)


def print_saved(args: argparse.Namespace) -> None:
    """The tables of earlier --json files (rows of several files together; titles from the first's settings)."""
    rows = []
    for path in args.report:
        saved = json.loads(path.read_text())
        rows += [derive(row) for row in saved["results"]]
        for key, value in saved["settings"].items():
            if key in ("window", "batch_size", "block_size", "device", "tta"):
                setattr(args, key, value)
    print_report(rows, args)


def _remove_outputs(args: argparse.Namespace, plan_runs: list[tuple[int, str, str]], created: list[Path]) -> None:
    """Remove the generated scenes and detect outputs, and the work folders left empty."""
    for path in created:
        shutil.rmtree(path, ignore_errors=True)
    sizes = {s for s, _, _ in plan_runs}
    for size in sizes:
        for model in set(args.models) | {args.rss_model}:
            for purpose in ("throughput", "rss"):
                shutil.rmtree(args.workdir / f"n{size}" / f"{model}-{purpose}", ignore_errors=True)
    for folder in [*(args.workdir / f"n{size}" for size in sizes), args.workdir]:
        try:
            folder.rmdir()  # only when empty
        except OSError:
            pass


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_detect-child":
        return detect_child(argv[1])
    if argv and argv[0] == "_reference-child":
        return reference_child(argv[1])
    args = parse_args(argv)
    if args.report:
        print_saved(args)
        return 0
    args.workdir = args.workdir.resolve()
    args.workdir.mkdir(parents=True, exist_ok=True)
    args.scenes_dir = _size_map(args.scenes_dir, "--scenes-dir")
    args.group_dir = _size_map(args.group_dir, "--group-dir")

    plan_runs = [(size, model, "throughput") for size in args.sizes for model in args.models]
    plan_runs += [(size, args.rss_model, "rss") for size in args.rss_sizes]
    rows: list[dict] = []
    created: list[Path] = []
    groups: dict[int, tuple[Path, dict]] = {}
    started = time.time()
    try:
        for size, model, purpose in plan_runs:
            if size not in groups:
                groups[size] = group_for_size(size, args, created)
            group, info = groups[size]
            row = run_one(size, group, model, args, purpose=purpose)
            row["group"] = {"path": str(group), **info}
            rows.append(row)
            if args.json:  # after every run, so a long run leaves figures behind
                args.json.write_text(json.dumps(_strip({
                    "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
                                 if k not in ("scenes_dir", "group_dir", "json")},
                    "cpus": os.cpu_count(), "results": rows}), indent=1))
    finally:
        if not args.keep:
            _remove_outputs(args, plan_runs, created)
    print_report(rows, args)
    print(f"total {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
