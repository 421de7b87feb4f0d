"""Assembly of the built groups into one training set.

Tiles that cover the same ground in several groups are de-duplicated, the rest are split by spatial
blocks and hard-linked from the group folders into the tile folder of a new release,
``tiles/{split}/{role}`` (published as ``OUT/tiles`` by :mod:`pipeline.io.release`); the GeoPackage
index gets the scenes, groups, tie points and tiles. Positions compare only within one space: the run's
CRS when it is georeferenced; in pixel space each group is its own space, shared only by groups with
an image file in common (every pixel-space image has the identity transform, so unrelated images would
otherwise look like the same place).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import geopandas as gpd
from affine import Affine
from rasterio.crs import CRS
from shapely.geometry import box

from pipeline.config import PrepareConfig
from pipeline.io.paths import contained
from pipeline.prepare.catalog import Scene
from pipeline.prepare.grid import reference_grid
from pipeline.prepare.group_build import GroupOutcome
from pipeline.prepare.overlap import Group, reproject_geometry
from pipeline.prepare.split import BlockPlan, BlockStats, assign_splits, fit_block_tiles, isolation_conflicts
from pipeline.prepare.tile_index import groups_frame, scenes_frame, tiepoints_frame, tiles_frame
from pipeline.prepare.tiling import TileRecord, find_duplicates


def assemble(
    outcomes: list[GroupOutcome], groups: list[Group], crs: CRS | None, config: PrepareConfig, out_dir: Path,
    tiles_dir: Path,
) -> tuple[dict[str, str], dict[str, int], dict[str, CRS | None]]:
    """De-duplicate across groups, split by blocks, and link the tiles into ``tiles_dir/{split}/{role}``.

    Duplicates and split isolation are looked for only among groups of one space (see :func:`spaces`).

    Args:
        outcomes: the groups that were prepared or skipped (not failed).
        groups: the overlap groups (at least those of ``outcomes``).
        crs: the run's common CRS (None for pixel-space runs).
        config: the prepare config (de-duplication overlap, split ratios and seed).
        out_dir: the prepare output folder ``OUT``, holding ``groups/``.
        tiles_dir: a new tile folder, in the staged release (see :func:`pipeline.io.release.release`).

    Returns:
        Tile id → split, counts of dropped tiles by reason, group → grid CRS.
    """
    grid_crs = {o.name: _grid_crs(o) for o in outcomes}
    space = spaces(groups, crs)
    records = [t for o in sorted(outcomes, key=lambda o: o.name) for t in o.tiles]
    footprint = {
        t.tile_id: reproject_geometry(box(*t.bounds), grid_crs[t.group], crs) for t in records
    }
    duplicates = set()
    for same_space in _by_space(records, space):
        duplicates.update(find_duplicates(
            [(t.tile_id, t.group, footprint[t.tile_id]) for t in same_space], config.tiling.dedup_overlap
        ))
    records = [t for t in records if t.tile_id not in duplicates]
    block_split = assign_splits(_block_stats(records), config.split.ratios, config.split.seed)
    splits = {t.tile_id: block_split[(t.group, *t.block)] for t in records}
    conflicts = set()
    for same_space in _by_space(records, space):
        conflicts.update(isolation_conflicts([(t.tile_id, splits[t.tile_id], footprint[t.tile_id]) for t in same_space]))
    for tile_id in conflicts:
        del splits[tile_id]
    _link_tiles(records, splits, out_dir, tiles_dir)
    return splits, {"duplicate": len(duplicates), "split_isolation": len(conflicts)}, grid_crs


def spaces(groups: list[Group], crs: CRS | None) -> dict[str, str]:
    """The space each group's tile positions are in: tiles of different spaces never coincide.

    Args:
        groups: the overlap groups.
        crs: the run's common CRS; None for pixel-space runs.

    Returns:
        Group name → its space: one shared space when georeferenced; in pixel space, groups that share
        an image file (labels aside) share a space, named after the first of them, and the others each
        have their own.
    """
    if crs is not None:
        return {g.name: "" for g in groups}
    space: dict[str, str] = {}
    owner: dict[str, str] = {}  # image file → space
    for g in groups:
        files = {str(Path(s.path).resolve()) for role, s in g.members.items() if not role.is_label}
        linked = {owner[f] for f in files if f in owner}
        name = min(linked) if linked else g.name
        # A group that shares files with two spaces joins them into one.
        space = {group: name if value in linked else value for group, value in space.items()}
        owner = {f: name if value in linked else value for f, value in owner.items()}
        owner.update(dict.fromkeys(files, name))
        space[g.name] = name
    return space


def _by_space(records: list[TileRecord], space: dict[str, str]) -> list[list[TileRecord]]:
    """The records in one list per space, each in the given order."""
    grouped: dict[str, list[TileRecord]] = {}
    for t in records:
        grouped.setdefault(space[t.group], []).append(t)
    return list(grouped.values())


def block_plan(groups: list[Group], crs: CRS | None, config: PrepareConfig) -> BlockPlan:
    """The split block size for these groups (see :func:`~pipeline.prepare.split.fit_block_tiles`).

    Args:
        groups: the overlap groups; their grids are computed from footprints, nothing is read.
        crs: the run's common CRS (None for pixel-space runs).
        config: the prepare config (grid, tile size, ``split.block_tiles`` and ratios).

    Returns:
        The plan: the block size to tile with and why it differs from the configured one; groups too
        small for a block per split even at one tile size give a note, not an error.
    """
    extents = []
    for group in groups:
        try:
            grid = reference_grid(group, crs, config.grid)
        except ValueError:
            continue  # no common area: the group fails later, with its reason
        extents.append((grid.width, grid.height))
    return fit_block_tiles(extents, config.tiling.size, config.split.block_tiles, config.split.ratios)


def _block_stats(records: list[TileRecord]) -> dict[tuple[str, int, int], BlockStats]:
    blocks: dict[tuple[str, int, int], BlockStats] = {}
    for t in records:
        key = (t.group, *t.block)
        old = blocks.get(key, BlockStats(0, 0, 0))
        blocks[key] = BlockStats(old.tiles + 1, old.change_pixels + t.change_pixels, old.labelled_pixels + t.labelled_pixels)
    return blocks


def _link_tiles(records: list[TileRecord], splits: dict[str, str], out_dir: Path, tiles_dir: Path) -> None:
    """Link the split tiles of the groups in ``out_dir/groups`` into ``tiles_dir/{split}/{role}``."""
    # Group names and tile ids come from user-given names: refuse any that would leave these folders
    # (checked once per group and per tile: a check resolves the folders above, ~0.1 ms).
    sources = {group: contained(out_dir / "groups", group) / "tiles" for group in {t.group for t in records}}
    for t in records:
        if t.tile_id not in splits:
            continue
        tile_file = contained(sources[t.group], f"{t.tile_id}.tif").name
        for role_dir in sorted(sources[t.group].iterdir()):
            target = tiles_dir / splits[t.tile_id] / role_dir.name / tile_file
            target.parent.mkdir(parents=True, exist_ok=True)
            _link_or_copy(role_dir / tile_file, target)
    tiles_dir.mkdir(parents=True, exist_ok=True)  # even with no tile: the release publishes the folder


def _link_or_copy(source: Path, target: Path) -> None:
    # Hard links cost no space; a file system without them gets a copy.
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _grid_crs(outcome: GroupOutcome) -> CRS | None:
    wkt = outcome.grid["crs"] if outcome.grid else None
    return CRS.from_wkt(wkt) if wkt else None


def index_frames(
    scenes: list[Scene], groups: list[Group], outcomes: list[GroupOutcome], splits: dict[str, str],
    grid_crs: dict[str, CRS | None], crs: CRS | None,
) -> dict[str, gpd.GeoDataFrame]:
    """The layers of the GeoPackage index, for :func:`~pipeline.prepare.tile_index.write_index`.

    Args:
        scenes: every scene of the catalog.
        groups: every overlap group.
        outcomes: the outcome of every group, failed ones included (they are left out of the index).
        splits: tile id → split, as returned by :func:`assemble`.
        grid_crs: group → grid CRS, as returned by :func:`assemble`.
        crs: the run's common CRS (None for pixel-space runs).

    Returns:
        Layer name (scenes, groups, tiepoints, tiles) → its rows.
    """
    done = {o.name for o in outcomes if o.status != "failed"}
    return {
        "scenes": scenes_frame(scenes, crs),
        "groups": groups_frame([g for g in groups if g.name in done], crs),
        "tiepoints": tiepoints_frame(tiepoint_rows(outcomes, grid_crs), crs),
        "tiles": tiles_frame(assigned_tiles(outcomes, splits), splits, grid_crs, crs),
    }


def assigned_tiles(outcomes: list[GroupOutcome], splits: dict[str, str]) -> list[TileRecord]:
    """The tiles that went to a split, in group order.

    Args:
        outcomes: the outcome of every group.
        splits: tile id → split, as returned by :func:`assemble`.

    Returns:
        The records of the tiles in ``splits``.
    """
    return [t for o in outcomes if o.status != "failed" for t in o.tiles if t.tile_id in splits]


def tiepoint_rows(outcomes: list[GroupOutcome], grid_crs: dict[str, CRS | None]) -> list[dict]:
    """One row per co-registration tie point, placed on the map through its group's grid.

    Args:
        outcomes: the outcome of every group.
        grid_crs: group → grid CRS, as returned by :func:`assemble`.

    Returns:
        Rows for :func:`~pipeline.prepare.tile_index.tiepoints_frame`.
    """
    transforms = {o.name: Affine(*o.grid["transform"]) for o in outcomes if o.grid}
    rows = []
    for record in (r for o in outcomes for r in o.coregistration):
        for point in record["points"]:
            map_x, map_y = transforms[record["group"]] @ (point["x"], point["y"])
            rows.append({
                "group_name": record["group"], "image": record["image"], "x_px": point["x"], "y_px": point["y"],
                "dx_px": point["dx"], "dy_px": point["dy"], "reliability": point["reliability"],
                "inlier": point["inlier"], "map_x": map_x, "map_y": map_y, "grid_crs": grid_crs[record["group"]],
            })
    return rows


def split_summary(records: list[TileRecord], splits: dict[str, str], ratios: dict[str, float]) -> dict[str, dict]:
    """Tiles, obtained vs requested share, and change of each split.

    Args:
        records: the tiles that went to a split.
        splits: tile id → split.
        ratios: the requested share of tiles per split (``split.ratios``).

    Returns:
        Split name (train, val, test) → ``{"tiles", "share", "requested", "change_pixels",
        "change_fraction"}``; share is None without tiles, change_fraction (changed / labelled pixels)
        None without labels.
    """
    summary = {}
    total = sum(1 for t in records if t.tile_id in splits)
    for split in ("train", "val", "test"):
        chosen = [t for t in records if splits.get(t.tile_id) == split]
        labelled = sum(t.labelled_pixels for t in chosen)
        change = sum(t.change_pixels for t in chosen)
        summary[split] = {
            "tiles": len(chosen),
            "share": round(len(chosen) / total, 3) if total else None,
            "requested": ratios[split],
            "change_pixels": change,
            "change_fraction": change / labelled if labelled else None,
        }
    return summary


def stride_note(config: PrepareConfig) -> str | None:
    """Why ``tiling.stride`` is not used, or None when it is (or equals the tile size).

    Windows are placed inside each split block, so tiles of two blocks never overlap; a block of one
    tile size holds one window per axis, plus one flush with its edge when the block is a little larger.

    Args:
        config: the prepare config, with the ``split.block_tiles`` actually used.

    Returns:
        The explanation, for the prepare report.
    """
    tiling = config.tiling
    if tiling.stride >= tiling.size or config.split.block_tiles > 1:
        return None
    return (
        f"tiling.stride {tiling.stride} is not used: with split.block_tiles 1 each split block is about one tile "
        f"({tiling.size} px) wide and windows stay inside their block (so that splits never share pixels): a "
        "block holds one window per axis, plus one flush with its far edge when it is a little wider; set "
        f"split.block_tiles >= 2 for tiles every {tiling.stride} px"
    )
