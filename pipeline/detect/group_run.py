"""One prepared group end to end: detect → vectorise → (with a label) evaluate → report.

Outputs in ``out``: ``change_probability.tif``, ``change_class.tif`` (COGs; semantic change models
add their class maps), ``changes.gpkg`` (layer ``changes``) and, when the group has a label and the
config asks for evaluation, ``report.md`` / ``report.json`` / ``quicklook.png``. The polygons and
rasters carry the t1/t2 scene ids, dates and sensors of the group's prepare manifest, the model,
the checkpoint hash and the detection's run id. With a label-free ``method`` instead of a checkpoint
(:mod:`~pipeline.detect.labelfree`) the same outputs are written, with the method's name as the model
and no checkpoint hash.

A group's outputs change together: they are written into a staged release of ``out`` and published
in one switch (:mod:`pipeline.io.release`; ``out/{name}`` are links through ``out/current``), so a
rerun that fails (a full disk, a bad input, a kill) leaves the previous run's outputs whole. The
staged blocks of an interrupted detection stay in ``out/.detect-partial`` for the rerun to resume.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

from pipeline.config import DetectConfig
from pipeline.detect.evaluate import evaluate_prediction, semantic_metrics
from pipeline.detect.labelfree import detect_labelfree, open_method_pair
from pipeline.detect.output import CLASS_FILE, PROBABILITY_FILE, SEMANTIC_FILES
from pipeline.detect.report import write_report
from pipeline.detect.sliding import DetectionResult, DetectSettings, Progress, detect_group
from pipeline.detect.staging import PARTIAL_DIR
from pipeline.detect.vectorize import vectorize
from pipeline.errors import ChangeflowError
from pipeline.io.release import release
from pipeline.learn.checkpoint import file_sha256, load_checkpoint

POLYGONS = "changes.gpkg"


def prepared_groups(prepared: Path, names: list[str] | None) -> list[Path]:
    """Finished group folders of a prepare output (those with a manifest, not hidden).

    Args:
        prepared: a ``changeflow prepare`` output folder.
        names: the groups wanted, or None for all.

    Returns:
        The group folders, sorted by name.

    Raises:
        ChangeflowError: if a named group is not there, or there is no group at all.
    """
    # A hidden folder is a group still being built (or abandoned) by a prepare: not a group yet.
    folders = sorted(p.parent for p in (prepared / "groups").glob("*/manifest.json") if not p.parent.name.startswith("."))
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
    """t1/t2 scene ids, dates and sensors of a group, from its prepare manifest.

    Args:
        group_dir: a prepared group folder.
        inputs: the checkpoint's input roles, t1 first (e.g. ["A", "B"]).

    Returns:
        ``t1_scene_id``, ``t1_date``, ``t1_sensor`` and the same for t2 ("" when unknown).
    """
    members = json.loads((group_dir / "manifest.json").read_text()).get("members", {})
    out = {}
    for name, role in zip(("t1", "t2"), inputs):
        member = members.get(role, {})
        out[f"{name}_scene_id"] = member.get("id", "")
        out[f"{name}_date"] = member.get("date") or ""
        out[f"{name}_sensor"] = member.get("sensor", "")
    return out


def _evaluate(group_dir: Path, config: DetectConfig, result: DetectionResult, polygons: Path,
              classes_k: int) -> dict | None:
    """Pixel, object and semantic metrics against the group's truth rasters; None without any."""
    label = group_dir / "grid" / "label.tif"
    truth = {name: group_dir / "grid" / f"{name}.tif" for name in ("semantic_t1", "semantic_t2")}
    semantic_truth = result.semantic is not None and all(path.exists() for path in truth.values())
    if not config.evaluate or not (label.exists() or semantic_truth):
        return None
    metrics = evaluate_prediction(result.classes, label, polygons=polygons) if label.exists() else {}
    if semantic_truth:
        metrics["semantic"] = semantic_metrics(
            {**result.semantic, "classes": result.classes},
            {**truth, "label": label if label.exists() else None}, classes_k, block_size=config.block_size,
        )
    return metrics


def _report(group_dir: Path, config: DetectConfig, result: DetectionResult, inputs: list[str], metrics: dict,
            timings: dict[str, float], out: Path) -> Path:
    """Write the group's report and quick look; returns the Markdown report."""
    label = group_dir / "grid" / "label.tif"
    t1, t2 = (group_dir / "grid" / f"{role}.tif" for role in inputs)
    report, _ = write_report(
        out, metrics=metrics, timings=timings,
        config={**config.model_dump(mode="json"), **({"prompt": result.prompt} if result.prompt else {})},
        quicklook={"t1": t1, "t2": t2, "prediction": result.classes, "label": label if label.exists() else None},
        title=f"changeflow detection report: {group_dir.name}",
    )
    return report


