"""Size and cost of every registered change model: parameters, GFLOPs and CPU time per 512² tile.

For each model of ``models.available()``, with representative options (:data:`CASES`):

- **parameters (M)** used by an inference forward (``models.complexity``: GOLD's teacher-only modules are left
  out when it is called with A and B only);
- **GFLOPs** of one inference forward on a 1 × 512 × 512 tile (``models.complexity`` on the meta device:
  ``FlopCounterMode``, convolutions and matrix products, 2 FLOPs per multiply-accumulate; element-wise ops,
  pooling and interpolation are not counted);
- **CPU time** of that forward, measured: random-init weights (``torch.manual_seed(0)``), ``model.eval()``,
  ``torch.inference_mode()``, random inputs, batch 1, one warm-up forward then ``--repeats`` (3) timed ones;
  the median wall time is reported, with the median CPU time of the process over the same calls (all torch
  threads; on a shared machine the CPU time is the steadier figure) and the load averages (1 min) read before
  and after the model's timed runs, because the machine may be shared. ``--threads N`` calls
  ``torch.set_num_threads(N)``; ``OMP_WAIT_POLICY`` defaults to PASSIVE as in :mod:`pipeline`.

Representative options: FC models 3 + 3 bands (an optical pair); GOLD and GOLD-lite 4-band optical A (GF-2
MSS) + 1-band SAR B (GF-3); SegChange-R1 3 + 3 bands with a 32-token 384-d prompt (MiniLM width), at its
defaults and as the small CPU variant ``width=0.25, dim=64, decoder_stride=4``; ClearSCD 3 + 3 bands,
9 semantic classes, EfficientNet-B0 and ResNet-18 encoders; STIKDNet 3 + 3 bands.

Usage (from the repository root)::

    .venv/bin/python benchmarks/model_complexity.py --threads 2 --json out/model-complexity.json
    .venv/bin/python benchmarks/model_complexity.py --no-timing            # counts only (seconds)
    .venv/bin/python benchmarks/model_complexity.py --cases gold_lite segchange_r1_small --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Passive OpenMP waiting, as `import pipeline` sets it (pipeline/__init__.py), before torch loads OpenMP:
# with spin-waiting, multi-threaded forwards stall whenever another process holds a core.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import models  # noqa: E402

TILE = 512
PROMPT_TOKENS, PROMPT_DIM = 32, 384


@dataclass(frozen=True)
class Case:
    """One row: a model name, its options and the band counts of t1 and t2 (and an optional prompt)."""

    name: str
    model: str
    options: dict[str, Any] = field(default_factory=dict)
    bands: tuple[int, int] = (3, 3)
    text_tokens: int = 0
    note: str = ""

    def shapes(self, size: int = TILE) -> list[tuple[int, ...]]:
        """Input shapes of one inference forward at batch 1 (a prompt is a third ``[1, L, D]`` input)."""
        shapes: list[tuple[int, ...]] = [(1, self.bands[0], size, size), (1, self.bands[1], size, size)]
        if self.text_tokens:
            shapes.append((1, self.text_tokens, PROMPT_DIM))
        return shapes


SEGCHANGE_SMALL = {"width": 0.25, "dim": 64, "decoder_stride": 4}
CASES: tuple[Case, ...] = (
    Case("fc_ef", "fc_ef", note="3 + 3 bands"),
    Case("fc_siam_conc", "fc_siam_conc", note="3 + 3 bands"),
    Case("fc_siam_diff", "fc_siam_diff", note="3 + 3 bands"),
    Case("gold", "gold", {"optical_channels": 4, "sar_channels": 1}, (4, 1), note="4-band optical + 1-band SAR"),
    Case("gold_lite", "gold_lite", {"optical_channels": 4, "sar_channels": 1}, (4, 1),
         note="4-band optical + 1-band SAR"),
    Case("segchange_r1", "segchange_r1", text_tokens=PROMPT_TOKENS, note="defaults, 32-token prompt"),
    Case("segchange_r1_small", "segchange_r1", SEGCHANGE_SMALL, text_tokens=PROMPT_TOKENS,
         note="width 0.25, dim 64, decoder_stride 4, 32-token prompt"),
    Case("clearscd_efficientnet_b0", "clearscd", {"semantic_classes": 9, "backbone": "efficientnet_b0"},
         note="9 classes, EfficientNet-B0"),
    Case("clearscd_resnet18", "clearscd", {"semantic_classes": 9, "backbone": "resnet18"},
         note="9 classes, ResNet-18"),
    Case("stikdnet", "stikdnet", note="3 + 3 bands"),
)


def build(case: Case) -> torch.nn.Module:
    channels = ({"optical_channels": case.bands[0], "sar_channels": case.bands[1]} if "gold" in case.model
                else {"t1_channels": case.bands[0], "t2_channels": case.bands[1]})
    return models.build(case.model, **{**channels, **case.options})


def count(case: Case, size: int = TILE) -> dict[str, float]:
    """Parameters (M) and GFLOPs of one inference forward, on the meta device (no computation)."""
    with torch.device("meta"):
        model = build(case)
    params, flops = models.complexity(model, case.shapes(size))
    row = {"params_m": params / 1e6, "gflops": flops / 1e9}
    if case.text_tokens:  # the same model without a prompt, for reference
        row["gflops_no_text"] = models.complexity(model, case.shapes(size)[:2])[1] / 1e9
    return row


def load() -> float:
    return os.getloadavg()[0]


@torch.inference_mode()
def time_forward(case: Case, repeats: int, size: int = TILE) -> dict[str, Any]:
    """Median wall and CPU seconds of ``repeats`` forwards after one warm-up, with load averages."""
    torch.manual_seed(0)
    model = build(case).eval()
    inputs = [torch.randn(shape) for shape in case.shapes(size)]
    load_before = load()
    model(*inputs)  # warm-up
    wall, cpu = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        model(*inputs)
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    return {
        "cpu_s_median": statistics.median(wall),
        "cpu_s_runs": wall,
        "cpu_time_s_median": statistics.median(cpu),
        "load_before": load_before,
        "load_after": load(),
    }


def markdown(rows: list[dict[str, Any]], timing: bool) -> str:
    head = "| model | options | params (M) | GFLOPs / 512² tile |"
    rule = "|---|---|---:|---:|"
    if timing:
        head += " CPU s / tile (median) | CPU-time s | load avg before → after |"
        rule += "---:|---:|---|"
    lines = [head, rule]
    for r in rows:
        line = f"| {r['name']} | {r['note']} | {r['params_m']:.2f} | {r['gflops']:.1f} |"
        if timing:
            line += (f" {r['cpu_s_median']:.2f} | {r['cpu_time_s_median']:.2f} | "
                     f"{r['load_before']:.1f} → {r['load_after']:.1f} |")
        lines.append(line)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="*", default=None,
                        help=f"rows to run (default all): {' '.join(c.name for c in CASES)}")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads(N) before timing")
    parser.add_argument("--repeats", type=int, default=3, help="timed forwards per model (median reported)")
    parser.add_argument("--size", type=int, default=TILE, help="tile side in px (512)")
    parser.add_argument("--no-timing", action="store_true", help="parameters and FLOPs only")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)

    known = {c.name: c for c in CASES}
    missing = sorted(set(models.available()) - {c.model for c in CASES})
    if missing:
        print(f"note: no case for registered model(s) {', '.join(missing)}; add them to CASES", file=sys.stderr)
    names = args.cases or list(known)
    unknown = [n for n in names if n not in known]
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; known: {', '.join(known)}")
    if args.threads:
        torch.set_num_threads(args.threads)

    rows = []
    for name in names:
        case = known[name]
        row: dict[str, Any] = {"name": name, "model": case.model, "options": case.options, "bands": case.bands,
                               "text_tokens": case.text_tokens, "note": case.note, **count(case, args.size)}
        if not args.no_timing:
            row.update(time_forward(case, args.repeats, args.size))
        rows.append(row)
        timing = "" if args.no_timing else (f"  {row['cpu_s_median']:7.2f} s/tile  (CPU time "
                                            f"{row['cpu_time_s_median']:.2f} s, load {row['load_before']:.1f}"
                                            f" → {row['load_after']:.1f})")
        print(f"{name:<26}{row['params_m']:8.2f} M {row['gflops']:9.1f} GFLOPs{timing}", flush=True)

    print()
    print(markdown(rows, not args.no_timing))
    if args.json:
        result = {
            "tile": args.size, "batch": 1,
            "torch": torch.__version__, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "machine": platform.machine(), "processor": platform.processor(), "repeats": args.repeats,
            "rows": rows,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
