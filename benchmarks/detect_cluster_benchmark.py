"""Benchmark detection scaled out: one scene as block tasks on 1 and 2 Dask workers against one process.

On an N x N scene (``pipeline.synthetic.large.write_large_group``, A + SAR B linked into a group folder
as ``detect_benchmark.py`` does) with a random-init checkpoint of ``--model``, three runs of
:func:`pipeline.detect.sliding.detect_group`, each in a fresh subprocess, all with one torch thread per
process (``threads: 1``) and the same block plan:

1. **one process**: the reference, detection as it runs without a cluster;
2. **block tasks on 1 worker**: a ``LocalCluster`` (processes, 1 thread each) already started, the scene's
   blocks as tasks (``block_tasks``), the writer in the client process: the cluster path's overhead is
   its time / the reference's (goal <= 1.10);
3. **block tasks on 2 workers**: the same on two workers: the speed-up over one worker.

The wall time of each run is measured around ``detect_group`` (cluster start-up and the workers' first
imports of torch and changeflow excluded and reported apart as ``worker_warm_up_s``, model loading included), the rasters of the three runs are compared bit for bit, and the machine's load
(``os.getloadavg``) is recorded before and after, since this machine's 2 cores are shared.

Usage (from the repository root)::

    .venv/bin/python benchmarks/detect_cluster_benchmark.py --size 4000 --json cluster.json
    # a multi-GPU host: one Dask worker per GPU labelled with the GPU resource, then
    dask scheduler --port 8786 &
    for i in 0 1 2 3; do CUDA_VISIBLE_DEVICES=$i dask worker tcp://HOST:8786 --nthreads 1 --resources GPU=1 & done
    .venv/bin/python benchmarks/detect_cluster_benchmark.py --size 20000 --device cuda --block-size 2048 \\
        --overlap 0.5 --batch-size 16 --workers 4 --dask-address tcp://HOST:8786 --json cluster-gpu-4.json
    # or torchrun over the same block plan: torchrun --nproc-per-node 4 --no-python changeflow detect -c det.yaml -o out/

The hidden sub-command ``_child`` is the measured process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from detect_benchmark import group_for_size, write_checkpoint  # noqa: E402 (a sibling script)


def child(spec: dict) -> dict:
    """One measured run: detect_group in this process, blocks here or as tasks on a cluster."""
    from dataclasses import replace

    from pipeline.detect.sliding import DetectSettings, detect_group

    settings = DetectSettings(device=spec["device"], window=spec["window"], overlap=spec["overlap"],
                              block_size=spec["block_size"], batch_size=spec["batch_size"], threads=1)
    cluster = client = None
    if spec["workers"]:
        from distributed import Client, LocalCluster

        if spec["dask_address"]:
            client = Client(spec["dask_address"])
        else:
            cluster = LocalCluster(n_workers=spec["workers"], threads_per_worker=1, processes=True,
                                   dashboard_address=None)
            client = Client(cluster)
        client.wait_for_workers(spec["workers"])
        settings = replace(settings, block_tasks=True)
        warm = time.perf_counter()
        client.run(_warm_up)  # a long-lived cluster pays its imports once: measured apart
        warm_up = time.perf_counter() - warm
    started = time.perf_counter()
    result = detect_group(Path(spec["group"]), Path(spec["checkpoint"]), Path(spec["out"]), settings)
    seconds = time.perf_counter() - started
    if client is not None:
        client.close()
    if cluster is not None:
        cluster.close()
    return {"seconds": seconds, "blocks": result.blocks_total, "megapixels": result.megapixels,
            **({"worker_warm_up_s": round(warm_up, 1)} if spec["workers"] else {})}


def _warm_up() -> None:
    """On a worker: import what a block task runs (torch, the models, detection)."""
    import pipeline.detect.blocks  # noqa: F401


def _run(name: str, spec: dict) -> dict:
    """A child process for one run; its result with the load average around it."""
    load_before = os.getloadavg()[0]
    done = subprocess.run([sys.executable, __file__, "_child", json.dumps(spec)], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
    row = json.loads(done.stdout.strip().splitlines()[-1])
    row.update(name=name, workers=spec["workers"], load_before=load_before, load_after=os.getloadavg()[0])
    print(f"{name}: {row['seconds']:.1f} s ({row['megapixels'] / row['seconds']:.3f} MP/s), "
          f"load {row['load_before']:.1f} -> {row['load_after']:.1f}", flush=True)
    return row


def _identical(a: Path, b: Path) -> bool:
    import rasterio

    for name in ("change_probability.tif", "change_class.tif"):
        with rasterio.open(a / name) as x, rasterio.open(b / name) as y:
            if not np.array_equal(x.read(), y.read(), equal_nan=True):
                return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=4000)
    parser.add_argument("--model", default="fc_siam_diff")
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--overlap", type=float, default=0.0, help="0: 64 windows at 4000² (CPU-sized run)")
    parser.add_argument("--block-size", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dask-address", default=None, help="an existing cluster instead of LocalClusters: "
                        "tasks go to all its workers, so give --workers the number of workers it has")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "changeflow-cluster-bench")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    args.group_dir, args.scenes_dir = {}, {}
    group, info = group_for_size(args.size, args, [])
    checkpoint = write_checkpoint(args.workdir / f"{args.model}.pt", args.model, args.window, args.seed)
    base = {"group": str(group), "checkpoint": str(checkpoint), "device": args.device, "window": args.window,
            "overlap": args.overlap, "block_size": args.block_size, "batch_size": args.batch_size,
            "dask_address": args.dask_address}
    outs = {name: args.workdir / "out" / name for name in ["one-process", *[f"{n}-workers" for n in args.workers]]}
    rows = [_run("one-process", {**base, "workers": 0, "out": str(outs["one-process"])})]
    rows += [_run(f"{n}-workers", {**base, "workers": n, "out": str(outs[f"{n}-workers"])}) for n in args.workers]
    reference = rows[0]["seconds"]
    for row in rows:
        row["vs_one_process"] = round(row["seconds"] / reference, 3)
        row["identical_to_one_process"] = _identical(outs["one-process"], outs[row["name"]])
    one_worker = next((r["seconds"] for r in rows if r["workers"] == 1), None)
    for row in rows:
        if one_worker and row["workers"] > 1:
            row["speedup_vs_1_worker"] = round(one_worker / row["seconds"], 2)
    print(json.dumps(rows, indent=1))
    if args.json:
        args.json.write_text(json.dumps({"scene": info, "settings": base, "cpus": os.cpu_count(), "runs": rows},
                                        indent=1))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "_child":
        print(json.dumps(child(json.loads(sys.argv[2]))))
        sys.exit(0)
    sys.exit(main())