def _summary(group_dir: Path, result: DetectionResult, out: Path, count: int) -> dict:
    """The group's summary before evaluation: published output paths, polygon count, size and run id."""
    summary = {
        "group": group_dir.name, "probability": str(out / result.probability.name),
        "classes": str(out / result.classes.name), "polygons": str(out / POLYGONS), "n_polygons": count,
        "megapixels": result.megapixels, "run_id": result.run_id,
    }
    if result.semantic:
        summary["semantic"] = {name: str(out / path.name) for name, path in result.semantic.items()}
    if result.prompt is not None:
        summary["prompt"] = result.prompt
    return summary


def _reuse_published(out: Path, staged: Path) -> None:
    """Hard-link the published rasters into the staged release: a rerun of the same detection keeps them.

    Detection compares their tags with the run's and replaces them (a new file at the name, never a
    write into the linked one) when they differ.
    """
    for name in (PROBABILITY_FILE, CLASS_FILE, *SEMANTIC_FILES.values()):
        try:
            os.link((out / name).resolve(strict=True), staged / name)
        except OSError:  # not published, or no hard links on this file system: computed again
            continue


def _detect(group_dir: Path, config: DetectConfig, staged: Path, out: Path, progress: Progress | None,
            device_slot: AbstractContextManager | None) -> tuple[DetectionResult, list[str], dict[str, str], int]:
    """The rasters from the checkpoint or the label-free method into the staged release, blocks staged for a
    resume in ``out/.detect-partial``: (result, input roles, polygon attributes, K)."""
    if config.method is not None:
        method, scene = open_method_pair(group_dir, config.method)
        tags = provenance(group_dir, list(scene.roles))
        result = detect_labelfree(scene, method, staged, block_size=config.block_size,
                                  probability_dtype=config.probability_dtype, threshold=config.threshold,
                                  provenance={key.upper(): value for key, value in tags.items()}, progress=progress)
        return result, list(scene.roles), {**tags, "model": method.name, "checkpoint_sha256": ""}, 0
    checkpoint = load_checkpoint(config.checkpoint)
    tags = provenance(group_dir, list(checkpoint["inputs"]))
    with device_slot if device_slot is not None else nullcontext():
        result = detect_group(group_dir, config.checkpoint, staged, DetectSettings.from_config(config),
                              provenance={key.upper(): value for key, value in tags.items()}, progress=progress,
                              staging_dir=out / PARTIAL_DIR)
    attributes = {**tags, "model": checkpoint["model_name"], "checkpoint_sha256": file_sha256(config.checkpoint)}
    return result, list(checkpoint["inputs"]), attributes, int(checkpoint.get("semantic_classes") or 0)


def run_group(
    group_dir: Path,
    config: DetectConfig,
    out: Path,
    *,
    progress: Progress | None = None,
    device_slot: AbstractContextManager | None = None,
) -> dict:
    """Detect, vectorise and (with a label) evaluate one prepared group.

    Args:
        group_dir: a prepared group folder.
        config: the detect config (checkpoint or label-free method, inference, vectorize and evaluate settings).
        out: the group's output folder.
        progress: called as ``progress(description, blocks_finished, blocks_total)`` during detection.
        device_slot: held while the model runs (the flows pass their GPU slot); vectorising and
            evaluating run outside it.

    Returns:
        The summary: group, output paths, n_polygons, megapixels, run_id, timings per stage, and,
        when evaluated, metrics and report.

    Raises:
        ChangeflowError: for bad input (an InputError naming the file, a GroupError naming the group).
        ValueError: for settings that do not fit the scene.
    """
    timings: dict[str, float] = {}
    with release(out) as staged:
        _reuse_published(out, staged)
        started = time.perf_counter()
        result, inputs, attributes, classes_k = _detect(group_dir, config, staged, out, progress, device_slot)
        timings["detect"] = time.perf_counter() - started
        started = time.perf_counter()
        # The run id is detection's own: kept when an interrupted run resumes or a finished one is reused.
        attributes["run_id"] = result.run_id
        count = vectorize(
            result.semantic["transitions"] if result.semantic else result.classes, result.probability,
            staged / POLYGONS, sieve_px=config.vectorize.sieve_px, min_area_m2=config.vectorize.min_area_m2,
            simplify_px=config.vectorize.simplify_px, block_size=config.block_size, attributes=attributes,
            transition_classes=classes_k if result.semantic else 0,
        )
        timings["vectorize"] = time.perf_counter() - started
        summary = _summary(group_dir, result, out, count)
        started = time.perf_counter()
        metrics = _evaluate(group_dir, config, result, staged / POLYGONS, classes_k)
        if metrics is not None:
            timings["evaluate"] = time.perf_counter() - started
            report = _report(group_dir, config, result, inputs, metrics, timings, staged)
            summary.update(metrics=metrics, report=str(out / report.name))
    summary["timings"] = timings
    return summary
