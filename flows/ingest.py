"""Scheduled ingestion: new scenes in an inbox → catalog → groups (with earlier scenes) → prepare
→ detection with a chosen checkpoint → inputs archived.

Each run claims the inbox's new GOLD-named files and provider products (GF-2 / GF-3 / Sentinel-2
folders and archives) by atomic rename, so overlapping runs never share a scene; a product is
claimed only once it has stayed unchanged between two polls ``settle_seconds`` apart, so a folder
still being copied is never claimed half-written (see :mod:`pipeline.prepare.inbox`). A registry of content
fingerprints keeps a scene from being processed twice. Products are read into the workspace's
``products`` cache (``prepare.products.cache`` overrides it), keyed by their identity, so an
archived product is not read again when later scenes are grouped with it. A scene or product the
catalog refuses is reported by name and moved to ``rejected/`` with its reason; the others go on.

No scene is dropped or stranded (:mod:`pipeline.ingest.ingest_pass`): a configuration that would
fail every group is refused before anything is claimed; a failed group stays pending and is retried
by the next passes up to ``max_attempts``; the claims of a dead pass go back to the inbox; a late
scene re-opens its group. Serve it with ``changeflow serve --config ingest.yaml --cron "*/30 * * * *"``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from prefect import flow

from flows.gpu import gpu_slot, uses_gpu
from pipeline.config import IngestConfig, load_config
from pipeline.detect.cluster import connect
from pipeline.detect.staging import new_run_id
from pipeline.ingest.ingest_pass import IngestPass
from pipeline.ingest.preflight import check_ingest_config


@flow(name="ingest", log_prints=True)
def ingest_flow(config_path: str) -> dict:
    """One ingestion pass over the inbox; returns its record (see :class:`pipeline.ingest.ingest_pass.IngestPass`)."""
    config = load_config(Path(config_path), IngestConfig)
    check_ingest_config(config)
    address = config.detect_config().dask_address
    gpu = uses_gpu(config.detect_config().device) and not address  # on a cluster, Dask resources gate the GPUs
    with cluster_client(address), IngestPass(config, new_run_id()) as ingest:
        for run_id, names in ingest.recover().items():
            print(f"returned to the inbox from stopped pass {run_id}: {', '.join(names) or 'nothing'}")
        claimed = ingest.claim()
        print(f"claimed {len(claimed)} scene(s)" if claimed else "inbox: nothing new")
        for job in ingest.plan():
            print(f"group {job.group.name}: {ingest.process(job, device_slot=gpu_slot(gpu))}")
        report = ingest.finish()
    for name, reason in report["refused"].items():
        print(f"refused {name}: {reason}")
    for name, pending in report["pending"].items():
        print(f"pending {name} (attempt {pending['attempts']} of {config.max_attempts}): {pending['error']}")
    return report


@contextmanager
def cluster_client(address: str | None) -> Iterator[None]:
    """The Dask client of ``address`` as the current one for the pass: with ``detect.block_tasks`` each
    group's blocks become tasks on that cluster. Nothing without an address.

    Raises:
        ChangeflowError: the scheduler cannot be reached (before anything is claimed).
    """
    if not address:
        yield
        return
    with connect(address) as client, client.as_current():
        yield
