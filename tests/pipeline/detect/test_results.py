"""Detection results as xarray: the Dataset holds the COGs' CRS, transform, nodata, values and provenance."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import rasterio
from shapely.geometry import box

from pipeline.detect.results import integer_percentiles, open_results, valid_fraction
from pipeline.detect.sliding import detect_group
from pipeline.errors import ChangeflowError
from tests.pipeline.detect.test_cluster_blocks import SETTINGS, write_checkpoint, write_group


@pytest.fixture(scope="module")
def detected(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("results")
    group = write_group(root / "prepared" / "groups" / "g1")
    checkpoint = write_checkpoint(root / "model.pt")
    detect_group(group, checkpoint, root / "det" / "g1", replace(SETTINGS, probability_dtype="uint8"))
    return root / "det", root / "prepared"


def test_dataset_has_the_crs_transform_nodata_values_and_provenance_of_the_cogs(detected):
    det, prepared = detected
    results = open_results(det, prepared=prepared, chunks=64)
    assert list(results) == ["g1"]
    ds = results["g1"]
    with rasterio.open(det / "g1" / "change_probability.tif") as p, rasterio.open(det / "g1" / "change_class.tif") as c:
        probability, classes, tags = p.read(1), c.read(1), c.tags()
        assert ds.rio.crs == p.crs and ds.rio.transform() == p.transform
        assert p.nodata == 255
    assert isinstance(ds.probability.data, da.Array) and ds.probability.data.chunksize == (64, 64)  # lazy
    valid = classes != 255
    assert not valid.all() and valid.any()
    assert np.array_equal(np.isnan(ds.change.values), ~valid)
    assert np.array_equal(ds.change.values[valid], classes[valid])
    assert np.allclose(ds.probability.values[valid], probability[valid] / 254.0, rtol=0, atol=1e-7)
    assert np.isnan(ds.probability.values[~valid]).all()
    assert ds.attrs["RUN_ID"] == tags["RUN_ID"] and ds.attrs["GROUP"] == "g1"
    assert ds.attrs["CHECKPOINT_SHA256"] == tags["CHECKPOINT_SHA256"] and "MODEL" in ds.attrs
    # The inputs on the same grid, each with its own bands.
    with rasterio.open(prepared / "groups" / "g1" / "grid" / "A.tif") as a:
        assert ds.A.sizes == {"A_band": 3, "y": a.height, "x": a.width}
        assert np.array_equal(np.nan_to_num(ds.A.values, nan=0), a.read())


def test_clip_to_an_area_and_area_of_change(detected):
    det, _ = detected
    ds = open_results(det)["g1"]
    x0, y0 = float(ds.x[20]) - 2, float(ds.y[100]) - 2  # pixel edges: 4 m pixels, coordinates at centres
    x1, y1 = float(ds.x[119]) + 2, float(ds.y[10]) + 2
    aoi = ds.rio.clip([box(x0, y0, x1, y1)], ds.rio.crs)
    assert aoi.change.sizes == {"y": 91, "x": 100}
    pixel_m2 = abs(ds.rio.resolution()[0] * ds.rio.resolution()[1])
    changed = float((aoi.change == 1).sum()) * pixel_m2
    with rasterio.open(det / "g1" / "change_class.tif") as c:
        expected = float((c.read(1)[10:101, 20:120] == 1).sum()) * 16.0
    assert changed == expected and pixel_m2 == 16.0


def test_scene_statistics_are_exact_dask_reductions(detected):
    _, prepared = detected
    ds = open_results(detected[0], prepared=prepared, chunks=64)["g1"]
    band = ds.A.isel(A_band=0)
    values = band.values
    fraction = valid_fraction(band)
    assert fraction == pytest.approx(np.isfinite(values).mean(), abs=1e-12) and fraction < 1
    quantiles = integer_percentiles(band, [0, 2, 50, 98, 100], max_value=255)
    reference = np.percentile(values[np.isfinite(values)], [0, 2, 50, 98, 100], method="inverted_cdf")
    assert list(quantiles.values()) == [int(v) for v in reference]


def test_a_folder_without_detections_is_a_clear_error(tmp_path):
    with pytest.raises(ChangeflowError, match="no detected group"):
        open_results(tmp_path)
