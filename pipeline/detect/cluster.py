"""Detection on a Dask distributed cluster: reaching it, gating GPU work, checking workers, block tasks.

GPU work is gated by the Dask resource ``GPU`` (workers started with ``--resources GPU=1``, or dask-cuda's
one worker per GPU): a task that asks ``{"GPU": 1}`` runs only on such a worker, one at a time per GPU.
Prefect's global ``gpu`` limit is for runs outside a cluster; a task gated here holds no Prefect slot.

Workers read the prepared groups and the checkpoint themselves (a shared file system); only paths and
settings travel in the task graph. Each worker process keeps the models it loaded
(:func:`~pipeline.detect.inference.cached_model`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline.detect.blocks import BlockJob, pending, stage_block
from pipeline.detect.staging import Staging
from pipeline.detect.windows import Block, block_id
from pipeline.errors import ChangeflowError, ConfigError, InputError

CONNECT_SECONDS = 10
GPU = "GPU"  # the Dask resource naming a GPU


def connect(address: str, timeout: float = CONNECT_SECONDS) -> Any:
    """A client of the Dask scheduler at ``address``, or a one-line error when it cannot be reached.

    Args:
        address: the scheduler, ``tcp://HOST:PORT``.
        timeout: seconds to wait for it.

    Returns:
        A ``distributed.Client`` (not set as the default client); close it when done.

    Raises:
        ChangeflowError: the scheduler does not answer (naming the address and the reason).
    """
    from distributed import Client

    try:
        return Client(address, timeout=f"{timeout}s", set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ChangeflowError(f"cannot reach the Dask scheduler at {address} ({reason}); start it with "
                              "`dask scheduler` and give its address as tcp://HOST:PORT") from None


def gpu_workers(client: Any) -> list[str]:
    """The workers offering the ``GPU`` resource.

    Args:
        client: a ``distributed.Client``.

    Returns:
        Their addresses, sorted.
    """
    workers = client.scheduler_info(n_workers=-1)["workers"]
    return sorted(address for address, info in workers.items() if info.get("resources", {}).get(GPU, 0) >= 1)


def device_resources(client: Any, device: str) -> dict[str, int] | None:
    """The Dask resources a detection task asks for on this cluster.

    Args:
        client: a ``distributed.Client``.
        device: the configured device: "cpu" asks for nothing; "cuda" (or "cuda:N") asks for a GPU;
            "auto" asks for a GPU when the cluster has a GPU worker, else for nothing.

    Returns:
        ``{"GPU": 1}`` or None.

    Raises:
        ConfigError: a CUDA device is asked for and no worker offers the GPU resource.
    """
    if device == "cpu":
        return None
    if gpu_workers(client):
        return {GPU: 1}
    if device.startswith("cuda"):
        raise ConfigError(f"device '{device}' asks for a GPU but no worker of the Dask cluster at "
                          f"{client.scheduler.address} offers one (start GPU workers with `dask worker ADDRESS "
                          "--resources GPU=1`, or use dask-cuda)")
    return None


def _device_type(device: str) -> str:
    """On a worker: the type of the device a detection set up there would use."""
    from pipeline.learn.device import resolve_device

    return resolve_device(device).type


def worker_device(client: Any, device: str) -> str:
    """The device type detection tasks get on this cluster, as a worker they would go to resolves it.

    Args:
        client: a ``distributed.Client``.
        device: the configured device.

    Returns:
        "cpu" or "cuda".

    Raises:
        ConfigError: a CUDA device is asked for and no worker offers the GPU resource, or the worker has none.
    """
    resources = device_resources(client, device)
    return client.submit(_device_type, device, resources=resources, pure=False).result()


def _unreadable(paths: list[str]) -> dict[str, str]:
    """On a worker: each path it cannot read, with the reason."""
    problems = {}
    for path in paths:
        if not os.path.exists(path):
            problems[path] = "not found"
        elif not os.access(path, os.R_OK):
            problems[path] = "not readable"
    return problems


def check_workers(client: Any, paths: list[Path]) -> None:
    """Every worker can read ``paths`` (the checkpoint, the prepared groups), before any task is sent.

    Args:
        client: a ``distributed.Client``.
        paths: files or folders every worker reads.

    Raises:
        InputError: naming the first path a worker cannot read, the worker and the reason.
    """
    answers = client.run(_unreadable, [str(path) for path in paths])
    for worker, problems in sorted(answers.items()):
        for path, problem in problems.items():
            raise InputError(Path(path), f"{problem} on Dask worker {worker}; every worker must see the "
                             "prepared groups and the checkpoint at the same paths (a shared file system)")


@contextmanager
def dask_client() -> Iterator[Any]:
    """The Dask client at hand: a worker's own (seceding from its thread while it waits), else the default one.

    Yields:
        A ``distributed.Client``, or None outside any cluster (or without distributed installed).
    """
    try:
        from distributed import get_client, get_worker, worker_client
    except ImportError:
        yield None
        return
    try:
        get_worker()
    except ValueError:
        try:
            client = get_client()
        except ValueError:
            client = None
        yield client
        return
    with worker_client() as client:  # a group task waiting on its block tasks frees its worker thread
        yield client


def stage_on_cluster(client: Any, job: BlockJob, blocks: list[Block], staging: Staging) -> None:
    """Each block not yet staged as a task on the cluster; returns when all are staged.

    A task lost with its worker is run again by Dask elsewhere (block tasks are idempotent).

    Args:
        client: a ``distributed.Client``.
        job: the group, checkpoint, settings and staging folder.
        blocks: the blocks not finished by the writer.
        staging: the group's staging folder.

    Raises:
        ConfigError: for a CUDA device on a cluster without GPU workers.
        InputError: for a checkpoint or group a worker cannot read.
        ChangeflowError: as :func:`~pipeline.detect.blocks.stage_block`.
    """
    from distributed import wait

    resources = device_resources(client, job.settings.device)
    check_workers(client, [job.checkpoint, job.group_dir, staging.root])
    futures = [client.submit(stage_block, job, block, resources=resources, pure=False,
                             key=f"detect-block-{job.group_dir.name}-{block_id(*block)}-{os.urandom(4).hex()}")
               for block in pending(staging, blocks)]
    wait(futures)
    for future in futures:
        future.result()  # re-raises a task's error
