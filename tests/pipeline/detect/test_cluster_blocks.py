"""One scene's blocks as tasks on a Dask LocalCluster: the same rasters as one process, even after a worker dies."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from distributed import Client, LocalCluster
from distributed.diagnostics.plugin import WorkerPlugin

import models
from pipeline.detect.blocks import BlockJob, assemble, stage_block
from pipeline.detect.cluster import check_workers, device_resources, stage_on_cluster
from pipeline.detect.inference import model_loads
from pipeline.detect.setup import set_up
from pipeline.detect.sliding import DetectSettings, detect_group
from pipeline.detect.staging import Staging
from pipeline.errors import ChangeflowError, ConfigError, InputError
from pipeline.learn.checkpoint import save_checkpoint
from pipeline.learn.normalization import BandStats
from tests.conftest import write_raster

HEIGHT, WIDTH, WINDOW = 150, 230, 48
# float32 probabilities: any difference in the blended sums shows (uint8 rounding would hide most). One torch
# thread everywhere: CPU convolutions on 1 and 2 threads differ in the last bit (measured: 176 pixels, 1.2e-7).
SETTINGS = DetectSettings(device="cpu", batch_size=3, block_size=64, window=WINDOW, overlap=0.4,
                          probability_dtype="float32", threads=1)
BLOCK_TASKS = replace(SETTINGS, block_tasks=True)


def write_group(folder: Path, seed: int = 0) -> Path:
    """A prepared group: A 3-band uint8 with a nodata collar, B 1-band SAR dB with a NaN hole."""
    rng = np.random.default_rng(seed)
    (folder / "grid").mkdir(parents=True)
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    base = 120 + 60 * np.sin(xx / 9.0) * np.cos(yy / 13.0)
    a = np.clip(np.stack([base + rng.normal(0, 10, base.shape) for _ in range(3)]), 10, 250).astype(np.uint8)
    a[:, :, :5] = 0
    b = (-12 + 4 * rng.standard_normal((1, HEIGHT, WIDTH))).astype(np.float32)
    b[:, 90:110, 150:180] = np.nan
    write_raster(folder / "grid" / "A.tif", a, nodata=0)
    write_raster(folder / "grid" / "B.tif", b, nodata=float("nan"))
    (folder / "manifest.json").write_text(json.dumps({"members": {"A": {"id": "GF2_t1"}, "B": {"id": "GF3_t2"}}}))
    return folder


def write_checkpoint(path: Path) -> Path:
    """A randomly initialised FC-Siam-diff for A (3 bands) + B (1 band): varied, non-trivial probabilities."""
    torch.manual_seed(0)
    options = {"t1_channels": 3, "t2_channels": 1}
    save_checkpoint(path, {
        "model": models.build("fc_siam_diff", **options).state_dict(), "model_name": "fc_siam_diff",
        "model_options": options,
        "normalization": {"A": BandStats("optical", (10.0,) * 3, (250.0,) * 3, False).to_dict(),
                          "B": BandStats("sar", (-25.0,), (0.0,), False).to_dict()},
        "bands": {"A": 3, "B": 1, "label": 1}, "inputs": ["A", "B"], "config": {"crop": WINDOW}, "epoch": 1,
    })
    return path


class KillBlockOnce(WorkerPlugin):
    """Kills its worker process when the first block task starts there (once per marker file)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def transition(self, key, start, finish, **kwargs) -> None:
        if finish == "executing" and "detect-block" in str(key) and not os.path.exists(self.marker):
            Path(self.marker).write_text(str(key))
            os._exit(1)


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("blocks")
    return write_group(root / "groups" / "g1"), write_checkpoint(root / "model.pt")


@pytest.fixture(scope="module")
def reference(scene, tmp_path_factory) -> dict[str, np.ndarray]:
    group, checkpoint = scene
    result = detect_group(group, checkpoint, tmp_path_factory.mktemp("one"), SETTINGS)
    return _rasters(result.probability.parent)


@pytest.fixture(scope="module")
def client():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as dask:
        yield dask


def _rasters(folder: Path) -> dict[str, np.ndarray]:
    out = {}
    for name in ("change_probability.tif", "change_class.tif"):
        with rasterio.open(folder / name) as dataset:
            out[name] = dataset.read()
            out[name + ":georef"] = np.array([*dataset.transform, dataset.crs.to_epsg(), dataset.nodata])
    return out


