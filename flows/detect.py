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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext

from flows.cluster import with_dask
from flows.gpu import gpu_slot, uses_gpu
from flows.interrupt import note
from flows.progress import progress_bar
from pipeline.config import DetectConfig, load_config
from pipeline.detect.cluster import check_workers, device_resources
from pipeline.detect.group_run import prepared_groups, run_group
from pipeline.detect.shard import Shard, follow_group
from pipeline.detect.sliding import DetectSettings
from pipeline.detect.staging import PARTIAL_DIR
from pipeline.errors import ChangeflowError
from pipeline.io.atomic import write_atomic
from pipeline.io.paths import contained
from pipeline.io.write_errors import output_errors, writable_folder

REPORT = "detect_report.json"
CONFIG = "detect_config.yaml"


def detect_one(group_dir: Path, config: DetectConfig, out: Path, show_progress: bool, on_cluster: bool = False) -> dict:
    """One group through :func:`~pipeline.detect.group_run.run_group`, inference in the GPU slot.

    Args:
        group_dir: a prepared group folder.
        config: the detect config.
        out: the group's output folder.
        show_progress: draw a progress bar of the blocks on stderr.
        on_cluster: a Dask task: its GPU is gated by the Dask resource, so no Prefect ``gpu`` slot is held.

    Returns:
        The group's summary.
    """
    slot = None if on_cluster else gpu_slot(uses_gpu(config.device))
    with progress_bar("detect", show_progress) as advance:
        return run_group(group_dir, config, out, progress=advance, device_slot=slot)


@task(name="detect-group", cache_policy=NO_CACHE)
def detect_group_task(group_dir: Path, config: DetectConfig, out: Path, show_progress: bool,
                      on_cluster: bool = False) -> dict:
    """:func:`detect_one` as a Prefect task; a group that cannot be detected gives ``{"group", "error"}``.

    Args:
        group_dir: a prepared group folder.
        config: the detect config.
        out: the group's output folder.
        show_progress: draw a progress bar of the blocks on stderr.
        on_cluster: the task runs on a Dask cluster (see :func:`detect_one`).

    Returns:
        The group's summary, or its error.
    """
    try:
        with output_errors(out):  # a full disk or read-only folder fails this group with one line
            return detect_one(group_dir, config, out, show_progress, on_cluster)
    except (ChangeflowError, ValueError) as exc:
        return {"group": group_dir.name, "error": str(exc)}


def _dask_client() -> Any:
    """The Dask client of the running flow's task runner, or None when it runs on threads."""
    runner = FlowRunContext.get().task_runner
    return runner.client if type(runner).__name__ == "DaskTaskRunner" else None


def group_summaries(groups: list[Path], config: DetectConfig, out: Path, progress: bool) -> Iterator[tuple[Path, dict]]:
    """Each group's summary, in order: one after another here, or all at once as tasks of a Dask cluster.

    On a cluster a group task asks for the Dask resource ``GPU`` when the device is a GPU (with
    ``block_tasks`` its block tasks ask instead); the workers must read the checkpoint and the groups.

    Args:
        groups: the prepared group folders.
        config: the detect config.
        out: the output folder (``OUT/{group}`` per group).
        progress: draw progress bars on stderr (not on a cluster).

    Yields:
        (group folder, summary or error).

    Raises:
        ConfigError: a CUDA device on a cluster without GPU workers.
        InputError: a path some worker cannot read (before any group is sent).
    """
    client = _dask_client()
    if client is None:
        for group_dir in groups:
            yield group_dir, detect_group_task(group_dir, config, contained(out, group_dir.name), progress)
        return
    import dask

    gpu = None if config.method is not None else device_resources(client, config.device)
    check_workers(client, [config.prepared, *([config.checkpoint] if config.checkpoint else [])])
    with dask.annotate(**({"resources": gpu} if gpu and not config.block_tasks else {})):
        futures = [detect_group_task.submit(group_dir, config, contained(out, group_dir.name), False, True)
                   for group_dir in groups]
    for group_dir, future in zip(groups, futures):
        yield group_dir, future.result()


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
    for group_dir, summary in group_summaries(groups, config, out, progress):
        summaries[group_dir.name] = summary
        note(f"{sum('error' not in s for s in summaries.values())} of {len(groups)} groups detected")  # said on Ctrl-C
        print(f"group {group_dir.name}: " + (summary.get("error") or f"{summary['n_polygons']} polygons"))
    if any("error" not in summary for summary in summaries.values()):
        # With the outputs they describe: a run that detected no group leaves the last run's as they were.
        write_atomic(out / REPORT, json.dumps(summaries, indent=1))
        write_atomic(out / CONFIG, yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    return summaries


def run_detect(config_path: Path, out_dir: Path, *, dask_address: str | None = None, progress: bool = False) -> dict:
    """Run the detect flow on threads, or on a Dask cluster (``--dask-address``, else the config's ``dask_address``).

    Args:
        config_path: the detect YAML.
        out_dir: the output folder.
        dask_address: the Dask scheduler, overriding the config's.
        progress: draw progress bars on stderr.

    Returns:
        {group: summary or error}.

    Raises:
        ChangeflowError: as :func:`detect_flow`, or an unreachable scheduler.
    """
    config = load_config(Path(config_path), DetectConfig)
    return with_dask(detect_flow, dask_address or config.dask_address)(str(config_path), str(out_dir), progress)


def follow_detection(config_path: Path, out_dir: Path, shard: Shard) -> int:
    """A torchrun rank above 0: its share of every group's blocks, while rank 0 runs :func:`detect_flow`.

    Groups this rank cannot set up (bad input) are left to rank 0, which reports them.

    Args:
        config_path: the detect YAML (the same as rank 0's).
        out_dir: the output folder (the same as rank 0's, on a file system every rank sees).
        shard: this process's rank and the world size.

    Returns:
        The number of blocks this rank computed.

    Raises:
        ChangeflowError: for an invalid config or prepared folder.
    """
    config = load_config(Path(config_path), DetectConfig)
    if config.method is not None:
        return 0  # label-free methods are not sharded: rank 0 detects alone
    settings = DetectSettings.from_config(config)
    computed = 0
    for group_dir in prepared_groups(config.prepared, config.groups):
        out = contained(Path(out_dir), group_dir.name)
        try:
            computed += follow_group(group_dir, config.checkpoint, settings, out / PARTIAL_DIR, out, shard)
        except (ChangeflowError, ValueError):
            continue
    return computed
