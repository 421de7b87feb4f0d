"""Export of a review: ``review.gpkg`` (layer ``reviewed_changes``) and a label GeoTIFF on the group grid.

The label is what ``changeflow prepare`` reads as role ``label`` (values 0 / 1, nodata 255, so its
``auto`` encoding reads it as ``change01``):

- 1 change: accepted, edited and added features;
- 0 reviewed no change: review cells marked reviewed (what the reviewer did not mark as change there
  is no change), the areas of rejected candidates, and the detection's outline of an edited candidate
  outside its edited geometry;
- 255 not reviewed (nodata, ignored in training): everything else, pending candidates included.

Change is burnt after no change, so it wins where they overlap. The label is rasterised block by
block (never the whole grid in memory) into a COG; both files are written atomically.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import geopandas as gpd
import numpy as np
import shapely
from rasterio.features import rasterize
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from pipeline.io.atomic import atomic_path
from pipeline.io.cog import write_cog_from_blocks
from pipeline.io.raster import NODATA_U8
from pipeline.review.group import ReviewGroup
from pipeline.review.store import CHANGE, ReviewStore

LAYER = "reviewed_changes"
GPKG = "review.gpkg"
LABEL = "review_label.tif"
BLOCK = 1024


def _burn_lists(features: list[dict]) -> tuple[list[shapely.Geometry], list[shapely.Geometry]]:
    """(no-change geometries, change geometries) of the reviewed features."""
    no_change, change = [], []
    for feature in features:
        geometry = shapely.from_wkb(feature["geometry"])
        if feature["status"] == "rejected":
            no_change.append(geometry)
        elif feature["status"] in CHANGE:
            change.append(geometry)
        if feature["status"] == "edited" and feature["detection_geometry"] is not None:
            no_change.append(shapely.from_wkb(feature["detection_geometry"]))
    return no_change, change


def _label_blocks(group: ReviewGroup, no_change: list, change: list,
                  cells: list[tuple[int, int]]) -> Iterator[tuple[Window, np.ndarray]]:
    """(window, (1, h, w) uint8) blocks of the label: reviewed cells 0, then the geometries touching each block."""
    grid = group.grid
    reviewed = [grid.cell_window(row, col) for row, col in cells]
    trees = [(shapely.STRtree(geometries), geometries, value) for value, geometries in ((0, no_change), (1, change))]
    for row in range(0, grid.height, BLOCK):
        for col in range(0, grid.width, BLOCK):
            window = Window(col, row, min(BLOCK, grid.width - col), min(BLOCK, grid.height - row))
            transform = window_transform(window, grid.transform)
            block = np.full((int(window.height), int(window.width)), NODATA_U8, dtype=np.uint8)
            for cell in (cell for cell in reviewed if _overlaps(cell, window)):
                rows, cols = cell.intersection(window).toslices()
                block[rows.start - row:rows.stop - row, cols.start - col:cols.stop - col] = 0
            left, top = transform @ (0, 0)
            right, bottom = transform @ (window.width, window.height)
            area = shapely.box(min(left, right), min(top, bottom), max(left, right), max(top, bottom))
            for tree, geometries, value in trees:
                hits = tree.query(area, predicate="intersects") if geometries else []
                if len(hits):
                    rasterize([(geometries[i], value) for i in hits], out=block, transform=transform)
            yield window, block[np.newaxis]


def _overlaps(a: Window, b: Window) -> bool:
    """Whether two pixel windows share a pixel."""
    return a.col_off < b.col_off + b.width and b.col_off < a.col_off + a.width and \
        a.row_off < b.row_off + b.height and b.row_off < a.row_off + a.height


def _frame(group: ReviewGroup, store: ReviewStore, features: list[dict]) -> gpd.GeoDataFrame:
    """The features with every store column (but the WKB) and the group's provenance."""
    columns = [key for key in features[0] if key not in ("geometry", "detection_geometry")] if features else []
    frame = gpd.GeoDataFrame(
        {key: [feature[key] for feature in features] for key in columns},
        geometry=[shapely.from_wkb(feature["geometry"]) for feature in features], crs=group.grid.crs,
    )
    frame["detection_geometry_wkt"] = [
        shapely.to_wkt(shapely.from_wkb(f["detection_geometry"])) if f["detection_geometry"] else "" for f in features
    ]
    frame["group"] = group.name
    frame["review_store"] = str(store.path)
    for key, value in group.provenance.items():
        frame[f"detection_{key}"] = value
    return frame


def export_review(group: ReviewGroup, store: ReviewStore, out: Path) -> dict:
    """Write ``out/review.gpkg`` and ``out/review_label.tif`` from the store, atomically.

    Args:
        group: the checked group (grid, provenance).
        store: its review store.
        out: the folder to write into (created when missing).

    Returns:
        ``gpkg`` and ``label`` paths, ``features`` (count per status) and ``pixels`` (count per label value).
    """
    features = store.features()
    frame = _frame(group, store, features)
    with atomic_path(out / GPKG) as partial:
        frame.to_file(partial, layer=LAYER, driver="GPKG")
    no_change, change = _burn_lists(features)
    pixels: Counter[int] = Counter()

    def counted(blocks: Iterator[tuple[Window, np.ndarray]]) -> Iterator[tuple[Window, np.ndarray]]:
        for window, block in blocks:
            values, counts = np.unique(block, return_counts=True)
            pixels.update(dict(zip(values.tolist(), counts.tolist())))
            yield window, block

    grid = group.grid
    profile = {"width": grid.width, "height": grid.height, "count": 1, "dtype": "uint8", "crs": grid.crs,
               "transform": grid.transform, "nodata": NODATA_U8}
    tags = {"GROUP": group.name, "VALUES": "1 change, 0 reviewed no change, 255 not reviewed",
            "REVIEW_STORE": str(store.path), **{f"DETECTION_{k.upper()}": v for k, v in group.provenance.items()}}
    write_cog_from_blocks(out / LABEL, profile, counted(_label_blocks(group, no_change, change, store.reviewed_cells())),
                          staging=out / f".{LABEL}.staging.tif", categorical=True, tags=tags)
    return {
        "gpkg": str(out / GPKG), "label": str(out / LABEL),
        "features": dict(Counter(feature["status"] for feature in features)),
        "pixels": {str(value): count for value, count in sorted(pixels.items())},
        "reviewed_cells": len(store.reviewed_cells()),
    }
