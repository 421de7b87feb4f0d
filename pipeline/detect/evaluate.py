"""Evaluation against a label raster: pixel, semantic change and object metrics.

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

The run report and its quick look are :mod:`~pipeline.detect.report` and :mod:`~pipeline.detect.quicklook`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Mapping
from contextlib import ExitStack
from pathlib import Path

import geopandas as gpd
import numpy as np
import shapely
import torch
from rasterio.windows import Window

from pipeline.detect.vectorize import check_same_grid, metric_series, polygonize
from pipeline.io.raster import NODATA_U8, open_raster, read_window
from pipeline.learn.metrics import as_floats, change_metrics
from pipeline.learn.semantic_metrics import SemanticChangeMetrics

METRICS = ("precision", "recall", "f1", "iou", "oa", "kappa")


# --------------------------------------------------------------------------------------------
# Pixel metrics


def _windows(width: int, height: int, block_size: int) -> Iterator[Window]:
    """Blocks of a raster in row-major order, the last ones cut at its edges."""
    for row_off in range(0, height, block_size):
        for col_off in range(0, width, block_size):
            yield Window(col_off, row_off, min(block_size, width - col_off), min(block_size, height - row_off))


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

    Args:
        classes: the predicted class raster (> 0 is change, 255 nodata).
        label: the change label on the same grid (255 ignored).
        block_size: block side in pixels.

    Returns:
        precision, recall, f1, iou, oa, kappa (floats) and tp, fp, fn, tn, pixels (evaluated),
        ignored (label 255), pred_nodata (labelled but no prediction) and pred_nodata_fraction.

    Raises:
        InputError: if the rasters are not on the same grid.
    """
    counts = np.zeros(4, dtype=np.int64)  # tn, fp, fn, tp
    ignored = pred_nodata = 0
    with open_raster(classes) as pred_ds, open_raster(label) as label_ds:
        check_same_grid(pred_ds, label_ds)
        for window in _windows(pred_ds.width, pred_ds.height, block_size):
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
    """Semantic change metrics (SeK, Fscd, mIoU, OA, ...) streamed by blocks.

    255 is ignored in the truth; pixels without a prediction are left out.

    Args:
        predicted: "semantic_t1", "semantic_t2" and "classes" (the change map) rasters.
        truth: "semantic_t1", "semantic_t2" and optionally "label" (the change label; without it the
            reference change is the class transition).
        classes: K, land-cover classes per date.
        block_size: block side in pixels.

    Returns:
        The metrics of :class:`pipeline.learn.semantic_metrics.SemanticChangeMetrics`.

    Raises:
        InputError: if the rasters are not all on the same grid.
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
        for window in _windows(first.width, first.height, block_size):
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
    """Reference objects: the change regions of the label raster (255 = nodata).

    They are polygonised exactly like predictions (:func:`pipeline.detect.vectorize.polygonize`),
    unsieved and unsimplified by default.

    Args:
        label: the change label raster.
        block_size: block side in pixels.
        sieve_px: regions smaller than this many pixels are merged into a neighbour.
        min_area_m2: smaller polygons are dropped.
        simplify_px: simplification tolerance in pixels.

    Returns:
        The polygons with class, area_m2, perimeter_m and n_pixels.
    """
    frame = polygonize(
        label, None, sieve_px=sieve_px, min_area_m2=min_area_m2, simplify_px=simplify_px, block_size=block_size
    )
    return frame.drop(columns=["mean_prob", "max_prob"])


def _greedy_matches(iou: np.ndarray, pred_index: np.ndarray, ref_index: np.ndarray, iou_threshold: float) -> list[float]:
    """IoUs of a one-to-one matching of candidate pairs, taken greedily by decreasing IoU."""
    candidates = np.flatnonzero(iou >= iou_threshold)
    used_pred: set[int] = set()
    used_ref: set[int] = set()
    matched_ious: list[float] = []
    for k in candidates[np.argsort(-iou[candidates], kind="stable")]:
        p, r = int(pred_index[k]), int(ref_index[k])
        if p not in used_pred and r not in used_ref:
            used_pred.add(p)
            used_ref.add(r)
            matched_ious.append(float(iou[k]))
    return matched_ious


def object_metrics(
    predicted: gpd.GeoDataFrame,
    reference: gpd.GeoDataFrame,
    *,
    iou_threshold: float = 0.5,
    by_class: bool = False,
) -> dict[str, float]:
    """One-to-one matching at IoU >= ``iou_threshold`` → object precision, recall, F1.

    Args:
        predicted: the predicted polygons.
        reference: the reference polygons (reprojected to the predictions' CRS if need be).
        iou_threshold: the least IoU of a match.
        by_class: only match polygons of the same ``class`` (semantic change).

    Returns:
        precision, recall, f1, matched, predicted, reference, mean_matched_iou (NaN without a
        match) and iou_threshold.
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
        matched_ious = _greedy_matches(iou, pred_index, ref_index, iou_threshold)
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
    """Pixel metrics of a class raster and, with its polygons, object metrics against the label's.

    Args:
        classes: the predicted class raster.
        label: the change label on the same grid.
        polygons: the predicted polygons (a GeoPackage or a frame), or None for pixel metrics only.
        layer: the GeoPackage layer of ``polygons``.
        iou_threshold: the least IoU of an object match.
        block_size: block side in pixels.

    Returns:
        ``{"pixel": {...}}`` (see :func:`pixel_metrics`), plus ``"object"`` (see
        :func:`object_metrics`) with polygons.

    Raises:
        InputError: if the rasters are not on the same grid.
    """
    result = {"pixel": pixel_metrics(classes, label, block_size=block_size)}
    if polygons is not None:
        predicted = polygons if isinstance(polygons, gpd.GeoDataFrame) else gpd.read_file(polygons, layer=layer)
        reference = label_polygons(label, block_size=block_size)
        result["object"] = object_metrics(predicted, reference, iou_threshold=iou_threshold)
    return result
