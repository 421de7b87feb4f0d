"""The run flow: prepare → train → detect → evaluate from one config file."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from prefect import flow

from flows.cluster import with_dask
from flows.detect import detect_flow
from flows.prepare import prepare_flow
from flows.train import train_flow
from pipeline.config import RunConfig, load_config
from pipeline.io.atomic import write_atomic
from pipeline.io.write_errors import writable_folder
from pipeline.learn.comparison import compare_detections, comparison_markdown


@flow(name="run", log_prints=True)
def run_flow(config_path: str, out_dir: str, progress: bool = False) -> dict:
    """Everything for one config; stage configs are written next to their outputs and rerun skips
    finished prepare groups and finished detection blocks. A label-free ``detect.method`` without a
    ``train`` section skips training (no ``train.yaml``, no ``model`` folder). Each ``compare`` method
    detects into ``detect_{method}/`` and ``comparison.md`` / ``comparison.json`` set its scores beside the
    trained model's."""
    config = load_config(Path(config_path), RunConfig)
    out = Path(out_dir).resolve()
    prepared, model_dir, detected = out / "prepared", out / "model", out / "detect"
    writable_folder(out)
    stage_files = {"prepare": (out / "prepare.yaml", config.prepare.model_dump(mode="json"))}
    if config.trains:
        writable_folder(model_dir)
        stage_files["train"] = (out / "train.yaml", config.train_config(prepared).model_dump(mode="json"))
    stage_files["detect"] = (out / "detect.yaml",
                             config.detect_config(prepared, model_dir / "best.pt").model_dump(mode="json"))
    for method in config.compare:
        stage_files[method] = (out / f"detect_{method}.yaml",
                               config.compare_config(prepared, method).model_dump(mode="json"))
    for path, settings in stage_files.values():
        path.write_text(yaml.safe_dump(settings, sort_keys=False))
    report = {"prepare": prepare_flow(str(stage_files["prepare"][0]), str(prepared), progress)}
    if config.trains:
        report["train"] = train_flow(str(stage_files["train"][0]), str(model_dir), progress=progress)
    detect = with_dask(detect_flow, config.detect_config(prepared, model_dir / "best.pt").dask_address)  # threads or Dask
    report["detect"] = detect(str(stage_files["detect"][0]), str(detected), progress)
    if config.compare:
        name = config.train_config(prepared).model if config.trains else str(config.detect["method"])
        detections = {name: report["detect"]}
        for method in config.compare:
            detections[method] = detect(str(stage_files[method][0]), str(out / f"detect_{method}"), progress)
        report["compare"] = compare_detections(detections)
        write_atomic(out / "comparison.json", json.dumps(report["compare"], indent=1))
        write_atomic(out / "comparison.md", comparison_markdown(report["compare"]))
        print(comparison_markdown(report["compare"]))
    return report
