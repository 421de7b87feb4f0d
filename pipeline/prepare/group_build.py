"""Build one overlap group: grid COGs, co-registration and tiles in ``OUT/groups/{name}``.

The group is built in a hidden ``.partial`` folder and renamed when complete, with a manifest
holding a fingerprint of its inputs and settings: a rerun skips finished groups and a killed run
leaves nothing half-written behind.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import rasterio
from affine import Affine
from rasterio.crs import CRS
from threadpoolctl import threadpool_limits

from pipeline.config import PrepareConfig, Role
from pipeline.errors import GroupError
from pipeline.io.atomic import write_atomic
from pipeline.io.paths import contained
from pipeline.io.raster import bounded_gdal_cache, split_mat_key
from pipeline.io.validity import POLICY_KEY, image_rule
from pipeline.prepare.catalog import Scene
from pipeline.prepare.coregistration import Acceptance, CoregistrationResult, acceptance, coregister
from pipeline.prepare.grid import GroupGrid, grid_nodata, reference_grid, warped, write_cog
from pipeline.prepare.labels import LabelSummary, inspect_label
from pipeline.prepare.overlap import Group
from pipeline.prepare.tiling import TileRecord, cut_tiles, tile_windows

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
    labels: dict[str, dict] = field(default_factory=dict)  # label role → LabelSummary.as_json()

    @classmethod
    def from_manifest(cls, name: str, status: str, manifest: dict) -> GroupOutcome:
        """The outcome recorded in a group's manifest.

        Args:
            name: the group's name.
            status: ``prepared`` or ``skipped``.
            manifest: the group's manifest, as written by :func:`process_group`.

        Returns:
            The outcome with the manifest's grid, co-registration records and tiles.
        """
        return cls(
            name, status, None, manifest["grid"], manifest["coregistration"],
            [_tile_from_json(r) for r in manifest["tiles"]], manifest["dropped_black"],
            manifest.get("labels", {}),  # absent from manifests written before label summaries
        )


def group_fingerprint(group: Group, config: PrepareConfig) -> str:
    """Hash of the group's input files (path, size, mtime) and the settings that shape its tiles.

    Args:
        group: the overlap group.
        config: the prepare config; only its grid, co-registration, tiling, label and split-block settings count.

    Returns:
        A SHA-256 hex digest; a finished group whose manifest holds it is up to date.

    Raises:
        OSError: if an input file is missing.
    """
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


def process_group(
    group: Group, crs: CRS | None, config: PrepareConfig, out_dir: Path,
    progress: Callable[[int], None] | None = None,
) -> GroupOutcome:
    """Grid, co-register and tile one group into ``OUT/groups/{name}``; skip it when up to date.

    Args:
        group: the overlap group.
        crs: the run's common CRS (None for pixel-space runs).
        config: the prepare config.
        out_dir: the prepare output folder ``OUT``.
        progress: called with 1 after each tile window is cut.

    Returns:
        The group's outcome, ``skipped`` when its manifest matches the fingerprint, else ``prepared``.

    Raises:
        GroupError: if no image is left after co-registration.
        InputError: if a scene cannot be read, or a label cannot be read as a label (bands that differ,
            values outside its encoding; see :func:`pipeline.prepare.labels.inspect_label`).
        UnsafePathError: if the group's name would put its folder outside ``OUT/groups`` (an InputError).
        ValueError: if the group has no common valid area.
    """
    # The name comes from the user (scene list, inbox, scene id) and the folder is replaced below.
    final = contained(out_dir / "groups", group.name)
    fingerprint = group_fingerprint(group, config)
    manifest = _finished_manifest(final, fingerprint)
    if manifest is not None:
        if POLICY_KEY not in manifest:  # written before the policy: record the rule its tiles were cut with
            manifest[POLICY_KEY] = _validity(group, config, manifest["members"])
            write_atomic(final / MANIFEST, json.dumps(manifest, indent=1))
        return GroupOutcome.from_manifest(group.name, "skipped", manifest)
    work = contained(out_dir / "groups", f".{group.name}.partial")
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
    return GroupOutcome.from_manifest(group.name, "prepared", manifest)


def _finished_manifest(folder: Path, fingerprint: str) -> dict | None:
    """The manifest of a finished group built from the same inputs and settings, else None."""
    path = folder / MANIFEST
    if not path.exists():
        return None
    manifest = json.loads(path.read_text())
    return manifest if manifest["fingerprint"] == fingerprint else None


def _build_group(
    group: Group, crs: CRS | None, config: PrepareConfig, work: Path, fingerprint: str,
    progress: Callable[[int], None] | None,
) -> dict:
    """Grid COGs, co-registration and tiles of one group, written into ``work``; its manifest."""
    grid = reference_grid(group, crs, config.grid)
    labels = {
        role: inspect_label(scene.path, config.label_encoding if role is Role.label else "classes")
        for role, scene in group.members.items() if role.is_label
    }
    paths, records = _grid_images(group, grid, config, work / "grid", labels)
    if Role.B not in paths and Role.C not in paths:
        refused = "; ".join(f"{r['image']}: {r['reason']}" for r in records if not r["accepted"])
        raise GroupError(group.name, f"no image left after co-registration ({refused})")
    tiles, dropped = _cut_group_tiles(group.name, paths, grid, config, work / "tiles", progress)
    manifest = {
        "fingerprint": fingerprint,
        "members": {
            role.value: {
                "id": scene.id, "sensor": scene.sensor.value, "path": str(scene.path),
                "date": scene.date.isoformat() if scene.date else None,
            }
            for role, scene in group.members.items() if role in paths
        },
        "grid": {
            "crs": grid.crs.to_wkt() if grid.crs else None,
            "transform": list(grid.transform)[:6],
            "width": grid.width,
            "height": grid.height,
        },
        "coregistration": records,
        "tiles": [asdict(t) for t in tiles],
        "dropped_black": dropped,
        "labels": {role.value: summary.as_json() for role, summary in labels.items()},
        POLICY_KEY: _validity(group, config, {role.value for role in paths}),
    }
    (work / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest


def _grid_images(
    group: Group, grid: GroupGrid, config: PrepareConfig, grid_dir: Path, labels: dict[Role, LabelSummary]
) -> tuple[dict[Role, Path], list[dict]]:
    """Every image of the group warped once onto its grid as a COG, co-registered images corrected.

    Labels are encoded as their summaries in ``labels`` resolved. The images are independent once the
    reference COG exists (the others are co-registered against it), so they are built on
    ``config.thread_count`` threads: the reference and the labels first, then the other images. Each
    image's pixels and record do not depend on the threads. Returns the COG of each role kept and the
    co-registration records, in role order; a refused image has a record but no COG.
    """
    members = sorted(group.members.items(), key=lambda item: item[0].value)
    build = partial(_grid_image, group, grid, config, grid_dir, labels)
    # One BLAS thread for all co-registrations at once: threadpoolctl's limit is process-wide, so the
    # limit each one sets (see coregister) would otherwise be lifted under the others when one ends.
    with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(config.thread_count) as pool:
        try:
            first = {role: pool.submit(build, role, scene) for role, scene in members
                     if role is Role.A or role.is_label}
            first[Role.A].result()  # the reference COG the others are co-registered against
            rest = {role: pool.submit(build, role, scene) for role, scene in members if role not in first}
            outcomes = {role: future.result() for role, future in {**first, **rest}.items()}
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise
    paths = {role: outcomes[role][0] for role, _ in members if outcomes[role][0] is not None}
    records = [outcomes[role][1] for role, _ in members if outcomes[role][1] is not None]
    return paths, records


def _grid_image(
    group: Group, grid: GroupGrid, config: PrepareConfig, grid_dir: Path, labels: dict[Role, LabelSummary],
    role: Role, scene: Scene,
) -> tuple[Path | None, dict | None]:
    """One image's grid COG (None when refused) and co-registration record (None when not co-registered)."""
    path = grid_dir / f"{role.value}.tif"
    options = {"grid": grid, "block_size": config.block_size, "level": config.tiling.deflate_level}
    if role is Role.A or role.is_label:  # the reference (the grid's own image) and labels: no co-registration
        with warped(scene, grid) as source:
            write_cog(source, path, label_encoding=labels[role].encoding if role.is_label else None, **options)
        return path, None
    correction, record = Affine.identity(), None
    if config.coregistration.enabled:
        record, correction = _coregister_scene(group, scene, grid, grid_dir / f"{Role.A.value}.tif", config)
        if correction is None:
            return None, record
    with warped(scene, grid, correction=correction) as source:
        write_cog(source, path, **options)
    return path, record


