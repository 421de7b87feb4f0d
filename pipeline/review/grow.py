"""Click-to-grow: the connected region of the probability raster above a threshold around a clicked point.

For a change detection missed (a region just under the class threshold, or dropped by the minimum
area), the reviewer clicks a pixel and gets its 8-connected region of ``probability > threshold`` as
a polygon on the pixel edges, read from a window around the click (never the whole scene). A region
reaching the window's edge is cut there, and the answer says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import rasterio
import shapely
from rasterio.features import shapes
from rasterio.windows import Window
from scipy import ndimage
from shapely.geometry import shape

from pipeline.review.group import ReviewGroup

RADIUS = 512  # pixels read on each side of the click


class NothingToGrow(ValueError):
    """The clicked pixel is outside the grid, nodata, or not above the threshold."""


@dataclass(frozen=True)
class Grown:
    """A grown region: its polygon (group CRS), pixel count, mean probability, and whether it was cut."""

    geometry: shapely.Geometry
    n_pixels: int
    mean_prob: float
    clipped: bool


def grow_region(group: ReviewGroup, x: float, y: float, threshold: float, radius: int = RADIUS) -> Grown:
    """The region of probability above ``threshold`` connected to the pixel at map point (x, y).

    Args:
        group: the checked group (its probability raster).
        x: easting of the click, in the group's CRS.
        y: northing of the click.
        threshold: a pixel belongs to the region when its probability exceeds it.
        radius: the pixels read on each side of the click.

    Returns:
        The region.

    Raises:
        NothingToGrow: the point is outside the grid, on nodata, or its probability is not above the threshold.
    """
    grid = group.grid
    col, row = (int(np.floor(v)) for v in ~grid.transform @ (x, y))
    if not (0 <= row < grid.height and 0 <= col < grid.width):
        raise NothingToGrow(f"the point ({x:.2f}, {y:.2f}) is outside the group's grid")
    left, top = max(0, col - radius), max(0, row - radius)
    window = Window(left, top, min(grid.width, col + radius + 1) - left, min(grid.height, row + radius + 1) - top)
    with rasterio.open(group.probability) as dataset:
        raw = dataset.read(1, window=window, masked=True)
        transform = dataset.window_transform(window)
    data = np.ma.getdata(raw)
    valid = ~np.ma.getmaskarray(raw) & np.isfinite(data)
    probability = data.astype(np.float32) / 254 if data.dtype == np.uint8 else data.astype(np.float32)
    above = valid & (probability > threshold)
    r, c = row - int(window.row_off), col - int(window.col_off)
    if not above[r, c]:
        shown = f"{probability[r, c]:.3f}" if valid[r, c] else "nodata"
        raise NothingToGrow(f"the probability at the point is {shown}, not above the threshold {threshold}")
    labels, _ = ndimage.label(above, structure=np.ones((3, 3)))
    region = labels == labels[r, c]
    pieces = [shape(geometry) for geometry, _ in shapes(region.astype(np.uint8), mask=region, transform=transform)]
    clipped = bool((region[0].any() and window.row_off > 0) or (region[:, 0].any() and window.col_off > 0)
                   or (region[-1].any() and window.row_off + window.height < grid.height)
                   or (region[:, -1].any() and window.col_off + window.width < grid.width))
    return Grown(shapely.union_all(pieces), int(region.sum()), float(probability[region].mean()), clipped)
