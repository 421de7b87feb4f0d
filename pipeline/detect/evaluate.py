"""Evaluation against a label raster: pixel metrics, object metrics and a run report.

**Pixel metrics** (``pixel_metrics``) are streamed block by block on the change class (a
predicted class > 0 is change): each block adds to the confusion counts, and torchmetrics
(``pipeline.learn.metrics.change_metrics``) computes the metrics from them.
Label 255 is ignored. Prediction nodata (255 or the raster's mask) is *excluded* too, and reported:
``pred_nodata`` pixels and ``pred_nodata_fraction`` of the labelled pixels, so a map that covers
only part of the label cannot hide it. With no positive pixel in either map, precision, recall, F1
and IoU are 0 (torchmetrics' zero-division convention), OA is 1 and kappa is NaN (undefined:
expected agreement is 1); with no pixel evaluated at all, every metric is NaN.

**Object metrics** (``object_metrics``): each predicted polygon is matched to at most one reference
polygon, greedily by decreasing IoU among pairs with IoU >= ``iou_threshold``. For a threshold of
0.5 or more the greedy matching is the optimal one-to-one matching: within each set polygons do not
overlap, so a polygon has IoU > 0.5 with at most one polygon of the other set. Object precision is
matched / predicted, recall matched / reference (0 when the denominator is 0). IoUs are computed
in metres (local UTM for geographic CRSs). The reference objects come from the label raster through
the same polygonisation as the predictions (``label_polygons``).

**Report** (``write_report``): ``report.md``, ``report.json`` (metrics, timings, effective config)
and ``quicklook.png``, a 2×2 mosaic — t1 (first three bands, 2–98 % stretch), t2 (three bands like
t1, or one band log/dB-stretched in grey), the prediction (change white, other classes coloured,
nodata grey) and the errors (TP white, FP red, FN blue, TN black, ignored grey) — read decimated
(``out_shape``, overviews when the file has them) so the PNG is at most 2048 px wide and high.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import warnings
from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path

import geopandas as gpd
import numpy as np
import shapely
import torch
import yaml
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning
from rasterio.io import MemoryFile
from rasterio.windows import Window

from pipeline.detect.vectorize import check_same_grid, metric_series, polygonize
from pipeline.io.raster import NODATA_U8, open_raster, read_window
from pipeline.learn.metrics import as_floats, change_metrics
from pipeline.learn.semantic_metrics import SemanticChangeMetrics

METRICS = ("precision", "recall", "f1", "iou", "oa", "kappa")
PANEL_MAX = 1024  # px per quick-look panel: the 2×2 mosaic stays within 2048 px
COLOURS = {
    "tp": (255, 255, 255),
    "fp": (230, 40, 40),
    "fn": (40, 90, 255),
    "tn": (0, 0, 0),
    "ignored": (96, 96, 96),
    "missing": (40, 40, 40),
}
CLASS_COLOURS = np.array(
    [(0, 0, 0), (255, 255, 255), (230, 160, 40), (60, 180, 75), (70, 140, 230), (200, 80, 200),
     (250, 220, 60), (140, 90, 50), (120, 220, 220), (230, 120, 140)],
    dtype=np.uint8,
)


# --------------------------------------------------------------------------------------------
# Pixel metrics


def _metrics_from_counts(tn: int, fp: int, fn: int, tp: int) -> dict[str, float]:
    """torchmetrics' change metrics from accumulated confusion counts.

    The metrics of ``change_metrics`` depend on the pixels only through the confusion counts, so
    the blocks are counted with numpy and the counts are handed to each metric as its state
    (``Metric.merge_state``): the same numbers as updating with every pixel (checked in the tests),
    about fifty times faster than torchmetrics' per-pixel update with its input validation.
    """
    collection = change_metrics("cpu")
    counts = {"tn": tn, "fp": fp, "fn": fn, "tp": tp}
    for name, metric in collection.items(keep_base=True):
        state = metric.metric_state
        if {"tp", "fp", "tn", "fn"} <= set(state):
            incoming = {k: torch.tensor(v, dtype=state[k].dtype) for k, v in counts.items()}
        elif "confmat" in state:
            incoming = {"confmat": torch.tensor([[tn, fp], [fn, tp]], dtype=state["confmat"].dtype)}
        else:  # a torchmetrics release with other state names
            raise RuntimeError(f"metric '{name}' has states {sorted(state)}, expected confusion counts")
        metric.merge_state(incoming)
    with warnings.catch_warnings():
        # The states came from merge_state, not update: not the error this warning is about.
        warnings.filterwarnings("ignore", message=".*was called before the ``update``")
        return as_floats(collection.compute())


def pixel_metrics(classes: Path, label: Path, *, block_size: int = 2048) -> dict[str, float]:
    """P, R, F1, IoU, OA and kappa of the change class, streamed by blocks, plus the confusion counts.

    Returns precision, recall, f1, iou, oa, kappa (floats) and tp, fp, fn, tn, pixels (evaluated),
    ignored (label 255), pred_nodata (labelled but no prediction) and pred_nodata_fraction.
    """
    counts = np.zeros(4, dtype=np.int64)  # tn, fp, fn, tp
    ignored = pred_nodata = 0
    with open_raster(classes) as pred_ds, open_raster(label) as label_ds:
        check_same_grid(pred_ds, label_ds)
        for row_off in range(0, pred_ds.height, block_size):
            for col_off in range(0, pred_ds.width, block_size):
                window = Window(
                    col_off, row_off, min(block_size, pred_ds.width - col_off), min(block_size, pred_ds.height - row_off)
                )
                pred, pred_valid = read_window(pred_ds, window)
                truth, truth_valid = read_window(label_ds, window)
                pred, truth = pred[0], truth[0]
                labelled = truth_valid & (truth != NODATA_U8)
                pred_valid &= pred != NODATA_U8
                used = labelled & pred_valid
                ignored += int(truth.size - labelled.sum())
                pred_nodata += int((labelled & ~pred_valid).sum())
                code = 2 * (truth > 0).astype(np.uint8) + (pred > 0)
                counts += np.bincount(code[used], minlength=4)
    tn, fp, fn, tp = (int(c) for c in counts)
    evaluated = tn + fp + fn + tp
    values = _metrics_from_counts(tn, fp, fn, tp) if evaluated else {name: math.nan for name in METRICS}
    labelled_total = evaluated + pred_nodata
    return {
        **{name: values[name] for name in METRICS},
        "tp": tp, "fp": fp, "fn": fn, "tn": tn,
        "pixels": evaluated,
        "ignored": ignored,
        "pred_nodata": pred_nodata,
        "pred_nodata_fraction": pred_nodata / labelled_total if labelled_total else 0.0,
    }


def semantic_metrics(
    predicted: Mapping[str, Path],
    truth: Mapping[str, Path],
    classes: int,
    *,
    block_size: int = 2048,
) -> dict[str, float]:
    """Semantic change metrics (:class:`pipeline.learn.semantic_metrics.SemanticChangeMetrics`: SeK, Fscd,
    mIoU, OA, ...) streamed by blocks.

    ``predicted``: "semantic_t1", "semantic_t2" and "classes" (the change map) rasters;
    ``truth``: "semantic_t1", "semantic_t2" and optionally "label" (the change label; without it the
    reference change is the class transition). 255 is ignored in the truth; pixels without a
    prediction are left out.
    """
    metrics = SemanticChangeMetrics(classes)
    names = ("semantic_t1", "semantic_t2", "classes")
    truth_names = [name for name in ("semantic_t1", "semantic_t2", "label") if truth.get(name) is not None]
    with ExitStack() as stack:
        pred = {name: stack.enter_context(open_raster(predicted[name])) for name in names}
        ref = {name: stack.enter_context(open_raster(truth[name])) for name in truth_names}
        first = pred["classes"]
        for dataset in (*pred.values(), *ref.values()):
            check_same_grid(first, dataset)
        for row_off in range(0, first.height, block_size):
            for col_off in range(0, first.width, block_size):
                window = Window(
                    col_off, row_off, min(block_size, first.width - col_off), min(block_size, first.height - row_off)
                )
                predicted_blocks = {name: read_window(dataset, window)[0][0] for name, dataset in pred.items()}
                pred_valid = np.logical_and.reduce([block != NODATA_U8 for block in predicted_blocks.values()])
                reference = {}
                for name, dataset in ref.items():
                    values, valid = read_window(dataset, window)
                    reference[name] = np.where(valid, values[0], NODATA_U8)[pred_valid]
                metrics.update(
                    predicted_blocks["semantic_t1"][pred_valid], predicted_blocks["semantic_t2"][pred_valid],
                    reference["semantic_t1"], reference["semantic_t2"],
                    pred_change=predicted_blocks["classes"][pred_valid], gt_change=reference.get("label"),
                )
    return metrics.compute()


# --------------------------------------------------------------------------------------------
# Object metrics


def label_polygons(
    label: Path, *, block_size: int = 2048, sieve_px: int = 0, min_area_m2: float = 0.0, simplify_px: float = 0.0
) -> gpd.GeoDataFrame:
    """Reference objects: the change regions of the label raster (255 = nodata), polygonised exactly
    like predictions (``pipeline.detect.vectorize.polygonize``), unsieved and unsimplified by default."""
    frame = polygonize(
        label, None, sieve_px=sieve_px, min_area_m2=min_area_m2, simplify_px=simplify_px, block_size=block_size
    )
    return frame.drop(columns=["mean_prob", "max_prob"])


def object_metrics(
    predicted: gpd.GeoDataFrame,
    reference: gpd.GeoDataFrame,
    *,
    iou_threshold: float = 0.5,
    by_class: bool = False,
) -> dict[str, float]:
    """One-to-one matching at IoU >= ``iou_threshold`` → object precision, recall, F1.

    ``by_class=True`` only matches polygons of the same ``class`` (semantic change).
    """
    if predicted.crs is not None and reference.crs is not None and predicted.crs != reference.crs:
        reference = reference.to_crs(predicted.crs)
    pred_geoms = metric_series(predicted.geometry.reset_index(drop=True))[0].to_numpy()
    ref_geoms = metric_series(gpd.GeoSeries(reference.geometry.to_numpy(), crs=predicted.crs))[0].to_numpy()
    matched_ious: list[float] = []
    if len(pred_geoms) and len(ref_geoms):
        pred_index, ref_index = shapely.STRtree(ref_geoms).query(pred_geoms, predicate="intersects")
        if by_class:
            same = predicted["class"].to_numpy()[pred_index] == reference["class"].to_numpy()[ref_index]
            pred_index, ref_index = pred_index[same], ref_index[same]
        inter = shapely.area(shapely.intersection(pred_geoms[pred_index], ref_geoms[ref_index]))
        union = shapely.area(pred_geoms[pred_index]) + shapely.area(ref_geoms[ref_index]) - inter
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = np.where(union > 0, inter / union, 0.0)
        candidates = np.flatnonzero(iou >= iou_threshold)
        used_pred: set[int] = set()
        used_ref: set[int] = set()
        for k in candidates[np.argsort(-iou[candidates], kind="stable")]:
            p, r = int(pred_index[k]), int(ref_index[k])
            if p not in used_pred and r not in used_ref:
                used_pred.add(p)
                used_ref.add(r)
                matched_ious.append(float(iou[k]))
    matched, n_pred, n_ref = len(matched_ious), len(pred_geoms), len(ref_geoms)
    precision = matched / n_pred if n_pred else 0.0
    recall = matched / n_ref if n_ref else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "matched": matched,
        "predicted": n_pred,
        "reference": n_ref,
        "mean_matched_iou": float(np.mean(matched_ious)) if matched_ious else math.nan,
        "iou_threshold": iou_threshold,
    }


def evaluate_prediction(
    classes: Path,
    label: Path,
    *,
    polygons: Path | gpd.GeoDataFrame | None = None,
    layer: str = "changes",
    iou_threshold: float = 0.5,
    block_size: int = 2048,
) -> dict[str, dict[str, float]]:
    """Pixel metrics of the class raster and, when ``polygons`` (a GeoPackage or a frame) are
    given, object metrics against the label's polygons: ``{"pixel": {...}, "object": {...}}``."""
    result = {"pixel": pixel_metrics(classes, label, block_size=block_size)}
    if polygons is not None:
        predicted = polygons if isinstance(polygons, gpd.GeoDataFrame) else gpd.read_file(polygons, layer=layer)
        reference = label_polygons(label, block_size=block_size)
        result["object"] = object_metrics(predicted, reference, iou_threshold=iou_threshold)
    return result


