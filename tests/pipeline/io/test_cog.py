"""Tests of pipeline.io.cog: COG layout, georeferencing, exact values, overviews, atomic writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

from pipeline.io.cog import COG_BLOCK, overview_count, write_cog_from_blocks

TRANSFORM = Affine(4.0, 0.0, 500000.0, 0.0, -4.0, 3500000.0)


def profile_of(array: np.ndarray, *, nodata: float | None = None, crs: str | None = "EPSG:32650") -> dict:
    return {
        "width": array.shape[2], "height": array.shape[1], "count": array.shape[0], "dtype": array.dtype.name,
        "crs": crs, "transform": TRANSFORM, "nodata": nodata,
    }


def strips(array: np.ndarray, rows: int = 100):
    for row in range(0, array.shape[1], rows):
        part = array[:, row : row + rows]
        yield Window(0, row, array.shape[2], part.shape[1]), part


def write(tmp_path: Path, array: np.ndarray, *, categorical: bool = False, **kwargs) -> Path:
    return write_cog_from_blocks(
        tmp_path / "out" / "image.tif", profile_of(array, nodata=kwargs.pop("nodata", None)), strips(array),
        staging=tmp_path / "staging" / "image.staging.tif", categorical=categorical, **kwargs,
    )


def checkerboard(height: int, width: int, low, high, dtype) -> np.ndarray:
    rows, cols = np.indices((height, width))
    return np.where((rows + cols) % 2 == 0, low, high).astype(dtype)[np.newaxis]


@pytest.mark.parametrize(
    ("height", "width", "levels"),
    [(1, 1, 0), (1, 2, 1), (100, 100, 1), (256, 256, 1), (257, 10, 1), (513, 100, 2), (600, 700, 2), (10, 2049, 4)],
)
def test_overview_count(height, width, levels):
    assert overview_count(height, width) == levels


def test_overview_count_with_a_smaller_target():
    assert overview_count(1000, 1000, smallest=100) == 4  # 1000 → 500 → 250 → 125 → 63


def test_written_file_is_a_tiled_cog_with_the_computed_overviews(tmp_path):
    data = (np.arange(600 * 700).reshape(1, 600, 700) % 997).astype(np.uint16)
    path = write(tmp_path, data, nodata=0)
    with rasterio.open(path) as src:
        assert src.driver == "GTiff"
        assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert src.tags(ns="IMAGE_STRUCTURE")["COMPRESSION"] == "DEFLATE"
        assert src.profile["tiled"] is True
        assert src.block_shapes == [(COG_BLOCK, COG_BLOCK)]
        assert src.overviews(1) == [2, 4]
        assert len(src.overviews(1)) == overview_count(600, 700)


def test_georeferencing_nodata_dtype_and_tags_are_kept(tmp_path):
    data = np.random.default_rng(0).normal(size=(2, 40, 30)).astype(np.float32)
    path = write(tmp_path, data, nodata=-9999.0, tags={"sensor": "GF2", "date": "2020-05-01"})
    with rasterio.open(path) as src:
        assert src.crs == CRS.from_epsg(32650)
        assert src.transform == TRANSFORM
        assert src.nodata == -9999.0
        assert src.dtypes == ("float32", "float32")
        assert (src.count, src.height, src.width) == (2, 40, 30)
        assert src.tags()["sensor"] == "GF2"
        assert src.tags()["date"] == "2020-05-01"


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "float32", "float64"])
def test_values_round_trip_exactly(tmp_path, dtype):
    rng = np.random.default_rng(1)
    if np.dtype(dtype).kind == "f":
        data = rng.normal(0, 1000, (3, 300, 270)).astype(dtype)
        data[0, 5, 7] = np.nan
    else:
        info = np.iinfo(dtype)
        data = rng.integers(info.min, info.max, (3, 300, 270), endpoint=True).astype(dtype)
    path = write(tmp_path, data)
    with rasterio.open(path) as src:
        np.testing.assert_array_equal(src.read(), data)


def test_a_raster_without_crs_is_written_with_its_transform(tmp_path):
    data = np.arange(20 * 30, dtype=np.uint16).reshape(1, 20, 30)
    path = write_cog_from_blocks(
        tmp_path / "pixels.tif", profile_of(data, crs=None), strips(data, 7),
        staging=tmp_path / "pixels.staging.tif", categorical=False,
    )
    with rasterio.open(path) as src:
        assert src.crs is None
        assert src.transform == TRANSFORM
        np.testing.assert_array_equal(src.read(), data)


@pytest.mark.parametrize(
    ("dtype", "categorical", "predictor"),
    [("uint16", False, "2"), ("uint8", False, "2"), ("int16", False, "2"), ("float32", False, "3"),
     ("uint8", True, None), ("uint16", True, None)],
)
def test_predictor_follows_the_dtype(tmp_path, dtype, categorical, predictor):
    data = np.arange(64 * 64).reshape(1, 64, 64).astype(dtype)
    path = write(tmp_path, data, categorical=categorical)
    with rasterio.open(path) as src:
        assert src.tags(ns="IMAGE_STRUCTURE").get("PREDICTOR") == predictor


def test_categorical_overviews_hold_only_class_values(tmp_path):
    data = checkerboard(64, 64, 1, 5, np.uint8)
    data[:, 32:, :] = 7
    path = write(tmp_path, data, categorical=True)
    with rasterio.open(path) as src:
        assert src.overviews(1) == [2]
        overview = src.read(1, out_shape=(32, 32))
    assert set(np.unique(overview)) <= {1, 5, 7}
    assert (overview[16:] == 7).all()


def test_continuous_overviews_are_averages(tmp_path):
    data = checkerboard(64, 64, 10, 30, np.uint16)
    path = write(tmp_path, data)
    with rasterio.open(path) as src:
        assert src.overviews(1) == [2]
        overview = src.read(1, out_shape=(32, 32))
    assert (overview == 20).all()


def test_staging_file_is_removed_after_success(tmp_path):
    data = np.ones((1, 20, 20), np.uint8)
    path = write(tmp_path, data)
    assert sorted(p.name for p in path.parent.iterdir()) == ["image.tif"]
    assert list((tmp_path / "staging").iterdir()) == []


def test_a_failure_while_writing_leaves_no_destination_and_no_temp_files(tmp_path):
    data = np.ones((1, 200, 20), np.uint8)

    def failing_blocks():
        yield Window(0, 0, 20, 100), data[:, :100]
        raise RuntimeError("source read failed")

    destination = tmp_path / "out" / "image.tif"
    staging = tmp_path / "staging" / "image.staging.tif"
    with pytest.raises(RuntimeError, match="source read failed"):
        write_cog_from_blocks(destination, profile_of(data), failing_blocks(), staging=staging, categorical=False)
    assert not destination.exists()
    assert list(destination.parent.iterdir()) == []
    assert list(staging.parent.iterdir()) == []


def test_a_failure_while_writing_leaves_an_existing_cog_unchanged(tmp_path):
    old = np.full((1, 20, 20), 3, np.uint8)
    path = write(tmp_path, old)
    before = path.read_bytes()

    def failing_blocks():
        yield Window(0, 0, 20, 10), np.zeros((1, 10, 20), np.uint8)
        raise RuntimeError("source read failed")

    with pytest.raises(RuntimeError):
        write_cog_from_blocks(
            path, profile_of(old), failing_blocks(), staging=tmp_path / "staging" / "image.staging.tif",
            categorical=False,
        )
    assert path.read_bytes() == before
