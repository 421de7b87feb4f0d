"""`changeflow ingest` with a label-free `method:` and no checkpoint: an inbox processed end to end."""

from __future__ import annotations

import shutil

import geopandas as gpd
import pytest
import rasterio

from flows.ingest import ingest_flow
from pipeline.synthetic.scenes import write_synthetic_group

pytestmark = pytest.mark.integration


def test_ingest_with_cva_and_no_checkpoint_detects_and_archives(tmp_path):
    group = write_synthetic_group(tmp_path / "synthetic", name="s", size=256, seed=3)
    inbox, workspace, config = tmp_path / "inbox", tmp_path / "workspace", tmp_path / "ingest.yaml"
    inbox.mkdir()
    config.write_text(
        f"inbox: {inbox}\nworkspace: {workspace}\nmethod: cva\nsettle_seconds: 0\n"
        "prepare: {tiling: {size: 128, stride: 128}, coregistration: {enabled: false}}\n"
        "detect: {block_size: 256, vectorize: {min_area_m2: 0}}\n"
    )
    for role, letter in (("A", "A"), ("B", "B"), ("C", "D")):
        shutil.copy(group.paths[role], inbox / f"g1_{letter}.tif")
    result = ingest_flow.fn(str(config))
    assert result["claimed"] == ["g1_A.tif", "g1_B.tif", "g1_D.tif"]
    assert result["groups"]["g1"]["status"] == "done" and result["pending"] == {}
    detections = workspace / "detections" / "g1"
    with rasterio.open(detections / "change_probability.tif") as probability:
        assert probability.tags()["METHOD"] == "cva"
    assert (detections / "change_class.tif").exists()
    polygons = gpd.read_file(detections / "changes.gpkg", layer="changes")
    assert len(polygons) > 0 and (polygons["model"] == "cva").all()
    assert sorted(p.name for p in (workspace / "archive").glob("*.tif")) == ["g1_A.tif", "g1_B.tif", "g1_D.tif"]
    assert list(inbox.iterdir()) == []
