"""PNG tiles of a group's grid COGs and of its change probability, in the group's own CRS.

The tile matrix set is built on the group grid (:func:`grid_tms`): its finest level has the grid's
pixel size and origin, and each coarser level doubles the cell, as the COG overviews do; so a tile is
a plain windowed read (rio-tiler reads without a warped VRT when the CRSs are the same), pixel-exact
at full resolution and read from an overview further out. Images are stretched per scene between
percentiles computed once from the coarsest overview; SAR (role B, or a GF-3 scene) is stretched in
dB (linear intensities converted first). The probability becomes an RGBA overlay: transparent at and
below the threshold, yellow to red above it.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import morecantile
import numpy as np
import rasterio
from pyproj import CRS as ProjCRS
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning
from rio_tiler.errors import TileOutsideBounds
from rio_tiler.io import Reader
from rio_tiler.models import ImageData
from rio_tiler.utils import render

from pipeline.review.group import Grid, ReviewGroup

TILE = 256
PERCENTILES = (2.0, 98.0)
STATS_SIDE = 1024  # the stretch is computed on at most this many pixels per side (the overviews)
SAR_SENSORS = ("gf3",)
PROBABILITY_LAYER = "probability"
PNG_OPTIONS = {"ZLEVEL": 1}  # deflate level 1: a third of level 6's encoding time for ~10 % more bytes


class NoTile(LookupError):
    """A tile outside the grid, or of a layer the group does not have."""


def grid_tms(grid: Grid, tile: int = TILE) -> morecantile.TileMatrixSet:
    """A tile matrix set on the group grid: level ``maxzoom`` has the grid's pixels, each level above halves it.

    Args:
        grid: the group grid (north-up, square pixels).
        tile: the tile side in pixels.

    Returns:
        The tile matrix set; tile (0, 0) of every level starts at the grid's top-left corner.
    """
    maxzoom = max(0, math.ceil(math.log2(max(grid.width, grid.height) / tile)))
    side = tile * 2**maxzoom * grid.resolution  # a square extent whose level-maxzoom cells are the pixels
    left, _, _, top = grid.bounds
    return morecantile.TileMatrixSet.custom(
        [left, top - side, left + side, top], ProjCRS.from_wkt(grid.crs.to_wkt()), tile_width=tile, tile_height=tile,
        minzoom=0, maxzoom=maxzoom, id="changeflow-group-grid",
    )


def is_sar(role: str, sensor: str) -> bool:
    """Whether a role's image is SAR (shown in dB): role B or a SAR sensor."""
    return role == "B" or sensor in SAR_SENSORS


def display_bands(count: int) -> list[int]:
    """The bands shown: red, green, blue (bands 3, 2, 1 of blue-green-red-nir imagery) or the one band."""
    return [3, 2, 1] if count >= 3 else [1]


def to_db(data: np.ndarray) -> np.ndarray:
    """Linear SAR intensity or amplitude in decibels (10 log10), zero and below at float32's tiniest value."""
    return 10 * np.log10(np.maximum(data.astype(np.float64), np.finfo(np.float32).tiny))


