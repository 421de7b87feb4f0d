"""Tile latency of the review app on a large group (default 20000 × 20000 px), p50 / p95 per level.

Writes a group grid COG (4-band uint16, textured so it compresses like imagery) and a uint8 probability
COG through the pipeline's COG writer (overviews included), serves them with the review app under
uvicorn, and requests random tiles of every level over HTTP (one keep-alive client, as a browser pane
does). Side by side, the reference: a plain rasterio read of the same tile window (the floor: no
stretch, no PNG). Each tile is requested once.

    .venv/bin/python benchmarks/review_tiles.py [--size 20000] [--tiles 60] [--work /tmp/review-tiles]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import rasterio
import uvicorn
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.windows import Window

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.io.cog import write_cog_from_blocks  # noqa: E402
from pipeline.review.app import create_app  # noqa: E402
from pipeline.review.group import Grid, ReviewGroup  # noqa: E402
from pipeline.review.store import ReviewStore  # noqa: E402
from pipeline.review.tiles import TileSource  # noqa: E402

BLOCK = 2048


def blocks(size: int, bands: int, dtype: str, seed: int):
    """Textured blocks covering a size × size raster (smooth fields plus noise)."""
    rng = np.random.default_rng(seed)
    for row in range(0, size, BLOCK):
        for col in range(0, size, BLOCK):
            h, w = min(BLOCK, size - row), min(BLOCK, size - col)
            yy, xx = np.mgrid[row:row + h, col:col + w].astype(np.float32)
            base = 0.5 + 0.25 * np.sin(xx / 310.0) * np.cos(yy / 270.0) + 0.15 * np.sin((xx + yy) / 57.0)
            if dtype == "uint8":  # a probability
                data = np.clip(base - 0.3 + rng.normal(0, 0.05, (1, h, w)), 0, 1) * 254
            else:
                data = np.stack([base * (800 + 300 * b) for b in range(bands)]) + rng.normal(0, 20, (bands, h, w))
            yield Window(col, row, w, h), data.astype(dtype)


def write_group(work: Path, size: int) -> ReviewGroup:
    """The large group's grid COG and probability COG (reused when present)."""
    crs, transform = CRS.from_epsg(32650), Affine(0.8, 0, 400000.0, 0, -0.8, 3600000.0)
    grid = Grid(crs, transform, size, size)
    paths = {"A": work / "grid" / "A.tif", "probability": work / "detect" / "change_probability.tif"}
    for name, (bands, dtype) in {"A": (4, "uint16"), "probability": (1, "uint8")}.items():
        if paths[name].exists():
            continue
        started = time.perf_counter()
        profile = {"width": size, "height": size, "count": bands, "dtype": dtype, "crs": crs, "transform": transform,
                   "nodata": 255 if dtype == "uint8" else 0}
        write_cog_from_blocks(paths[name], profile, blocks(size, bands, dtype, seed=len(name)),
                              staging=work / f"{name}.staging.tif", categorical=False)
        print(f"wrote {paths[name]} in {time.perf_counter() - started:.0f} s", flush=True)
    return ReviewGroup(name="large", group_dir=work, detection_dir=work / "detect", grid=grid,
                       images={"A": paths["A"], "C": paths["A"]}, sensors={"A": "gf2", "C": "gf2"}, t1="A", t2="C",
                       threshold=0.5)


def percentiles(values: list[float]) -> dict[str, float]:
    """p50 / p95 / max in milliseconds."""
    ms = np.array(values) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 1), "p95_ms": round(float(np.percentile(ms, 95)), 1),
            "max_ms": round(float(ms.max()), 1), "n": len(values)}


def measure(group: ReviewGroup, tiles: TileSource, url: str, count: int, seed: int) -> dict:
    """Per level: HTTP PNG tile latency and the plain rasterio read of the same windows."""
    rng = np.random.default_rng(seed)
    results = {}
    with httpx.Client(base_url=url, timeout=60) as client, rasterio.open(group.images["A"]) as dataset:
        for z in range(tiles.tms.minzoom, tiles.tms.maxzoom + 1):
            factor = 2 ** (tiles.tms.maxzoom - z)
            span = math.ceil(group.grid.width / (256 * factor))
            picks = {(int(x), int(y)) for x, y in rng.integers(0, span, (count, 2))}
            http, png_prob, plain = [], [], []
            for x, y in sorted(picks):
                started = time.perf_counter()
                client.get(f"/tiles/A/{z}/{x}/{y}.png").raise_for_status()
                http.append(time.perf_counter() - started)
                started = time.perf_counter()
                client.get(f"/tiles/probability/{z}/{x}/{y}.png").raise_for_status()
                png_prob.append(time.perf_counter() - started)
                started = time.perf_counter()
                dataset.read([3, 2, 1], window=Window(x * 256 * factor, y * 256 * factor, 256 * factor, 256 * factor),
                             out_shape=(3, 256, 256), boundless=True, resampling=Resampling.nearest)
                plain.append(time.perf_counter() - started)
            results[z] = {"image_png_http": percentiles(http), "probability_png_http": percentiles(png_prob),
                          "rasterio_read": percentiles(plain)}
            print(f"z={z}: {json.dumps(results[z])}", flush=True)
    return results


def main() -> None:
    """Build (or reuse) the large group, serve it, measure."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=20000)
    parser.add_argument("--tiles", type=int, default=60, help="random tiles requested per level")
    parser.add_argument("--work", type=Path, default=Path("/tmp/review-tiles"))
    parser.add_argument("--port", type=int, default=8799)
    args = parser.parse_args()
    work = args.work / str(args.size)
    group = write_group(work, args.size)
    started = time.perf_counter()
    tiles = TileSource(group)
    stretch_seconds = time.perf_counter() - started
    app = create_app(group, ReviewStore(work / "review.sqlite"), tiles)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=args.port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        levels = measure(group, tiles, f"http://127.0.0.1:{args.port}", args.tiles, seed=0)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    report = {"size": args.size, "levels": levels, "stretch_seconds": round(stretch_seconds, 2)}
    (work / "results.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
