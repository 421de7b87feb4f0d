"""Grid: one reference grid per group, and every image warped onto it once, cached as a COG.

The grid takes the reference image's CRS and resolution (or the config's), covers the group's
common valid area and is snapped to the reference's pixel lattice, so the reference itself is only
cropped, never resampled. Warping streams block by block through a WarpedVRT; a co-registration
correction is folded into the same warp, so each image is resampled exactly once.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning
from rasterio.io import DatasetReader, MemoryFile
from rasterio.vrt import WarpedVRT
from rasterio.warp import calculate_default_transform, reproject
from rasterio.windows import Window

from pipeline.config import GridConfig
from pipeline.io.cog import write_cog_from_blocks
from pipeline.io.raster import NODATA_U8, is_integer, open_raster
from pipeline.prepare.catalog import Scene
from pipeline.prepare.labels import Encoding, encode_label
from pipeline.prepare.overlap import Group, reproject_geometry

# Pixel-space (non-georeferenced) images are warped in a placeholder CRS equal on both sides,
# so GDAL applies only the affine part.
PIXEL_SPACE_CRS = CRS.from_epsg(3857)


@dataclass(frozen=True)
class GroupGrid:
    """The pixel grid every image of a group is brought onto."""

    crs: CRS | None
    transform: Affine
    width: int
    height: int

    @property
    def resolution(self) -> float:
        """Pixel size in CRS units (square pixels; 1 in pixel space)."""
        return abs(self.transform.a)

    def window_transform(self, window: Window) -> Affine:
        """The georeferencing of a window of the grid.

        Args:
            window: a pixel window of the grid.

        Returns:
            The affine transform of the window's top-left pixel.
        """
        return rasterio.windows.transform(window, self.transform)


def _snap(lattice: Affine, bounds: tuple[float, float, float, float]) -> tuple[Affine, int, int]:
    """Smallest window of ``lattice`` pixels covering ``bounds``."""
    inverse = ~lattice
    xs, ys = zip(*(inverse @ (x, y) for x in bounds[0::2] for y in bounds[1::2]))
    col0, row0 = math.floor(round(min(xs), 6)), math.floor(round(min(ys), 6))
    col1, row1 = math.ceil(round(max(xs), 6)), math.ceil(round(max(ys), 6))
    return lattice @ Affine.translation(col0, row0), col1 - col0, row1 - row0


def reference_grid(group: Group, common_crs: CRS | None, config: GridConfig) -> GroupGrid:
    """The group's grid: reference CRS/resolution (or the config's), over the common valid area.

    The grid is snapped to the reference's pixel lattice when it keeps the reference's CRS and
    resolution, so the reference is only cropped; otherwise to a lattice through the CRS origin.
    A reference without CRS gives a pixel-space grid (CRS None).

    Args:
        group: the scene group, with a member for ``config.reference_role`` and its common valid area.
        common_crs: the CRS ``group.common_area`` is expressed in (see :func:`pipeline.prepare.overlap.common_crs`).
        config: the grid settings (``crs``, ``resolution``, ``reference_role``).

    Returns:
        The GroupGrid covering the common valid area.

    Raises:
        ValueError: the common valid area is empty once reprojected to the grid's CRS.
    """
    reference = group.members[config.reference_role]
    if reference.crs is None:
        area = group.common_area
        transform, width, height = _snap(Affine.identity(), area.bounds)
        return GroupGrid(None, transform, width, height)
    crs = CRS.from_user_input(config.crs) if config.crs else reference.crs
    if config.resolution:
        resolution = config.resolution
    elif crs == reference.crs:
        resolution = min(reference.resolution)
    else:
        default, _, _ = calculate_default_transform(
            reference.crs, crs, reference.width, reference.height,
            *rasterio.transform.array_bounds(reference.height, reference.width, reference.transform),
        )
        resolution = abs(default.a)
    if crs == reference.crs and math.isclose(resolution, abs(reference.transform.a)):
        lattice = Affine(resolution, 0, reference.transform.c, 0, -resolution, reference.transform.f)
    else:
        lattice = Affine(resolution, 0, 0, 0, -resolution, 0)
    area = reproject_geometry(group.common_area, common_crs, crs, densify=16 * resolution)
    if area.is_empty:
        raise ValueError(f"group '{group.name}' has no common valid area")
    transform, width, height = _snap(lattice, area.bounds)
    return GroupGrid(crs, transform, width, height)


def grid_nodata(scene: Scene) -> float:
    """Nodata of a gridded image: 255 for labels, else the source's, else 0 for integers, NaN for floats.

    Args:
        scene: the catalogued image.

    Returns:
        The nodata value of its grid COG.
    """
    if scene.role.is_label:
        return NODATA_U8
    if scene.nodata is not None:
        return scene.nodata
    return 0 if is_integer(scene.dtype) else float("nan")


@contextmanager
def warped(
    scene: Scene, grid: GroupGrid, *, correction: Affine = Affine.identity()
) -> Iterator[DatasetReader]:
    """The scene as seen on ``grid``, optionally with a co-registration correction.

    Labels come with a trailing alpha band (255 where the source has data) instead of a nodata
    value, because GOLD-style labels use 255 for change.

    Args:
        scene: the catalogued image; bilinear resampling for images, nearest for labels.
        grid: the group's grid.
        correction: maps a grid pixel to the pixel of the uncorrected warp that holds the same ground
            (the co-registration matrix); warping to ``grid.transform @ correction`` and labelling the
            result with ``grid.transform`` applies it within the single resampling.

    Yields:
        A dataset on ``grid`` (a streamed WarpedVRT; in memory for pixel-space images).

    Raises:
        InputError: the scene's file is missing or unreadable.
    """
    resampling = Resampling.nearest if scene.role.is_label else Resampling.bilinear
    nodata = grid_nodata(scene)
    with open_raster(scene.path) as source:
        if grid.crs is not None:
            with WarpedVRT(
                source,
                crs=grid.crs,
                transform=grid.transform @ correction,
                width=grid.width,
                height=grid.height,
                resampling=resampling,
                nodata=None if scene.role.is_label else nodata,
                add_alpha=scene.role.is_label,
            ) as vrt:
                yield vrt
            return
        with _pixel_space_warp(
            source, grid, correction, resampling, nodata, scene.role.is_label
        ) as dataset:
            yield dataset


@contextmanager
def _pixel_space_warp(
    source: DatasetReader,
    grid: GroupGrid,
    correction: Affine,
    resampling: Resampling,
    nodata: float,
    scene_is_label: bool,
) -> Iterator[DatasetReader]:
    """Warp of a non-georeferenced image; such images are benchmark-sized, so read whole.

    Labels get an alpha band, as from the WarpedVRT, so their 255 values stay data.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        data = source.read()
        valid = source.dataset_mask() > 0
    if scene_is_label:
        data = np.concatenate([data, np.where(valid, 255, 0).astype(data.dtype)[None]])
    elif source.nodata is None:
        data = np.where(valid[None], data, np.array(nodata).astype(data.dtype))
    fill = 0 if scene_is_label else nodata
    out = np.full((data.shape[0], grid.height, grid.width), fill, dtype=data.dtype)
    reproject(
        data,
        out,
        src_transform=Affine.identity(),
        src_crs=PIXEL_SPACE_CRS,
        src_nodata=None if scene_is_label else nodata,
        dst_transform=grid.transform @ correction,
        dst_crs=PIXEL_SPACE_CRS,
        dst_nodata=None if scene_is_label else nodata,
        resampling=resampling,
    )
    with MemoryFile() as memfile:
        with memfile.open(
            driver="GTiff", width=grid.width, height=grid.height, count=out.shape[0],
            dtype=out.dtype, transform=grid.transform, nodata=None if scene_is_label else nodata,
        ) as dst:
            dst.write(out)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with memfile.open() as dataset:
                yield dataset


