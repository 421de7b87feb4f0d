"""A flow on threads, or on an existing Dask cluster through prefect-dask (``--dask-address``)."""

from __future__ import annotations

from typing import Any

from pipeline.detect.cluster import connect


def with_dask(flow: Any, dask_address: str | None) -> Any:
    """``flow`` itself, or ``flow`` with its tasks on the Dask scheduler at ``dask_address`` (checked first).

    Args:
        flow: a Prefect flow.
        dask_address: ``tcp://HOST:PORT``, or None for threads.

    Returns:
        The flow to call.

    Raises:
        ChangeflowError: the scheduler cannot be reached (nothing is written).
    """
    if not dask_address:
        return flow
    from prefect_dask import DaskTaskRunner

    connect(dask_address).close()
    return flow.with_options(task_runner=DaskTaskRunner(address=dask_address))
