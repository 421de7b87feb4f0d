"""Evaluation: streamed pixel metrics against numpy, object matching at the IoU threshold, label
polygons, and the run report (Markdown, JSON, quick-look PNG)."""

from __future__ import annotations

import json
import math

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from affine import Affine
from shapely.geometry import box

from pipeline.detect.evaluate import (
    evaluate_prediction,
    label_polygons,
    object_metrics,
    pixel_metrics,
    semantic_metrics,
)
from pipeline.detect.quicklook import COLOURS
from pipeline.detect.report import write_report
from pipeline.detect.vectorize import vectorize
from tests.conftest import write_raster

CRS = "EPSG:32650"
TRANSFORM = Affine(2.0, 0, 500000.0, 0, -2.0, 3500000.0)


def raster(path, data, **kwargs):
    return write_raster(path, data, crs=CRS, transform=TRANSFORM, nodata=255, **kwargs)


def numpy_metrics(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    used = (truth != 255) & (pred != 255)
    p, t = pred[used] > 0, truth[used] > 0
    tp, fp, fn, tn = (p & t).sum(), (p & ~t).sum(), (~p & t).sum(), (~p & ~t).sum()
    n = tp + fp + fn + tn
    oa = (tp + tn) / n
    expected = ((tp + fp) * (tp + fn) + (fn + tn) * (fp + tn)) / n**2
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    return {
        "precision": precision, "recall": recall, "f1": 2 * precision * recall / (precision + recall),
        "iou": tp / (tp + fp + fn), "oa": oa, "kappa": (oa - expected) / (1 - expected),
        "tp": tp, "fp": fp, "fn": fn, "tn": tn,
    }


def test_pixel_metrics_match_numpy_with_255_ignored(tmp_path):
    rng = np.random.default_rng(0)
    truth = (rng.random((50, 45)) < 0.3).astype(np.uint8)
    pred = np.where(rng.random((50, 45)) < 0.8, truth, 1 - truth).astype(np.uint8)
    pred[pred == 1] = rng.choice([1, 2], size=(pred == 1).sum())  # semantic ids > 0 are change
    truth[rng.random((50, 45)) < 0.1] = 255
    pred[:3, :] = 255  # prediction nodata: excluded and reported
    result = pixel_metrics(raster(tmp_path / "pred.tif", pred), raster(tmp_path / "label.tif", truth), block_size=16)
    expected = numpy_metrics(pred, truth)
    for name, value in expected.items():
        assert result[name] == pytest.approx(float(value), rel=1e-5), name
    labelled = truth != 255
    assert result["ignored"] == int((~labelled).sum())
    assert result["pred_nodata"] == int((labelled & (pred == 255)).sum())
    assert result["pred_nodata_fraction"] == pytest.approx(result["pred_nodata"] / labelled.sum())
    assert result["pixels"] == int((labelled & (pred != 255)).sum())


def test_pixel_metrics_without_positives_or_pixels(tmp_path):
    zeros = np.zeros((20, 20), np.uint8)
    result = pixel_metrics(raster(tmp_path / "pred.tif", zeros), raster(tmp_path / "label.tif", zeros))
    assert [result[k] for k in ("precision", "recall", "f1", "iou", "oa")] == [0.0, 0.0, 0.0, 0.0, 1.0]
    assert math.isnan(result["kappa"]) and result["tn"] == 400
    ignored = np.full((20, 20), 255, np.uint8)
    result = pixel_metrics(raster(tmp_path / "pred.tif", zeros), raster(tmp_path / "none.tif", ignored))
    assert result["pixels"] == 0 and all(math.isnan(result[k]) for k in ("precision", "f1", "oa", "kappa"))


def frame(geoms, crs=CRS):
    return gpd.GeoDataFrame({"class": [1] * len(geoms)}, geometry=geoms, crs=crs)


def test_object_matching_just_above_and_below_half_iou():
    x0, y0 = 500000.0, 3499000.0
    references = [box(x0 + 100 * i, y0, x0 + 100 * i + 10, y0 + 10) for i in range(4)]
    # 10×10 squares shifted by dx: IoU = 10(10-dx) / (200 - 10(10-dx)); 0.5 at dx = 10/3.
    shifts = [3.3, 3.4, 0.0]  # IoU 0.5038 (match), 0.4925 (no match), 1.0 (match)
    predicted = [box(x0 + 100 * i + dx, y0, x0 + 100 * i + 10 + dx, y0 + 10) for i, dx in enumerate(shifts)]
    predicted.append(box(x0 + 1000, y0, x0 + 1010, y0 + 10))  # a false positive far away
    result = object_metrics(frame(predicted), frame(references))
    assert (result["matched"], result["predicted"], result["reference"]) == (2, 4, 4)
    assert result["precision"] == pytest.approx(0.5) and result["recall"] == pytest.approx(0.5)
    assert result["f1"] == pytest.approx(0.5)
    assert result["mean_matched_iou"] == pytest.approx((67 / 133 + 1.0) / 2)
    # Same answer with the reference in another CRS (reprojected for the match).
    assert object_metrics(frame(predicted), frame(references).to_crs("EPSG:4326"))["matched"] == 2


def test_object_matching_is_one_to_one():
    reference = frame([box(0, 0, 10, 10)])
    predicted = frame([box(0, 0, 6, 10), box(6, 0, 10, 10)])  # IoU 0.6 and 0.4 with the same reference
    result = object_metrics(predicted, reference, iou_threshold=0.3)
    assert result["matched"] == 1 and result["mean_matched_iou"] == pytest.approx(0.6)
    empty = object_metrics(frame([]), frame([]))
    assert (empty["precision"], empty["recall"], empty["f1"], empty["matched"]) == (0.0, 0.0, 0.0, 0)


def test_label_polygons_and_a_perfect_prediction(tmp_path):
    label = np.zeros((60, 60), np.uint8)
    label[5:15, 5:15] = 1
    label[30:50, 20:28] = 1
    label[55:, :] = 255
    label_path = raster(tmp_path / "label.tif", label)
    reference = label_polygons(label_path, block_size=32)
    assert sorted(reference["area_m2"]) == [400.0, 640.0]
    assert reference.crs == CRS and "mean_prob" not in reference
    prob_path = raster(tmp_path / "prob.tif", np.where(label == 1, 250, 10).astype(np.uint8))
    gpkg = tmp_path / "changes.gpkg"
    vectorize(label_path, prob_path, gpkg, block_size=32)
    result = evaluate_prediction(label_path, label_path, polygons=gpkg, block_size=32)
    assert result["pixel"]["f1"] == pytest.approx(1.0) and result["pixel"]["kappa"] == pytest.approx(1.0)
    assert result["object"]["f1"] == 1.0 and result["object"]["matched"] == 2


def scene(tmp_path, width, height):
    rng = np.random.default_rng(1)
    t1 = rng.integers(100, 1000, (4, height, width)).astype(np.uint16)
    t2 = rng.gamma(1.0, 0.1, (height, width)).astype(np.float32)  # SAR intensity, linear
    t2[:5, :5] = np.nan
    truth = np.zeros((height, width), np.uint8)
    pred = np.zeros((height, width), np.uint8)
    truth[10:30, 10:30] = 1  # TP where both
    pred[10:30, 20:40] = 1  # FP on the right, FN on the left
    truth[60:70, 60:70] = 255
    paths = {
        "t1": write_raster(tmp_path / "t1.tif", t1, crs=CRS, transform=TRANSFORM),
        "t2": write_raster(tmp_path / "t2.tif", t2, crs=CRS, transform=TRANSFORM),
        "prediction": raster(tmp_path / "pred.tif", pred),
        "label": raster(tmp_path / "label.tif", truth),
    }
    return paths


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_report_markdown_json_and_quicklook(tmp_path):
    paths = scene(tmp_path, 300, 200)
    metrics = evaluate_prediction(paths["prediction"], paths["label"])
    config = {"model": {"name": "gold"}, "threshold": 0.5, "out": tmp_path}
    timings = {"detect": 12.5, "vectorize": 1.25, "evaluate": 0.5}
    md, js = write_report(tmp_path / "report", metrics=metrics, timings=timings, config=config, quicklook=paths)
    document = json.loads(js.read_text())
    assert document["metrics"]["pixel"]["tp"] == 200 and document["metrics"]["pixel"]["fp"] == 200
    assert document["timings"] == timings
    assert document["config"]["out"] == str(tmp_path) and document["quicklook"] == "quicklook.png"
    text = md.read_text()
    for needle in ("## Pixel metrics", "| f1 |", "## Timings", "| detect | 12.5000 |", "quicklook.png", "threshold: 0.5"):
        assert needle in text
    with rasterio.open(tmp_path / "report" / "quicklook.png") as png:
        assert (png.width, png.height, png.count) == (600, 400, 3)
        image = png.read()
    errors = image[:, 200:, 300:]  # bottom-right panel, full resolution here
    assert tuple(errors[:, 20, 25]) == COLOURS["tp"]
    assert tuple(errors[:, 20, 35]) == COLOURS["fp"]
    assert tuple(errors[:, 20, 15]) == COLOURS["fn"]
    assert tuple(errors[:, 100, 100]) == COLOURS["tn"]
    assert tuple(errors[:, 65, 65]) == COLOURS["ignored"]
    assert tuple(image[:, 200 + 20, 35]) == (255, 255, 255)  # prediction panel: change is white
    assert [p.name for p in (tmp_path / "report").iterdir() if "partial" in p.name] == []


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_quicklook_is_downsampled_to_2048_px(tmp_path):
    paths = scene(tmp_path, 3000, 500)
    write_report(tmp_path / "r", metrics={"f1": 0.5}, timings={}, config={}, quicklook=paths)
    with rasterio.open(tmp_path / "r" / "quicklook.png") as png:
        assert (png.width, png.height) == (2048, 2 * 171)
    md, js = write_report(tmp_path / "plain", metrics={"f1": float("nan")}, timings={"x": 1.0}, config={})
    assert json.loads(js.read_text())["metrics"] == {"f1": None}
    assert not (tmp_path / "plain" / "quicklook.png").exists() and "## Metrics" in md.read_text()


def test_metrics_from_counts_equal_a_per_pixel_torchmetrics_update(tmp_path):
    import torch

    from pipeline.learn.metrics import as_floats, change_metrics

    rng = np.random.default_rng(4)
    truth = (rng.random((64, 64)) < 0.2).astype(np.uint8)
    pred = np.where(rng.random((64, 64)) < 0.7, truth, 1 - truth).astype(np.uint8)
    truth[rng.random((64, 64)) < 0.1] = 255
    direct = change_metrics()
    direct.update(torch.from_numpy(pred.astype(np.int64).ravel()), torch.from_numpy(truth.astype(np.int64).ravel()))
    expected = as_floats(direct.compute())
    result = pixel_metrics(raster(tmp_path / "pred.tif", pred), raster(tmp_path / "label.tif", truth), block_size=20)
    for name, value in expected.items():
        assert result[name] == pytest.approx(value, rel=1e-6), name


def test_semantic_metrics_compare_the_prediction_with_the_truth(tmp_path):
    rng = np.random.default_rng(3)
    truth_t1 = rng.integers(0, 3, (40, 50)).astype(np.uint8)
    truth_t2 = truth_t1.copy()
    truth_t2[10:20, 10:30] = 2
    pred_t1, pred_t2 = truth_t1.copy(), truth_t2.copy()
    pred_t1[:10] = (pred_t1[:10] + 1) % 3  # a quarter of t1 wrong
    truth_t2[30:, :] = 255  # unlabelled rows
    change = (pred_t1 != pred_t2).astype(np.uint8)
    paths = {
        name: raster(tmp_path / f"{name}.tif", array)
        for name, array in {"p1": pred_t1, "p2": pred_t2, "pc": change, "g1": truth_t1, "g2": truth_t2}.items()
    }
    scores = semantic_metrics(
        {"semantic_t1": paths["p1"], "semantic_t2": paths["p2"], "classes": paths["pc"]},
        {"semantic_t1": paths["g1"], "semantic_t2": paths["g2"]}, 3,
    )
    labelled = truth_t1.size + (truth_t2 != 255).sum()
    wrong = (pred_t1 != truth_t1).sum() + ((pred_t2 != truth_t2) & (truth_t2 != 255)).sum()
    assert scores["semantic_oa"] == pytest.approx(1 - wrong / labelled)
    assert scores["semantic_oa"] < 0.9
