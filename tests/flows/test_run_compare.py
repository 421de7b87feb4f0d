"""`changeflow run` with `compare`: the trained model and a label-free method on the same group, side by side."""

from __future__ import annotations

import json

import pytest
import rasterio
import yaml

from flows.run import run_flow
from pipeline.learn.comparison import comparison_markdown
from pipeline.synthetic.scenes import write_synthetic_group

pytestmark = pytest.mark.integration


def test_run_writes_the_label_free_map_and_compares_it_with_the_trained_model(tmp_path):
    group = write_synthetic_group(tmp_path / "synthetic", name="s", size=256, seed=3)
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "prepare": {"scene_list": str(group.scene_list), "tiling": {"size": 64, "stride": 64},
                    "split": {"block_tiles": 1}, "coregistration": {"enabled": False}},
        "train": {"model": "fc_siam_diff", "inputs": ["A", "C"], "max_steps": 2, "batch_size": 2, "workers": 0,
                  "device": "cpu", "modalities": {"A": "optical", "C": "optical"}, "allow_no_change": True},
        "detect": {"device": "cpu", "vectorize": {"min_area_m2": 0}},
        "compare": ["cva"],
    }))
    out = tmp_path / "out"
    report = run_flow.fn(str(config), str(out))
    assert report["train"]["steps"] == 2
    assert yaml.safe_load((out / "detect_cva.yaml").read_text())["method"] == "cva"
    with rasterio.open(out / "detect_cva" / "s" / "change_probability.tif") as probability:
        assert probability.tags()["METHOD"] == "cva"
    comparison = json.loads((out / "comparison.json").read_text())
    assert set(comparison["s"]) == {"fc_siam_diff", "cva"}
    cva = json.loads((out / "detect_cva" / "s" / "report.json").read_text())["metrics"]["pixel"]
    assert comparison["s"]["cva"]["f1"] == pytest.approx(cva["f1"])
    assert comparison["s"]["cva"]["f1"] > 0.5  # the synthetic group's change is plain in its optical pair
    markdown = (out / "comparison.md").read_text()
    assert markdown == comparison_markdown(comparison) and "| s | cva |" in markdown
