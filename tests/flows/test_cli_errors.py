"""An error the user can fix is one line on stderr, not Prefect's log of it with a traceback first.

Prefect's flow-run logger logs an exception raised inside a flow with its traceback before the CLI
prints its own line; the traceback is shown only with ``--debug`` (or ``CHANGEFLOW_DEBUG=1``). These
run the installed ``changeflow`` as a user does, since the log goes to the real stderr.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

CHANGEFLOW = Path(sys.executable).with_name("changeflow")


def changeflow(*args: str, cwd: Path, debug_env: bool = False) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CHANGEFLOW_DEBUG"}
    if debug_env:
        env["CHANGEFLOW_DEBUG"] = "1"
    return subprocess.run([str(CHANGEFLOW), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def bad_scenes(folder: Path) -> Path:
    """A scene list whose two files are no rasters: prepare's flow stops with 'no scene group was formed'."""
    for role in ("A", "B"):
        (folder / f"x_{role}.tif").write_bytes(b"not a raster")
    config = folder / "bad.yaml"
    config.write_text(
        "scenes:\n"
        "  - {path: x_A.tif, sensor: gf2, role: A, date: 2019-05-01, group: g1}\n"
        "  - {path: x_B.tif, sensor: gf3, role: B, date: 2021-06-16, group: g1}\n"
    )
    return config


def damaged_catalog(folder: Path) -> Path:
    """A train config whose prepared folder has a truncated catalog.gpkg (refused inside the train flow)."""
    (folder / "prepared").mkdir()
    (folder / "prepared" / "catalog.gpkg").write_bytes(b"SQLite format 3\x00" + b"\x00" * 100)
    config = folder / "train.yaml"
    config.write_text("data: prepared\nmodel: fc_ef\nepochs: 1\ndevice: cpu\n")
    return config


def no_groups(folder: Path) -> Path:
    """A detect config whose prepared folder holds no group (refused inside the detect flow)."""
    (folder / "prepared").mkdir()
    (folder / "model.pt").write_bytes(b"")
    config = folder / "detect.yaml"
    config.write_text("prepared: prepared\ncheckpoint: model.pt\n")
    return config


def missing_checkpoint(folder: Path) -> Path:
    """An ingest config naming a checkpoint that is not there (refused before anything is claimed)."""
    (folder / "inbox").mkdir()
    config = folder / "ingest.yaml"
    config.write_text("inbox: inbox\nworkspace: ws\ncheckpoint: nope.pt\n")
    return config


CASES = {
    "prepare": (bad_scenes, lambda c: ["prepare", "--config", str(c), "--out", "out"], "no scene group was formed"),
    "train": (damaged_catalog, lambda c: ["train", "--config", str(c), "--out", "run"], "damaged or not a GeoPackage"),
    "detect": (no_groups, lambda c: ["detect", "--config", str(c), "--out", "out"], "no prepared groups"),
    "ingest": (missing_checkpoint, lambda c: ["ingest", "--config", str(c)], "nope.pt"),
}


@pytest.mark.integration
@pytest.mark.parametrize("command", CASES)
def test_an_error_in_a_flow_is_one_line_without_a_traceback(command, tmp_path):
    make_config, arguments, message = CASES[command]
    result = changeflow(*arguments(make_config(tmp_path)), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "| ERROR" not in result.stderr  # Prefect's "Encountered exception during execution" record
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    assert message in errors[0]


@pytest.mark.integration
@pytest.mark.parametrize(("command", "how"), [("prepare", "option"), ("ingest", "env")])
def test_debug_shows_the_traceback_before_the_line(command, how, tmp_path):
    make_config, arguments, message = CASES[command]
    debug = ["--debug"] if how == "option" else []
    result = changeflow(*debug, *arguments(make_config(tmp_path)), cwd=tmp_path, debug_env=how == "env")
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("Traceback (most recent call last)") == 1
    lines = result.stderr.splitlines()
    error = next(i for i, line in enumerate(lines) if line.startswith("error: "))
    assert message in lines[error]
    assert lines.index("Traceback (most recent call last):") < error
