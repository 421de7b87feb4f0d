"""The prepare flow: scenes in, georeferenced tiles with a leakage-free split out.

catalog → overlap groups → per group (grid, co-registration, tiles; in parallel, on threads or a
Dask cluster) → de-duplication → split → tile folders and the GeoPackage index.

Each group is built in a hidden ``.partial`` folder and renamed when complete, with a manifest
holding a fingerprint of its inputs and settings: a rerun skips finished groups and a killed run
leaves nothing half-written behind.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import rasterio
import yaml
from affine import Affine
from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from rasterio.crs import CRS
from shapely.geometry import box

from flows.progress import progress_bar
from pipeline.config import PrepareConfig, Role, load_config
from pipeline.errors import ChangeflowError, GroupError
from pipeline.io.raster import bounded_gdal_cache, split_mat_key
from pipeline.prepare.catalog import Scene, build_catalog, scene_entries
from pipeline.prepare.coregistration import CoregistrationResult, coregister
from pipeline.prepare.grid import GroupGrid, reference_grid, warped, write_cog
from pipeline.prepare.overlap import Group, build_groups, reproject_geometry
from pipeline.prepare.split import BlockStats, assign_splits, isolation_conflicts
from pipeline.prepare.tile_index import groups_frame, scenes_frame, tiepoints_frame, tiles_frame, write_index
from pipeline.prepare.tiling import TileRecord, cut_tiles, find_duplicates, tile_windows

MANIFEST = "manifest.json"


@dataclass
class GroupOutcome:
    """What happened to one group; ``tiles`` are the kept tiles in its cache folder."""

    name: str
    status: str  # prepared | skipped | failed
    error: str | None = None
    grid: dict | None = None
    coregistration: list[dict] = field(default_factory=list)
    tiles: list[TileRecord] = field(default_factory=list)
    dropped_black: int = 0


def group_fingerprint(group: Group, config: PrepareConfig) -> str:
    """Hash of the group's input files (path, size, mtime) and the settings that shape its tiles."""
    files = []
    for role, scene in sorted(group.members.items(), key=lambda item: item[0].value):
        file, key = split_mat_key(scene.path)
        stat = file.stat()
        files.append([role.value, str(file.resolve()), key, stat.st_size, stat.st_mtime_ns])
    settings = config.model_dump(
        mode="json", include={"grid", "coregistration", "tiling", "label_encoding", "georeferenced"}
    )
    settings["block_tiles"] = config.split.block_tiles
    payload = json.dumps({"files": files, "settings": settings, "area": group.common_area.wkt}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def _black_value(scene: Scene, config: PrepareConfig) -> float | None:
    return config.tiling.black_value if scene.black_value_applies else None


def _coregistration_record(group: Group, scene: Scene, grid: GroupGrid, result: CoregistrationResult, accepted: bool, reason: str | None) -> dict:
    resolution = grid.resolution if grid.crs is not None else 1.0
    return {
        "group": group.name,
        "image": scene.id,
        "role": scene.role.value,
        "reference": group.reference.id,
        "method": result.method,
        "model": result.model,
        "matrix": list(result.matrix),
        "shift_px": list(result.shift_px),
        "shift_m": [v * resolution for v in result.shift_px] if grid.crs is not None else None,
        "reliability": result.reliability,
        "tiepoints": len(result.tiepoints),
        "tiepoints_kept": result.n_kept,
        "rmse_px": None if math.isnan(result.rmse_px) else result.rmse_px,
        "accepted": accepted,
        "reason": reason,
        "points": [asdict(point) for point in result.tiepoints],
    }


def _accept(result: CoregistrationResult, config: PrepareConfig) -> str | None:
    """Why a co-registration is refused, or None when it is accepted."""
    limits = config.coregistration
    if math.isnan(result.rmse_px):
        if result.reliability < limits.min_reliability:
            return f"no reliable tie points and global reliability {result.reliability:.1f}% < {limits.min_reliability}%"
        return None
    if result.rmse_px > limits.max_rmse_px:
        return f"tie-point RMSE {result.rmse_px:.2f} px > max_rmse_px {limits.max_rmse_px}"
    return None


def process_group(
    group: Group, crs: CRS | None, config: PrepareConfig, out_dir: Path,
    progress: Callable[[int], None] | None = None,
) -> GroupOutcome:
    """Grid, co-register and tile one group into ``OUT/groups/{name}``; skip it when up to date."""
    groups_dir = out_dir / "groups"
    final = groups_dir / group.name
    fingerprint = group_fingerprint(group, config)
    manifest_path = final / MANIFEST
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if manifest["fingerprint"] == fingerprint:
            return GroupOutcome(
                name=group.name, status="skipped", grid=manifest["grid"],
                coregistration=manifest["coregistration"],
                tiles=[_record_from_json(r) for r in manifest["tiles"]],
                dropped_black=manifest["dropped_black"],
            )
    work = groups_dir / f".{group.name}.partial"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)

    try:
        with bounded_gdal_cache():
            manifest = _build_group(group, crs, config, work, fingerprint, progress)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final)
    os.replace(work, final)
    return GroupOutcome(
        group.name, "prepared", None, manifest["grid"], manifest["coregistration"],
        [_record_from_json(r) for r in manifest["tiles"]], manifest["dropped_black"],
    )


