"""GPU exclusivity of the flows: the Prefect limit "gpu" with a server, a file lock without one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from prefect.settings import PREFECT_API_URL, temporary_settings

import flows.gpu
import flows.train
from flows.gpu import GPU_LIMIT, gpu_slot
from flows.train import train_flow
from tests.conftest import write_folder_dataset

pytestmark = pytest.mark.integration

FAKE_RESULT = {"best_epoch": 0, "val_iou": 0.5, "test": {"f1": 0.5}, "steps": 4, "epochs_run": 1, "stopped": "epochs",
               "labels": {"train": {"tiles": 2, "labelled_pixels": 8192, "change_pixels": 100}}}


def lock_is_free(lock: Path) -> bool:
    """Whether another process can take the file lock right now (timeout 0)."""
    probe = (
        "import sys; from filelock import FileLock, Timeout\n"
        f"try:\n    FileLock({str(lock)!r}).acquire(timeout=0)\nexcept Timeout:\n    sys.exit(3)\n"
    )
    code = subprocess.run([sys.executable, "-c", probe], timeout=60).returncode
    assert code in (0, 3), f"lock probe crashed with exit code {code}"
    return code == 0


def write_train_config(tmp_path: Path) -> Path:
    data = write_folder_dataset(tmp_path / "data", tiles=4)
    config = tmp_path / "train.yaml"
    config.write_text(
        f"data: {data}\nmodel: fc_ef\nmodalities: {{A: optical, B: optical}}\nepochs: 1\nbatch_size: 2\nworkers: 0\n"
    )
    return config


def test_train_flow_holds_a_gpu_limit_slot_while_training(tmp_path, monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.testing.utilities import prefect_test_harness

    monkeypatch.setattr(flows.train, "uses_gpu", lambda device: True)  # as on a GPU host
    real_train = flows.train.train
    seen = []

    def observed_train(*args, **kwargs):
        with get_client(sync_client=True) as client:
            seen.append(client.read_global_concurrency_limit_by_name(GPU_LIMIT).active_slots)
        return real_train(*args, **kwargs)

    monkeypatch.setattr(flows.train, "train", observed_train)
    config = write_train_config(tmp_path)
    with prefect_test_harness(server_startup_timeout=120):
        result = train_flow(str(config), str(tmp_path / "run"), device="cpu")
        with get_client(sync_client=True) as client:
            limit = client.read_global_concurrency_limit_by_name(GPU_LIMIT)
    assert seen == [1]  # one slot held while training ran
    assert limit.limit == 1 and limit.active_slots == 0  # released after
    assert set(result["test"]) == {"precision", "recall", "f1", "iou", "oa", "kappa"}
    assert (tmp_path / "run" / "best.pt").exists()


def test_without_a_server_the_train_flow_holds_the_file_lock_while_training(tmp_path, monkeypatch):
    lock = tmp_path / "gpu.lock"
    monkeypatch.setenv("CHANGEFLOW_GPU_LOCK", str(lock))
    monkeypatch.setattr(flows.train, "uses_gpu", lambda device: True)
    held = []

    def observed_train(config, out, **kwargs):
        held.append(not lock_is_free(lock))
        return FAKE_RESULT

    monkeypatch.setattr(flows.train, "train", observed_train)
    config = write_train_config(tmp_path)
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        result = train_flow.fn(str(config), str(tmp_path / "run"), device="cpu")
    assert held == [True]
    assert result == FAKE_RESULT
    assert lock_is_free(lock)  # released after


def test_a_cpu_training_does_not_take_the_gpu_lock(tmp_path, monkeypatch):
    lock = tmp_path / "gpu.lock"
    monkeypatch.setenv("CHANGEFLOW_GPU_LOCK", str(lock))
    monkeypatch.setattr(flows.train, "uses_gpu", lambda device: False)
    free = []

    def observed_train(config, out, **kwargs):
        free.append(lock_is_free(lock))
        return FAKE_RESULT

    monkeypatch.setattr(flows.train, "train", observed_train)
    config = write_train_config(tmp_path)
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        train_flow.fn(str(config), str(tmp_path / "run"), device="cpu")
    assert free == [True]


def test_uses_gpu_is_false_for_cpu_and_without_cuda(monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert not flows.gpu.uses_gpu("auto")
    assert not flows.gpu.uses_gpu("cuda")
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    assert not flows.gpu.uses_gpu("cpu")
    assert flows.gpu.uses_gpu("auto")
    assert flows.gpu.uses_gpu("cuda:1")


def test_without_a_server_the_gpu_lock_dies_with_its_holder(tmp_path, monkeypatch):
    from filelock import FileLock, Timeout

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
    with temporary_settings(restore_defaults={PREFECT_API_URL}), gpu_slot(needed=True):
        assert not lock_is_free(lock)  # a killed holder leaks nothing: the slot is ours now
    assert lock_is_free(lock)
