"""The prepare flow: scenes in, georeferenced tiles with a leakage-free split out.

catalog → overlap groups → per group (:mod:`pipeline.prepare.group_build`: grid, co-registration,
tiles; in parallel, on threads or a Dask cluster) → :mod:`pipeline.prepare.assembly`
(de-duplication, split, tile folders and the GeoPackage index). A rerun skips finished groups.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from rasterio.crs import CRS

from flows.cluster import with_dask
from flows.interrupt import note
from flows.progress import progress_bar
from pipeline.config import PrepareConfig, load_config
from pipeline.errors import ChangeflowError
from pipeline.io.release import release
from pipeline.io.write_errors import output_errors, writable_folder
from pipeline.prepare.assembly import assemble, assigned_tiles, block_plan, index_frames, split_summary, stride_note
from pipeline.prepare.catalog import build_catalog, scene_entries
from pipeline.prepare.group_build import GroupOutcome, process_group
from pipeline.prepare.labels import describe_label, refused_label_groups
from pipeline.prepare.overlap import Group, build_groups
from pipeline.prepare.tile_index import write_index

# Published together in one switch (pipeline.io.release): tiles, index, effective config, reports.
PUBLISHED = ("tiles", "catalog.gpkg", "config.yaml", "prepare_report.json", "coregistration.json")


@task(name="prepare-group", cache_policy=NO_CACHE)
def prepare_group_task(
    group: Group, crs: CRS | None, config: PrepareConfig, out_dir: Path, label_refused: str | None = None
) -> GroupOutcome:
    """One group; a bad group (or one whose label was refused) is reported as failed and the others go on."""
    if label_refused:
        return GroupOutcome(group.name, "failed", error=label_refused)
    try:
        with output_errors(out_dir / "groups" / group.name):  # a full disk fails this group with one line
            return process_group(group, crs, config, out_dir)
    except (ChangeflowError, ValueError) as exc:
        return GroupOutcome(group.name, "failed", error=str(exc))


@flow(name="prepare", log_prints=True)
def prepare_flow(config_path: str, out_dir: str, progress: bool = False) -> dict:
    """Prepare tiles from a config (scene list or inbox) into ``out_dir``.

    Tiles, ``catalog.gpkg``, the effective ``config.yaml`` and the reports are published together, in
    one switch, once all are written (:mod:`pipeline.io.release`): a run that fails or is killed
    leaves those of the last complete run as they were.

    Args:
        config_path: the prepare YAML.
        out_dir: the output folder ``OUT`` (created; a rerun skips finished groups).
        progress: show a progress bar over groups.

    Returns:
        The run report, also written to ``OUT/prepare_report.json``.

    Raises:
        ChangeflowError: no scene group was formed, or no group was prepared (each reason on the one line).
    """
    config = load_config(Path(config_path))
    out = writable_folder(Path(out_dir))

    scenes, failures = build_catalog(scene_entries(config), config, cache=config.products.cache or out / "cache")
    for entry, reason in failures:
        print(f"scene refused: {reason}")
    groups, unpaired, crs = build_groups(scenes, config.min_overlap)
    for scene_id, reason in unpaired.items():
        print(f"scene not grouped: {scene_id}: {reason}")
    if not groups:
        raise ChangeflowError(f"no scene group was formed ({_reasons({**_refused(failures), **unpaired})})")
    plan = block_plan(groups, crs, config)
    config = config.model_copy(update={"split": config.split.model_copy(update={"block_tiles": plan.used})})

    refused_labels = refused_label_groups(failures)
    futures = [prepare_group_task.submit(group, crs, config, out, refused_labels.get(group.name)) for group in groups]
    outcomes = []
    for future in _tracked(futures, progress):
        outcome = future.result()
        outcomes.append(outcome)
        note(f"{sum(o.status != 'failed' for o in outcomes)} of {len(groups)} groups prepared")  # said on Ctrl-C
        print(f"group {outcome.name}: {outcome.status}" + (f" ({outcome.error})" if outcome.error else ""))
        for summary in outcome.labels.values():
            print(f"group {outcome.name}: {describe_label(summary)}")
    outcomes.sort(key=lambda o: o.name)
    done = [o for o in outcomes if o.status != "failed"]
    coregistration = [r for o in outcomes for r in o.coregistration]
    if not done:
        raise ChangeflowError(f"no group was prepared ({_reasons({o.name: o.error for o in outcomes})})")
    with output_errors(out), release(out, PUBLISHED) as staged:
        splits, dropped, grid_crs = assemble(done, groups, crs, config, out, staged / "tiles")
        write_index(staged / "catalog.gpkg", index_frames(scenes, groups, outcomes, splits, grid_crs, crs))
        report = {
            "scenes": len(scenes),
            "scenes_refused": _refused(failures),
            "scenes_not_grouped": unpaired,
            "groups": {o.name: o.status for o in outcomes},
            "groups_failed": {o.name: o.error for o in outcomes if o.status == "failed"},
            "labels": {o.name: o.labels for o in outcomes if o.labels},
            "images_refused": {r["image"]: r["reason"] for r in coregistration if not r["accepted"]},
            "images_uncorrected": {r["image"]: r["reason"] for r in coregistration if r["accepted"] and not r["corrected"]},
            "tiles_dropped": {"black": sum(o.dropped_black for o in done), **dropped},
            "split_blocks": {"block_tiles": plan.requested, "block_tiles_used": plan.used, "blocks": plan.blocks,
                             "blocks_needed": plan.needed},
            "splits": split_summary(assigned_tiles(outcomes, splits), splits, config.split.ratios),
            "notes": [n for n in (plan.note, stride_note(config)) if n],
        }
        # Written into the release: published with the tiles they describe, never before.
        (staged / "config.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
        (staged / "coregistration.json").write_text(json.dumps(
            [{k: v for k, v in r.items() if k != "points"} for r in coregistration], indent=1))
        (staged / "prepare_report.json").write_text(json.dumps(report, indent=1))
    return report


def _refused(failures: list) -> dict[str, str]:
    return {str(entry.path): reason for entry, reason in failures}


def _reasons(reasons: dict[str, str | None]) -> str:
    """Reasons by name on one line, for an error that says why nothing was left."""
    return "; ".join(f"{name}: {reason}" for name, reason in reasons.items()) or "no scenes"


def _tracked(futures: list, show: bool):
    """Futures as they complete, with a progress bar over groups when asked."""
    with progress_bar("groups", show) as advance:
        for done, future in enumerate(as_completed(futures), start=1):
            advance("groups", done, len(futures))
            yield future


def run_prepare(config_path: Path, out_dir: Path, *, dask_address: str | None = None, progress: bool = False) -> dict:
    """Run the prepare flow on threads, or on an existing Dask cluster through prefect-dask (checked first)."""
    return with_dask(prepare_flow, dask_address)(str(config_path), str(out_dir), progress)
