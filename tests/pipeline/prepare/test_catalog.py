"""Catalog records and the clear errors for bad input files."""

from __future__ import annotations

import numpy as np
import pytest
from affine import Affine
from rasterio.crs import CRS

from pipeline.config import PrepareConfig, Role, SceneEntry
from pipeline.errors import InputError
from pipeline.prepare.catalog import build_catalog, catalog_scene, scan_inbox
from tests.conftest import write_raster


def _config(entries, **kwargs) -> PrepareConfig:
    return PrepareConfig(scenes=entries, **kwargs)


def _optical(tmp_path, name="a", bands=4, value=300):
    data = np.full((bands, 64, 64), value, dtype=np.uint16)
    data[:, :, :16] = 0  # a nodata collar
    return write_raster(tmp_path / f"{name}.tif", data, nodata=0)


def test_record_holds_georeferencing_and_valid_footprint(tmp_path):
    entry = SceneEntry(path=_optical(tmp_path), role=Role.A, sensor="gf2", date="2020-05-01")
    scene = catalog_scene(entry, _config([entry]))
    assert scene.crs == CRS.from_epsg(32650)
    assert scene.resolution == (4.0, 4.0)
    assert (scene.bands, scene.dtype, scene.nodata) == (4, "uint16", 0)
    assert scene.footprint.area == pytest.approx(48 * 64 * 16)  # the collar is excluded
    assert scene.footprint.bounds[0] == pytest.approx(500000 + 16 * 4)


def test_truncated_geotiff_names_the_file(tmp_path):
    path = _optical(tmp_path)
    data = np.random.default_rng(0).integers(1, 1000, (4, 512, 512), dtype=np.uint16)
    path = write_raster(tmp_path / "big.tif", data)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    entry = SceneEntry(path=path, role=Role.A)
    with pytest.raises(InputError, match="big.tif"):
        catalog_scene(entry, _config([entry]))


def test_missing_crs_in_georeferenced_list(tmp_path):
    path = write_raster(tmp_path / "nocrs.tif", np.full((3, 32, 32), 100, np.uint8), crs=None, transform=Affine.identity())
    entry = SceneEntry(path=path, role=Role.A)
    with pytest.raises(InputError, match=r"nocrs.tif: has no CRS"):
        catalog_scene(entry, _config([entry]))
    # Explicitly allowed in pixel space.
    assert catalog_scene(entry, _config([entry], georeferenced=False)).crs is None


def test_all_black_image(tmp_path):
    path = write_raster(tmp_path / "black.tif", np.zeros((3, 32, 32), np.uint8))
    entry = SceneEntry(path=path, role=Role.A)
    with pytest.raises(InputError, match=r"black.tif: has no valid data"):
        catalog_scene(entry, _config([entry]))


def test_wrong_band_count(tmp_path):
    entry = SceneEntry(path=_optical(tmp_path, bands=3), role=Role.A)
    config = _config([entry], expected_bands={"A": 4})
    with pytest.raises(InputError, match=r"a.tif: has 3 bands, expected 4 for role A"):
        catalog_scene(entry, config)


def test_nan_only_float_image_is_invalid(tmp_path):
    path = write_raster(tmp_path / "nan.tif", np.full((1, 32, 32), np.nan, np.float32))
    entry = SceneEntry(path=path, role=Role.B)
    with pytest.raises(InputError, match="nan.tif"):
        catalog_scene(entry, _config([entry]))


def test_batch_goes_on_after_a_bad_scene(tmp_path):
    good = SceneEntry(path=_optical(tmp_path, "good"), role=Role.A)
    missing = SceneEntry(path=tmp_path / "missing.tif", role=Role.B)
    scenes, failures = build_catalog([missing, good], _config([good]))
    assert [s.id for s in scenes] == ["good"]
    assert "missing.tif: file not found" in failures[0][1]


def test_inbox_uses_gold_naming(tmp_path):
    for name in ("x1_A.tif", "x1_B.tif", "x1_D.tif", "x1_E.png", "notes.txt", "x1_C.tif"):
        (tmp_path / name).write_bytes(b"")
    entries = scan_inbox(tmp_path, PrepareConfig(inbox=tmp_path).inbox_sensors)
    assert {(e.path.name, e.role.value, e.group) for e in entries} == {
        ("x1_A.tif", "A", "x1"), ("x1_B.tif", "B", "x1"), ("x1_D.tif", "C", "x1"), ("x1_E.png", "label", "x1"),
    }


@pytest.mark.parametrize("threads", [1, 3])
def test_the_catalog_keeps_entry_order_and_reports_failures_whatever_the_threads(tmp_path, threads):
    entries = [
        SceneEntry(path=_optical(tmp_path, "first", value=300), role=Role.A, id="first"),
        SceneEntry(path=tmp_path / "missing.tif", role=Role.C, id="missing"),
        SceneEntry(path=_optical(tmp_path, "second", bands=3, value=500), role=Role.C, id="second"),
        SceneEntry(path=write_raster(tmp_path / "black.tif", np.zeros((4, 32, 32), np.uint16)), role=Role.B, id="black"),
        SceneEntry(path=_optical(tmp_path, "third", bands=2), role=Role.B, id="third"),
    ]
    scenes, failures = build_catalog(entries, _config(entries, threads=threads))
    assert [(s.id, s.bands) for s in scenes] == [("first", 4), ("second", 3), ("third", 2)]
    assert [entry.id for entry, _ in failures] == ["missing", "black"]
    assert "missing.tif" in failures[0][1] and "black.tif: has no valid data" in failures[1][1]
