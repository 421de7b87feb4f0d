"""Shared fixtures: the real-data folder and a small GeoTIFF writer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is missing (it sits beside the checkout in CI)")
    return SHARED_DATA


def write_raster(
    path: Path,
    data: np.ndarray,
    *,
    crs: str | None = "EPSG:32650",
    transform: Affine = Affine(4.0, 0, 500000.0, 0, -4.0, 3500000.0),
    nodata: float | None = None,
) -> Path:
    """Write a (bands, H, W) or (H, W) array as a GeoTIFF."""
    array = data if data.ndim == 3 else data[np.newaxis]
    with rasterio.open(
        path, "w", driver="GTiff", width=array.shape[2], height=array.shape[1], count=array.shape[0],
        dtype=array.dtype, crs=crs, transform=transform, nodata=nodata,
    ) as dst:
        dst.write(array)
    return path
