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
Serve it with ``changeflow serve --config ingest.yaml --cron "*/30 * * * *"``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from prefect import flow

from flows.gpu import gpu_slot, uses_gpu
from pipeline.config import IngestConfig, PrepareConfig, load_config
from pipeline.detect.group_run import run_group
from pipeline.detect.staging import new_run_id
from pipeline.errors import ChangeflowError
from pipeline.prepare.catalog import build_catalog, scan_inbox
from pipeline.prepare.group_build import process_group
from pipeline.prepare.inbox import Workspace, archive, claim_new_scenes, reject
from pipeline.prepare.overlap import build_groups


@flow(name="ingest", log_prints=True)
def ingest_flow(config_path: str) -> dict:
    """One ingestion pass over the inbox; returns what it claimed, prepared, detected and refused."""
    config = load_config(Path(config_path), IngestConfig)
    workspace = Workspace(config.workspace)
    run_id = new_run_id()
    claimed = claim_new_scenes(config.inbox, workspace, run_id, settle_seconds=config.settle_seconds)
    report: dict = {"run_id": run_id, "claimed": [p.name for p in claimed], "groups": {}, "refused": {}}
    if not claimed:
        shutil.rmtree(workspace.claim_dir(run_id), ignore_errors=True)
        print("inbox: nothing new")
        return report
    sensors = PrepareConfig.model_fields["inbox_sensors"].get_default(call_default_factory=True)
    sensors = config.prepare.get("inbox_sensors", sensors)
    claim_dir = workspace.claim_dir(run_id)
    entries = scan_inbox(claim_dir, sensors)
    if workspace.archive.exists():
        entries += [e for e in scan_inbox(workspace.archive, sensors) if e.path != workspace.duplicates]
    prepare_config = config.prepare_config(entries)
    scenes, failures = build_catalog(prepare_config.scenes, prepare_config)
    refused_paths = {entry.path for entry, _ in failures}
    report["refused"] = {entry.path.name: reason for entry, reason in failures}
    for name, reason in report["refused"].items():
        print(f"refused {name}: {reason}")
    groups, unpaired, crs = build_groups(scenes, prepare_config.min_overlap)
    report["waiting"] = {scene_id: reason for scene_id, reason in unpaired.items()}
    detect_config = config.detect_config()
    for group in groups:
        # a product's scene is its read GeoTIFF in the cache; ``source`` is the claimed product
        if not any((member.source or member.path).parent == claim_dir for member in group.members.values()):
            continue
        try:
            process_group(group, crs, prepare_config, workspace.root / "prepared")
            summary = run_group(
                workspace.root / "prepared" / "groups" / group.name, detect_config,
                workspace.root / "detections" / group.name, device_slot=gpu_slot(uses_gpu(detect_config.device)),
            )
            report["groups"][group.name] = {"polygons": summary["polygons"], "n_polygons": summary["n_polygons"]}
        except (ChangeflowError, ValueError) as exc:
            report["groups"][group.name] = {"error": str(exc)}
        print(f"group {group.name}: {report['groups'][group.name]}")
    for path in claimed:
        if path in refused_paths:
            reject(path, workspace, run_id, report["refused"][path.name])
    archive([p for p in claimed if p.exists()], workspace, run_id)
    shutil.rmtree(claim_dir, ignore_errors=True)
    (workspace.root / "runs").mkdir(exist_ok=True)
    (workspace.root / "runs" / f"{run_id}.json").write_text(json.dumps(report, indent=1))
    return report
