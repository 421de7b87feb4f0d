"""Scheduled ingestion: scenes are claimed once, grouped with earlier ones, detected, archived."""

from __future__ import annotations

import shutil

import geopandas as gpd
import pytest
import rasterio
import torch

import models
from flows.ingest import ingest_flow
from pipeline.learn.checkpoint import save_checkpoint
from pipeline.learn.normalization import BandStats
from pipeline.prepare.inbox import Workspace, claim_new_scenes
from pipeline.synthetic.scenes import write_synthetic_group

pytestmark = pytest.mark.integration


def _checkpoint(path):
    torch.manual_seed(0)
    options = {"t1_channels": 4, "t2_channels": 1}
    save_checkpoint(path, {
        "model": models.build("fc_siam_diff", **options).state_dict(), "model_name": "fc_siam_diff",
        "model_options": options,
        "normalization": {
            "A": BandStats("optical", (100.0,) * 4, (1000.0,) * 4, False).to_dict(),
            "B": BandStats("sar", (-25.0,), (0.0,), False).to_dict(),
        },
        "bands": {"A": 4, "B": 1, "label": 1}, "inputs": ["A", "B"], "config": {"crop": 128}, "epoch": 0,
    })
    return path


def test_inbox_scenes_are_processed_once_and_grouped_with_earlier_ones(tmp_path):
    from prefect.testing.utilities import prefect_test_harness

    group = write_synthetic_group(tmp_path / "synthetic", name="s", size=640, seed=3)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    workspace = tmp_path / "workspace"
    config = tmp_path / "ingest.yaml"
    config.write_text(
        f"inbox: {inbox}\nworkspace: {workspace}\ncheckpoint: {_checkpoint(tmp_path / 'model.pt')}\n"
        "settle_seconds: 0\nprepare: {tiling: {size: 128, stride: 128}}\n"
        "detect: {window: 128, block_size: 256, device: cpu, evaluate: false}\n"
    )
    shutil.copy(group.paths["A"], inbox / "site_A.tif")
    with prefect_test_harness(server_startup_timeout=120):
        first = ingest_flow(str(config))
        assert first["claimed"] == ["site_A.tif"] and first["groups"] == {}
        assert "site_A" in first["waiting"]  # an optical t1 alone waits in the archive
        shutil.copy(group.paths["B"], inbox / "site_B.tif")
        second = ingest_flow(str(config))
        assert second["claimed"] == ["site_B.tif"]
        assert second["groups"]["site"]["n_polygons"] >= 0
        # The same scene dropped again is recognised and not processed a second time.
        shutil.copy(group.paths["B"], inbox / "site_B.tif")
        third = ingest_flow(str(config))
    assert third["claimed"] == [] and not (inbox / "site_B.tif").exists()
    assert (workspace / "archive" / "duplicates" / "site_B.tif").exists()
    assert sorted(p.name for p in (workspace / "archive").glob("*.tif")) == ["site_A.tif", "site_B.tif"]
    detections = workspace / "detections" / "site"
    with rasterio.open(detections / "change_class.tif") as classes, rasterio.open(group.paths["A"]) as a:
        assert classes.crs == a.crs
    assert gpd.read_file(detections / "changes.gpkg", layer="changes").crs == a.crs


def test_overlapping_runs_never_claim_the_same_scene(tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for name in ("x_A.tif", "x_B.tif", "notes.txt"):
        (inbox / name).write_bytes(name.encode())
    workspace = Workspace(tmp_path / "ws")
    first = claim_new_scenes(inbox, workspace, "run1")
    second = claim_new_scenes(inbox, workspace, "run2")
    assert [p.name for p in first] == ["x_A.tif", "x_B.tif"] and second == []
    assert (inbox / "notes.txt").exists()


def test_provider_products_are_claimed_read_refused_by_name_and_grouped_later(tmp_path, monkeypatch):
    """GF-2 folder, a broken S2 zip, later a GF-3 .tar.gz: the pipeline without a Prefect server (``.fn``)."""
    from tests.fixtures.products import Scenery, write_gf2_product, write_gf3_product

    monkeypatch.setenv("CHANGEFLOW_CACHE", str(tmp_path / "user-cache"))  # must stay unused
    torch.manual_seed(0)
    options = {"t1_channels": 4, "t2_channels": 2}
    model = tmp_path / "model.pt"
    save_checkpoint(model, {
        "model": models.build("fc_siam_diff", **options).state_dict(), "model_name": "fc_siam_diff",
        "model_options": options,
        "normalization": {
            "A": BandStats("optical", (100.0,) * 4, (1000.0,) * 4, False).to_dict(),
            "B": BandStats("sar", (-25.0,) * 2, (0.0,) * 2, False).to_dict(),
        },
        "bands": {"A": 4, "B": 2, "label": 1}, "inputs": ["A", "B"], "config": {"crop": 128}, "epoch": 0,
    })
    scenery = Scenery(size_m=800.0, seed=1)
    inbox = tmp_path / "inbox"
    workspace = tmp_path / "workspace"
    gf2 = write_gf2_product(inbox, scenery, size=192)
    broken = inbox / "S2A_MSIL2A_20220101T000000_N0400_R001_T50SNA_20220101T000000.SAFE.zip"
    broken.write_bytes(b"PK\x05\x06" + b"\0" * 18)  # an empty zip: not a SAFE
    config = tmp_path / "ingest.yaml"
    config.write_text(
        f"inbox: {inbox}\nworkspace: {workspace}\ncheckpoint: {model}\nsettle_seconds: 0\n"
        "prepare: {tiling: {size: 128, stride: 128}, coregistration: {enabled: false}}\n"  # tiny scenes
        "detect: {window: 128, block_size: 256, device: cpu, evaluate: false}\n"
    )
    first = ingest_flow.fn(str(config))
    assert sorted(first["claimed"]) == sorted([gf2.path.name, broken.name])
    assert list(first["refused"]) == [broken.name] and "not a Sentinel-2 SAFE product" in first["refused"][broken.name]
    assert (workspace / "rejected" / broken.name).exists()
    assert (workspace / "rejected" / f"{broken.name}.reason.txt").exists()
    assert first["groups"] == {} and gf2.name in first["waiting"]
    assert (workspace / "archive" / gf2.path.name).is_dir()
    read = list((workspace / "cache").rglob(f"{gf2.name}-*.tif"))
    assert len(read) == 1 and not (tmp_path / "user-cache").exists()

    gf3 = write_gf3_product(inbox, scenery, size=160, archive="tar.gz")
    second = ingest_flow.fn(str(config))
    assert second["claimed"] == [gf3.path.name] and second["refused"] == {}
    assert list(second["groups"]) == [gf2.name] and "error" not in second["groups"][gf2.name]
    assert list((workspace / "cache").rglob(f"{gf2.name}-*.tif")) == read  # not read again
    assert (workspace / "archive" / gf3.path.name).is_file()

    shutil.copytree(workspace / "archive" / gf2.path.name, inbox / gf2.path.name, copy_function=shutil.copy)
    third = ingest_flow.fn(str(config))
    assert third["claimed"] == [] and (workspace / "archive" / "duplicates" / gf2.path.name).is_dir()
