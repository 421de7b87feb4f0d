"""Texture sources of the procedural ground: the CC0 Landsat image, periodic noise and a stateless hash.

The CC0 image is rasterio's ``RGB.byte.tif`` shipped as ``pipeline/synthetic/data/rgb_byte_cc0.tif``: its valid
interior, cubic-upsampled and mirror-tiled, gives the large-scale texture; the noise tile the fine scales; the hash
per-parcel properties that any window can compute on its own.
"""

from __future__ import annotations

import importlib.resources
from functools import lru_cache
from pathlib import Path

import numpy as np
import rasterio
from scipy import ndimage

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint64(30))
    h = h * _M1
    h = h ^ (h >> np.uint64(27))
    h = h * _M2
    return h ^ (h >> np.uint64(31))


def hash01(seed: int, *keys: np.ndarray | int) -> np.ndarray:
    """Stateless uniform noise: the same (seed, keys) always give the same values.

    Args:
        seed: the random seed.
        *keys: integer arrays or ints, broadcast against each other.

    Returns:
        A uniform [0, 1) float32 per element.
    """
    h = np.atleast_1d(np.asarray(seed, np.int64)).astype(np.uint64) * _GOLDEN
    for key in keys:
        k = np.atleast_1d(np.asarray(key, np.int64)).astype(np.uint64)
        h = _mix((h ^ k) + _GOLDEN)
    return ((h >> np.uint64(40)).astype(np.float32)) * np.float32(1.0 / (1 << 24))


def cc0_texture_path() -> Path:
    """The CC0 Landsat RGB image shipped in the package.

    Returns:
        The path of ``pipeline/synthetic/data/rgb_byte_cc0.tif``.
    """
    return Path(str(importlib.resources.files("pipeline.synthetic") / "data" / "rgb_byte_cc0.tif"))


@lru_cache(maxsize=1)
def _cc0_interior() -> np.ndarray:
    """The valid interior of the CC0 image as (3, H, W) float32 in [0, 1].

    The scene is tilted inside a black collar; the crop is the largest axis-aligned square inside
    its footprint (holes of black water pixels filled in), found once and checked here.
    """
    row, col, side = 96, 136, 514
    with rasterio.open(cc0_texture_path()) as ds:
        data = ds.read().astype(np.float32)
        mask = ds.dataset_mask() > 0
    footprint = ndimage.binary_fill_holes(mask)
    if not footprint[row : row + side, col : col + side].all():  # pragma: no cover - data file changed
        raise RuntimeError(f"{cc0_texture_path()}: the texture crop is not inside the valid area")
    data = data[:, row : row + side, col : col + side]
    holes = ~mask[row : row + side, col : col + side]
    if holes.any():  # fill the few black pixels inside with a normalised-convolution mean
        weight = ndimage.gaussian_filter((~holes).astype(np.float32), 3)
        for band in data:
            filled = ndimage.gaussian_filter(np.where(holes, 0, band), 3) / np.maximum(weight, 1e-6)
            band[holes] = filled[holes]
    for band in data:
        lo, hi = np.percentile(band, (1, 99.5))
        band[...] = np.clip((band - lo) / (hi - lo), 0, 1)
    return data


@lru_cache(maxsize=1)
def cc0_zoomed() -> np.ndarray:
    """The CC0 interior upsampled x3 (cubic spline); computed once.

    Returns:
        (3, 1542, 1542) float32 in about [0, 1].
    """
    return np.stack([ndimage.zoom(band, 3, order=3) for band in _cc0_interior()])


def periodic_noise(seed: int, size: int = 1024) -> np.ndarray:
    """A periodic multi-octave noise tile, so every scale has content.

    Args:
        seed: the random seed.
        size: the tile side (px).

    Returns:
        (2, size, size) float32, zero mean, unit-ish std per channel.
    """
    rng = np.random.default_rng([seed, 9001])
    tiles = []
    for _ in range(2):
        white = rng.standard_normal((size, size)).astype(np.float32)
        tile = np.zeros_like(white)
        for sigma, weight in ((0.6, 0.8), (1.5, 1.0), (3.0, 1.0), (7.0, 0.8), (16.0, 0.6)):
            octave = ndimage.gaussian_filter(white, sigma, mode="wrap")
            tile += weight * octave / octave.std()
        tiles.append(tile / tile.std())
    return np.stack(tiles)