def _assert_same(rasters: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> None:
    assert rasters.keys() == reference.keys()
    for name, array in reference.items():
        assert np.array_equal(rasters[name], array, equal_nan=True), name  # bit for bit (NaN = nodata)


def test_block_tasks_on_a_cluster_give_the_single_process_rasters(scene, reference, client, tmp_path):
    group, checkpoint = scene
    result = detect_group(group, checkpoint, tmp_path / "out", BLOCK_TASKS)
    assert result.blocks_total == 12 and result.blocks_done == 12
    _assert_same(_rasters(tmp_path / "out"), reference)
    probability = reference["change_probability.tif"]
    assert len(np.unique(probability[np.isfinite(probability)])) > 5000  # a real model's varied output
    # The 12 block tasks ran on the workers, each worker process loading the model once at most.
    loads = client.run(model_loads)
    assert 1 <= sum(loads.values()) and max(loads.values()) == 1
    assert not (tmp_path / "out" / ".detect-partial").exists()


def test_a_killed_worker_block_is_recomputed_and_the_rasters_are_identical(scene, reference, client, tmp_path):
    group, checkpoint = scene
    marker = tmp_path / "killed"
    client.register_plugin(KillBlockOnce(str(marker)), name="kill-block-once")
    try:
        detect_group(group, checkpoint, tmp_path / "out", BLOCK_TASKS)
    finally:
        client.unregister_worker_plugin("kill-block-once")
    assert marker.read_text().startswith("detect-block-g1-")  # a worker died running a block task
    _assert_same(_rasters(tmp_path / "out"), reference)


def test_blocks_in_any_order_and_process_assemble_to_the_same_rasters(scene, reference, tmp_path):
    """The writer's completion does not depend on which process computed which block, or when."""
    group, checkpoint = scene
    run = set_up(group, checkpoint, SETTINGS, None)
    staging = Staging(tmp_path / "staging")
    blocks = run.layout.blocks()
    staging.open(run.fingerprint, "run-1", [f"r{i}_c{j}" for i, j in blocks])
    job = BlockJob(group, checkpoint, SETTINGS, staging.root, run.fingerprint)
    for block in reversed(blocks):
        stage_block(job, block)
    assemble(staging, run, ("float32", 0.5), blocks, lambda done: None)
    for n, (i, j) in enumerate(blocks):
        r0, c0, r1, c1 = run.layout.core(i, j)
        assert np.array_equal(staging.block(f"r{i}_c{j}", "probability"),
                              reference["change_probability.tif"][:, r0:r1, c0:c1], equal_nan=True), n
    assert not list(staging.sums.iterdir())  # sums are deleted once completed


def test_a_block_task_with_other_inputs_refuses_to_stage(scene, tmp_path):
    group, checkpoint = scene
    job = BlockJob(group, checkpoint, SETTINGS, tmp_path / "staging", "another-run")
    with pytest.raises(ChangeflowError, match="differ from the writer's"):
        stage_block(job, (0, 0))
    assert not (tmp_path / "staging").exists()


def test_cuda_on_a_cluster_without_gpu_workers_is_refused_before_anything_is_staged(scene, client, tmp_path):
    group, checkpoint = scene
    with pytest.raises(ConfigError, match=r"device 'cuda' asks for a GPU but no worker of the Dask cluster at tcp://"):
        detect_group(group, checkpoint, tmp_path / "out", replace(BLOCK_TASKS, device="cuda"))
    assert not (tmp_path / "out").exists()
    assert device_resources(client, "auto") is None and device_resources(client, "cpu") is None


def test_a_checkpoint_no_worker_can_read_is_named_with_the_worker(scene, client, tmp_path):
    group, _ = scene
    missing = tmp_path / "elsewhere" / "model.pt"
    with pytest.raises(InputError, match=r"model\.pt: not found on Dask worker tcp://127\.0\.0\.1:\d+; every worker"):
        check_workers(client, [group, missing])
    job = BlockJob(group, missing, BLOCK_TASKS, tmp_path / "staging", "fingerprint")
    with pytest.raises(InputError, match="not found on Dask worker"):
        stage_on_cluster(client, job, [(0, 0)], Staging(tmp_path / "staging"))
    assert not (tmp_path / "staging").exists()  # nothing staged
