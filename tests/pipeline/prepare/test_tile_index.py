"""The tile index GeoPackage: layers survive empty inputs."""

from __future__ import annotations

import geopandas as gpd
from rasterio.crs import CRS

from pipeline.prepare.tile_index import groups_frame, tiepoints_frame, write_index


def test_no_tie_points_give_an_empty_layer(tmp_path):
    # A run with co-registration off has no tie points; the index must still be written.
    crs = CRS.from_epsg(32650)
    frame = tiepoints_frame([], crs)
    assert frame.empty and frame.crs == crs
    write_index(tmp_path / "catalog.gpkg", {"tiepoints": frame})
    assert gpd.read_file(tmp_path / "catalog.gpkg", layer="tiepoints").empty


def test_tie_points_are_reprojected_into_the_index_crs():
    rows = [{"map_x": 500000.0, "map_y": 0.0, "grid_crs": CRS.from_epsg(32650), "image": "B", "residual_px": 0.2}]
    frame = tiepoints_frame(rows, CRS.from_epsg(4326))
    assert frame.loc[0, "image"] == "B"
    assert abs(frame.geometry[0].x - 117.0) < 1e-6 and abs(frame.geometry[0].y) < 1e-6


def test_groups_layer_of_no_group_is_empty_not_an_error():
    # Issue 17: every group refused gave `ValueError: Unknown column geometry` here.
    frame = groups_frame([], CRS.from_epsg(32650))
    assert frame.empty and frame.crs == CRS.from_epsg(32650)