def _coregister_scene(
    group: Group, scene: Scene, grid: GroupGrid, reference_cog: Path, config: PrepareConfig
) -> tuple[dict, Affine | None]:
    """Co-register one image against the reference COG: its record and correction (None if refused)."""
    reference = group.reference
    structure = reference.is_sar or scene.is_sar
    settings = config.coregistration
    if structure:
        settings = settings.model_copy(update={"ransac_threshold_px": settings.ransac_threshold_sar_px})
    with rasterio.open(reference_cog) as ref_ds, warped(scene, grid) as moving:
        result = coregister(
            ref_ds, moving, settings,
            structure=structure,
            reference_black=_black_value(reference, config),
            moving_black=_black_value(scene, config),
        )
    verdict = acceptance(result, config.coregistration)
    record = _coregistration_record(group, scene, grid, result, verdict)
    if not verdict.accepted:
        return record, None
    return record, Affine(*result.matrix) if verdict.corrected else Affine.identity()


def _cut_group_tiles(
    name: str, paths: dict[Role, Path], grid: GroupGrid, config: PrepareConfig, tiles_dir: Path,
    progress: Callable[[int], None] | None,
) -> tuple[list[TileRecord], int]:
    """Tiles cut from the group's COGs: the kept tiles and the number dropped as black."""
    windows = tile_windows(name, grid, config.tiling, config.split.block_tiles)
    with ExitStack() as stack:
        datasets = {role: stack.enter_context(rasterio.open(path)) for role, path in paths.items()}
        return cut_tiles(name, datasets, grid, windows, config.tiling, tiles_dir, progress, threads=config.thread_count)


def _black_value(scene: Scene, config: PrepareConfig) -> float | None:
    return config.tiling.black_value if scene.black_value_applies else None


def _validity(group: Group, config: PrepareConfig, kept: Iterable[str]) -> dict[str, dict]:
    """The validity rule of each kept image (not labels): what training and detection apply to it."""
    return {
        role.value: image_rule(scene.dtype, grid_nodata(scene), config.tiling.black_value)
        for role, scene in group.members.items() if role.value in kept and not role.is_label
    }


def _coregistration_record(
    group: Group, scene: Scene, grid: GroupGrid, result: CoregistrationResult, verdict: Acceptance
) -> dict:
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
        "rmse_px": _finite(result.rmse_px),
        # Median distances of the gated tie points from the correction and from none (see acceptance).
        "residual_px": _finite(result.residual_px),
        "identity_residual_px": _finite(result.identity_residual_px),
        "accepted": verdict.accepted,
        "corrected": verdict.corrected,
        "reason": verdict.reason,
        "points": [asdict(point) for point in result.tiepoints],
    }


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else value


def _tile_from_json(data: dict) -> TileRecord:
    return TileRecord(**{**data, "block": tuple(data["block"]), "bounds": tuple(data["bounds"])})
