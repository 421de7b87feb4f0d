"""Cloud-Optimized GeoTIFF writing: blocks → tiled staging GTiff → COG, renamed into place.

The COG driver only copies from an existing dataset, so blocks are first streamed into a staging
GTiff (deflate level 1), then copied with deflate (level 6 unless told), a predictor for continuous
data (floating-point for floats), internal 512 px tiles and overviews (nearest for categorical data,
average otherwise).
The result is written under a temporary name and renamed, so a killed run never leaves a partial COG.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window

from pipeline.io.atomic import atomic_path
from pipeline.io.write_errors import output_errors

COG_BLOCK = 512


def overview_count(height: int, width: int, smallest: int = 256) -> int:
    """How many overview levels a COG gets: halvings until the largest side is at most ``smallest`` px.

    Args:
        height: raster rows.
        width: raster columns.
        smallest: the largest side of the coarsest overview, in pixels.

    Returns:
        The level count: at least 1, except 0 for a 1 x 1 raster.
    """
    size, levels = max(height, width), 0
    while size > smallest:
        size, levels = math.ceil(size / 2), levels + 1
    return max(levels, 1 if max(height, width) >= 2 else 0)


def write_cog_from_blocks(
    destination: Path,
    profile: dict[str, Any],
    blocks: Iterable[tuple[Window, np.ndarray]],
    *,
    staging: Path,
    categorical: bool,
    tags: dict[str, str] | None = None,
    level: int = 6,
) -> Path:
    """Write a raster, block by block, as a Cloud-Optimized GeoTIFF, atomically.

    Args:
        destination: the COG to write; its folder is created if missing.
        profile: the raster's width, height, count, dtype, crs, transform and nodata.
        blocks: (window, (bands, h, w) array) pairs covering the raster.
        staging: the tiled GTiff the blocks are streamed into first; always removed.
        categorical: class data: no predictor and nearest-neighbour overviews.
        tags: GeoTIFF metadata tags to write.
        level: the COG's DEFLATE level (pixels do not depend on it, the size and the CPU time do).

    Returns:
        ``destination``.

    Raises:
        OutputError: naming ``staging`` or ``destination``, when the disk is full or a folder is
            read-only or not writable; ``destination`` is then left as it was.
    """
    gtiff = {
        **profile, "driver": "GTiff", "tiled": True, "blockxsize": COG_BLOCK, "blockysize": COG_BLOCK,
        "compress": "deflate", "zlevel": 1, "bigtiff": "if_safer",
    }
    floating = np.issubdtype(np.dtype(profile["dtype"]), np.floating)
    predictor = "no" if categorical else ("floating_point" if floating else "standard")
    try:
        with warnings.catch_warnings(), atomic_path(destination) as partial:
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with output_errors(staging):
                staging.parent.mkdir(parents=True, exist_ok=True)
                with rasterio.open(staging, "w", **gtiff) as dst:
                    for window, array in blocks:
                        dst.write(array, window=window)
                    if tags:
                        dst.update_tags(**tags)
            rasterio.shutil.copy(
                staging, partial, driver="COG", compress="deflate", level=level, predictor=predictor,
                blocksize=COG_BLOCK, overview_resampling="nearest" if categorical else "average",
                overview_count=overview_count(profile["height"], profile["width"]),
                num_threads="ALL_CPUS", bigtiff="if_safer",
            )
    finally:
        if staging.exists():  # it goes too when a block or the copy fails; on a read-only folder there is none
            staging.unlink()
    return destination
