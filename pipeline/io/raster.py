"""Opening rasters and reading windows as data plus a valid mask.

Nodata is a mask, not a value: every read returns the pixels and a boolean mask of valid pixels
(GDAL mask / nodata / alpha, NaN, and for integer imagery GOLD's "black" rule, all bands <= a value).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import rasterio
from rasterio.errors import RasterioIOError
from rasterio.io import DatasetReader, MemoryFile
from rasterio.windows import Window

from pipeline.errors import InputError

# GDAL's block cache defaults to 5 % of RAM and grows with the scene; the stages read windows in
# block order, so a few block rows of cache is all the reuse there is. One setting for every stage.
GDAL_CACHE_MB = 256
# Nodata of every uint8 raster written (labels, classes, probabilities) and the label value ignored in
# training and metrics.
NODATA_U8 = 255


def _mat_to_memfile(path: Path, key: str | None) -> MemoryFile:
    """Wrap one array of a MATLAB v5 file (the .mat benchmark sets) as an in-memory GeoTIFF."""
    from scipy.io import loadmat

    try:
        content = loadmat(path)
    except Exception as exc:
        raise InputError(path, f"cannot read MATLAB file: {exc}") from None
    arrays = {k: v for k, v in content.items() if not k.startswith("__") and isinstance(v, np.ndarray)}
    if key is None:
        if len(arrays) != 1:
            raise InputError(path, f"holds several arrays {sorted(arrays)}; name one as 'file.mat:key'")
        key = next(iter(arrays))
    if key not in arrays:
        raise InputError(path, f"no array '{key}' (found {sorted(arrays)})")
    array = np.asarray(arrays[key])
    array = array[np.newaxis] if array.ndim == 2 else np.moveaxis(array, -1, 0)
    if array.dtype == np.float64:
        array = array.astype(np.float32)
    if array.dtype == bool:
        array = array.astype(np.uint8)
    memfile = MemoryFile()
    with memfile.open(
        driver="GTiff", width=array.shape[2], height=array.shape[1], count=array.shape[0], dtype=array.dtype
    ) as dst:
        dst.write(array)
    return memfile


def split_mat_key(path: Path) -> tuple[Path, str | None]:
    """Split a MATLAB array reference: ``file.mat:image_t1`` → (file.mat, 'image_t1').

    Args:
        path: a raster path, or ``file.mat:key`` naming one array of a MATLAB file.

    Returns:
        The file path and the array key; the key is None when ``path`` names no ``.mat`` array.
    """
    text = str(path)
    if ".mat:" in text:
        file, key = text.rsplit(":", 1)
        return Path(file), key
    return Path(path), None


@contextmanager
def bounded_gdal_cache(megabytes: int = GDAL_CACHE_MB) -> Iterator[None]:
    """Cap GDAL's block cache (a GDAL_CACHEMAX set in the environment wins).

    rasterio hands an integer GDAL_CACHEMAX to GDAL as bytes (a bare 256 gave a 256-byte cache, so
    every window read decoded its blocks again: 4x slower reads in detection).

    Args:
        megabytes: the cache size (MB) set for the block, when GDAL_CACHEMAX is not in the environment.

    Yields:
        Nothing; GDAL's cache is capped inside the ``with`` block.
    """
    options = {} if "GDAL_CACHEMAX" in os.environ else {"GDAL_CACHEMAX": megabytes * 1024 * 1024}
    with rasterio.Env(**options):
        yield


@contextmanager
def open_raster(path: Path | str) -> Iterator[DatasetReader]:
    """Open any raster GDAL reads (or a MATLAB array as ``file.mat:key``), with a clear error.

    A MATLAB array is served as an in-memory GeoTIFF without CRS: (H, W) or (H, W, bands), float64 read as
    float32 and bool as uint8.

    Args:
        path: a raster file, or ``file.mat[:key]`` (the key may be left out when the file holds one array).

    Yields:
        The open dataset, closed when the ``with`` block ends.

    Raises:
        InputError: the file is missing or is not a readable raster; a MATLAB file cannot be read, holds
            several arrays and no key is given, or has no array ``key`` (the message names the file).
    """
    file, key = split_mat_key(Path(path))
    if file.suffix.lower() == ".mat":
        if not file.exists():
            raise InputError(file, "file not found")
        with _mat_to_memfile(file, key) as memfile, memfile.open() as dataset:
            yield dataset
        return
    if not file.exists():
        raise InputError(file, "file not found")
    try:
        dataset = rasterio.open(file)
    except RasterioIOError as exc:
        raise InputError(file, f"not a readable raster ({exc})") from None
    with dataset:
        yield dataset


def is_integer(dtype: str | np.dtype) -> bool:
    """Whether ``dtype`` is an integer type (GOLD's black rule applies to integer imagery only).

    Args:
        dtype: a numpy dtype or its name, e.g. ``"uint16"``.

    Returns:
        True for signed or unsigned integer types.
    """
    return np.issubdtype(np.dtype(dtype), np.integer)


def valid_mask(
    data: np.ndarray, gdal_mask: np.ndarray, *, black_value: float | None
) -> np.ndarray:
    """Valid pixels of a (bands, H, W) block: GDAL's mask, finite, and not black (integer data).

    Args:
        data: the pixels, shape (bands, H, W).
        gdal_mask: GDAL's dataset mask of the block, shape (H, W); 0 is invalid (nodata, alpha, mask band).
        black_value: integer data: a pixel whose bands are all <= this is invalid (GOLD's black rule);
            None applies no black rule. Ignored for floating-point data, where NaN/inf are invalid.

    Returns:
        A boolean (H, W) mask, True where the pixel is valid.
    """
    valid = gdal_mask > 0
    if np.issubdtype(data.dtype, np.floating):
        valid &= np.isfinite(data).all(axis=0)
    elif black_value is not None:
        valid &= (data > black_value).any(axis=0)
    return valid


def read_window(
    dataset: DatasetReader,
    window: Window | None = None,
    *,
    black_value: float | None = None,
    out_shape: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Read a window as (data, valid) with data of shape (bands, H, W) in the file's dtype.

    ``black_value`` applies GOLD's black rule to integer imagery (a pixel whose bands are all
    <= the value is invalid); pass None for labels and float data such as SAR in dB.
    Read errors (truncated or corrupt files) become an InputError naming the file.

    Args:
        dataset: an open raster (see :func:`open_raster`).
        window: the pixel window to read; None reads the whole raster.
        black_value: GOLD's black threshold for integer imagery, or None.
        out_shape: (H, W) to resample the window to (nearest neighbour); None reads at full resolution.

    Returns:
        ``data`` of shape (bands, H, W) in the file's dtype and ``valid``, a boolean (H, W) mask
        (see :func:`valid_mask`).

    Raises:
        InputError: the read failed (truncated or corrupt file); the message names the file.
    """
    shape = None if out_shape is None else (dataset.count, *out_shape)
    try:
        data = dataset.read(window=window, out_shape=shape)
        mask = dataset.dataset_mask(window=window, out_shape=out_shape)
    except RasterioIOError as exc:
        raise InputError(dataset.name, f"read failed, the file may be truncated or corrupt ({exc})") from None
    return data, valid_mask(data, mask, black_value=black_value)
