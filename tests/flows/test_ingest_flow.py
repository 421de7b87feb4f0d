"""Scheduled ingestion: scenes are claimed once, grouped with earlier ones, detected, archived."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import geopandas as gpd
import pytest
import rasterio
import torch

import models
from flows.ingest import ingest_flow
from pipeline.ingest.lease import LEASE_FILE
from pipeline.learn.checkpoint import save_checkpoint
from pipeline.learn.normalization import BandStats
from pipeline.prepare.inbox import Workspace, claim_new_scenes
from pipeline.synthetic.scenes import write_synthetic_group

pytestmark = pytest.mark.integration


def _checkpoint(path, sar_bands: int = 1):
    """A random fc_siam_diff checkpoint on A (4 bands) + B (``sar_bands``; the synthetic B has 1)."""
    torch.manual_seed(0)
    options = {"t1_channels": 4, "t2_channels": sar_bands}
    save_checkpoint(path, {
        "model": models.build("fc_siam_diff", **options).state_dict(), "model_name": "fc_siam_diff",
        "model_options": options,
        "normalization": {
            "A": BandStats("optical", (100.0,) * 4, (1000.0,) * 4, False).to_dict(),
            "B": BandStats("sar", (-25.0,) * sar_bands, (0.0,) * sar_bands, False).to_dict(),
        },
        "bands": {"A": 4, "B": sar_bands, "label": 1}, "inputs": ["A", "B"], "config": {"crop": 128}, "epoch": 0,
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


# The guarantees of the ingest loop: no scene is dropped or stranded. These passes call the flow's
# function without a Prefect server (``ingest_flow.fn``); the CLI tests start no flow run.

GOLD_LETTERS = {"A": "A", "B": "B", "C": "D", "label": "E"}


@pytest.fixture(scope="module")
def small_group(tmp_path_factory):
    """A 384-px synthetic group (A, B, C, label); prepared without co-registration, it takes ~2 s a pass."""
    return write_synthetic_group(tmp_path_factory.mktemp("synthetic"), name="s", size=384, seed=3)


def _ingest_setup(tmp_path, checkpoint, max_attempts: int = 3):
    """An inbox, a workspace and their ``ingest.yaml``."""
    inbox, workspace, config = tmp_path / "inbox", tmp_path / "workspace", tmp_path / "ingest.yaml"
    inbox.mkdir()
    config.write_text(
        f"inbox: {inbox}\nworkspace: {workspace}\ncheckpoint: {checkpoint}\nsettle_seconds: 0\n"
        f"max_attempts: {max_attempts}\n"
        "prepare: {tiling: {size: 128, stride: 128}, coregistration: {enabled: false}}\n"
        "detect: {window: 128, block_size: 256, device: cpu}\n"
    )
    return inbox, Workspace(workspace), config


def _drop(group, folder, roles=("A", "B", "C"), base="g1"):
    for role in roles:
        shutil.copy(group.paths[role], folder / f"{base}_{GOLD_LETTERS[role]}.tif")


def test_a_failed_detection_stays_pending_until_the_checkpoint_is_fixed(small_group, tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app

    model = _checkpoint(tmp_path / "model.pt", sar_bands=2)  # the synthetic B has one band
    inbox, workspace, config = _ingest_setup(tmp_path, model)
    _drop(small_group, inbox)
    first = ingest_flow.fn(str(config))
    assert not (workspace.root / "detections" / "g1" / "changes.gpkg").exists()
    status = CliRunner().invoke(app, ["ingest", "--config", str(config), "--status"])
    _checkpoint(model, sar_bands=1)  # the user puts the right checkpoint in place
    second = ingest_flow.fn(str(config))
    assert (workspace.root / "detections" / "g1" / "changes.gpkg").exists()
    assert second["claimed"] == [] and second["groups"]["g1"]["status"] == "done"
    assert second["pending"] == {}

    assert first["claimed"] == ["g1_A.tif", "g1_B.tif", "g1_D.tif"]
    failed = first["groups"]["g1"]
    assert failed["status"] == "failed" and failed["attempt"] == 1
    assert "has 1 band(s) but checkpoint model.pt was trained on 2-band" in failed["error"]
    assert first["pending"]["g1"]["scenes"] == ["g1_A", "g1_B", "g1_D"]
    assert first["pending"]["g1"]["attempts"] == 1
    assert status.exit_code == 0
    assert "g1: g1_A, g1_B, g1_D (attempt 1 of 3)" in status.output
    assert "trained on 2-band" in status.output
    assert json.loads((workspace.root / "runs" / f"{second['run_id']}.json").read_text())["groups"]["g1"]["status"] == "done"


def test_a_group_failing_every_attempt_is_given_up_by_name(small_group, tmp_path):
    inbox, workspace, config = _ingest_setup(tmp_path, _checkpoint(tmp_path / "model.pt", sar_bands=2), max_attempts=2)
    _drop(small_group, inbox)
    first = ingest_flow.fn(str(config))
    assert first["pending"]["g1"]["attempts"] == 1 and first["given_up"] == {}
    second = ingest_flow.fn(str(config))
    assert second["groups"]["g1"]["status"] == "given up"
    assert second["given_up"]["g1"]["scenes"] == ["g1_A", "g1_B", "g1_D"] and second["pending"] == {}
    assert sorted(p.name for p in workspace.rejected.glob("*.tif")) == ["g1_A.tif", "g1_B.tif", "g1_D.tif"]
    reason = (workspace.rejected / "g1_B.tif.reason.txt").read_text()
    assert reason.startswith("given up after 2 attempts: ") and "trained on 2-band" in reason
    assert ingest_flow.fn(str(config))["groups"] == {}  # not retried again
    # Rejected scenes are forgotten: dropped again (after a fix), they are claimed anew.
    assert claim_new_scenes(inbox, workspace, "later") == []
    shutil.copy(workspace.rejected / "g1_B.tif", inbox / "g1_B.tif")
    assert [p.name for p in claim_new_scenes(inbox, workspace, "later")] == ["g1_B.tif"]


def test_a_missing_checkpoint_is_refused_before_anything_is_claimed(small_group, tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app

    inbox, workspace, config = _ingest_setup(tmp_path, tmp_path / "nope.pt")
    _drop(small_group, inbox)
    result = CliRunner().invoke(app, ["ingest", "--config", str(config)])
    assert result.exit_code == 2
    assert "nope.pt: checkpoint not found" in " ".join(result.output.split())  # rich wraps long lines
    assert sorted(p.name for p in inbox.iterdir()) == ["g1_A.tif", "g1_B.tif", "g1_D.tif"]
    assert not workspace.claims.exists() and not workspace.archive.exists()


def test_the_claims_of_a_killed_pass_are_returned_and_processed(small_group, tmp_path):
    inbox, workspace, config = _ingest_setup(tmp_path, _checkpoint(tmp_path / "model.pt"))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid is free now: the pass that claimed these scenes was killed
    stranded = workspace.claim_dir("20240101T000000Z-dead")
    stranded.mkdir(parents=True)
    _drop(small_group, stranded)
    (stranded / LEASE_FILE).write_text(json.dumps(
        {"run_id": stranded.name, "pid": dead.pid, "host": socket.gethostname(), "expires": time.time() - 1}
    ))
    alive = workspace.claim_dir("20240101T000000Z-alive")  # a pass still running elsewhere: left alone
    alive.mkdir()
    _drop(small_group, alive, roles=("A",), base="g2")
    (alive / LEASE_FILE).write_text(json.dumps(
        {"run_id": alive.name, "pid": os.getpid(), "host": socket.gethostname(), "expires": time.time() + 600}
    ))
    report = ingest_flow.fn(str(config))
    assert (workspace.root / "detections" / "g1" / "changes.gpkg").exists()
    assert not stranded.exists() and (alive / "g2_A.tif").exists()
    assert report["returned"] == {stranded.name: ["g1_A.tif", "g1_B.tif", "g1_D.tif"]}
    assert report["claimed"] == ["g1_A.tif", "g1_B.tif", "g1_D.tif"]
    assert report["groups"]["g1"]["status"] == "done"
    assert sorted(p.name for p in workspace.claims.iterdir()) == [alive.name]


def test_a_late_label_reopens_its_group_and_evaluates_it(small_group, tmp_path, monkeypatch):
    """The label is claimed while an overlapping pass still builds its group: a later pass evaluates it."""
    from pipeline.ingest import ingest_pass

    inbox, workspace, config = _ingest_setup(tmp_path, _checkpoint(tmp_path / "model.pt"))
    building, release = threading.Event(), threading.Event()
    build = ingest_pass.process_group

    def slow_build(*args, **kwargs):
        building.set()
        assert release.wait(120)
        return build(*args, **kwargs)

    monkeypatch.setattr(ingest_pass, "process_group", slow_build)
    _drop(small_group, inbox)
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(ingest_flow.fn, str(config))
        assert building.wait(120)
        _drop(small_group, inbox, roles=("label",))
        monkeypatch.setattr(ingest_pass, "process_group", build)
        second = ingest_flow.fn(str(config))  # sees g1_E alone: g1's other scenes are still claimed
        release.set()
        first = first.result()
    assert not (workspace.root / "detections" / "g1" / "report.json").exists()  # detected without its label
    third = ingest_flow.fn(str(config))
    assert (workspace.root / "detections" / "g1" / "report.json").exists()
    assert second["claimed"] == ["g1_E.tif"] and "g1_E" in second["waiting"]
    assert first["groups"]["g1"]["status"] == "done" and "metrics" not in first["groups"]["g1"]
    assert third["claimed"] == []
    reopened = third["groups"]["g1"]
    assert reopened["status"] == "done" and reopened["reopened_by"] == ["g1_E"]
    assert "f1" in reopened["metrics"]["pixel"]
    assert third["waiting"] == {}


def test_an_exception_in_a_pass_returns_its_claims_to_the_inbox(small_group, tmp_path, monkeypatch):
    from pipeline.ingest import ingest_pass

    inbox, workspace, config = _ingest_setup(tmp_path, _checkpoint(tmp_path / "model.pt"))
    _drop(small_group, inbox)

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ingest_pass, "build_catalog", full_disk)
    with pytest.raises(OSError, match="No space left"):
        ingest_flow.fn(str(config))
    assert sorted(p.name for p in inbox.iterdir()) == ["g1_A.tif", "g1_B.tif", "g1_D.tif"]
    assert list(workspace.claims.iterdir()) == []


def test_overlapping_passes_build_a_shared_group_one_after_the_other(small_group, tmp_path, monkeypatch):
    """Two passes whose groups share the archived A scene never build g1 (``.g1.partial``) at the same time."""
    from pipeline.ingest import ingest_pass

    inbox, workspace, config = _ingest_setup(tmp_path, _checkpoint(tmp_path / "model.pt"))
    _drop(small_group, inbox, roles=("A",))
    assert "g1_A" in ingest_flow.fn(str(config))["waiting"]
    events, building, release = [], threading.Event(), threading.Event()
    build = ingest_pass.process_group

    def recorded_build(group, *args, **kwargs):
        events.append(("start", sorted(m.id for m in group.members.values())))
        building.set()
        assert release.wait(120)
        result = build(group, *args, **kwargs)
        events.append(("end", sorted(m.id for m in group.members.values())))
        return result

    monkeypatch.setattr(ingest_pass, "process_group", recorded_build)
    _drop(small_group, inbox, roles=("B",))
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(ingest_flow.fn, str(config))
        assert building.wait(120)
        _drop(small_group, inbox, roles=("C",))
        second = pool.submit(ingest_flow.fn, str(config))
        time.sleep(3)  # time for the second pass to reach g1
        release.set()
        reports = [first.result(), second.result()]
    assert [kind for kind, _ in events] == ["start", "end", "start", "end"]
    assert not (workspace.root / "prepared" / "groups" / ".g1.partial").exists()
    assert reports[0]["groups"]["g1"]["status"] == "done"
    # The second pass saw g1 as A + C (B was still claimed by the first): the A + B checkpoint fails it.
    assert reports[1]["groups"]["g1"]["status"] == "failed" and "has no B image" in reports[1]["groups"]["g1"]["error"]
    monkeypatch.setattr(ingest_pass, "process_group", build)
    retried = ingest_flow.fn(str(config))  # nothing new in the inbox; g1 is pending, now with A, B and C
    assert retried["groups"]["g1"]["status"] == "done" and retried["groups"]["g1"]["reopened_by"] == ["g1_D"]
    assert retried["pending"] == {}