def block_windows(width: int, height: int, block: int) -> Iterator[Window]:
    """Row-major windows of at most ``block`` × ``block`` px covering a raster.

    Args:
        width: raster width (px).
        height: raster height (px).
        block: block side (px); edge blocks are cut to the raster.

    Yields:
        The windows, row by row.
    """
    for row in range(0, height, block):
        for col in range(0, width, block):
            yield Window(col, row, min(block, width - col), min(block, height - row))


def write_cog(
    source: DatasetReader,
    destination: Path,
    *,
    grid: GroupGrid,
    block_size: int,
    label_encoding: Encoding | None = None,
    tags: dict[str, str] | None = None,
    level: int = 6,
) -> Path:
    """Stream ``source`` (already on ``grid``) into a COG labelled with the grid's georeferencing.

    With ``label_encoding`` the source is a label with an alpha band (see ``warped``) and is
    written in the canonical encoding 0 / 1 / 255 = ignore or outside.
    Written to a temporary name and renamed, so a killed run never leaves a partial COG.

    Args:
        source: the image on ``grid``, e.g. from :func:`warped`.
        destination: the COG to write.
        grid: the group's grid (size and georeferencing of the COG).
        block_size: side (px) of the blocks streamed from ``source``.
        label_encoding: for a label: ``"change01"``, ``"binary255"`` or ``"classes"`` (see
            :func:`pipeline.prepare.labels.encode_label`; a label's first band and its alpha are read,
            so identical bands count once); None for an image (its bands, dtype and nodata are kept).
        tags: metadata tags written into the COG.
        level: the COG's DEFLATE level.

    Returns:
        ``destination``.
    """
    categorical = label_encoding is not None
    profile = {
        "width": grid.width, "height": grid.height, "count": 1 if categorical else source.count,
        "dtype": "uint8" if categorical else source.dtypes[0], "crs": grid.crs, "transform": grid.transform,
        "nodata": NODATA_U8 if categorical else source.nodata,
    }

    def blocks() -> Iterator[tuple[Window, np.ndarray]]:
        for window in block_windows(grid.width, grid.height, block_size):
            block = source.read([1, source.count] if categorical else None, window=window)
            yield window, encode_label(block[0], block[-1], label_encoding)[None] if categorical else block

    staging = destination.with_name(destination.name + ".staging.tif")
    return write_cog_from_blocks(
        destination, profile, blocks(), staging=staging, categorical=categorical, tags=tags, level=level
    )
