"""Detection on real georeferenced scenes: outputs keep the input's CRS and grid, polygons lie on
the changed pixels, and Taizhou's labelled pixels score the run."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import rasterio.features
import torch

import models
from flows.detect import detect_one
from pipeline.config import DetectConfig, PrepareConfig
from pipeline.learn.checkpoint import save_checkpoint
from pipeline.learn.normalization import BandStats
from pipeline.prepare.catalog import build_catalog
from pipeline.prepare.group_build import process_group
from pipeline.prepare.overlap import build_groups
from tests.conftest import write_raster

pytestmark = pytest.mark.integration


def _checkpoint(path, bands: int, low: float, high: float):
    torch.manual_seed(0)
    options = {"t1_channels": bands, "t2_channels": bands}
    stats = BandStats("optical", (low,) * bands, (high,) * bands, False).to_dict()
    save_checkpoint(path, {
        "model": models.build("fc_siam_diff", **options).state_dict(), "model_name": "fc_siam_diff",
        "model_options": options, "normalization": {"A": stats, "C": stats},
        "bands": {"A": bands, "C": bands, "label": 1}, "inputs": ["A", "C"], "config": {"crop": 128}, "epoch": 0,
    })
    return path


def _prepare(scenes, out):
    config = PrepareConfig(scenes=scenes, tiling={"size": 128, "stride": 128}, coregistration={"enabled": False})
    catalogued, failures = build_catalog(config.scenes, config)
    assert failures == []
    groups, _, crs = build_groups(catalogued, config.min_overlap)
    process_group(groups[0], crs, config, out)
    return out / "groups" / groups[0].name


@pytest.fixture(scope="module")
def prefect_backend():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def _check_outputs(source, out):
    with rasterio.open(source) as src, rasterio.open(out / "change_class.tif") as classes:
        assert classes.crs == src.crs
        assert classes.transform.almost_equals(src.transform)
        assert classes.shape == src.shape
        assert classes.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert classes.overviews(1)
        changed = classes.read(1) == 1
        transform = classes.transform
    import geopandas as gpd

    # The seeded, untrained model marks change on these scenes, so vectorising must give polygons.
    assert changed.sum() > 1000
    polygons = gpd.read_file(out / "changes.gpkg", layer="changes")
    assert polygons.crs == src.crs
    assert len(polygons) > 0 and polygons.geometry.is_valid.all()
    burned = rasterio.features.rasterize(polygons.geometry, out_shape=changed.shape, transform=transform)
    # Polygons lie on changed pixels (simplification moves edges by at most a pixel) and cover them
    # (the sieve removes only specks).
    assert (changed[burned == 1]).mean() > 0.9
    assert burned[changed].mean() > 0.9
    return polygons


def test_taizhou_outputs_keep_the_grid_and_are_scored_on_labelled_pixels(shared_data, tmp_path, prefect_backend):
    folder = shared_data / "landsat-taizhou-nanjing" / "Taizhou"
    with rasterio.open(folder / "2000TM") as src, rasterio.open(folder / "change.bmp") as change, \
            rasterio.open(folder / "unchanged.bmp") as unchanged:
        label = np.full(src.shape, 255, np.uint8)
        label[unchanged.read(1) > 127] = 0
        label[change.read(1) > 127] = 1
        write_raster(tmp_path / "label.tif", label, crs=src.crs, transform=src.transform, nodata=255)
    group = _prepare([
        {"path": folder / "2000TM", "role": "A", "group": "taizhou"},
        {"path": folder / "2003TM", "role": "C", "group": "taizhou"},
        {"path": tmp_path / "label.tif", "role": "label", "group": "taizhou"},
    ], tmp_path / "prepared")
    config = DetectConfig(prepared=tmp_path / "prepared", checkpoint=_checkpoint(tmp_path / "m.pt", 6, 0, 120),
                          window=128, block_size=256, device="cpu", vectorize={"min_area_m2": 0})
    summary = detect_one(group, config, tmp_path / "detect", False)
    _check_outputs(folder / "2000TM", tmp_path / "detect")
    pixel = summary["metrics"]["pixel"]
    assert pixel["pixels"] == int((label != 255).sum())  # only labelled pixels are scored
    assert (tmp_path / "detect" / "report.md").exists() and (tmp_path / "detect" / "quicklook.png").exists()


def test_puerto_rico_outputs_keep_the_grid(shared_data, tmp_path, prefect_backend):
    folder = shared_data / "puerto-rico-maria"
    pre = folder / "Pre_Event_Grids_In_TIFF" / "tile_0_107.tif"
    group = _prepare([
        {"path": pre, "role": "A", "group": "pr"},
        {"path": folder / "Post_Event_Grids_In_TIFF" / "tile_0_107.tif", "role": "C", "group": "pr"},
    ], tmp_path / "prepared")
    config = DetectConfig(prepared=tmp_path / "prepared", checkpoint=_checkpoint(tmp_path / "m.pt", 3, 0, 255),
                          window=128, block_size=256, device="cpu", vectorize={"min_area_m2": 0.5})
    detect_one(group, config, tmp_path / "detect", False)
    polygons = _check_outputs(pre, tmp_path / "detect")
    assert {"area_m2", "mean_prob", "t1_scene_id", "checkpoint_sha256", "run_id"} <= set(polygons.columns)
