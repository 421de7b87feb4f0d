"""Helpers of the reliability suite: the case table, the `changeflow` subprocess, verdicts, file trees.

Every CLI case runs ``python -m flows.cli`` in a subprocess, with ``PYTHONPATH`` set to the tree under test:
this checkout, or the one named by ``CHANGEFLOW_TREE_UNDER_TEST`` (e.g. a worktree of an older commit, to
count verdicts before a fix). Cases that inject a fault inside the process (``inject.py``) need this
checkout's module layout and are skipped for another tree.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import rasterio

REPO = Path(__file__).resolve().parents[2]
TREE = Path(os.environ.get("CHANGEFLOW_TREE_UNDER_TEST", REPO)).resolve()
OTHER_TREE = TREE != REPO
in_process_layout = pytest.mark.skipif(
    OTHER_TREE, reason=f"injects faults into this checkout's modules; {TREE} has another layout"
)

CLEAR_ERROR, HANDLED, CRASH, DATA_LOSS = "clear error", "handled", "crash", "data loss"
VERDICTS = (CLEAR_ERROR, HANDLED, CRASH, DATA_LOSS)

# case id -> (family, the verdict changeflow promises). Every test of the suite records the verdict it
# observed for its case id (see conftest.py); the terminal summary counts them.
CASES: dict[str, tuple[str, str]] = {
    # 1. hostile names
    "name-group-dotdot": ("hostile names", CLEAR_ERROR),
    "name-group-escape": ("hostile names", CLEAR_ERROR),
    "name-group-absolute": ("hostile names", CLEAR_ERROR),
    "name-group-nul": ("hostile names", CLEAR_ERROR),
    "name-group-long": ("hostile names", CLEAR_ERROR),
    "name-id-escape": ("hostile names", CLEAR_ERROR),
    "name-id-absolute": ("hostile names", CLEAR_ERROR),
    "name-rerun-dotdot": ("hostile names", CLEAR_ERROR),
    "name-inbox-base": ("hostile names", HANDLED),
    # 2. bad rasters and labels (one batch with a good group)
    "input-truncated": ("bad rasters and labels", CLEAR_ERROR),
    "input-corrupt-header": ("bad rasters and labels", CLEAR_ERROR),
    "input-no-crs": ("bad rasters and labels", CLEAR_ERROR),
    "input-all-black": ("bad rasters and labels", CLEAR_ERROR),
    "input-nan-only": ("bad rasters and labels", CLEAR_ERROR),
    "input-wrong-bands": ("bad rasters and labels", CLEAR_ERROR),
    "input-no-overlap": ("bad rasters and labels", CLEAR_ERROR),
    "input-label-values": ("bad rasters and labels", CLEAR_ERROR),
    "input-label-rgb-differ": ("bad rasters and labels", CLEAR_ERROR),
    "input-good-group-goes-on": ("bad rasters and labels", HANDLED),
    # 3. full disk
    "disk-enospc-prepare-tiles": ("full disk", CLEAR_ERROR),
    "disk-enospc-detect-cog": ("full disk", CLEAR_ERROR),
    "disk-tmpfs-prepare-rerun": ("full disk", CLEAR_ERROR),
    # 4. read-only output
    "readonly-prepare": ("read-only output", CLEAR_ERROR),
    "readonly-detect": ("read-only output", CLEAR_ERROR),
    "readonly-train": ("read-only output", CLEAR_ERROR),
    # 5. kill -9 and rerun
    "kill-prepare": ("kill -9 and rerun", HANDLED),
    "kill-train": ("kill -9 and rerun", HANDLED),
    "kill-detect": ("kill -9 and rerun", HANDLED),
    "kill-ingest": ("kill -9 and rerun", HANDLED),
    # 6. concurrent ingest
    "ingest-concurrent-and-killed": ("concurrent ingest", HANDLED),
}


@dataclass
class Run:
    """A finished (or killed) ``changeflow`` subprocess."""

    args: list[str]
    returncode: int
    output: str
    seconds: float
    killed: bool = False

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.output.splitlines() if line.startswith("error:")]


def env(prefect_api: str | None = None) -> dict[str, str]:
    """The environment of a subprocess: the tree under test first, wide lines (no rich wrapping)."""
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(dict.fromkeys([str(TREE), str(REPO)])),
                   "COLUMNS": "1000", "PYTHONUNBUFFERED": "1", "NO_COLOR": "1", "TERM": "dumb"}
    if prefect_api:
        environment["PREFECT_API_URL"] = prefect_api
    return environment


def command(*args: str, inject: str | None = None) -> list[str]:
    """``python -m flows.cli ARGS``, or the fault-injecting driver ``inject.py FAULT ARGS``."""
    if inject:
        return [sys.executable, str(Path(__file__).with_name("inject.py")), inject, *args]
    return [sys.executable, "-m", "flows.cli", *args]


def changeflow(*args: str, prefect_api: str | None = None, inject: str | None = None, cwd: Path | None = None,
               timeout: float = 300) -> Run:
    """Run ``changeflow ARGS`` to the end."""
    cmd = command(*args, inject=inject)
    start = time.monotonic()
    done = subprocess.run(cmd, env=env(prefect_api), cwd=cwd or TREE, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, errors="replace", timeout=timeout)
    return Run(cmd, done.returncode, done.stdout, time.monotonic() - start)


def start(*args: str, prefect_api: str | None = None, cwd: Path | None = None) -> subprocess.Popen:
    return subprocess.Popen(command(*args), env=env(prefect_api), cwd=cwd or TREE, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, errors="replace", start_new_session=True)


def kill_at_random_point(args: list[str], *, seed: int, earliest: float, latest: float,
                         prefect_api: str | None = None, ready: Path | None = None) -> Run:
    """Start ``changeflow ARGS`` and SIGKILL its whole process group after a seeded random delay.

    The delay is drawn uniformly in ``[earliest, latest]`` seconds, counted from the moment ``ready`` (a
    file the command writes once it is at work) appears, else from the start. A command that ends first
    is returned unkilled (``killed`` False), for the caller to notice.
    """
    delay = random.Random(seed).uniform(earliest, latest)
    began = time.monotonic()
    process = start(*args, prefect_api=prefect_api)
    while ready is not None and not ready.exists() and process.poll() is None and time.monotonic() - began < 240:
        time.sleep(0.05)
    deadline = time.monotonic() + delay
    while process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    killed = process.poll() is None
    if killed:
        os.killpg(process.pid, signal.SIGKILL)
    output = process.communicate()[0]
    return Run(process.args, process.returncode, output, time.monotonic() - began, killed)


class TracebackShown(AssertionError):
    """The command printed a traceback (e.g. Prefect's log of a failed flow) besides its error line."""


def no_traceback(run: Run) -> None:
    """Fail with :class:`TracebackShown` when the run printed a traceback (checked last, after the rest)."""
    if "Traceback" in run.output:
        start = run.output.index("Traceback")
        raise TracebackShown(run.output[max(0, start - 300): start + 300])


def judge(run: Run, *, lost: bool = False, refused: bool = True, lines: list[str] | None = None) -> str:
    """The verdict of a run: data loss, crash (a traceback, a signal, an unclear failure), clear error, handled.

    Args:
        run: the run.
        lost: whether the run lost or damaged data (files outside OUT, earlier outputs, scenes, labels).
        refused: whether the case should end in an error; a run that should but exits 0 is a crash.
        lines: the lines that tell the error (default: those starting with ``error:``).
    """
    if lost:
        return DATA_LOSS
    if "Traceback" in run.output or run.returncode not in (0, 1, 2):
        return CRASH
    if run.returncode != 0:
        return CLEAR_ERROR if len(run.error_lines if lines is None else lines) == 1 else CRASH
    return CRASH if refused else HANDLED


def tree(folder: Path, *, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``folder`` ('dir' for folders, 'link -> target' for links)."""
    entries = {}
    if not folder.exists():
        return entries
    for path in sorted(folder.rglob("*")):
        name = str(path.relative_to(folder))
        if any(part in skip for part in Path(name).parts):
            continue
        if path.is_symlink():
            entries[name] = f"link -> {os.readlink(path)}"
        elif path.is_dir():
            entries[name] = "dir"
        else:
            entries[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return entries


def partial_files(folder: Path) -> list[str]:
    """Files or folders of a half-done write (``.partial`` in the name) under ``folder``."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if ".partial" in p.name)


def raster(path: Path) -> tuple[np.ndarray, str, tuple, object]:
    """What a raster means: its pixels, CRS, transform and nodata (not its tags or byte layout)."""
    with rasterio.open(path) as src:
        return src.read(), str(src.crs), tuple(src.transform), src.nodata


def same_rasters(folder_a: Path, folder_b: Path, pattern: str) -> list[str]:
    """Files matching ``pattern`` that differ in pixels or georeferencing (or exist in only one folder)."""
    names_a = {str(p.relative_to(folder_a)) for p in folder_a.glob(pattern)}
    names_b = {str(p.relative_to(folder_b)) for p in folder_b.glob(pattern)}
    differing = sorted(names_a ^ names_b)
    for name in sorted(names_a & names_b):
        (pa, ca, ta, na), (pb, cb, tb, nb) = raster(folder_a / name), raster(folder_b / name)
        same_nodata = na == nb or (na is not None and nb is not None and np.isnan(na) and np.isnan(nb))
        if not (np.array_equal(pa, pb, equal_nan=pa.dtype.kind == "f") and (ca, ta) == (cb, tb) and same_nodata):
            differing.append(name)
    return differing
