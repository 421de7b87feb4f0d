"""Vectorisation: exact areas and zonal statistics, seam merging, sieve, min area, simplification,
geographic rasters, the GeoPackage layer (CRS, spatial index, attributes, atomic write)."""

from __future__ import annotations

import datetime as dt
import sqlite3

import geopandas as gpd
import numpy as np
import pytest
import shapely
from affine import Affine
from pyproj import Geod
from scipy import ndimage

from pipeline.detect.vectorize import polygonize, vectorize
from pipeline.errors import InputError
from tests.conftest import write_raster

CRS = "EPSG:32650"
TRANSFORM = Affine(2.0, 0, 500000.0, 0, -2.0, 3500000.0)  # 2 m pixels
EXACT = {"sieve_px": 0, "min_area_m2": 0.0, "simplify_px": 0.0}


def rasters(tmp_path, classes, prob=None, *, crs=CRS, transform=TRANSFORM):
    cls_path = write_raster(tmp_path / "classes.tif", classes, crs=crs, transform=transform, nodata=255)
    if prob is None:
        prob = np.where(classes == 255, 255, 127).astype(np.uint8)
    nodata = 255 if prob.dtype == np.uint8 else None
    prob_path = write_raster(tmp_path / "prob.tif", prob, crs=crs, transform=transform, nodata=nodata)
    return cls_path, prob_path


def blobs(size: int, seed: int, *, classes: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.normal(size=(size, size)), 2.5)
    out = (field > 0.03).astype(np.uint8)
    if classes > 1:
        out[field > 0.08] = 2
    out[rng.random((size, size)) < 0.005] = 255
    return out


def test_square_area_perimeter_probabilities_and_crs(tmp_path):
    classes = np.zeros((40, 40), np.uint8)
    classes[5:15, 20:30] = 1  # 10×10 px at 2 m: 400 m², perimeter 80 m
    prob = np.zeros((40, 40), np.uint8)
    prob[5:15, 20:30] = 127
    prob[5, 20] = 254  # max 1.0
    prob[6, 20] = 255  # nodata: left out of the statistics
    cls_path, prob_path = rasters(tmp_path, classes, prob)
    out = tmp_path / "out.gpkg"
    assert vectorize(cls_path, prob_path, out) == 1
    layer = gpd.read_file(out, layer="changes")
    row = layer.iloc[0]
    assert row["class"] == 1 and row["id"] == 1 and row["n_pixels"] == 100
    assert row["area_m2"] == pytest.approx(400.0, abs=1e-9)
    assert row["perimeter_m"] == pytest.approx(80.0, abs=1e-9)
    assert row["max_prob"] == pytest.approx(1.0)
    assert row["mean_prob"] == pytest.approx((98 * 127 + 254) / 99 / 254)
    assert layer.crs == "EPSG:32650"
    assert shapely.equals(layer.geometry.iloc[0], shapely.box(500040, 3499970, 500060, 3499990))


def test_square_across_block_seams_is_one_polygon(tmp_path):
    classes = np.zeros((48, 48), np.uint8)
    classes[10:22, 12:22] = 1  # crosses the seams at row 16 and column 16: four pieces
    prob = np.where(classes == 1, 200, 20).astype(np.uint8)
    prob[21, 21] = 254
    cls_path, prob_path = rasters(tmp_path, classes, prob)
    frame = polygonize(cls_path, prob_path, block_size=16)
    assert len(frame) == 1
    row = frame.iloc[0]
    assert row.geometry.geom_type == "Polygon"
    assert row["area_m2"] == pytest.approx(12 * 10 * 4.0)
    assert row["n_pixels"] == 120
    assert row["mean_prob"] == pytest.approx((119 * 200 + 254) / 120 / 254)
    assert row["max_prob"] == pytest.approx(1.0)


def test_block_wise_result_equals_whole_raster(tmp_path):
    classes = blobs(120, seed=3)
    prob = (np.random.default_rng(0).random((120, 120)) * 254).astype(np.uint8)
    prob[classes == 255] = 255
    cls_path, prob_path = rasters(tmp_path, classes, prob)
    for sieve_px in (0, 12):
        whole = polygonize(cls_path, prob_path, block_size=4096, sieve_px=sieve_px, min_area_m2=0, simplify_px=0)
        for block_size in (32, 45):
            blocks = polygonize(cls_path, prob_path, block_size=block_size, sieve_px=sieve_px, min_area_m2=0, simplify_px=0)
            assert len(blocks) == len(whole) > 10
            columns = ["class", "n_pixels", "area_m2", "perimeter_m", "mean_prob", "max_prob"]
            np.testing.assert_allclose(blocks[columns].to_numpy(float), whole[columns].to_numpy(float))
            assert shapely.union_all(blocks.geometry.values).symmetric_difference(
                shapely.union_all(whole.geometry.values)
            ).area == 0


