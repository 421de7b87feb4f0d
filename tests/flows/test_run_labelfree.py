"""`changeflow run` with a label-free detect.method and no train section: prepare → detect, no training."""

from __future__ import annotations

import geopandas as gpd
import pytest
import rasterio
import yaml

from flows.run import run_flow
from pipeline.synthetic.scenes import write_synthetic_group

pytestmark = pytest.mark.integration


def test_run_with_cva_and_no_train_section_skips_training(tmp_path):
    group = write_synthetic_group(tmp_path / "synthetic", name="s", size=256, seed=3)
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "prepare": {"scene_list": str(group.scene_list), "tiling": {"size": 128, "stride": 128},
                    "split": {"block_tiles": 1}, "coregistration": {"enabled": False}},
        "detect": {"method": "cva", "vectorize": {"min_area_m2": 0}},
    }))
    out = tmp_path / "out"
    report = run_flow.fn(str(config), str(out))
    assert set(report) == {"prepare", "detect"}
    assert not (out / "model").exists() and not (out / "train.yaml").exists()
    assert yaml.safe_load((out / "detect.yaml").read_text())["method"] == "cva"
    assert yaml.safe_load((out / "detect.yaml").read_text())["checkpoint"] is None
    detected = out / "detect" / "s"
    with rasterio.open(detected / "change_probability.tif") as probability:
        assert probability.tags()["METHOD"] == "cva"
    assert (detected / "change_class.tif").exists()
    polygons = gpd.read_file(detected / "changes.gpkg", layer="changes")
    assert len(polygons) > 0 and (polygons["model"] == "cva").all()
