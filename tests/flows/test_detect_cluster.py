"""Detection scaled out: groups as tasks on a Dask cluster with a GPU-labelled worker, blocks under torchrun."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from distributed import Client, LocalCluster

from flows.detect import run_detect
from pipeline.config import DetectConfig, load_config
from pipeline.detect.inference import model_loads
from pipeline.detect.sliding import DetectSettings, detect_group
from tests.pipeline.detect.test_cluster_blocks import write_checkpoint, write_group

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
RASTERS = ("change_probability.tif", "change_class.tif")


@pytest.fixture(scope="module")
def prefect_backend():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("prepared")
    for seed, name in enumerate(("g1", "g2")):
        write_group(root / "prepared" / "groups" / name, seed=seed)
    write_checkpoint(root / "model.pt")
    return root


def _config(root: Path, name: str, extra: str = "") -> Path:
    path = root / f"{name}.yaml"
    path.write_text(f"prepared: {root / 'prepared'}\ncheckpoint: {root / 'model.pt'}\nblock_size: 64\nwindow: 48\n"
                    f"probability_dtype: float32\nthreads: 1\n{extra}")
    return path


@pytest.fixture(scope="module")
def gpu_cluster():
    """One CPU worker and one worker started as users start GPU workers (`--resources GPU=1`); 1 thread each."""
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        worker = subprocess.Popen(
            [str(BIN / "dask"), "worker", cluster.scheduler_address, "--nthreads", "1", "--resources", "GPU=1",
             "--name", "gpu-worker", "--no-dashboard"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            with Client(cluster.scheduler_address) as client:
                client.wait_for_workers(2, timeout=120)
                yield cluster.scheduler_address, client
        finally:
            worker.terminate()
            worker.wait(timeout=60)


def _bytes_without_run_id(path: Path) -> bytes:
    """The file's bytes with its RUN_ID tag value blanked (run ids are new per run, of one length)."""
    with rasterio.open(path) as dataset:
        run_id = dataset.tags()["RUN_ID"].encode()
    return path.read_bytes().replace(run_id, b"x" * len(run_id))


def test_two_groups_on_a_cluster_match_the_sequential_run_and_use_only_the_gpu_worker(
        prefect_backend, prepared, gpu_cluster):
    address, client = gpu_cluster
    config = _config(prepared, "detect")
    sequential = run_detect(config, prepared / "sequential")
    clustered = run_detect(config, prepared / "cluster", dask_address=address)
    assert set(sequential) == set(clustered) == {"g1", "g2"}
    for group in ("g1", "g2"):
        assert "error" not in clustered[group], clustered[group]
        for name in RASTERS:
            assert _bytes_without_run_id(prepared / "cluster" / group / name) == \
                _bytes_without_run_id(prepared / "sequential" / group / name)
        cluster_polygons = gpd.read_file(prepared / "cluster" / group / "changes.gpkg", layer="changes")
        sequential_polygons = gpd.read_file(prepared / "sequential" / group / "changes.gpkg", layer="changes")
        assert len(cluster_polygons) == len(sequential_polygons) > 0
        assert cluster_polygons.drop(columns="run_id").equals(sequential_polygons.drop(columns="run_id"))
        assert cluster_polygons.crs == sequential_polygons.crs
    # device auto on a cluster with a GPU worker: both group tasks asked for {"GPU": 1} and ran there,
    # loading the model once in that worker process; the CPU worker never loaded it.
    loads = client.run(model_loads)
    gpu_worker = next(a for a, info in client.scheduler_info()["workers"].items() if info["name"] == "gpu-worker")
    assert loads[gpu_worker] == 1
    assert all(count == 0 for worker, count in loads.items() if worker != gpu_worker)


def test_block_tasks_from_the_cli_config_match_the_sequential_run(prefect_backend, prepared, gpu_cluster):
    address, _ = gpu_cluster
    config = _config(prepared, "blocks", f"dask_address: {address}\nblock_tasks: true\ngroups: [g1]\n")
    summaries = run_detect(config, prepared / "blocks")
    assert "error" not in summaries["g1"], summaries["g1"]
    reference = prepared / "sequential" / "g1"
    if not reference.exists():
        run_detect(_config(prepared, "detect"), prepared / "sequential")
    for name in RASTERS:
        assert _bytes_without_run_id(prepared / "blocks" / "g1" / name) == _bytes_without_run_id(reference / name)


def _changeflow(*args: str, env: dict[str, str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "changeflow"), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def test_an_unreachable_scheduler_is_one_line_and_writes_nothing(prepared, tmp_path):
    started = time.monotonic()
    result = _changeflow("detect", "-c", str(_config(prepared, "detect")), "-o", str(tmp_path / "out"),
                         "--dask-address", "tcp://127.0.0.1:9")
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in lines[0]
    assert not any((tmp_path / "out").rglob("*"))
    assert time.monotonic() - started < 120


def test_detection_under_torchrun_on_two_ranks_gives_the_one_process_rasters(prefect_backend, prepared, tmp_path):
    from prefect.settings import PREFECT_API_URL

    config = _config(prepared, "torchrun", "groups: [g1]\n")
    # Rank 0 runs the detect flow against the test's Prefect server (a server as on a cluster, and no
    # ephemeral one started in the subprocess).
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PREFECT_API_URL": PREFECT_API_URL.value()}
    two = subprocess.run(
        [str(BIN / "torchrun"), "--standalone", "--nproc-per-node", "2", "--no-python", str(BIN / "changeflow"),
         "detect", "-c", str(config), "-o", str(tmp_path / "two")], capture_output=True, text=True, timeout=600,
        env=env)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "rank 1: 6 blocks computed" in two.stderr  # half of the 12 blocks, by plan index
    one = detect_group(prepared / "prepared" / "groups" / "g1", prepared / "model.pt", tmp_path / "one",
                       DetectSettings.from_config(load_config(config, DetectConfig)))
    for name, reference in ((RASTERS[0], one.probability), (RASTERS[1], one.classes)):
        with rasterio.open(reference) as a, rasterio.open(tmp_path / "two" / "g1" / name) as b:
            assert np.array_equal(a.read(), b.read(), equal_nan=True), name  # bit for bit
            assert (a.crs, a.transform, a.dtypes) == (b.crs, b.transform, b.dtypes)
    assert not (tmp_path / "two" / "g1" / ".detect-partial").exists()
