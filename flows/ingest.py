"""Scheduled ingestion: new scenes in an inbox → catalog → groups (with earlier scenes) → prepare
→ detection with a chosen checkpoint → inputs archived.

Each run claims the inbox's new files by atomic rename, so overlapping runs never share a scene,
and a registry of fingerprints keeps a scene from being processed twice. Serve it with
``changeflow serve --config ingest.yaml --cron "*/30 * * * *"``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from prefect import flow

from flows.detect import detect_one
from flows.prepare import process_group
from pipeline.catalog import build_catalog, scan_inbox
from pipeline.config import IngestConfig, PrepareConfig, load_config
from pipeline.detect import new_run_id
from pipeline.errors import ChangeflowError
from pipeline.inbox import Workspace, archive, claim_new_scenes
from pipeline.overlap import build_groups


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
    entries = scan_inbox(workspace.claim_dir(run_id), sensors)
    if workspace.archive.exists():
        entries += scan_inbox(workspace.archive, sensors)
    prepare_config = config.prepare_config(entries)
    scenes, failures = build_catalog(prepare_config.scenes, prepare_config)
    refused_paths = {entry.path for entry, _ in failures}
    report["refused"] = {entry.path.name: reason for entry, reason in failures}
    groups, unpaired, crs = build_groups(scenes, prepare_config.min_overlap)
    report["waiting"] = {scene_id: reason for scene_id, reason in unpaired.items()}
    detect_config = config.detect_config()
    for group in groups:
        if not any(member.path.parent == workspace.claim_dir(run_id) for member in group.members.values()):
            continue
        try:
            process_group(group, crs, prepare_config, workspace.root / "prepared")
            summary = detect_one(
                workspace.root / "prepared" / "groups" / group.name, detect_config,
                workspace.root / "detections" / group.name, False,
            )
            report["groups"][group.name] = {"polygons": summary["polygons"], "n_polygons": summary["n_polygons"]}
        except (ChangeflowError, ValueError) as exc:
            report["groups"][group.name] = {"error": str(exc)}
        print(f"group {group.name}: {report['groups'][group.name]}")
    rejected = workspace.root / "rejected"
    rejected.mkdir(parents=True, exist_ok=True)
    for path in claimed:
        if path in refused_paths:
            path.rename(rejected / path.name)
            (rejected / f"{path.name}.reason.txt").write_text(report["refused"][path.name] + "\n")
    archive([p for p in claimed if p.exists()], workspace, run_id)
    shutil.rmtree(workspace.claim_dir(run_id), ignore_errors=True)
    (workspace.root / "runs").mkdir(exist_ok=True)
    (workspace.root / "runs" / f"{run_id}.json").write_text(json.dumps(report, indent=1))
    return report
