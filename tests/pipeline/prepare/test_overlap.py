"""Overlap grouping on constructed footprints: the threshold is exact, CRSs are reconciled."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from affine import Affine
from rasterio.crs import CRS
from rasterio.warp import transform_bounds

from pipeline.config import PrepareConfig, Role, SceneEntry
from pipeline.prepare.catalog import build_catalog
from pipeline.prepare.overlap import build_groups, overlap_ratio
from tests.conftest import write_raster

ORIGIN = Affine(4.0, 0, 500000.0, 0, -4.0, 3500000.0)


def _image(tmp_path, name, valid_cols, *, width=100, crs="EPSG:32650", transform=ORIGIN, bands=3):
    data = np.zeros((bands, 100, width), dtype=np.uint8)
    data[:, :, valid_cols[0]:valid_cols[1]] = 120
    return write_raster(tmp_path / f"{name}.tif", data, crs=crs, transform=transform)


def _groups(tmp_path, entries, **config):
    cfg = PrepareConfig(scenes=entries, **config)
    scenes, failures = build_catalog(cfg.scenes, cfg)
    assert failures == []
    return build_groups(scenes, cfg.min_overlap)


@pytest.mark.parametrize(("overlap_cols", "grouped"), [(79, False), (81, True)])
def test_min_overlap_threshold_is_exact(tmp_path, overlap_cols, grouped):
    reference = _image(tmp_path, "a", (0, 100))
    # B's valid data is 100 columns wide but only `overlap_cols` of them fall on A's valid data.
    shifted = ORIGIN @ Affine.translation(100 - overlap_cols, 0)
    moving = _image(tmp_path, "b", (0, 100), transform=shifted)
    groups, unpaired, _ = _groups(tmp_path, [
        SceneEntry(path=reference, role=Role.A, date=dt.date(2020, 1, 1)),
        SceneEntry(path=moving, role=Role.B, sensor="gf3"),
    ])
    assert (len(groups) == 1) is grouped
    if grouped:
        assert groups[0].ratios[Role.B] == pytest.approx(overlap_cols / 100)
    else:
        assert "0.790" in unpaired["b"] and "a" in unpaired


def test_footprint_comes_from_valid_mask_not_bounds(tmp_path):
    # Same bounding box, but B's valid data cover only the left 70 % (a black collar on the right).
    reference = _image(tmp_path, "a", (0, 100))
    moving = _image(tmp_path, "b", (0, 70))
    groups, unpaired, _ = _groups(tmp_path, [
        SceneEntry(path=reference, role=Role.A), SceneEntry(path=moving, role=Role.C),
    ])
    assert groups[0].ratios[Role.C] == pytest.approx(1.0)  # B lies inside A: over the smaller
    assert groups[0].common_area.area == pytest.approx(70 * 100 * 16)


def test_overlap_in_one_projected_crs_across_utm_and_lonlat(tmp_path):
    reference = _image(tmp_path, "a", (0, 100))
    west, south, east, north = transform_bounds(CRS.from_epsg(32650), CRS.from_epsg(4326), 500000, 3499600, 500400, 3500000)
    # Same ground in lon/lat, with the eastern 15 % outside A.
    width_deg = (east - west)
    transform = Affine((width_deg / 100), 0, west + 0.15 * width_deg, 0, -(north - south) / 100, north)
    moving = _image(tmp_path, "b", (0, 100), crs="EPSG:4326", transform=transform)
    groups, _, crs = _groups(tmp_path, [
        SceneEntry(path=reference, role=Role.A), SceneEntry(path=moving, role=Role.B, sensor="gf3"),
    ])
    assert crs.is_projected
    assert groups[0].ratios[Role.B] == pytest.approx(0.85, abs=0.01)


def test_unpaired_scene_is_reported_with_reason(tmp_path):
    reference = _image(tmp_path, "a", (0, 100))
    far = _image(tmp_path, "far", (0, 100), transform=ORIGIN @ Affine.translation(5000, 0))
    near = _image(tmp_path, "near", (0, 100))
    groups, unpaired, _ = _groups(tmp_path, [
        SceneEntry(path=reference, role=Role.A),
        SceneEntry(path=near, role=Role.C),
        SceneEntry(path=far, role=Role.B, sensor="gf3"),
    ])
    assert [g.name for g in groups] == ["a"]
    assert set(groups[0].members) == {Role.A, Role.C}
    assert "far" in unpaired and "pairs with no A image" in unpaired["far"]


def test_overlap_ratio_is_over_the_smaller_area():
    from shapely.geometry import box

    assert overlap_ratio(box(0, 0, 10, 10), box(0, 0, 5, 5)) == 1.0
    assert overlap_ratio(box(0, 0, 10, 10), box(5, 0, 15, 10)) == 0.5


def test_dated_and_undated_free_references_are_grouped_dated_first(tmp_path):
    # Issue 13: a date and a scene id were compared in one sort and the whole prepare crashed.
    elsewhere = ORIGIN @ Affine.translation(5000, 0)
    entries = [
        SceneEntry(path=_image(tmp_path, "undated_a", (0, 100)), role=Role.A),
        SceneEntry(path=_image(tmp_path, "undated_c", (0, 100)), role=Role.C),
        SceneEntry(path=_image(tmp_path, "dated_a", (0, 100), transform=elsewhere), role=Role.A,
                   date=dt.date(2020, 1, 1)),
        SceneEntry(path=_image(tmp_path, "dated_c", (0, 100), transform=elsewhere), role=Role.C),
    ]
    groups, unpaired, _ = _groups(tmp_path, entries)
    assert [g.name for g in groups] == ["dated_a", "undated_a"]
    assert [g.members[Role.C].id for g in groups] == ["dated_c", "undated_c"]
    assert unpaired == {}