def test_sieve_removes_regions_below_sieve_px(tmp_path):
    classes = np.zeros((40, 40), np.uint8)
    classes[2:5, 2:7] = 1  # 15 px: sieved
    classes[20:24, 20:24] = 1  # 16 px: kept
    classes[30:36, 30:36] = 1
    classes[32, 32] = 0  # a one-pixel hole: filled by the sieve
    cls_path, prob_path = rasters(tmp_path, classes)
    frame = polygonize(cls_path, prob_path, sieve_px=16, min_area_m2=0, simplify_px=0, block_size=16)
    assert sorted(frame["n_pixels"]) == [16, 36]
    assert all(len(g.interiors) == 0 for g in frame.geometry)
    assert len(polygonize(cls_path, prob_path, **EXACT)) == 3


def test_min_area_in_square_metres(tmp_path):
    classes = np.zeros((30, 30), np.uint8)
    classes[2:4, 2:8] = 1  # 12 px = 48 m²
    classes[10:13, 10:15] = 1  # 15 px = 60 m²
    cls_path, prob_path = rasters(tmp_path, classes)
    frame = polygonize(cls_path, prob_path, sieve_px=0, min_area_m2=50.0, simplify_px=0)
    assert list(frame["area_m2"]) == [60.0]


def test_simplification_keeps_polygons_valid_without_gaps_or_overlaps(tmp_path):
    classes = blobs(96, seed=5, classes=2)
    cls_path, prob_path = rasters(tmp_path, classes)
    exact = polygonize(cls_path, prob_path, sieve_px=8, min_area_m2=0, simplify_px=0, block_size=40)
    simple = polygonize(cls_path, prob_path, sieve_px=8, min_area_m2=0, simplify_px=1.0, block_size=40)
    assert len(simple) == len(exact) and set(simple["class"]) == {1, 2}
    assert simple.geometry.is_valid.all() and not simple.geometry.is_empty.any()
    assert shapely.coverage_is_valid(simple.geometry.values)  # neighbours share their edges: no overlap
    vertices = shapely.get_num_coordinates
    assert vertices(simple.geometry.values).sum() < 0.7 * vertices(exact.geometry.values).sum()
    # Neighbouring classes keep no gap: the union of the changes moves little.
    before, after = shapely.union_all(exact.geometry.values), shapely.union_all(simple.geometry.values)
    assert before.symmetric_difference(after).area < 0.05 * before.area
    assert simple["area_m2"].sum() == pytest.approx(exact["area_m2"].sum(), rel=0.02)


def test_geographic_raster_gets_areas_in_square_metres(tmp_path):
    step = 2e-5  # degrees, about 2 m
    transform = Affine(step, 0, 117.0, 0, -step, 30.0)
    classes = np.zeros((40, 40), np.uint8)
    classes[10:30, 5:25] = 1
    cls_path, prob_path = rasters(tmp_path, classes, crs="EPSG:4326", transform=transform)
    out = tmp_path / "geo.gpkg"
    vectorize(cls_path, prob_path, out, sieve_px=0, min_area_m2=0)
    layer = gpd.read_file(out, layer="changes")
    assert layer.crs == "EPSG:4326"
    square = layer.geometry.iloc[0]
    truth_area, truth_perimeter = Geod(ellps="WGS84").geometry_area_perimeter(shapely.segmentize(square, step))
    utm = gpd.GeoSeries([square], crs="EPSG:4326").to_crs("EPSG:32650").iloc[0]
    assert layer["area_m2"].iloc[0] == pytest.approx(abs(truth_area), rel=0.01)
    assert layer["area_m2"].iloc[0] == pytest.approx(utm.area, rel=1e-6)
    assert layer["perimeter_m"].iloc[0] == pytest.approx(truth_perimeter, rel=0.01)
    assert 1000 < layer["area_m2"].iloc[0] < 2000  # metres, not degrees


