"""Benchmark `changeflow prepare` against GDAL's own tools on a large synthetic scene group.

For each size N (``--sizes``, default 5000 20000) the benchmark

1. writes a synthetic N x N group with :func:`pipeline.synthetic.large.write_large_group` (A: GF-2-like
   4-band uint16, C: Sentinel-2-like 4-band uint16 shifted by a fraction of a pixel, B: GF-3-like
   SAR float32, label uint8; all on A's grid, DEFLATE-compressed, streamed block by block);
2. runs ``changeflow prepare`` on it (default tiling 512 / 256) in a subprocess, through the real
   CLI entry point, with timers around the pipeline stages (catalog, grid COGs, co-registration,
   tiling, split/index) so that the fixed Prefect cost (imports, temporary API server, flow and
   task bookkeeping) is reported apart from the work;
3. runs the GDAL reference on the same scene in subprocesses: ``gdal_translate -of COG`` of A,
   ``gdalwarp -of COG`` of C, B and the label onto A's grid (same CRS, resolution and extent;
   bilinear, nearest for the label; DEFLATE + predictor, 512 px blocks, like changeflow's COGs),
   then 512 px tiles at stride 256 of every image. Tiling uses ``gdal.Translate(srcWin=...)``
   (the library call behind ``gdal_translate -srcwin``) in ONE process over all tiles, because a
   process per tile costs ~0.1 s of start-up and 20000² means ~24 000 tiles; ``gdal_translate``
   as a process per tile is also timed, on every tile when there are at most
   ``--cli-tile-limit`` tiles, else on an evenly spread sample whose mean is extrapolated (the
   output says which);
4. runs the multi-threaded GDAL reference (:func:`run_gdal_mt`): ``gdalwarp -multi -wo
   NUM_THREADS=ALL_CPUS`` + ``gdal_translate -of COG`` per image, then changeflow's black/nodata
   filter in numpy and the kept tiles written on one thread per CPU (``--skip-gdal-mt`` leaves it out).

Every step is measured from outside: wall time, and the peak resident set size (RSS) of the whole
process tree (children included, e.g. Prefect's temporary API server), sampled every 0.05 s with
psutil, plus the kernel's ``ru_maxrss`` of the largest single process (``wait4``) when it is above the
benchmark's own RSS (Linux counts the forked parent's pages in a child's ``ru_maxrss``: before this
was noticed, the GDAL side's peak was the benchmark's own RSS, e.g. the 605 MB of session 2).

Throughput is N² / wall seconds, in megapixels/s of the reference image area.

Usage (from the repository root)::

    .venv/bin/python benchmarks/prepare_benchmark.py --sizes 5000 20000 --json bench.json
    .venv/bin/python benchmarks/prepare_benchmark.py --sizes 2000 --profile   # + cProfile of the group work

GDAL's command-line tools come from Debian's ``gdal-bin`` (``apt-get install -y gdal-bin
python3-gdal``); without them the changeflow side still runs and the output says "GDAL tools
not found".

The hidden sub-commands ``_changeflow-child``, ``_gdal-tile-child`` and ``_gdal-cli-tile-child``
are the measured child processes; the GDAL ones only use the standard library and ``osgeo`` so
that they run under the system Python that has the GDAL bindings.
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TILE_SIZE = 512
TILE_STRIDE = 256
COG_OPTIONS = ["COMPRESS=DEFLATE", "LEVEL=6", "BLOCKSIZE=512", "BIGTIFF=IF_SAFER", "NUM_THREADS=ALL_CPUS"]
TILE_OPTIONS = ["COMPRESS=DEFLATE", "TILED=YES", "BLOCKXSIZE=256", "BLOCKYSIZE=256"]


# --------------------------------------------------------------------------------------------------
# Window layout shared by the GDAL children (standard library only)


def axis_positions(length: int, size: int = TILE_SIZE, stride: int = TILE_STRIDE) -> list[int]:
    """Window starts covering [0, length): exact stride, the last window flush with the end."""
    if length < size:
        return []
    positions = list(range(0, length - size + 1, stride))
    if positions[-1] != length - size:
        positions.append(length - size)
    return positions


def grid_windows(width: int, height: int) -> list[tuple[int, int]]:
    return [(x, y) for y in axis_positions(height) for x in axis_positions(width)]


def _tile_options(predictor: int) -> list[str]:
    return [*TILE_OPTIONS, f"PREDICTOR={predictor}"]


# --------------------------------------------------------------------------------------------------
# Measuring a child process tree


class Measured(dict):
    """wall_s, peak_rss_tree_mb (sampled), max_rss_mb (largest single process), rc, samples."""


def measure(cmd: list[str], *, log: Path, env: dict | None = None, cwd: Path | None = None,
            interval: float = 0.05) -> Measured:
    """Run ``cmd``; wall time and peak RSS of its process tree (sampled) and ``ru_maxrss`` (wait4)."""
    import psutil

    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        out.write(("\n$ " + " ".join(map(str, cmd)) + "\n").encode())
        out.flush()
        load_start = os.getloadavg()[0]
        # Linux counts the forked parent's pages in a child's ru_maxrss (until exec), so the kernel's
        # figure says nothing when it is not above this process's own RSS.
        parent_mb = psutil.Process().memory_info().rss / 2**20
        start = time.time()
        proc = subprocess.Popen(list(map(str, cmd)), stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        samples: list[tuple[float, float, float]] = []  # (time, main process RSS MB, tree RSS MB)
        stop = threading.Event()

        def sample() -> None:
            try:
                root = psutil.Process(proc.pid)
            except psutil.Error:
                return
            while not stop.is_set():
                try:
                    main = root.memory_info().rss
                    tree = main
                    for child in root.children(recursive=True):
                        try:
                            tree += child.memory_info().rss
                        except psutil.Error:
                            pass
                    samples.append((time.time(), main / 2**20, tree / 2**20))
                except psutil.Error:
                    pass
                stop.wait(interval)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.time() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        stop.set()
        sampler.join()
    kernel_mb = usage.ru_maxrss / 1024  # kB on Linux
    kernel = [kernel_mb] if kernel_mb > 1.05 * parent_mb else []
    return Measured(
        wall_s=wall,
        rc=proc.returncode,
        # short-lived processes may end between samples: the tree is at least its largest process
        peak_rss_tree_mb=max([s[2] for s in samples] + kernel + [0.0]),
        max_rss_mb=max(kernel + [max((s[1] for s in samples), default=0.0)]),
        cpu_s=usage.ru_utime + usage.ru_stime,  # the child and the descendants it waited for
        loadavg=(load_start, os.getloadavg()[0]),
        start=start,
        samples=samples,
    )


def _combine(steps: list[Measured]) -> dict:
    """Sequential steps: walls add up, peaks are the largest."""
    return {
        "wall_s": sum(s["wall_s"] for s in steps),
        "peak_rss_tree_mb": max(s["peak_rss_tree_mb"] for s in steps),
        "max_rss_mb": max(s["max_rss_mb"] for s in steps),
        "rc": max((s["rc"] for s in steps), key=abs),
        "cpu_s": sum(s["cpu_s"] for s in steps),
        "loadavg": (max(s["loadavg"][0] for s in steps), max(s["loadavg"][1] for s in steps)),
    }


def _free_gb(path: Path) -> float:
    path.mkdir(parents=True, exist_ok=True)
    return shutil.disk_usage(path).free / 1e9


def _du_gb(path: Path) -> float:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total / 1e9


def _count_files(path: Path, suffix: str = ".tif") -> int:
    return sum(1 for _, _, files in os.walk(path) for name in files if name.endswith(suffix))


# --------------------------------------------------------------------------------------------------
# changeflow side


def changeflow_child(config: str, out: str, timings: str, profile: str | None) -> int:
    """Runs in the measured subprocess: the `changeflow prepare` CLI with stage timers."""
    t_process = _process_start_time()
    t_main = time.time()
    events: list[dict] = []
    lock = threading.Lock()

    def timed(name, func, label=None):
        def wrapper(*args, **kwargs):
            t0, c0 = time.time(), _process_cpu()
            try:
                return func(*args, **kwargs)
            finally:
                t1, c1 = time.time(), _process_cpu()
                stage = name if label is None else f"{name}:{label(*args, **kwargs)}"
                with lock:
                    events.append({"stage": stage, "t0": t0, "t1": t1, "cpu": c1 - c0,
                                   "thread": threading.get_ident()})
        return wrapper

    import rasterio.shutil

    import flows.prepare as fp
    import pipeline.prepare.catalog as catalog
    import pipeline.prepare.coregistration as co
    import pipeline.prepare.group_build as gb
    import pipeline.prepare.tiling as tiling
    from flows.cli import app
    t_imported = time.time()

    # sub-stages (nested inside the stages below): where the time of each stage goes
    catalog.read_product = timed("catalog/product-read", catalog.read_product)
    catalog.read_window = timed("catalog/footprint-mask-read", catalog.read_window)
    catalog.footprint_from_mask = timed("catalog/footprint-polygons", catalog.footprint_from_mask)
    co.read_window = timed("coregister/read", co.read_window)
    co.structure_descriptor = timed("coregister/cfog-descriptor", co.structure_descriptor)
    co.phase_shift = timed("coregister/phase-correlation", co.phase_shift)
    tiling.read_window = timed("tiles/read+mask", tiling.read_window)
    tiling._write_tile = timed("tiles/write", tiling._write_tile)
    fp.build_catalog = timed("catalog", fp.build_catalog)
    fp.build_groups = timed("overlap", fp.build_groups)
    gb.reference_grid = timed("grid", gb.reference_grid)
    gb.write_cog = timed("warp+cog", gb.write_cog, lambda source, destination, **_: Path(destination).stem)
    rasterio.shutil.copy = timed("cog-translate", rasterio.shutil.copy, lambda src, dst, **_: Path(str(dst)).name.split(".")[0])
    gb.coregister = timed("coregister", gb.coregister, lambda ref, moving, *a, **k: "sar" if k.get("structure") else "optical")
    gb.cut_tiles = timed("tiles", gb.cut_tiles)
    fp.assemble = timed("assemble(dedup+split+links)", fp.assemble)
    fp.write_index = timed("index(gpkg)", fp.write_index)

    if profile:
        import cProfile

        inner = fp.process_group

        def profiled(*args, **kwargs):  # the group runs in a task thread: profile that thread
            profiler = cProfile.Profile()
            profiler.enable()
            try:
                return inner(*args, **kwargs)
            finally:
                profiler.disable()
                profiler.dump_stats(profile)

        fp.process_group = profiled
    fp.process_group = timed("group", fp.process_group)

    rc = 0
    try:
        app(["prepare", "--config", config, "--out", out], standalone_mode=False)
    except SystemExit as exc:  # typer.Exit
        rc = exc.code if isinstance(exc.code, int) else 1
    except BaseException as exc:  # noqa: BLE001 - reported, the parent decides
        print(f"changeflow failed: {exc!r}", file=sys.stderr)
        rc = 1
    t_end = time.time()
    Path(timings).write_text(json.dumps({
        "process_start": t_process, "main_start": t_main, "imported": t_imported, "end": t_end,
        "events": events, "rc": rc,
    }, indent=1))
    return rc


def _process_cpu() -> float:
    """User + system CPU seconds of this process so far, all its threads (GDAL's included)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _process_start_time() -> float:
    try:
        import psutil

        return psutil.Process().create_time()
    except Exception:  # noqa: BLE001
        return time.time()


def _stage_summary(timings: dict, measured: Measured) -> dict:
    """Seconds per stage, the flow body, the fixed Prefect/start-up cost, peak RSS per stage."""
    events = timings["events"]
    stages: dict[str, float] = {}
    cpu: dict[str, float] = {}
    for event in events:
        stages[event["stage"]] = stages.get(event["stage"], 0.0) + event["t1"] - event["t0"]
        cpu[event["stage"]] = cpu.get(event["stage"], 0.0) + event.get("cpu", float("nan"))
    body_start = min((e["t0"] for e in events if e["stage"] == "catalog"), default=None)
    body_end = max((e["t1"] for e in events if e["stage"] == "index(gpkg)"), default=None)
    body = (body_end - body_start) if body_start and body_end else float("nan")
    # peak RSS of the main process and of the tree while each stage ran
    peaks = {}
    samples = measured["samples"]  # in time order
    times = [s[0] for s in samples]
    for event in events:  # tens of thousands at 20000² (a read per tile and image): bisect, not a scan
        inside = samples[bisect.bisect_left(times, event["t0"]):bisect.bisect_right(times, event["t1"])]
        if inside:
            old = peaks.get(event["stage"], (0.0, 0.0))
            peaks[event["stage"]] = (max(old[0], max(s[1] for s in inside)), max(old[1], max(s[2] for s in inside)))
    launch = measured["start"]
    return {
        "stages_s": stages,
        "stages_cpu_s": cpu,
        "flow_body_s": body,
        "overhead_s": measured["wall_s"] - body,
        "startup_s": (body_start - launch) if body_start else float("nan"),
        "imports_s": timings["imported"] - launch,
        "teardown_s": (launch + measured["wall_s"] - body_end) if body_end else float("nan"),
        "stage_peak_rss_mb": {k: {"main": round(v[0]), "tree": round(v[1])} for k, v in peaks.items()},
    }


def code_version() -> dict:
    """The commit the measured code comes from, and whether pipeline/ or flows/ differ from it."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    return {"commit": git("rev-parse", "--short", "HEAD"),
            "modified": git("status", "--porcelain", "--", "pipeline", "flows").splitlines(),
            "at": time.strftime("%Y-%m-%dT%H:%M:%S")}


def run_changeflow(scene_list: Path, work: Path, *, profile: bool, coregistration: bool = True,
                   gdal_cachemax: int | None = None) -> dict:
    tag = "changeflow" if coregistration else "changeflow-nocoreg"
    out = work / f"{tag}-out"
    shutil.rmtree(out, ignore_errors=True)
    config = work / f"{tag}.yaml"
    config.write_text(
        f"scene_list: {scene_list}\n"
        f"tiling: {{size: {TILE_SIZE}, stride: {TILE_STRIDE}}}\n"
        f"coregistration: {{enabled: {'true' if coregistration else 'false'}}}\n"
    )
    timings_path = work / f"{tag}-timings.json"
    profile_path = work / f"{tag}-group.pstats" if profile else None
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PYTHONPATH": str(REPO)}
    if gdal_cachemax:
        env["GDAL_CACHEMAX"] = str(gdal_cachemax)
    cmd = [sys.executable, str(Path(__file__).resolve()), "_changeflow-child", str(config), str(out), str(timings_path)]
    if profile_path:
        cmd.append(str(profile_path))
    version = code_version()
    measured = measure(cmd, log=work / f"{tag}.log", env=env, cwd=REPO)
    result = {"code": version, "gdal_cachemax_env": gdal_cachemax}
    result |= {k: measured[k] for k in ("wall_s", "peak_rss_tree_mb", "max_rss_mb", "rc", "cpu_s", "loadavg")}
    if timings_path.exists():
        result.update(_stage_summary(json.loads(timings_path.read_text()), measured))
    report_path = out / "prepare_report.json"
    if report_path.exists():
        report = json.loads(report_path.read_text())
        result["tiles_kept"] = sum(s["tiles"] for s in report["splits"].values())
        result["tiles_dropped"] = report["tiles_dropped"]
        result["groups"] = report["groups"]
        result["images_refused"] = report["images_refused"]
    result["tile_files"] = _count_files(out / "tiles")
    result["output_gb"] = round(_du_gb(out), 2)
    result["command"] = f"changeflow prepare --config {config} --out {out}"
    if profile_path and profile_path.exists():
        result["profile"] = str(profile_path)
    result["out"] = str(out)
    return result


# --------------------------------------------------------------------------------------------------
# GDAL side


def gdal_tile_child(images_json: str, out_dir: str) -> int:
    """Runs under a Python with osgeo: tiles every image with gdal.Translate(srcWin) in one process."""
    from osgeo import gdal

    gdal.UseExceptions()
    images = json.loads(images_json)
    count = 0
    for role, info in images.items():
        source = gdal.Open(info["path"])
        target = Path(out_dir) / role
        target.mkdir(parents=True, exist_ok=True)
        options = _tile_options(info["predictor"])
        for x, y in grid_windows(source.RasterXSize, source.RasterYSize):
            gdal.Translate(str(target / f"x{x}_y{y}.tif"), source, format="GTiff",
                           srcWin=[x, y, TILE_SIZE, TILE_SIZE], creationOptions=options)
            count += 1
        source = None
    print(f"tiles written: {count}")
    return 0


def gdal_cli_tile_child(images_json: str, out_dir: str, limit: str) -> int:
    """A `gdal_translate -srcwin` process per tile; on an even sample when there are > limit tiles."""
    images = json.loads(images_json)
    windows = {role: grid_windows(info["width"], info["height"]) for role, info in images.items()}
    total = sum(map(len, windows.values()))
    limit = int(limit)
    sample_every = 1 if total <= limit else math.ceil(total / limit)
    done = 0
    start = time.time()
    for role, info in images.items():
        target = Path(out_dir) / role
        target.mkdir(parents=True, exist_ok=True)
        options = [arg for option in _tile_options(info["predictor"]) for arg in ("-co", option)]
        for x, y in windows[role][::sample_every]:
            subprocess.run(["gdal_translate", "-q", "-of", "GTiff", "-srcwin", str(x), str(y), str(TILE_SIZE),
                            str(TILE_SIZE), *options, info["path"], str(target / f"x{x}_y{y}.tif")], check=True)
            done += 1
    wall = time.time() - start
    print(json.dumps({"tiles_total": total, "tiles_run": done, "sampled": sample_every > 1,
                      "wall_s": wall, "per_tile_s": wall / max(done, 1)}))
    return 0


def gdal_mt_tile_child(images_json: str, out_dir: str, black_json: str) -> int:
    """Runs under a Python with osgeo + numpy: changeflow's black/nodata filter, then tiles of every image.

    The work of changeflow's tiling, with GDAL's Python bindings and numpy: every window of every image
    is read, a window is dropped when ``black_threshold`` or more of its pixels are nodata / NaN / black
    (integer imagery: all bands <= ``black_value``) in ANY image that is not the label, else one GeoTIFF
    per image is written from the arrays (same creation options as changeflow's tiles). Rows of windows
    are shared out to one thread per CPU, each with its own dataset handles (GDAL releases the GIL in
    reads, writes and compression).
    """
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    from osgeo import gdal

    gdal.UseExceptions()
    images = json.loads(images_json)
    rule = json.loads(black_json)
    first = next(iter(images.values()))
    windows = grid_windows(first["width"], first["height"])
    rows = sorted({y for _, y in windows})
    for role in images:
        (Path(out_dir) / role).mkdir(parents=True, exist_ok=True)
    driver = gdal.GetDriverByName("GTiff")

    def valid_fraction(data, nodata, integer: bool) -> float:
        data = data.reshape(-1, *data.shape[-2:])
        valid = ~(data == nodata).all(axis=0) if nodata is not None and not math.isnan(nodata) else True
        if integer:
            valid = valid & (data > rule["black_value"]).any(axis=0)
        else:
            valid = valid & np.isfinite(data).all(axis=0)
        return float(np.broadcast_to(valid, data.shape[-2:]).mean())

    def cut_row(y: int) -> tuple[int, int]:
        sources = {role: gdal.Open(info["path"]) for role, info in images.items()}
        kept = dropped = 0
        for x, _ in (w for w in windows if w[1] == y):
            arrays = {role: ds.ReadAsArray(x, y, TILE_SIZE, TILE_SIZE) for role, ds in sources.items()}
            black = [1.0 - valid_fraction(arrays[role], sources[role].GetRasterBand(1).GetNoDataValue(),
                                          info["predictor"] == 2)
                     for role, info in images.items() if role != "label"]
            if any(fraction >= rule["black_threshold"] for fraction in black):
                dropped += 1
                continue
            kept += 1
            for role, ds in sources.items():
                data = arrays[role].reshape(-1, TILE_SIZE, TILE_SIZE)
                band = ds.GetRasterBand(1)
                tile = driver.Create(str(Path(out_dir) / role / f"x{x}_y{y}.tif"), TILE_SIZE, TILE_SIZE, data.shape[0],
                                     band.DataType, [*_tile_options(images[role]["predictor"]), f"ZLEVEL={rule['level']}"])
                origin_x, res_x, _, origin_y, _, res_y = ds.GetGeoTransform()
                tile.SetGeoTransform((origin_x + x * res_x, res_x, 0, origin_y + y * res_y, 0, res_y))
                tile.SetProjection(ds.GetProjection())
                for index in range(data.shape[0]):
                    if band.GetNoDataValue() is not None:
                        tile.GetRasterBand(index + 1).SetNoDataValue(band.GetNoDataValue())
                    tile.GetRasterBand(index + 1).WriteArray(data[index])
                tile = None
        return kept, dropped

    with ThreadPoolExecutor(os.cpu_count()) as pool:
        counts = list(pool.map(cut_row, rows))
    print(json.dumps({"tiles_kept": sum(k for k, _ in counts), "tiles_dropped": sum(d for _, d in counts),
                      "windows": len(windows), "threads": os.cpu_count()}))
    return 0


def _gdal_python() -> str | None:
    """A Python that has the GDAL bindings (the system one after `apt-get install python3-gdal`)."""
    for candidate in (sys.executable, "/usr/bin/python3", shutil.which("python3")):
        if candidate and Path(candidate).exists():
            probe = subprocess.run([candidate, "-c", "from osgeo import gdal"], capture_output=True)
            if probe.returncode == 0:
                return candidate
    return None


def run_gdal(paths: dict[str, Path], work: Path, *, cli_tile_limit: int, gdal_cachemax: int | None = None) -> dict:
    import rasterio

    if not (shutil.which("gdalwarp") and shutil.which("gdal_translate")):
        return {"error": "GDAL tools not found (gdalwarp / gdal_translate); apt-get install -y gdal-bin python3-gdal"}
    version = subprocess.run(["gdalinfo", "--version"], capture_output=True, text=True).stdout.strip()
    out = work / "gdal-out"
    shutil.rmtree(out, ignore_errors=True)
    cogs = out / "grid"
    cogs.mkdir(parents=True)
    env = {**os.environ, **({"GDAL_CACHEMAX": str(gdal_cachemax)} if gdal_cachemax else {})}
    with rasterio.open(paths["A"]) as ref:
        crs = ref.crs.to_string()
        res = abs(ref.transform.a)
        left, bottom, right, top = ref.bounds
        width, height = ref.width, ref.height
    cog = [arg for option in COG_OPTIONS for arg in ("-co", option)]
    steps: dict[str, list[str]] = {
        "A": ["gdal_translate", "-q", "-of", "COG", *cog, "-co", "PREDICTOR=YES",
              "-co", "OVERVIEW_RESAMPLING=AVERAGE", paths["A"], cogs / "A.tif"],
    }
    for role in ("B", "C", "label"):
        categorical = role == "label"
        steps[role] = [
            "gdalwarp", "-q", "-overwrite", "-multi", "-wo", "NUM_THREADS=ALL_CPUS",
            "-t_srs", crs, "-tr", repr(res), repr(res), "-te", repr(left), repr(bottom), repr(right), repr(top),
            "-r", "near" if categorical else "bilinear", "-of", "COG", *cog,
            "-co", f"PREDICTOR={'NO' if categorical else 'YES'}",
            "-co", f"OVERVIEW_RESAMPLING={'NEAREST' if categorical else 'AVERAGE'}",
            paths[role], cogs / f"{role}.tif",
        ]
    measured: dict[str, Measured] = {}
    for role, cmd in steps.items():
        measured[f"cog:{role}"] = measure(cmd, log=work / "gdal.log", env=env)
    warp = _combine(list(measured.values()))
    result: dict = {"version": version, "commands": {k: " ".join(map(str, v)) for k, v in steps.items()},
                    "stages_s": {k: m["wall_s"] for k, m in measured.items()},
                    "stage_peak_rss_mb": {k: round(m["peak_rss_tree_mb"]) for k, m in measured.items()}}

    images = {}
    for role in ("A", "B", "C", "label"):
        with rasterio.open(cogs / f"{role}.tif") as ds:
            predictor = 3 if ds.dtypes[0].startswith("float") else 2  # as changeflow's tiles
            images[role] = {"path": str(cogs / f"{role}.tif"), "predictor": predictor,
                            "width": ds.width, "height": ds.height}
    windows_per_image = len(grid_windows(width, height))
    result["tiles_per_image"] = windows_per_image
    result["tile_files"] = windows_per_image * len(images)

    python = _gdal_python()
    script = str(Path(__file__).resolve())
    if python is None:
        result["tiling_note"] = "GDAL Python bindings not found: tiling measured per-tile with gdal_translate only"
    else:
        tiles = measure([python, script, "_gdal-tile-child", json.dumps(images), out / "tiles"],
                        log=work / "gdal.log", env=env)
        measured["tiles(gdal.Translate, 1 process)"] = tiles
        result["stages_s"]["tiles(gdal.Translate, 1 process)"] = tiles["wall_s"]
        result["stage_peak_rss_mb"]["tiles(gdal.Translate, 1 process)"] = round(tiles["peak_rss_tree_mb"])
        result["tiles_written"] = _count_files(out / "tiles")
        result["output_gb"] = round(_du_gb(out), 2)
        shutil.rmtree(out / "tiles", ignore_errors=True)
        total = _combine([measured[k] for k in measured])
        result.update({k: total[k] for k in ("wall_s", "peak_rss_tree_mb", "max_rss_mb", "rc", "cpu_s", "loadavg")})
        result["tiling"] = "gdal.Translate(srcWin) over all tiles in one process (the library call of gdal_translate)"

    if cli_tile_limit <= 0:
        result["out"] = str(out)
        return result
    # gdal_translate as a process per tile (all tiles, or a sample + extrapolation)
    cli = measure([sys.executable, script, "_gdal-cli-tile-child", json.dumps(images), out / "tiles-cli",
                   str(cli_tile_limit)], log=work / "gdal-cli.log", env=env)
    info = _last_json_line(work / "gdal-cli.log")
    if info:
        # the child's own wall, scaled to all tiles when sampled
        cli_tiles_wall = info["per_tile_s"] * info["tiles_total"]
        result["cli_tiling"] = {
            "tiles_total": info["tiles_total"], "tiles_run": info["tiles_run"], "sampled": info["sampled"],
            "per_tile_s": info["per_tile_s"], "tiles_wall_s": cli_tiles_wall,
            "peak_rss_tree_mb": cli["peak_rss_tree_mb"], "max_rss_mb": cli["max_rss_mb"],
            "note": (f"extrapolated from {info['tiles_run']} of {info['tiles_total']} tiles (every "
                     f"{math.ceil(info['tiles_total'] / info['tiles_run'])}th window)") if info["sampled"]
                    else "every tile run as its own gdal_translate process",
        }
        result["cli_wall_s"] = warp["wall_s"] + cli_tiles_wall
        if "wall_s" not in result:  # no Python bindings: the per-tile processes are the baseline
            result["wall_s"] = result["cli_wall_s"]
            result["peak_rss_tree_mb"] = max(warp["peak_rss_tree_mb"], cli["peak_rss_tree_mb"])
            result["max_rss_mb"] = max(warp["max_rss_mb"], cli["max_rss_mb"])
            result["rc"] = max(warp["rc"], cli["rc"], key=abs)
            result["tiling"] = "gdal_translate -srcwin per tile" + (" (extrapolated)" if info["sampled"] else "")
    result["out"] = str(out)
    return result


def run_gdal_mt(paths: dict[str, Path], work: Path, *, gdal_cachemax: int | None = None) -> dict:
    """The multi-threaded GDAL chain doing changeflow's work where GDAL's tools can.

    Per image: ``gdalwarp -multi -wo NUM_THREADS=ALL_CPUS`` onto A's grid into an uncompressed tiled
    staging GTiff (A is only translated: it is the grid), ``gdal_translate -of COG`` of it with
    ``NUM_THREADS=ALL_CPUS`` (staging removed), then :func:`gdal_mt_tile_child`: changeflow's
    black/nodata filter in numpy and the kept tiles, on one thread per CPU. COGs and tiles use
    changeflow's DEFLATE level (``tiling.deflate_level``), as the first reference uses GDAL's default
    (6) like changeflow did before that setting. Not done: co-registration,
    the split blocks (windows every 256 px over the whole grid, not inside split blocks over the common
    valid area), the tile index and the split.
    """
    import rasterio

    from pipeline.config import TilingConfig

    python = _gdal_python()
    if not (shutil.which("gdalwarp") and shutil.which("gdal_translate")) or python is None:
        return {"error": "GDAL tools or Python bindings not found; apt-get install -y gdal-bin python3-gdal"}
    out = work / "gdal-mt-out"
    shutil.rmtree(out, ignore_errors=True)
    cogs = out / "grid"
    cogs.mkdir(parents=True)
    env = {**os.environ, **({"GDAL_CACHEMAX": str(gdal_cachemax)} if gdal_cachemax else {})}
    with rasterio.open(paths["A"]) as ref:
        crs, res = ref.crs.to_string(), abs(ref.transform.a)
        left, bottom, right, top = ref.bounds
    level = TilingConfig().deflate_level  # changeflow's DEFLATE level for its grid COGs and tiles
    cog = [arg for option in COG_OPTIONS for arg in ("-co", option.replace("LEVEL=6", f"LEVEL={level}"))]
    steps: dict[str, list[str]] = {}
    for role in ("A", "B", "C", "label"):
        categorical = role == "label"
        staging = cogs / f"{role}.staging.tif"
        if role != "A":
            steps[f"warp:{role}"] = [
                "gdalwarp", "-q", "-overwrite", "-multi", "-wo", "NUM_THREADS=ALL_CPUS",
                "-t_srs", crs, "-tr", repr(res), repr(res), "-te", repr(left), repr(bottom), repr(right), repr(top),
                "-r", "near" if categorical else "bilinear", "-of", "GTiff", "-co", "TILED=YES",
                "-co", "BLOCKXSIZE=512", "-co", "BLOCKYSIZE=512", "-co", "BIGTIFF=IF_SAFER", paths[role], staging,
            ]
        steps[f"cog:{role}"] = [
            "gdal_translate", "-q", "-of", "COG", *cog, "-co", f"PREDICTOR={'NO' if categorical else 'YES'}",
            "-co", f"OVERVIEW_RESAMPLING={'NEAREST' if categorical else 'AVERAGE'}",
            paths[role] if role == "A" else staging, cogs / f"{role}.tif",
        ]
    measured: dict[str, Measured] = {}
    for name, cmd in steps.items():
        measured[name] = measure(cmd, log=work / "gdal-mt.log", env=env)
        if name.startswith("cog:"):
            (cogs / f"{name[4:]}.staging.tif").unlink(missing_ok=True)
    images = {}
    for role in ("A", "B", "C", "label"):
        with rasterio.open(cogs / f"{role}.tif") as ds:
            images[role] = {"path": str(cogs / f"{role}.tif"), "width": ds.width, "height": ds.height,
                            "predictor": 3 if ds.dtypes[0].startswith("float") else 2}
    tiling = TilingConfig()
    rule = {"black_value": tiling.black_value, "black_threshold": tiling.black_threshold, "level": level}
    name = f"tiles+filter({os.cpu_count()} threads)"
    measured[name] = measure([python, str(Path(__file__).resolve()), "_gdal-mt-tile-child", json.dumps(images),
                              out / "tiles", json.dumps(rule)], log=work / "gdal-mt.log", env=env)
    info = _last_json_line(work / "gdal-mt.log") or {}
    total = _combine(list(measured.values()))
    result = {k: total[k] for k in ("wall_s", "peak_rss_tree_mb", "max_rss_mb", "rc", "cpu_s", "loadavg")}
    result |= {
        "commands": {k: " ".join(map(str, v)) for k, v in steps.items()},
        "stages_s": {k: m["wall_s"] for k, m in measured.items()},
        "stage_peak_rss_mb": {k: round(m["peak_rss_tree_mb"]) for k, m in measured.items()},
        "tiles_kept": info.get("tiles_kept"), "windows": info.get("windows"),
        "tile_files": _count_files(out / "tiles"), "output_gb": round(_du_gb(out), 2), "out": str(out),
    }
    return result


def _last_json_line(log: Path) -> dict | None:
    for line in reversed(log.read_text().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return None


# --------------------------------------------------------------------------------------------------
# Orchestration and report


def _mps(size: int, seconds: float | None) -> float | None:
    if not seconds or not math.isfinite(seconds):
        return None
    return size * size / 1e6 / seconds


def bench_size(size: int, args: argparse.Namespace) -> dict:
    from pipeline.synthetic.large import write_large_group

    work = args.workdir / f"n{size}"
    scenes = work / "scenes"
    need_gb = size * size * 11.5e-9 * (6 if not args.skip_gdal else 4)  # inputs + COGs + 4x tiles
    row: dict = {"size": size, "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "free_gb_before": round(_free_gb(args.workdir), 1), "disk_needed_gb_est": round(need_gb, 1)}
    if row["free_gb_before"] < need_gb:
        row["error"] = f"not enough disk in {args.workdir}: {row['free_gb_before']} GB free, ~{need_gb:.0f} GB needed"
        return row
    scene_list = scenes / "large_scenes.yaml"
    if scene_list.exists():
        row["generate_s"] = None  # reused
        paths = {role: scenes / f"large_{role}.tif" for role in ("A", "B", "C", "label")}
    else:
        print(f"[{size}] writing the synthetic group in {scenes} ...", flush=True)
        t0 = time.time()
        group = write_large_group(scenes, size=size, seed=args.seed)
        row["generate_s"] = round(time.time() - t0, 1)
        paths, scene_list = group.paths, group.scene_list
    row["input_gb"] = round(sum(p.stat().st_size for p in paths.values()) / 1e9, 2)

    if not args.skip_changeflow:
        for coreg in ([True, False] if args.no_coreg_too else [True]):
            key = "changeflow" if coreg else "changeflow_nocoreg"
            print(f"[{size}] {key} prepare ...", flush=True)
            row[key] = run_changeflow(scene_list, work, profile=args.profile and coreg, coregistration=coreg,
                                     gdal_cachemax=args.gdal_cachemax)
            print(f"[{size}] {key}: {row[key]['wall_s']:.1f} s, peak RSS {row[key]['peak_rss_tree_mb']:.0f} MB", flush=True)
            if row[key].get("profile"):
                row[key]["profile_top"] = _profile_text(row[key].pop("profile"))
            if not args.keep_outputs:
                shutil.rmtree(row[key]["out"], ignore_errors=True)
    reused = _reused_gdal(args.reuse_gdal, size) if args.reuse_gdal else None
    if reused:
        row["gdal"] = reused
    elif not args.skip_gdal:
        print(f"[{size}] GDAL reference ...", flush=True)
        row["gdal"] = run_gdal(paths, work, cli_tile_limit=args.cli_tile_limit, gdal_cachemax=args.gdal_cachemax)
        if "wall_s" in row["gdal"]:
            print(f"[{size}] gdal: {row['gdal']['wall_s']:.1f} s, peak RSS {row['gdal']['peak_rss_tree_mb']:.0f} MB", flush=True)
        if not args.keep_outputs:
            shutil.rmtree(row["gdal"].get("out", work / "gdal-out"), ignore_errors=True)

    if not args.skip_gdal_mt:
        print(f"[{size}] GDAL multi-threaded reference ...", flush=True)
        row["gdal_mt"] = run_gdal_mt(paths, work, gdal_cachemax=args.gdal_cachemax)
        if "wall_s" in row["gdal_mt"]:
            print(f"[{size}] gdal-mt: {row['gdal_mt']['wall_s']:.1f} s, "
                  f"peak RSS {row['gdal_mt']['peak_rss_tree_mb']:.0f} MB", flush=True)
        if not args.keep_outputs:
            shutil.rmtree(row["gdal_mt"].get("out", work / "gdal-mt-out"), ignore_errors=True)

    cf, gd, mt = row.get("changeflow", {}), row.get("gdal", {}), row.get("gdal_mt", {})
    for side in (cf, gd, mt, row.get("changeflow_nocoreg", {})):
        if "wall_s" in side:
            side["mps"] = _mps(size, side["wall_s"])
    if "wall_s" in cf and "wall_s" in mt:
        row["ratio_time_mt"] = cf["wall_s"] / mt["wall_s"]
        row["ratio_time_excl_overhead_mt"] = cf.get("flow_body_s", float("nan")) / mt["wall_s"]
        row["ratio_rss_mt"] = cf["peak_rss_tree_mb"] / mt["peak_rss_tree_mb"]
    if "flow_body_s" in cf:
        cf["mps_excl_overhead"] = _mps(size, cf["flow_body_s"])
    if "wall_s" in cf and "wall_s" in gd:
        row["ratio_time"] = cf["wall_s"] / gd["wall_s"]
        row["ratio_time_excl_overhead"] = cf.get("flow_body_s", float("nan")) / gd["wall_s"]
        row["ratio_rss"] = cf["peak_rss_tree_mb"] / gd["peak_rss_tree_mb"]
    if not args.keep and not args.keep_outputs:
        shutil.rmtree(work, ignore_errors=True)
    return row


def _reused_gdal(path: Path, size: int) -> dict | None:
    """The GDAL figures of ``size`` from an earlier run's JSON (GDAL's side does not change with
    changeflow's code, and at 20000² it takes half an hour)."""
    for row in json.loads(path.read_text())["results"]:
        if row["size"] == size and "wall_s" in row.get("gdal", {}):
            return {**row["gdal"], "reused_from": str(path)}
    return None


def _fmt(value, spec: str = ".1f") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return format(value, spec)


def print_report(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 200)
    table = Table(title=f"prepare: changeflow vs GDAL tools (tiles {TILE_SIZE}/{TILE_STRIDE}; "
                        "cf = changeflow, excl. = without the fixed Prefect/start-up cost)")
    for column in ("N", "cf s", "cf excl. s", "cf MP/s", "cf excl. MP/s", "cf RSS MB",
                   "GDAL s", "GDAL MP/s", "GDAL RSS MB", "time cf/GDAL", "excl./GDAL", "RSS cf/GDAL",
                   "GDAL-MT s", "GDAL-MT RSS MB", "time cf/GDAL-MT", "excl./GDAL-MT", "RSS cf/GDAL-MT",
                   "tile files cf (kept/img)", "tile files GDAL (/img)", "gdal_translate per-tile s"):
        table.add_column(column, justify="right")
    for row in rows:
        cf, gd, mt = row.get("changeflow", {}), row.get("gdal", {}), row.get("gdal_mt", {})
        cli = gd.get("cli_tiling", {})
        table.add_row(
            str(row["size"]), _fmt(cf.get("wall_s")), _fmt(cf.get("flow_body_s")), _fmt(cf.get("mps"), ".2f"),
            _fmt(cf.get("mps_excl_overhead"), ".2f"), _fmt(cf.get("peak_rss_tree_mb"), ".0f"),
            _fmt(gd.get("wall_s")), _fmt(gd.get("mps"), ".2f"), _fmt(gd.get("peak_rss_tree_mb"), ".0f"),
            _fmt(row.get("ratio_time"), ".2f"), _fmt(row.get("ratio_time_excl_overhead"), ".2f"),
            _fmt(row.get("ratio_rss"), ".2f"),
            _fmt(mt.get("wall_s")), _fmt(mt.get("peak_rss_tree_mb"), ".0f"), _fmt(row.get("ratio_time_mt"), ".2f"),
            _fmt(row.get("ratio_time_excl_overhead_mt"), ".2f"), _fmt(row.get("ratio_rss_mt"), ".2f"),
            f"{cf.get('tile_files', '-')} ({cf.get('tiles_kept', '-')}/img)",
            f"{gd.get('tile_files', '-')} ({gd.get('tiles_per_image', '-')}/img)",
            (_fmt(cli.get("tiles_wall_s"), ".0f") + (" est." if cli.get("sampled") else "")) if cli else "-",
        )
    console.print(table)
    for row in rows:
        if "error" in row:
            console.print(f"[red]{row['size']}: {row['error']}")
        for key in ("changeflow", "changeflow_nocoreg"):
            cf = row.get(key)
            if not cf or "stages_s" not in cf:
                continue
            stages = ", ".join(f"{k} {v:.1f}" for k, v in sorted(cf["stages_s"].items(), key=lambda kv: -kv[1]))
            code = cf.get("code", {})
            console.print(f"[bold]{row['size']} {key}[/] code {code.get('commit')}"
                          + (f" + uncommitted {code['modified']}" if code.get("modified") else "")
                          + (f", GDAL_CACHEMAX={cf['gdal_cachemax_env']}" if cf.get("gdal_cachemax_env") else ""))
            console.print(f"[bold]{row['size']} {key}[/] rc={cf['rc']}: flow body {cf['flow_body_s']:.1f} s, "
                          f"fixed cost {cf['overhead_s']:.1f} s (start-up {cf['startup_s']:.1f} s of which imports "
                          f"{cf['imports_s']:.1f} s; teardown {cf['teardown_s']:.1f} s); largest process "
                          f"{cf['max_rss_mb']:.0f} MB; CPU {cf['cpu_s']:.0f} s; load avg {cf['loadavg'][0]:.1f} -> "
                          f"{cf['loadavg'][1]:.1f} on {os.cpu_count()} CPUs")
            console.print(f"  stages (s): {stages}")
            console.print("  peak RSS per stage (MB, main/tree): "
                          + ", ".join(f"{k} {v['main']}/{v['tree']}" for k, v in cf["stage_peak_rss_mb"].items()))
            console.print(_stage_table(cf))
        mt = row.get("gdal_mt")
        if mt:
            if "error" in mt:
                console.print(f"[yellow]{row['size']} GDAL-MT: {mt['error']}")
            else:
                console.print(f"[bold]{row['size']} GDAL-MT[/] CPU {mt['cpu_s']:.0f} s; load avg {mt['loadavg'][0]:.1f} -> "
                              f"{mt['loadavg'][1]:.1f}; {mt['tiles_kept']} of {mt['windows']} windows kept: "
                              + ", ".join(f"{k} {v:.1f} s / {mt['stage_peak_rss_mb'][k]} MB" for k, v in mt["stages_s"].items()))
        gd = row.get("gdal")
        if gd:
            if "error" in gd:
                console.print(f"[yellow]{row['size']} GDAL: {gd['error']}")
                continue
            if gd.get("reused_from"):
                console.print(f"[bold]{row['size']} GDAL[/] figures reused from {gd['reused_from']}")
            if "cpu_s" in gd:
                console.print(f"[bold]{row['size']} GDAL[/] CPU {gd['cpu_s']:.0f} s; load avg {gd['loadavg'][0]:.1f} -> {gd['loadavg'][1]:.1f}")
            console.print(f"[bold]{row['size']} GDAL[/] ({gd['version']}): "
                          + ", ".join(f"{k} {v:.1f} s / {gd['stage_peak_rss_mb'][k]} MB" for k, v in gd["stages_s"].items()))
            if "cli_tiling" in gd:
                c = gd["cli_tiling"]
                console.print(f"  gdal_translate per tile: {c['per_tile_s'] * 1000:.0f} ms/tile, "
                              f"{c['tiles_wall_s']:.0f} s for {c['tiles_total']} tiles ({c['note']}); "
                              f"warp + per-tile tiling {gd['cli_wall_s']:.0f} s = {_fmt(_mps(row['size'], gd['cli_wall_s']), '.2f')} MP/s")


def _stage_table(cf: dict) -> str:
    """Markdown table of the stages in time order: wall, CPU (whole process) and peak RSS while each ran."""
    rows = ["| stage | wall s | CPU s | peak RSS MB (process / tree) |", "|---|---:|---:|---:|"]
    for stage, wall in cf["stages_s"].items():
        peak = cf["stage_peak_rss_mb"].get(stage, {})
        rows.append(f"| {stage} | {wall:.1f} | {_fmt(cf.get('stages_cpu_s', {}).get(stage))} | "
                    f"{peak.get('main', '-')} / {peak.get('tree', '-')} |")
    return "\n".join(rows)


def _strip(value):
    """JSON-safe copy without the raw RSS samples."""
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k != "samples"}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _profile_text(path: str, top: int = 35) -> str:
    """The top of a cProfile dump, by cumulative time, as text."""
    import io
    import pstats

    buffer = io.StringIO()
    pstats.Stats(path, stream=buffer).sort_stats("cumulative").print_stats(top)
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_changeflow-child":
        return changeflow_child(argv[1], argv[2], argv[3], argv[4] if len(argv) > 4 else None)
    if argv and argv[0] == "_gdal-tile-child":
        return gdal_tile_child(argv[1], argv[2])
    if argv and argv[0] == "_gdal-mt-tile-child":
        return gdal_mt_tile_child(argv[1], argv[2], argv[3])
    if argv and argv[0] == "_gdal-cli-tile-child":
        return gdal_cli_tile_child(argv[1], argv[2], argv[3])

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 20000], help="Scene sides in px.")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/changeflow-bench"),
                        help="Where scenes and outputs go (needs ~11 bytes/px x 6 of disk).")
    parser.add_argument("--keep", action="store_true",
                        help="Keep the synthetic scenes (a rerun with the same --workdir reuses them).")
    parser.add_argument("--keep-outputs", action="store_true", help="Keep the tiles and COGs of both sides too.")
    parser.add_argument("--json", type=Path, help="Write the figures to this JSON file.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-gdal", action="store_true")
    parser.add_argument("--skip-gdal-mt", action="store_true", help="Skip the multi-threaded GDAL reference.")
    parser.add_argument("--skip-changeflow", action="store_true")
    parser.add_argument("--no-coreg-too", action="store_true",
                        help="Also run changeflow with co-registration off (GDAL does no co-registration).")
    parser.add_argument("--profile", action="store_true", help="cProfile the group work of changeflow.")
    parser.add_argument("--reuse-gdal", type=Path, metavar="JSON",
                        help="Take the GDAL figures of a size from this earlier --json output instead of rerunning GDAL.")
    parser.add_argument("--cli-tile-limit", type=int, default=2000,
                        help="Run gdal_translate per tile on all tiles up to this many, else on a sample this big (0: skip).")
    parser.add_argument("--gdal-cachemax", type=int, metavar="MB",
                        help="Set GDAL_CACHEMAX for every measured process (default: GDAL's, 5%% of RAM).")
    args = parser.parse_args(argv)
    args.workdir = args.workdir.resolve()

    rows = []
    for size in args.sizes:
        rows.append(bench_size(size, args))
        if args.json:  # after every size, so a long run leaves figures behind
            args.json.write_text(json.dumps(_strip({"tile": [TILE_SIZE, TILE_STRIDE], "cpus": os.cpu_count(),
                                                    "gdal_cachemax_mb": args.gdal_cachemax,
                                                    "results": rows}), indent=1))
    print_report(rows)
    for row in rows:
        profile = row.get("changeflow", {}).get("profile_top")
        if profile:
            print(f"\ncProfile of changeflow's group work at N={row['size']} (top by cumulative time):\n{profile}")
    if not args.keep and not args.keep_outputs:
        shutil.rmtree(args.workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
