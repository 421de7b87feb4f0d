"""The GPU slot: two GPU runs (trainings, detections) never share a GPU.

With a Prefect server (``PREFECT_API_URL``) each run holds a slot of the global concurrency limit
``gpu`` (created with one slot when missing; raise it with ``prefect gcl update gpu --limit N`` on a
multi-GPU host). Without one (the embedded API), a machine-local file lock does the job: the embedded
API keeps slot leases in memory, so a run killed while holding a slot leaked it for good and every
later run waited forever (seen: a training killed mid-epoch left ``active_slots`` at 1), whereas the
kernel releases a file lock when its process dies.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectNotFound
from prefect.settings import get_current_settings

GPU_LIMIT = "gpu"
GPU_LOCK = Path(tempfile.gettempdir()) / "changeflow-gpu.lock"  # CHANGEFLOW_GPU_LOCK overrides it


def ensure_gpu_limit(slots: int = 1) -> None:
    """Create the ``gpu`` global concurrency limit when the API has none."""
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(GPU_LIMIT)
        except ObjectNotFound:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=GPU_LIMIT, limit=slots))


def uses_gpu(device: str) -> bool:
    """Whether a run on ``device`` ("auto", "cpu", "cuda", "cuda:1") will use a GPU here."""
    import torch

    return device != "cpu" and torch.cuda.is_available()


@contextmanager
def gpu_slot(needed: bool = True) -> Iterator[None]:
    """Hold the GPU for the duration: a ``gpu`` limit slot with a Prefect server, else a file lock.

    ``needed=False`` (a CPU run) holds nothing: CPU runs do not queue behind GPU work. A failed
    lease renewal (a server restart) does not abort the run holding the slot.
    """
    if not needed:
        yield
        return
    if get_current_settings().api.url:
        ensure_gpu_limit()
        with concurrency(GPU_LIMIT, occupy=1, strict=True, raise_on_lease_renewal_failure=False):
            yield
        return
    with FileLock(os.environ.get("CHANGEFLOW_GPU_LOCK", GPU_LOCK)):
        yield