def test_threshold_on_a_float_probability(tmp_path):
    prob = np.full((30, 30), 0.2, np.float32)
    prob[5:15, 5:15] = 0.7
    prob[5, 5] = 0.9
    prob[20:25, 20:25] = np.nan  # nodata
    classes = np.zeros((30, 30), np.uint8)  # ignored with a threshold
    cls_path, prob_path = rasters(tmp_path, classes, prob)
    frame = polygonize(cls_path, prob_path, threshold=0.5, **EXACT)
    assert len(frame) == 1
    assert frame["mean_prob"].iloc[0] == pytest.approx((99 * 0.7 + 0.9) / 100)
    assert frame["max_prob"].iloc[0] == pytest.approx(0.9)
    assert len(polygonize(cls_path, prob_path, threshold=0.1, **EXACT)) == 1  # one ring around the hole
    assert len(polygonize(cls_path, None, **EXACT)) == 0


def test_layer_has_spatial_index_attributes_and_keeps_other_layers(tmp_path):
    classes = np.zeros((30, 30), np.uint8)
    classes[2:12, 2:12] = 1
    classes[15:25, 15:28] = 1
    cls_path, prob_path = rasters(tmp_path, classes)
    out = tmp_path / "run.gpkg"
    gpd.GeoDataFrame({"name": ["aoi"]}, geometry=[shapely.box(0, 0, 1, 1)], crs=CRS).to_file(out, layer="aoi")
    attributes = {
        "t1_scene": "GF2_A", "t2_scene": "GF3_B", "t1_date": dt.date(2019, 5, 1), "t2_date": "2021-06-16",
        "sensors": "gf2/gf3", "model": "gold@1", "checkpoint_sha256": "ab" * 32, "run_id": "run-7",
    }
    assert vectorize(cls_path, prob_path, out, attributes=attributes) == 2
    layer = gpd.read_file(out, layer="changes")
    assert list(layer["id"]) == [1, 2]
    for name, value in attributes.items():
        expected = value.isoformat() if isinstance(value, dt.date) else value
        assert list(layer[name]) == [expected, expected]
    assert len(gpd.read_file(out, layer="aoi")) == 1
    with sqlite3.connect(out) as db:
        (column,) = db.execute("select column_name from gpkg_geometry_columns where table_name='changes'").fetchone()
        tables = {name for (name,) in db.execute("select name from sqlite_master")}
        assert db.execute("select srs_id from gpkg_geometry_columns where table_name='changes'").fetchone() == (32650,)
    assert f"rtree_changes_{column}" in tables
    assert [p.name for p in tmp_path.iterdir() if "partial" in p.name] == []
    with pytest.raises(ValueError, match="clash"):
        vectorize(cls_path, prob_path, out, attributes={"area_m2": 1})


def test_no_change_writes_an_empty_layer_with_the_crs(tmp_path):
    classes = np.zeros((20, 20), np.uint8)
    cls_path, prob_path = rasters(tmp_path, classes)
    out = tmp_path / "empty.gpkg"
    assert vectorize(cls_path, prob_path, out, attributes={"run_id": "r"}) == 0
    layer = gpd.read_file(out, layer="changes")
    assert len(layer) == 0 and layer.crs == "EPSG:32650"
    assert {"id", "class", "area_m2", "mean_prob", "run_id"} <= set(layer.columns)


def test_probability_on_another_grid_is_an_error(tmp_path):
    classes = np.zeros((20, 20), np.uint8)
    cls_path = write_raster(tmp_path / "classes.tif", classes, transform=TRANSFORM, nodata=255)
    prob_path = write_raster(tmp_path / "prob.tif", np.zeros((20, 21), np.uint8), transform=TRANSFORM, nodata=255)
    with pytest.raises(InputError, match="prob.tif"):
        polygonize(cls_path, prob_path)
    with pytest.raises(InputError, match="missing.tif"):
        polygonize(tmp_path / "missing.tif", prob_path)


def test_large_coverages_are_simplified_in_chunks_of_whole_clusters(tmp_path, monkeypatch):
    import pipeline.detect.vectorize as module

    classes = blobs(128, seed=9, classes=2)
    cls_path, prob_path = rasters(tmp_path, classes)
    whole = polygonize(cls_path, prob_path, sieve_px=4, min_area_m2=0, block_size=50)
    monkeypatch.setattr(module, "SINGLE_CALL_VERTICES", 0)
    monkeypatch.setattr(module, "CHUNK_VERTICES", 50)
    chunks = module._simplification_chunks(np.array(shapely.segmentize(whole.geometry.values, 2.0)), 1.0)
    assert len(chunks) > 5 and sorted(np.concatenate(chunks)) == list(range(len(whole)))
    chunked = polygonize(cls_path, prob_path, sieve_px=4, min_area_m2=0, block_size=50)
    assert shapely.equals(chunked.geometry.values, whole.geometry.values).all()
    assert shapely.coverage_is_valid(chunked.geometry.values)
