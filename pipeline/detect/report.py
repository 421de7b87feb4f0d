"""The run report: ``report.md`` and ``report.json`` (metrics, timings, effective config) and the quick look.

The JSON is strict (NaN and infinities become null); the Markdown has one table per metrics section,
the timings with their total, the quick look with its legend and the effective config as YAML.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import yaml

from pipeline.detect.quicklook import write_quicklook
from pipeline.io.atomic import write_atomic

ERROR_LEGEND = "TP white, FP red, FN blue, TN black, ignored or nodata grey"


def _plain(value: object) -> object:
    """JSON-ready: Paths and dates as text, numpy scalars as Python, NaN/inf as None."""
    if hasattr(value, "model_dump"):
        return _plain(value.model_dump(mode="json"))
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (Path, dt.date, dt.datetime)):
        return value.isoformat() if isinstance(value, (dt.date, dt.datetime)) else str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _format(value: object) -> str:
    """A table cell: 4 decimals for ordinary floats, none for large ones, a dash for missing values."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1e4 else f"{value:.0f}"
    return str(value)


def _table(rows: Mapping[str, object], header: tuple[str, str]) -> list[str]:
    """A two-column Markdown table, values right-aligned."""
    lines = [f"| {header[0]} | {header[1]} |", "| --- | ---: |"]
    lines += [f"| {key} | {_format(value)} |" for key, value in rows.items()]
    return lines


def _markdown(document: dict, timings: Mapping[str, float]) -> str:
    """The Markdown report of a report document (as written to ``report.json``)."""
    lines = [f"# {document['title']}", "", f"Created {document['created']}.", ""]
    metrics = document["metrics"]
    sections = {k: v for k, v in metrics.items() if isinstance(v, dict)}
    flat = {k: v for k, v in metrics.items() if not isinstance(v, dict)}
    if flat:
        sections = {"metrics": flat, **sections}
    for name, rows in sections.items():
        lines += [f"## {name.capitalize()} metrics" if name != "metrics" else "## Metrics", "", *_table(rows, ("metric", "value")), ""]
    total = sum(float(v) for v in timings.values())
    lines += ["## Timings", "", *_table({**document["timings"], "total": total}, ("stage", "seconds")), ""]
    if document["quicklook"]:
        image = document["quicklook"]
        lines += ["## Quick look", "", "t1 | t2 / prediction | errors (" + ERROR_LEGEND + ")", "", f"![quick look]({image})", ""]
    config = yaml.safe_dump(document["config"], sort_keys=False).rstrip()
    lines += ["## Effective config", "", "```yaml", config, "```", ""]
    return "\n".join(lines)


def write_report(
    out_dir: Path,
    *,
    metrics: Mapping[str, object],
    timings: Mapping[str, float],
    config: Mapping[str, object] | object,
    quicklook: Mapping[str, Path | None] | None = None,
    title: str = "changeflow run report",
) -> tuple[Path, Path]:
    """Write ``report.md``, ``report.json`` and, with ``quicklook`` rasters, ``quicklook.png``.

    Args:
        out_dir: the folder to write into (created if missing).
        metrics: flat or nested by section (e.g. ``{"pixel": {...}, "object": {...}}``).
        timings: seconds per stage.
        config: the effective config (dict or pydantic model).
        quicklook: rasters "t1", "t2", "prediction", "label" for the quick look (see
            :func:`~pipeline.detect.quicklook.write_quicklook`); None for no quick look.
        title: the report's title.

    Returns:
        The (markdown, json) paths.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    image = write_quicklook(out_dir / "quicklook.png", quicklook) if quicklook else None
    document = {
        "title": title,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "metrics": _plain(metrics),
        "timings": _plain(timings),
        "config": _plain(config),
        "quicklook": image.name if image else None,
        "inputs": _plain(dict(quicklook)) if quicklook else {},
    }
    json_path, md_path = out_dir / "report.json", out_dir / "report.md"
    write_atomic(json_path, json.dumps(document, indent=2, allow_nan=False) + "\n")
    write_atomic(md_path, _markdown(document, timings))
    return md_path, json_path