# --------------------------------------------------------------------------------------------
# Quick look


def _stretch(values: np.ndarray, valid: np.ndarray, low: float = 2, high: float = 98) -> np.ndarray:
    """Percentile stretch of one band to uint8 over its valid pixels."""
    out = np.zeros(values.shape, np.uint8)
    if not valid.any():
        return out
    lo, hi = np.percentile(values[valid], [low, high])
    scaled = (values.astype(np.float64) - lo) / (hi - lo if hi > lo else 1.0)
    out[valid] = (np.clip(scaled[valid], 0, 1) * 255).astype(np.uint8)
    return out


def _read_small(path: Path, shape: tuple[int, int], resampling: Resampling) -> tuple[np.ndarray, np.ndarray]:
    with open_raster(path) as dataset:
        indexes = list(range(1, min(dataset.count, 3) + 1))
        data = dataset.read(indexes, out_shape=(len(indexes), *shape), resampling=resampling)
        mask = dataset.dataset_mask(out_shape=shape, resampling=Resampling.nearest) > 0
    if np.issubdtype(data.dtype, np.floating):
        mask &= np.isfinite(data).all(axis=0)
    return data, mask


def _image_panel(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """RGB (first three bands) or grey panel, percentile-stretched; one band in log scale (SAR)."""
    data, valid = _read_small(path, shape, Resampling.average)
    if data.shape[0] >= 3:
        return np.stack([_stretch(band, valid) for band in data[:3]])
    band = data[0].astype(np.float64)
    finite = valid & np.isfinite(band)
    if finite.any() and band[finite].min() >= 0:  # linear amplitude or intensity: to dB
        with np.errstate(divide="ignore"):
            band = 10 * np.log10(np.maximum(band, np.finfo(np.float32).tiny))
    grey = _stretch(band, finite)
    return np.stack([grey] * 3)


def _class_panel(classes: np.ndarray, valid: np.ndarray) -> np.ndarray:
    rgb = CLASS_COLOURS[np.minimum(classes, len(CLASS_COLOURS) - 1)]
    rgb[classes >= len(CLASS_COLOURS)] = CLASS_COLOURS[1]
    rgb[~valid] = COLOURS["ignored"]
    return np.moveaxis(rgb, -1, 0)


def _error_panel(pred: np.ndarray, pred_valid: np.ndarray, truth: np.ndarray, truth_valid: np.ndarray) -> np.ndarray:
    rgb = np.zeros((*pred.shape, 3), np.uint8)
    p, t = pred > 0, truth > 0
    for name, where in (("tp", p & t), ("fp", p & ~t), ("fn", ~p & t), ("tn", ~p & ~t)):
        rgb[where] = COLOURS[name]
    rgb[~(pred_valid & truth_valid)] = COLOURS["ignored"]
    return np.moveaxis(rgb, -1, 0)


def _classes_small(path: Path, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    data, valid = _read_small(path, shape, Resampling.nearest)
    band = data[0]
    return band, valid & (band != NODATA_U8)


def panel_shape(width: int, height: int, limit: int = PANEL_MAX) -> tuple[int, int]:
    """(rows, cols) of a panel: the raster scaled down (never up) to fit ``limit`` px."""
    scale = min(1.0, limit / width, limit / height)
    return max(1, round(height * scale)), max(1, round(width * scale))


def write_quicklook(path: Path, quicklook: Mapping[str, Path | None]) -> Path:
    """2×2 mosaic [t1, t2 / prediction, errors]; panels without input are dark grey."""
    reference = next((quicklook.get(k) for k in ("prediction", "label", "t1", "t2") if quicklook.get(k)), None)
    if reference is None:
        raise ValueError("quicklook needs at least one of prediction, label, t1, t2")
    with open_raster(reference) as dataset:
        shape = panel_shape(dataset.width, dataset.height)
    blank = np.empty((3, *shape), np.uint8)
    blank[:] = np.array(COLOURS["missing"], np.uint8)[:, None, None]
    panels = {name: blank for name in ("t1", "t2", "prediction", "errors")}
    for name in ("t1", "t2"):
        if quicklook.get(name):
            panels[name] = _image_panel(Path(quicklook[name]), shape)
    pred = truth = None
    if quicklook.get("prediction"):
        pred = _classes_small(Path(quicklook["prediction"]), shape)
        panels["prediction"] = _class_panel(*pred)
    if quicklook.get("label"):
        truth = _classes_small(Path(quicklook["label"]), shape)
        if pred is not None:
            panels["errors"] = _error_panel(*pred, *truth)
        else:
            panels["errors"] = _class_panel(*truth)
    mosaic = np.concatenate(
        [np.concatenate([panels["t1"], panels["t2"]], axis=2), np.concatenate([panels["prediction"], panels["errors"]], axis=2)],
        axis=1,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with MemoryFile() as memfile:
            with memfile.open(driver="PNG", width=mosaic.shape[2], height=mosaic.shape[1], count=3, dtype="uint8") as dst:
                dst.write(mosaic)
            _write_atomic(path, memfile.read())
    return path


# --------------------------------------------------------------------------------------------
# Report


def _plain(value: object) -> object:
    """JSON-ready: Paths and dates as text, numpy scalars as Python, NaN/inf as None."""
    if hasattr(value, "model_dump"):
        return _plain(value.model_dump(mode="json"))
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (Path, dt.date, dt.datetime)):
        return value.isoformat() if isinstance(value, (dt.date, dt.datetime)) else str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _write_atomic(path: Path, content: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_bytes(content.encode() if isinstance(content, str) else content)
    os.replace(partial, path)


def _format(value: object) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1e4 else f"{value:.0f}"
    return str(value)


def _table(rows: Mapping[str, object], header: tuple[str, str]) -> list[str]:
    lines = [f"| {header[0]} | {header[1]} |", "| --- | ---: |"]
    lines += [f"| {key} | {_format(value)} |" for key, value in rows.items()]
    return lines


def write_report(
    out_dir: Path,
    *,
    metrics: Mapping[str, object],
    timings: Mapping[str, float],
    config: Mapping[str, object] | object,
    quicklook: Mapping[str, Path | None] | None = None,
    title: str = "changeflow run report",
) -> tuple[Path, Path]:
    """Write ``report.md``, ``report.json`` and (with ``quicklook`` paths t1, t2, prediction,
    label) ``quicklook.png`` into ``out_dir``; returns (markdown, json) paths.

    ``metrics`` is flat or nested by section (e.g. ``{"pixel": {...}, "object": {...}}``);
    ``timings`` are seconds per stage; ``config`` is the effective config (dict or pydantic model).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    image = write_quicklook(out_dir / "quicklook.png", quicklook) if quicklook else None
    plain_metrics, plain_config = _plain(metrics), _plain(config)
    document = {
        "title": title,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "metrics": plain_metrics,
        "timings": _plain(timings),
        "config": plain_config,
        "quicklook": image.name if image else None,
        "inputs": _plain(dict(quicklook)) if quicklook else {},
    }
    json_path, md_path = out_dir / "report.json", out_dir / "report.md"
    _write_atomic(json_path, json.dumps(document, indent=2, allow_nan=False) + "\n")

    lines = [f"# {title}", "", f"Created {document['created']}.", ""]
    sections = {k: v for k, v in plain_metrics.items() if isinstance(v, dict)}
    flat = {k: v for k, v in plain_metrics.items() if not isinstance(v, dict)}
    if flat:
        sections = {"metrics": flat, **sections}
    for name, rows in sections.items():
        lines += [f"## {name.capitalize()} metrics" if name != "metrics" else "## Metrics", "", *_table(rows, ("metric", "value")), ""]
    total = sum(float(v) for v in timings.values())
    lines += ["## Timings", "", *_table({**document["timings"], "total": total}, ("stage", "seconds")), ""]
    if image:
        legend = "TP white, FP red, FN blue, TN black, ignored or nodata grey"
        lines += ["## Quick look", "", "t1 | t2 / prediction | errors (" + legend + ")", "", f"![quick look]({image.name})", ""]
    lines += ["## Effective config", "", "```yaml", yaml.safe_dump(plain_config, sort_keys=False).rstrip(), "```", ""]
    _write_atomic(md_path, "\n".join(lines))
    return md_path, json_path
