"""The detect flow: per prepared group, sliding-window inference → polygons → evaluation report.

Inference holds a slot of the global concurrency limit ``gpu`` (as training does). A group that
cannot be detected (e.g. its SAR image failed co-registration) is reported and the others go on.
Outputs per group in ``OUT/{group}/``: ``change_probability.tif``, ``change_class.tif`` (COGs),
``changes.gpkg`` (layer ``changes``) and, when the group has a label, ``report.md`` /
``report.json`` / ``quicklook.png``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import yaml
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.gpu import gpu_slot, uses_gpu
from flows.progress import progress_bar
from pipeline.config import DetectConfig, load_config
from pipeline.detect.evaluate import evaluate_prediction, semantic_metrics, write_report
from pipeline.detect.sliding import detect_group
from pipeline.detect.vectorize import vectorize
from pipeline.errors import ChangeflowError
from pipeline.learn.checkpoint import file_sha256, load_checkpoint

REPORT = "detect_report.json"


def prepared_groups(prepared: Path, names: list[str] | None) -> list[Path]:
    """Finished group folders of a prepare output (those with a manifest)."""
    folders = sorted(p.parent for p in (prepared / "groups").glob("*/manifest.json"))
    if names is not None:
        known = {p.name for p in folders}
        missing = sorted(set(names) - known)
        if missing:
            raise ChangeflowError(f"{prepared}: no prepared group named {', '.join(missing)}")
        folders = [p for p in folders if p.name in names]
    if not folders:
        raise ChangeflowError(f"{prepared}: no prepared groups (run `changeflow prepare` first)")
    return folders


def provenance(group_dir: Path, inputs: list[str]) -> dict[str, str]:
    """t1/t2 scene ids, dates and sensors of a group, from its prepare manifest."""
    members = json.loads((group_dir / "manifest.json").read_text()).get("members", {})
    out = {}
    for name, role in zip(("t1", "t2"), inputs):
        member = members.get(role, {})
        out[f"{name}_scene_id"] = member.get("id", "")
        out[f"{name}_date"] = member.get("date") or ""
        out[f"{name}_sensor"] = member.get("sensor", "")
    return out


def detect_one(group_dir: Path, config: DetectConfig, out: Path, show_progress: bool) -> dict:
    """Detect, vectorise and (with a label) evaluate one group; returns its summary."""
    timings: dict[str, float] = {}
    checkpoint = load_checkpoint(config.checkpoint)
    tags = provenance(group_dir, list(checkpoint["inputs"]))
    started = time.perf_counter()
    with gpu_slot(uses_gpu(config.device)), progress_bar("detect", show_progress) as advance:
        result = detect_group(
            group_dir, config.checkpoint, out, window=config.window, overlap=config.overlap,
            batch_size=config.batch_size, tta=config.tta, device=config.device, block_size=config.block_size,
            probability_dtype=config.probability_dtype, threshold=config.threshold, weighting=config.weighting,
            provenance={key.upper(): value for key, value in tags.items()}, progress=advance, prompt=config.prompt,
        )
    timings["detect"] = time.perf_counter() - started
    started = time.perf_counter()
    # The run id is detection's own: kept when an interrupted run resumes or a finished one is reused.
    attributes = {
        **tags, "model": checkpoint["model_name"], "checkpoint_sha256": file_sha256(config.checkpoint),
        "run_id": result.run_id,
    }
    polygons = out / "changes.gpkg"
    classes_k = int(checkpoint.get("semantic_classes") or 0)
    count = vectorize(
        result.semantic["transitions"] if result.semantic else result.classes, result.probability, polygons,
        sieve_px=config.vectorize.sieve_px, min_area_m2=config.vectorize.min_area_m2,
        simplify_px=config.vectorize.simplify_px, block_size=config.block_size, attributes=attributes,
        transition_classes=classes_k if result.semantic else 0,
    )
    timings["vectorize"] = time.perf_counter() - started
    summary = {
        "group": group_dir.name, "probability": str(result.probability), "classes": str(result.classes),
        "polygons": str(polygons), "n_polygons": count, "megapixels": result.megapixels, "run_id": result.run_id,
    }
    if result.semantic:
        summary["semantic"] = {name: str(path) for name, path in result.semantic.items()}
    if result.prompt is not None:
        summary["prompt"] = result.prompt
    label = group_dir / "grid" / "label.tif"
    truth = {name: group_dir / "grid" / f"{name}.tif" for name in ("semantic_t1", "semantic_t2")}
    semantic_truth = result.semantic is not None and all(path.exists() for path in truth.values())
    if config.evaluate and (label.exists() or semantic_truth):
        started = time.perf_counter()
        metrics = evaluate_prediction(result.classes, label, polygons=polygons) if label.exists() else {}
        if semantic_truth:
            metrics["semantic"] = semantic_metrics(
                {**result.semantic, "classes": result.classes},
                {**truth, "label": label if label.exists() else None}, classes_k, block_size=config.block_size,
            )
        timings["evaluate"] = time.perf_counter() - started
        t1, t2 = (group_dir / "grid" / f"{role}.tif" for role in checkpoint["inputs"])
        report, _ = write_report(
            out, metrics=metrics, timings=timings,
            config={**config.model_dump(mode="json"), **({"prompt": result.prompt} if result.prompt else {})},
            quicklook={"t1": t1, "t2": t2, "prediction": result.classes, "label": label if label.exists() else None},
            title=f"changeflow detection report: {group_dir.name}",
        )
        summary.update(metrics=metrics, report=str(report))
    summary["timings"] = timings
    return summary


@task(name="detect-group", cache_policy=NO_CACHE)
def detect_group_task(group_dir: Path, config: DetectConfig, out: Path, show_progress: bool) -> dict:
    try:
        return detect_one(group_dir, config, out, show_progress)
    except (ChangeflowError, ValueError) as exc:
        return {"group": group_dir.name, "error": str(exc)}


@flow(name="detect", log_prints=True)
def detect_flow(config_path: str, out_dir: str, progress: bool = False) -> dict:
    """Detect changes in every prepared group of a config; returns {group: summary}."""
    config = load_config(Path(config_path), DetectConfig)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "detect_config.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    summaries = {}
    for group_dir in prepared_groups(config.prepared, config.groups):
        summary = detect_group_task(group_dir, config, out / group_dir.name, progress)
        summaries[group_dir.name] = summary
        print(f"group {group_dir.name}: " + (summary.get("error") or f"{summary['n_polygons']} polygons"))
    (out / REPORT).write_text(json.dumps(summaries, indent=1))
    return summaries
