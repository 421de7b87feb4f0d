"""The GeoPackage written by `prepare`: layers scenes, groups, tiepoints and tiles.

One CRS per GeoPackage: every layer is in the run's common projected CRS (pixel space for
non-georeferenced runs), and each record also names its native CRS. Training reads the `tiles`
layer as its index.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import geopandas as gpd
import pandas as pd
from pyogrio.errors import DataLayerError, DataSourceError
from rasterio.crs import CRS
from shapely.geometry import Point, box

from pipeline.errors import InputError
from pipeline.io.atomic import atomic_path
from pipeline.prepare.catalog import Scene
from pipeline.prepare.overlap import Group, footprint_in, reproject_geometry
from pipeline.prepare.tiling import TileRecord

LAYERS = ("scenes", "groups", "tiepoints", "tiles")


def crs_text(crs: CRS | None) -> str:
    """A CRS as the text stored in the index's ``crs`` columns.

    Args:
        crs: the CRS; None for pixel space.

    Returns:
        ``EPSG:{code}`` when the CRS has an EPSG code, else its WKT; ``""`` for None.
    """
    if crs is None:
        return ""
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else crs.to_wkt()


def scenes_frame(scenes: list[Scene], crs: CRS | None) -> gpd.GeoDataFrame:
    """The ``scenes`` layer: one row per catalogued scene, its valid footprint as geometry.

    Args:
        scenes: the catalogued scenes.
        crs: the run's common CRS the footprints are reprojected to (None for pixel-space runs).

    Returns:
        Rows with the scene's id, path, sensor, role, date (ISO), group, native CRS (see :func:`crs_text`),
        transform (six comma-separated numbers), resolution, size, bands, dtype and nodata.
    """
    rows = [
        {
            "scene_id": s.id,
            "path": str(s.path),
            "sensor": s.sensor.value,
            "role": s.role.value,
            "date": s.date.isoformat() if s.date else None,
            "group_name": s.group,
            "crs": crs_text(s.crs),
            "transform": ",".join(f"{v:.12g}" for v in tuple(s.transform)[:6]),
            "res_x": s.resolution[0],
            "res_y": s.resolution[1],
            "width": s.width,
            "height": s.height,
            "bands": s.bands,
            "dtype": s.dtype,
            "nodata": s.nodata,
            "geometry": footprint_in(s, crs),
        }
        for s in scenes
    ]
    return gpd.GeoDataFrame(rows, geometry="geometry", crs=crs)


def groups_frame(groups: list[Group], crs: CRS | None) -> gpd.GeoDataFrame:
    """The ``groups`` layer: one row per group, its common valid area as geometry.

    Args:
        groups: the overlap groups; their common areas must already be in ``crs``.
        crs: the run's common CRS (None for pixel-space runs).

    Returns:
        Rows with the group's name, reference scene id, ``{B,C,label}_id`` and ``overlap_{B,C,label}``
        (None for a missing member) and ``common_area`` (in ``crs`` units²).
    """
    rows = []
    for g in groups:
        row = {"group_name": g.name, "reference": g.reference.id}
        for role in ("B", "C", "label"):
            member = next((s for r, s in g.members.items() if r.value == role), None)
            row[f"{role}_id"] = member.id if member else None
            row[f"overlap_{role}"] = next((v for r, v in g.ratios.items() if r.value == role), None)
        row["common_area"] = g.common_area.area
        rows.append(row)
    # An explicit GeoSeries: with no group left, ``geometry="geometry"`` would name a missing column.
    return gpd.GeoDataFrame(rows, geometry=gpd.GeoSeries([g.common_area for g in groups], crs=crs))


def tiepoints_frame(rows: list[dict], crs: CRS | None) -> gpd.GeoDataFrame:
    """The ``tiepoints`` layer: one row per co-registration tie point, placed on the map.

    Args:
        rows: tie point rows (see :func:`pipeline.prepare.assembly.tiepoint_rows`), each with its map
            position ``map_x``/``map_y`` in its group grid's CRS ``grid_crs``; these three keys are
            popped from the given dicts.
        crs: the run's common CRS the points are reprojected to (None for pixel-space runs).

    Returns:
        The rows' other columns, a point geometry each; an empty layer when there are no tie points
        (co-registration off).

    Raises:
        KeyError: a row lacks ``map_x``, ``map_y`` or ``grid_crs``.
    """
    records, points = [], []
    for row in rows:
        points.append(reproject_geometry(Point(row.pop("map_x"), row.pop("map_y")), row.pop("grid_crs"), crs))
        records.append(row)
    # An explicit GeoSeries: a run without tie points (co-registration off) gives an empty layer.
    return gpd.GeoDataFrame(records, geometry=gpd.GeoSeries(points, crs=crs))


def tiles_frame(
    records: list[TileRecord], splits: dict[str, str], grid_crs: dict[str, CRS | None], crs: CRS | None
) -> gpd.GeoDataFrame:
    """The ``tiles`` layer, training's index: one row per tile, its footprint as geometry.

    Args:
        records: the tiles that went to a split.
        splits: tile id → split (train, val, test).
        grid_crs: group name → the CRS of its grid (None in pixel space).
        crs: the run's common CRS the footprints are reprojected to (None for pixel-space runs).

    Returns:
        Rows with the tile id, group, split, pixel offsets in the group grid, ``black_{role}`` per image,
        ``change_fraction`` and the grid's CRS (see :func:`crs_text`).

    Raises:
        KeyError: a tile has no split in ``splits``, or its group no entry in ``grid_crs``.
    """
    rows = []
    for r in records:
        rows.append(
            {
                "tile_id": r.tile_id,
                "group_name": r.group,
                "split": splits[r.tile_id],
                "col_off": r.col_off,
                "row_off": r.row_off,
                **{f"black_{role}": fraction for role, fraction in r.black_fraction.items()},
                "change_fraction": r.change_fraction,
                "crs": crs_text(grid_crs[r.group]),
                "geometry": reproject_geometry(box(*r.bounds), grid_crs[r.group], crs),
            }
        )
    return gpd.GeoDataFrame(rows, geometry="geometry", crs=crs)


def write_index(path: Path, frames: dict[str, gpd.GeoDataFrame]) -> None:
    """Write all layers to a new GeoPackage, then rename it over the old one (atomic).

    Args:
        path: the GeoPackage to write.
        frames: layer name → its rows; an empty frame still becomes an (empty) layer.
    """
    with atomic_path(path) as partial, warnings.catch_warnings():
        # A killed run of a process with the same id may have left layers there; GPKG would add to them.
        partial.unlink(missing_ok=True)
        # Pixel-space runs have no CRS by design.
        warnings.filterwarnings("ignore", message="'crs' was not provided")
        for layer, frame in frames.items():
            if frame.empty:
                frame = gpd.GeoDataFrame(frame, geometry=gpd.GeoSeries([], crs=frame.crs))
            frame.to_file(partial, layer=layer, driver="GPKG", engine="pyogrio")


def read_tiles(path: Path) -> pd.DataFrame:
    """The tile index as written by `prepare`.

    Args:
        path: the GeoPackage written by :func:`write_index`.

    Returns:
        The ``tiles`` layer, as a GeoDataFrame (see :func:`tiles_frame`).

    Raises:
        InputError: naming ``path``, when it is missing, damaged (e.g. truncated) or no GeoPackage, or has
            no ``tiles`` layer.
    """
    if not Path(path).exists():
        raise InputError(path, "tile index not found")
    try:
        return gpd.read_file(path, layer="tiles", engine="pyogrio")
    except DataLayerError:
        raise InputError(path, "has no 'tiles' layer (not a changeflow prepare index); rerun changeflow prepare") from None
    except DataSourceError:
        raise InputError(path, "damaged or not a GeoPackage; rerun changeflow prepare to rewrite it") from None
