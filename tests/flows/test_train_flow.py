"""GPU exclusivity of the flows: the Prefect limit "gpu" with a server, a file lock without one."""

from __future__ import annotations

import pytest

from flows.gpu import GPU_LIMIT
from flows.train import train_flow
from tests.conftest import write_folder_dataset

pytestmark = pytest.mark.integration


def test_train_flow_runs_under_the_gpu_limit(tmp_path, monkeypatch):
    from prefect.client.orchestration import get_client

    import flows.train

    monkeypatch.setattr(flows.train, "uses_gpu", lambda device: True)  # as on a GPU host
    from prefect.testing.utilities import prefect_test_harness

    data = write_folder_dataset(tmp_path / "data", tiles=4)
    config = tmp_path / "train.yaml"
    config.write_text(
        f"data: {data}\nmodel: fc_ef\nmodalities: {{A: optical, B: optical}}\nepochs: 1\nbatch_size: 2\nworkers: 0\n"
    )
    with prefect_test_harness(server_startup_timeout=120):
        result = train_flow(str(config), str(tmp_path / "run"), device="cpu")
        with get_client(sync_client=True) as client:
            limit = client.read_global_concurrency_limit_by_name(GPU_LIMIT)
    assert limit.limit == 1 and limit.active_slots == 0  # held during training, released after
    assert set(result["test"]) == {"precision", "recall", "f1", "iou", "oa", "kappa"}
    assert (tmp_path / "run" / "best.pt").exists()


def test_without_a_server_the_gpu_lock_dies_with_its_holder(tmp_path, monkeypatch):
    import subprocess
    import sys

    from filelock import FileLock, Timeout

    import flows.train

    lock = tmp_path / "gpu.lock"
    monkeypatch.setenv("CHANGEFLOW_GPU_LOCK", str(lock))
    holder = subprocess.Popen(
        [sys.executable, "-c", f"from filelock import FileLock; l = FileLock({str(lock)!r}); l.acquire(); "
         "print('held', flush=True); import time; time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(Timeout):
            FileLock(lock).acquire(timeout=0.2)  # exclusive while the holder lives
    finally:
        holder.kill()
        holder.wait()
    with flows.train.gpu_slot(needed=True):  # a killed holder leaks nothing
        pass
