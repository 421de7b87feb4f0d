"""Shared fixtures: the real-data folder and a small GeoTIFF writer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True)
def _private_gpu_lock(tmp_path_factory, monkeypatch) -> None:
    """Flows in tests never wait for a training that holds this machine's GPU lock."""
    monkeypatch.setenv("CHANGEFLOW_GPU_LOCK", str(tmp_path_factory.getbasetemp() / "gpu.lock"))


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


def write_folder_dataset(root: Path, *, tiles: int = 6, size: int = 64, seed: int = 0) -> Path:
    """A LEVIR-style folder: optical A and B with squares appearing at t2, labels 0/255."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", tiles), ("val", 2), ("test", 2)):
        for index in range(count):
            base = rng.integers(200, 600, (3, size, size)).astype(np.uint16)
            after = base.copy()
            label = np.zeros((size, size), np.uint8)
            for _ in range(3):
                row, col = rng.integers(0, size - 16, 2)
                after[:, row : row + 12, col : col + 12] = 2000
                label[row : row + 12, col : col + 12] = 255
            for role, data in (("A", base), ("B", after), ("label", label)):
                (root / split / role).mkdir(parents=True, exist_ok=True)
                write_raster(root / split / role / f"t{index}.tif", data)
    return root
