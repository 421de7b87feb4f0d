"""Detection results as xarray for notebooks: lazily chunked, georeferenced Datasets opened with rioxarray.

``open_results(DET)`` gives one :class:`xarray.Dataset` per detected group of a ``changeflow detect``
output folder, read lazily in dask chunks (nothing is loaded until computed)::

    from pipeline.detect import open_results

    results = open_results("det/")                     # {group: Dataset}
    ds = results["g1"]
    ds.rio.crs, ds.rio.transform()                    # the group's grid
    aoi = ds.rio.clip_box(minx, miny, maxx, maxy)     # or .rio.clip(geometries, crs)
    changed_m2 = float((aoi.change == 1).sum()) * abs(ds.rio.resolution()[0] * ds.rio.resolution()[1])

Variables (nodata masked as NaN): ``probability`` (change probability in [0, 1]: a uint8 raster is
decoded as value / 254), ``change`` (1 change, 0 no change), and for semantic change models
``semantic_t1``, ``semantic_t2`` and ``transition`` (1 + K·from + to where changed); with
``prepared=`` also the group's input rasters (``A``, ``B``, ``C``, each with its own band dimension)
on the same grid. The Dataset's attributes are the rasters' provenance tags (group, scene ids, model,
checkpoint hash, run id, settings).

Scene statistics as dask reductions over such chunks (:func:`valid_fraction`,
:func:`integer_percentiles`) run on a Dask cluster when a ``distributed.Client`` is active.
"""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np
import rioxarray
import xarray as xr

from pipeline.detect.accumulate import PROBABILITY_SCALE
from pipeline.detect.output import CLASS_FILE, PROBABILITY_FILE, SEMANTIC_FILES
from pipeline.errors import ChangeflowError, InputError

CHUNK = 2048  # pixels per chunk side: detection's default block, a few MB per chunk and variable
VARIABLES = {"probability": PROBABILITY_FILE, "change": CLASS_FILE,
             "semantic_t1": SEMANTIC_FILES["semantic_t1"], "semantic_t2": SEMANTIC_FILES["semantic_t2"],
             "transition": SEMANTIC_FILES["transitions"]}
INPUT_ROLES = ("A", "B", "C")


def _open(path: Path, chunks: int) -> xr.DataArray:
    """One raster, lazily, nodata masked; a clear error naming a file rioxarray cannot open."""
    try:
        return rioxarray.open_rasterio(path, chunks={"band": 1, "x": chunks, "y": chunks}, masked=True)
    except Exception as exc:  # rasterio raises several types for unreadable files
        raise InputError(path, f"cannot be opened as a raster ({type(exc).__name__}: {exc})") from None


def _output(path: Path, chunks: int) -> xr.DataArray:
    """A single-band output raster without its band dimension; a uint8 probability decoded to [0, 1]."""
    array = _open(path, chunks).squeeze("band", drop=True)
    if path.name == PROBABILITY_FILE and array.encoding.get("dtype") == "uint8":
        array = array / PROBABILITY_SCALE
    return array


def open_group_results(folder: Path, prepared: Path | None = None, chunks: int = CHUNK) -> xr.Dataset:
    """One group's detection outputs as a lazily chunked, georeferenced Dataset.

    Args:
        folder: the group's output folder ``DET/{group}`` (``change_probability.tif`` and ``change_class.tif``).
        prepared: the group's prepared folder (``OUT/groups/{group}``) to add its grid rasters, or None.
        chunks: chunk side in pixels.

    Returns:
        The Dataset (see the module's description), with the grid's CRS and transform, x / y coordinates
        and the rasters' provenance tags as attributes.

    Raises:
        InputError: naming the file, for a missing or unreadable raster.
    """
    folder = Path(folder)
    variables = {}
    for name, file in VARIABLES.items():
        if (folder / file).exists() or name in ("probability", "change"):
            if not (folder / file).exists():
                raise InputError(folder / file, "not found (is this a changeflow detect output folder?)")
            variables[name] = _output(folder / file, chunks)
    tags = {key: value for key, value in variables["change"].attrs.items() if key.isupper() or "_" in key}
    if prepared is not None:
        for role in INPUT_ROLES:
            path = Path(prepared) / "grid" / f"{role}.tif"
            if path.exists():
                variables[role] = _open(path, chunks).rename(band=f"{role}_band")
    dataset = xr.Dataset(variables)
    dataset.attrs = {key: value for key, value in tags.items() if key not in ("VALUES", "AREA_OR_POINT")}
    for name in dataset.data_vars:
        dataset[name].attrs = {"description": variables[name].attrs.get("VALUES", "input raster")}
    return dataset.rio.write_crs(variables["change"].rio.crs).rio.write_transform(variables["change"].rio.transform())


def open_results(det: Path, prepared: Path | None = None, chunks: int = CHUNK) -> dict[str, xr.Dataset]:
    """Every detected group of a ``changeflow detect`` output folder as xarray.

    Args:
        det: the detect output folder (``DET/{group}/change_class.tif`` per group).
        prepared: the prepare output folder, to add each group's input rasters (``OUT/groups/{group}/grid``).
        chunks: chunk side in pixels.

    Returns:
        {group: Dataset} (see :func:`open_group_results`), sorted by group.

    Raises:
        ChangeflowError: the folder holds no detected group.
        InputError: naming the file, for an unreadable raster.
    """
    det = Path(det)
    groups = sorted(path.parent for path in det.glob(f"*/{CLASS_FILE}"))
    if not groups:
        raise ChangeflowError(f"{det}: no detected group (no */{CLASS_FILE}); run `changeflow detect` first")
    return {folder.name: open_group_results(folder, Path(prepared) / "groups" / folder.name if prepared else None,
                                            chunks) for folder in groups}


def valid_fraction(array: xr.DataArray) -> float:
    """The share of pixels that hold data (not NaN), as a dask reduction.

    Args:
        array: a masked raster, e.g. ``ds.change`` (a band dimension counts every band's pixels).

    Returns:
        The fraction in [0, 1].
    """
    return float(array.notnull().mean().compute())


def integer_percentiles(array: xr.DataArray, percentiles: list[float], max_value: int = 65535) -> dict[float, int]:
    """Exact percentiles of an integer raster from a histogram summed over its chunks.

    ``xarray.quantile`` rechunks a band into one task and ``dask.array.percentile`` is approximate; a
    histogram of integer values is exact and reduces chunk by chunk.

    Args:
        array: a masked integer-valued raster (NaN = nodata), e.g. one band of an input.
        percentiles: in [0, 100].
        max_value: the largest value the raster can hold (65535 for uint16).

    Returns:
        {percentile: value}: the smallest value whose cumulative count reaches the percentile of the
        valid pixels (numpy's ``method="inverted_cdf"``).

    Raises:
        ValueError: the raster has no valid pixel, or a value outside [0, max_value].
    """
    data = array.data if isinstance(array.data, da.Array) else da.from_array(array.data)
    flat = data.ravel()
    valid = ~da.isnan(flat)
    counts = da.bincount(da.where(valid, flat, max_value + 1).astype(np.int64), minlength=max_value + 2)
    counts = counts.compute()
    if len(counts) > max_value + 2:
        raise ValueError(f"values above {max_value} in the raster")
    histogram = counts[:max_value + 1]
    total = int(histogram.sum())
    if total == 0:
        raise ValueError("the raster has no valid pixel")
    cumulative = np.cumsum(histogram)
    return {q: int(np.searchsorted(cumulative, max(1.0, q / 100.0 * total) - 1e-9, side="left"))
            for q in percentiles}
