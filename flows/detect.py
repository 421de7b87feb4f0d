"""The detect flow: per prepared group, sliding-window inference → polygons → evaluation report.

Inference holds a slot of the global concurrency limit ``gpu`` (as training does). A group that
cannot be detected (e.g. its SAR image failed co-registration) is reported and the others go on.
Outputs per group in ``OUT/{group}/``: ``change_probability.tif``, ``change_class.tif`` (COGs),
``changes.gpkg`` (layer ``changes``) and, when the group has a label, ``report.md`` /
``report.json`` / ``quicklook.png``, published together (:mod:`pipeline.detect.group_run`). The run's
``detect_report.json`` and effective ``detect_config.yaml`` are written after its groups, and only
when at least one was detected: a rerun that fails leaves the last run's outputs as they were.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.gpu import gpu_slot, uses_gpu
from flows.interrupt import note
from flows.progress import progress_bar
from pipeline.config import DetectConfig, load_config
from pipeline.detect.group_run import prepared_groups, run_group
from pipeline.errors import ChangeflowError
from pipeline.io.atomic import write_atomic
from pipeline.io.paths import contained
from pipeline.io.write_errors import output_errors, writable_folder

REPORT = "detect_report.json"
CONFIG = "detect_config.yaml"


def detect_one(group_dir: Path, config: DetectConfig, out: Path, show_progress: bool) -> dict:
    """One group through :func:`~pipeline.detect.group_run.run_group`, inference in the GPU slot.

    Args:
        group_dir: a prepared group folder.
        config: the detect config.
        out: the group's output folder.
        show_progress: draw a progress bar of the blocks on stderr.

    Returns:
        The group's summary.
    """
    with progress_bar("detect", show_progress) as advance:
        return run_group(group_dir, config, out, progress=advance, device_slot=gpu_slot(uses_gpu(config.device)))


@task(name="detect-group", cache_policy=NO_CACHE)
def detect_group_task(group_dir: Path, config: DetectConfig, out: Path, show_progress: bool) -> dict:
    """:func:`detect_one` as a Prefect task; a group that cannot be detected gives ``{"group", "error"}``.

    Args:
        group_dir: a prepared group folder.
        config: the detect config.
        out: the group's output folder.
        show_progress: draw a progress bar of the blocks on stderr.

    Returns:
        The group's summary, or its error.
    """
    try:
        with output_errors(out):  # a full disk or read-only folder fails this group with one line
            return detect_one(group_dir, config, out, show_progress)
    except (ChangeflowError, ValueError) as exc:
        return {"group": group_dir.name, "error": str(exc)}


@flow(name="detect", log_prints=True)
def detect_flow(config_path: str, out_dir: str, progress: bool = False) -> dict:
    """Detect changes in every prepared group of a config.

    Args:
        config_path: a detect config (YAML).
        out_dir: the output folder; ``OUT/{group}/`` per group, the effective config and
            ``detect_report.json``.
        progress: draw progress bars on stderr.

    Returns:
        {group: summary or error}.

    Raises:
        ChangeflowError: for an invalid config or a prepare output without the groups asked for; an
            UnsafePathError for a group folder whose name would put its output outside ``out_dir``.
    """
    config = load_config(Path(config_path), DetectConfig)
    out = Path(out_dir)
    writable_folder(out)
    summaries = {}
    groups = prepared_groups(config.prepared, config.groups)
    for group_dir in groups:
        summary = detect_group_task(group_dir, config, contained(out, group_dir.name), progress)
        summaries[group_dir.name] = summary
        note(f"{sum('error' not in s for s in summaries.values())} of {len(groups)} groups detected")  # said on Ctrl-C
        print(f"group {group_dir.name}: " + (summary.get("error") or f"{summary['n_polygons']} polygons"))
    if any("error" not in summary for summary in summaries.values()):
        # With the outputs they describe: a run that detected no group leaves the last run's as they were.
        write_atomic(out / REPORT, json.dumps(summaries, indent=1))
        write_atomic(out / CONFIG, yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    return summaries