def _build_group(
    group: Group, crs: CRS | None, config: PrepareConfig, work: Path, fingerprint: str,
    progress: Callable[[int], None] | None,
) -> dict:
    """Grid COGs, co-registration and tiles of one group, written into ``work``; its manifest."""
    grid = reference_grid(group, crs, config.grid)
    reference = group.reference
    paths = {Role.A: work / "grid" / "A.tif"}
    with warped(reference, grid) as source:
        write_cog(source, paths[Role.A], grid=grid, block_size=config.block_size)

    records: list[dict] = []
    for role, scene in sorted(group.members.items(), key=lambda item: item[0].value):
        if role is Role.A:
            continue
        path = work / "grid" / f"{role.value}.tif"
        if role.is_label:
            encoding = config.label_encoding if role is Role.label else "classes"
            with warped(scene, grid) as source:
                write_cog(source, path, grid=grid, block_size=config.block_size, label_encoding=encoding)
            paths[role] = path
            continue
        correction = Affine.identity()
        if config.coregistration.enabled:
            structure = reference.is_sar or scene.is_sar
            settings = config.coregistration
            if structure:
                settings = settings.model_copy(update={"ransac_threshold_px": settings.ransac_threshold_sar_px})
            with rasterio.open(paths[Role.A]) as ref_ds, warped(scene, grid) as moving:
                result = coregister(
                    ref_ds, moving, settings,
                    structure=structure,
                    reference_black=_black_value(reference, config),
                    moving_black=_black_value(scene, config),
                )
            reason = _accept(result, config)
            records.append(_coregistration_record(group, scene, grid, result, reason is None, reason))
            if reason is not None:
                continue
            correction = Affine(*result.matrix)
        with warped(scene, grid, correction=correction) as source:
            write_cog(source, path, grid=grid, block_size=config.block_size)
        paths[role] = path

    if Role.B not in paths and Role.C not in paths:
        refused = "; ".join(f"{r['image']}: {r['reason']}" for r in records if not r["accepted"])
        raise GroupError(group.name, f"no image left after co-registration ({refused})")

    windows = tile_windows(group.name, grid, config.tiling, config.split.block_tiles)
    datasets = {role: rasterio.open(path) for role, path in paths.items()}
    try:
        tiles, dropped = cut_tiles(group.name, datasets, grid, windows, config.tiling, work / "tiles", progress)
    finally:
        for dataset in datasets.values():
            dataset.close()
    grid_record = {
        "crs": grid.crs.to_wkt() if grid.crs else None,
        "transform": list(grid.transform)[:6],
        "width": grid.width,
        "height": grid.height,
    }
    manifest = {
        "fingerprint": fingerprint,
        "members": {
            role.value: {
                "id": scene.id, "sensor": scene.sensor.value, "path": str(scene.path),
                "date": scene.date.isoformat() if scene.date else None,
            }
            for role, scene in group.members.items() if role in paths
        },
        "grid": grid_record,
        "coregistration": records,
        "tiles": [asdict(t) for t in tiles],
        "dropped_black": dropped,
    }
    (work / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest


def _record_from_json(data: dict) -> TileRecord:
    return TileRecord(**{**data, "block": tuple(data["block"]), "bounds": tuple(data["bounds"])})


def _grid_crs(outcome: GroupOutcome) -> CRS | None:
    wkt = outcome.grid["crs"] if outcome.grid else None
    return CRS.from_wkt(wkt) if wkt else None


def assemble(
    outcomes: list[GroupOutcome], crs: CRS | None, config: PrepareConfig, out_dir: Path
) -> tuple[dict[str, str], dict[str, int], dict[str, CRS | None]]:
    """De-duplicate across groups, split by blocks, and link the tiles into ``OUT/tiles/{split}``.

    Returns (tile id → split, counts of dropped tiles by reason, group → grid CRS).
    """
    grid_crs = {o.name: _grid_crs(o) for o in outcomes}
    records = [t for o in sorted(outcomes, key=lambda o: o.name) for t in o.tiles]
    footprint = {
        t.tile_id: reproject_geometry(box(*t.bounds), grid_crs[t.group], crs) for t in records
    }
    duplicates = set(
        find_duplicates([(t.tile_id, t.group, footprint[t.tile_id]) for t in records], config.tiling.dedup_overlap)
    )
    records = [t for t in records if t.tile_id not in duplicates]
    blocks: dict[tuple[str, int, int], BlockStats] = {}
    for t in records:
        key = (t.group, *t.block)
        old = blocks.get(key, BlockStats(0, 0, 0))
        blocks[key] = BlockStats(old.tiles + 1, old.change_pixels + t.change_pixels, old.labelled_pixels + t.labelled_pixels)
    block_split = assign_splits(blocks, config.split.ratios, config.split.seed)
    splits = {t.tile_id: block_split[(t.group, *t.block)] for t in records}
    conflicts = set(isolation_conflicts([(t.tile_id, splits[t.tile_id], footprint[t.tile_id]) for t in records]))
    for tile_id in conflicts:
        del splits[tile_id]

    staging = out_dir / "tiles.partial"
    shutil.rmtree(staging, ignore_errors=True)
    for t in records:
        if t.tile_id not in splits:
            continue
        source_dir = out_dir / "groups" / t.group / "tiles"
        for role_dir in sorted(source_dir.iterdir()):
            target = staging / splits[t.tile_id] / role_dir.name / f"{t.tile_id}.tif"
            target.parent.mkdir(parents=True, exist_ok=True)
            _link_or_copy(role_dir / f"{t.tile_id}.tif", target)
    final = out_dir / "tiles"
    old = out_dir / "tiles.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    staging.mkdir(exist_ok=True)
    os.replace(staging, final)
    shutil.rmtree(old, ignore_errors=True)
    return splits, {"duplicate": len(duplicates), "split_isolation": len(conflicts)}, grid_crs


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


@task(name="prepare-group", cache_policy=NO_CACHE)
def prepare_group_task(group: Group, crs: CRS | None, config: PrepareConfig, out_dir: Path) -> GroupOutcome:
    """One group; a bad group is reported as failed and the others go on."""
    try:
        return process_group(group, crs, config, out_dir)
    except (ChangeflowError, ValueError) as exc:
        return GroupOutcome(group.name, "failed", error=str(exc))


def _split_summary(records: list[TileRecord], splits: dict[str, str]) -> dict[str, dict]:
    summary = {}
    for split in ("train", "val", "test"):
        chosen = [t for t in records if splits.get(t.tile_id) == split]
        labelled = sum(t.labelled_pixels for t in chosen)
        summary[split] = {
            "tiles": len(chosen),
            "change_fraction": sum(t.change_pixels for t in chosen) / labelled if labelled else None,
        }
    return summary


@flow(name="prepare", log_prints=True)
def prepare_flow(config_path: str, out_dir: str, progress: bool = False) -> dict:
    """Prepare tiles from a config (scene list or inbox) into ``out_dir``; returns the run report."""
    config = load_config(Path(config_path))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))

    scenes, failures = build_catalog(scene_entries(config), config, cache=config.products.cache or out / "cache")
    for entry, reason in failures:
        print(f"scene refused: {reason}")
    groups, unpaired, crs = build_groups(scenes, config.min_overlap)
    for scene_id, reason in unpaired.items():
        print(f"scene not grouped: {scene_id}: {reason}")

    futures = [prepare_group_task.submit(group, crs, config, out) for group in groups]
    outcomes = []
    for future in _tracked(futures, progress):
        outcome = future.result()
        outcomes.append(outcome)
        print(f"group {outcome.name}: {outcome.status}" + (f" ({outcome.error})" if outcome.error else ""))
    outcomes.sort(key=lambda o: o.name)
    done = [o for o in outcomes if o.status != "failed"]
    splits, dropped, grid_crs = assemble(done, crs, config, out)
    records = [t for o in done for t in o.tiles if t.tile_id in splits]
    coregistration = [r for o in outcomes for r in o.coregistration]

    tiepoint_rows = []
    for record in coregistration:
        outcome = next(o for o in outcomes if o.name == record["group"])
        transform = Affine(*outcome.grid["transform"])
        for point in record["points"]:
            map_x, map_y = transform @ (point["x"], point["y"])
            tiepoint_rows.append({
                "group_name": record["group"], "image": record["image"], "x_px": point["x"], "y_px": point["y"],
                "dx_px": point["dx"], "dy_px": point["dy"], "reliability": point["reliability"],
                "inlier": point["inlier"], "map_x": map_x, "map_y": map_y, "grid_crs": grid_crs[record["group"]],
            })
    write_index(out / "catalog.gpkg", {
        "scenes": scenes_frame(scenes, crs),
        "groups": groups_frame([g for g in groups if g.name in {o.name for o in done}], crs),
        "tiepoints": tiepoints_frame(tiepoint_rows, crs),
        "tiles": tiles_frame(records, splits, grid_crs, crs),
    })
    (out / "coregistration.json").write_text(json.dumps(
        [{k: v for k, v in r.items() if k != "points"} for r in coregistration], indent=1))
    report = {
        "scenes": len(scenes),
        "scenes_refused": {str(entry.path): reason for entry, reason in failures},
        "scenes_not_grouped": unpaired,
        "groups": {o.name: o.status for o in outcomes},
        "groups_failed": {o.name: o.error for o in outcomes if o.status == "failed"},
        "images_refused": {r["image"]: r["reason"] for r in coregistration if not r["accepted"]},
        "tiles_dropped": {"black": sum(o.dropped_black for o in done), **dropped},
        "splits": _split_summary(records, splits),
    }
    (out / "prepare_report.json").write_text(json.dumps(report, indent=1))
    return report


def _tracked(futures: list, show: bool):
    """Futures as they complete, with a progress bar over groups when asked."""
    with progress_bar("groups", show) as advance:
        for done, future in enumerate(as_completed(futures), start=1):
            advance("groups", done, len(futures))
            yield future


def run_prepare(config_path: Path, out_dir: Path, *, dask_address: str | None = None, progress: bool = False) -> dict:
    """Run the prepare flow on threads, or on an existing Dask cluster through prefect-dask."""
    runnable = prepare_flow
    if dask_address:
        from prefect_dask import DaskTaskRunner

        runnable = prepare_flow.with_options(task_runner=DaskTaskRunner(address=dask_address))
    return runnable(str(config_path), str(out_dir), progress)