def scene_stretch(path: str, bands: list[int], sar: bool) -> tuple[list[tuple[float, float]], bool]:
    """Per-band (low, high) percentile stretch of a scene, from a decimated read (the COG overviews).

    SAR is stretched in dB: linear values (none negative) are converted, values already in dB are not.

    Args:
        path: the grid COG.
        bands: the bands shown.
        sar: whether the image is SAR.

    Returns:
        ((low, high) per band, high > low; whether pixels are converted to dB before the stretch).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as dataset:
            scale = max(1.0, max(dataset.width, dataset.height) / STATS_SIDE)
            shape = (len(bands), max(1, round(dataset.height / scale)), max(1, round(dataset.width / scale)))
            data = dataset.read(bands, out_shape=shape, masked=True, resampling=Resampling.nearest)
    values = [np.asarray(band.compressed(), dtype=np.float64) for band in data]
    values = [v[np.isfinite(v)] for v in values]
    linear_sar = sar and all(v.size == 0 or v.min() >= 0 for v in values)
    ranges = []
    for band in values:
        band = to_db(band) if linear_sar else band
        low, high = np.percentile(band, PERCENTILES) if band.size else (0.0, 1.0)
        ranges.append((float(low), float(high) if high > low else float(low) + 1.0))
    return ranges, linear_sar


@dataclass(frozen=True)
class Layer:
    """An image layer: its COG, the bands shown and their stretch."""

    path: str
    bands: list[int]
    stretch: list[tuple[float, float]]
    db: bool  # linear SAR, converted to dB before the stretch


class TileSource:
    """Tiles of one group: its image roles and its change probability.

    Args:
        group: the checked group.
    """

    def __init__(self, group: ReviewGroup) -> None:
        self.group = group
        self.tms = grid_tms(group.grid)
        self.layers: dict[str, Layer] = {}
        for role, path in group.images.items():
            with rasterio.open(path) as dataset:
                bands = display_bands(dataset.count)
            stretch, db = scene_stretch(str(path), bands, is_sar(role, group.sensors.get(role, "")))
            self.layers[role] = Layer(str(path), bands, stretch, db)

    def read(self, path: str, z: int, x: int, y: int, bands: list[int]) -> ImageData:
        """The raw pixels of one tile of a COG (nearest resampling, from the overview of that level).

        Args:
            path: the COG (on the group grid).
            z: level; ``tms.maxzoom`` is full resolution.
            x: column.
            y: row, from the top.
            bands: bands to read.

        Returns:
            rio-tiler's ImageData: (bands, 256, 256) masked data, nodata and outside the grid masked.

        Raises:
            NoTile: the tile is outside the grid or the level does not exist.
        """
        if not self.tms.minzoom <= z <= self.tms.maxzoom:
            raise NoTile(f"no level {z} (levels {self.tms.minzoom}..{self.tms.maxzoom})")
        with warnings.catch_warnings(), Reader(path, tms=self.tms) as reader:
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            try:
                return reader.tile(x, y, z, indexes=bands, resampling_method="nearest")
            except TileOutsideBounds as exc:
                raise NoTile(str(exc)) from None

    def image_png(self, role: str, z: int, x: int, y: int) -> bytes:
        """A stretched RGB (or grey) PNG tile of an image role, transparent outside valid pixels.

        Args:
            role: ``A``, ``B`` or ``C`` (one the group has).
            z: level.
            x: column.
            y: row.

        Returns:
            The PNG bytes (RGBA: the mask is the alpha band).

        Raises:
            NoTile: no such role or tile.
        """
        layer = self.layers.get(role)
        if layer is None:
            raise NoTile(f"the group has no image {role!r}")
        image = self.read(layer.path, z, x, y, layer.bands)
        data = np.ma.getdata(image.array).astype(np.float64)
        valid = image.mask > 0
        if layer.db:
            data = to_db(data)
        grey = np.stack([
            np.clip((band - low) / (high - low) * 255, 0, 255) for band, (low, high) in zip(data, layer.stretch)
        ])
        rgb = np.repeat(grey, 3, axis=0) if grey.shape[0] == 1 else grey
        valid &= np.isfinite(data).all(axis=0)
        return render(np.nan_to_num(rgb).astype(np.uint8), mask=np.where(valid, 255, 0).astype(np.uint8), **PNG_OPTIONS)

    def probability(self, z: int, x: int, y: int) -> tuple[np.ndarray, np.ndarray]:
        """The change probability of one tile in [0, 1] and its valid mask.

        Args:
            z: level.
            x: column.
            y: row.

        Returns:
            (probability float32 (256, 256), valid bool (256, 256)).
        """
        image = self.read(str(self.group.probability), z, x, y, [1])
        raw = np.ma.getdata(image.array)[0]
        valid = (image.mask > 0) & np.isfinite(raw)
        probability = raw.astype(np.float32) / 254 if raw.dtype == np.uint8 else raw.astype(np.float32)
        return np.where(valid, probability, 0).astype(np.float32), valid

    def probability_png(self, z: int, x: int, y: int, threshold: float) -> bytes:
        """The probability overlay tile: yellow (at the threshold) to red (1), transparent elsewhere.

        Args:
            z: level.
            x: column.
            y: row.
            threshold: pixels at or below it are transparent.

        Returns:
            The PNG bytes (RGBA).
        """
        probability, valid = self.probability(z, x, y)
        shown = valid & (probability > threshold)
        ramp = np.clip((probability - threshold) / max(1e-6, 1 - threshold), 0, 1)
        rgb = np.stack([np.full_like(ramp, 255), 230 * (1 - ramp), np.zeros_like(ramp)]).astype(np.uint8)
        return render(rgb, mask=np.where(shown, 255, 0).astype(np.uint8), **PNG_OPTIONS)
