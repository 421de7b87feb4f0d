"""Per-date class rasters (semantic change) go through prepare as categorical tiles."""

from __future__ import annotations

import numpy as np
import rasterio
from rasterio.transform import from_origin

from pipeline.config import PrepareConfig
from pipeline.prepare.catalog import build_catalog
from pipeline.prepare.group_build import process_group
from pipeline.prepare.overlap import build_groups

SIZE = 320


def _write(path, data, nodata):
    profile = {
        "driver": "GTiff", "width": SIZE, "height": SIZE, "count": data.shape[0], "dtype": data.dtype.name,
        "crs": "EPSG:32650", "transform": from_origin(500000, 3500000, 2.0, 2.0), "nodata": nodata,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)


def test_semantic_rasters_keep_their_class_ids(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(100, 3000, (3, SIZE, SIZE), dtype=np.uint16)
    classes_t1 = np.zeros((1, SIZE, SIZE), np.uint8)
    classes_t1[0, 40:120, 40:200] = 1
    classes_t2 = classes_t1.copy()
    classes_t2[0, 40:120, 40:120] = 4  # destroyed
    classes_t2[0, 200:240, 200:240] = 255  # unclassified
    _write(tmp_path / "a.tif", image, 0)
    _write(tmp_path / "c.tif", image[::-1].copy(), 0)
    _write(tmp_path / "s1.tif", classes_t1, None)
    _write(tmp_path / "s2.tif", classes_t2, None)
    config = PrepareConfig(
        scenes=[
            {"path": tmp_path / "a.tif", "role": "A", "group": "g", "id": "pre"},
            {"path": tmp_path / "c.tif", "role": "C", "group": "g", "id": "post"},
            {"path": tmp_path / "s1.tif", "role": "semantic_t1", "group": "g", "id": "cls1"},
            {"path": tmp_path / "s2.tif", "role": "semantic_t2", "group": "g", "id": "cls2"},
        ],
        tiling={"size": 128, "stride": 128},
        coregistration={"enabled": False},
    )
    scenes, failures = build_catalog(config.scenes, config)
    assert failures == []
    groups, _, crs = build_groups(scenes, config.min_overlap)
    outcome = process_group(groups[0], crs, config, tmp_path / "out")
    grid = tmp_path / "out" / "groups" / "g" / "grid"
    with rasterio.open(grid / "semantic_t2.tif") as dataset:
        assert dataset.nodata == 255 and dataset.crs.to_epsg() == 32650
        np.testing.assert_array_equal(dataset.read(1), classes_t2[0])
    tiles = tmp_path / "out" / "groups" / "g" / "tiles"
    assert len(outcome.tiles) == 9  # windows at 0, 128 and 192 (flush with the edge) on each axis
    with rasterio.open(tiles / "semantic_t1" / f"{outcome.tiles[0].tile_id}.tif") as tile:
        np.testing.assert_array_equal(tile.read(1), classes_t1[0, :128, :128])
