"""Pseudo-labels: the confident pixels of a label-free change map as training labels, the rest ignored.

A scene without labels can still train a model: a label-free method (:mod:`pipeline.detect.labelfree`)
runs over every prepared group, and where its change probability is far from its threshold (0.5 is the
method's threshold) the pixel becomes a label — change above 0.5 + margin, no change below 0.5 − margin —
and 255 (ignored by the loss and the metrics) elsewhere. This is the pre-classification → confident
samples → network scheme of Gong, Zhao, Liu, Miao & Jiao 2016 ("Change detection in synthetic aperture
radar images based on deep neural networks", IEEE TNNLS 27(1):125–138), with the label-free methods as
the pre-classifier. Real labels are never needed: with ``keep_labels`` a tile's real 0/1 labels win and
pseudo-labels only fill its unlabelled pixels; test tiles that have real labels keep them untouched, so
the final test is never scored against (or trained on) the method's guesses.

Self-training (``self_training: true``) adds one round: the model trained on the method's labels
(``OUT/round1/``) re-labels the same tiles with its own confident pixels, and the final model is trained
on those — the refinement step of Gong et al. 2016, where the network's output replaces the
pre-classification.

Files, under the training run's folder ``pseudo_labels/``: the method's probability rasters per group
(``{method}/{group}/``, detection's COGs), one label tile per pseudo-labelled tile (``tiles/``) and
``pseudo_labels.json`` (settings, per-tile change fraction, per-split pixel counts).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import rasterio
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window

from pipeline.config import TrainConfig
from pipeline.detect.labelfree import detect_labelfree, open_method_pair
from pipeline.errors import InputError
from pipeline.io.atomic import atomic_path, write_atomic
from pipeline.io.raster import NODATA_U8
from pipeline.learn.dataset import read_label

PSEUDO_DIR = "pseudo_labels"
SUMMARY = "pseudo_labels.json"
ROUND_ONE = "round1"  # self-training: the first round's run folder, inside the final run's


def confident_labels(probability: np.ndarray, margin: float) -> np.ndarray:
    """Labels where a probability is far from 0.5, 255 elsewhere.

    Args:
        probability: float change probabilities, NaN = nodata.
        margin: the distance from 0.5 that counts as confident (0 < margin < 0.5).

    Returns:
        uint8 of the same shape: 1 where p ≥ 0.5 + margin, 0 where p ≤ 0.5 − margin, 255 elsewhere and at NaN.
    """
    labels = np.full(probability.shape, NODATA_U8, np.uint8)
    with np.errstate(invalid="ignore"):
        labels[probability <= 0.5 - margin] = 0
        labels[probability >= 0.5 + margin] = 1
    return labels


def label_free_maps(data: Path, groups: list[str], method: str, folder: Path) -> dict[str, Path]:
    """The method's float32 probability raster of every group (a rerun keeps finished ones).

    Args:
        data: the prepare output folder (``groups/{group}/grid/``).
        groups: the group names.
        method: a label-free method name (:data:`pipeline.detect.labelfree.METHODS`).
        folder: where ``{method}/{group}/change_probability.tif`` go.

    Returns:
        group → its probability raster.

    Raises:
        GroupError: a group lacks the images the method needs.
    """
    maps = {}
    for group in groups:
        scorer, scene = open_method_pair(data / "groups" / group, method)
        maps[group] = detect_labelfree(scene, scorer, folder / method / group, probability_dtype="float32").probability
    return maps


def _write_label(path: Path, labels: np.ndarray, like: Path) -> None:
    """A uint8 label GeoTIFF with the grid (CRS, transform) of the tile ``like``, written atomically."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(like) as tile:
            crs, transform = tile.crs, tile.transform
        with atomic_path(path) as partial, rasterio.open(
            partial, "w", driver="GTiff", width=labels.shape[1], height=labels.shape[0], count=1, dtype="uint8",
            crs=crs, transform=transform,
        ) as dst:
            dst.write(labels, 1)


def _map_window(row: dict, probability: Path) -> np.ndarray:
    """A tile's window (its ``col_off`` / ``row_off`` and size) of its group's probability raster."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(row["A"]) as tile:
            height, width = tile.height, tile.width
        with rasterio.open(probability) as source:
            window = Window(int(row["col_off"]), int(row["row_off"]), width, height)
            return source.read(1, window=window, boundless=True, fill_value=np.nan)


def write_pseudo_labels(index: pd.DataFrame, config: TrainConfig, out: Path,
                        probability_of: Callable[[dict], np.ndarray], source: str) -> dict:
    """Label tiles from per-tile change probabilities: confident pixels, real labels first where kept.

    Train and val tiles are labelled (with ``keep_labels``, their real labels win where they are 0 or
    1); test tiles only when they have no real label.

    Args:
        index: the tile index from :func:`~pipeline.learn.dataset.load_index` (its real labels).
        config: the training config; its ``pseudo_labels`` is set.
        out: the training run's folder.
        probability_of: a tile's change probabilities (H, W), NaN = unknown, from its index row.
        source: what the probabilities come from, for the summary.

    Returns:
        The summary written to ``out/pseudo_labels/pseudo_labels.json``.

    Raises:
        OutputError: a file cannot be written.
    """
    settings = config.pseudo_labels
    folder = out / PSEUDO_DIR
    fractions: dict[str, float] = {}
    counts = {split: {"change": 0, "no_change": 0, "ignored": 0} for split in ("train", "val", "test")}
    for row in index.to_dict("records"):
        labelled = isinstance(row.get("label"), (str, Path))
        if row["split"] == "test" and labelled:
            continue  # real test labels are kept as they are
        labels = confident_labels(probability_of(row), settings.margin)
        if labelled and settings.keep_labels:
            real = read_label(Path(row["label"]), row["label_format"])
            labels = np.where(real != NODATA_U8, real, labels).astype(np.uint8)
        _write_label(folder / "tiles" / f"{row['tile_id']}.tif", labels, Path(row["A"]))
        change, no_change = int((labels == 1).sum()), int((labels == 0).sum())
        fractions[row["tile_id"]] = change / (change + no_change) if change + no_change else 0.0
        split = counts[row["split"]]
        split["change"] += change
        split["no_change"] += no_change
        split["ignored"] += labels.size - change - no_change
    summary = {"source": source, "method": settings.method, "margin": settings.margin,
               "keep_labels": settings.keep_labels, "splits": counts, "tiles": fractions}
    write_atomic(folder / SUMMARY, json.dumps(summary, indent=1))
    return summary


def build_pseudo_labels(index: pd.DataFrame, config: TrainConfig, out: Path) -> dict:
    """Write the pseudo-label tiles of a training run from the label-free method's maps, and their summary.

    Which tiles and how real labels combine: :func:`write_pseudo_labels`.

    Args:
        index: the tile index from :func:`~pipeline.learn.dataset.load_index` (a prepare output's).
        config: the training config; its ``pseudo_labels`` is set.
        out: the training run's folder.

    Returns:
        The summary written to ``out/pseudo_labels/pseudo_labels.json``.

    Raises:
        InputError: ``config.data`` is not a prepare output (a LEVIR-style folder has no group grids).
        GroupError: a group lacks the images the method needs.
        OutputError: a file cannot be written.
    """
    settings = config.pseudo_labels
    if "col_off" not in index.columns or index["col_off"].isna().any():
        raise InputError(config.data, "pseudo_labels need a changeflow prepare output (the groups' grid rasters); "
                                      "a LEVIR-style folder has none")
    maps = label_free_maps(config.data, sorted(index["group"].unique()), settings.method, out / PSEUDO_DIR)
    return write_pseudo_labels(index, config, out, lambda row: _map_window(row, maps[row["group"]]), settings.method)


def with_pseudo_labels(index: pd.DataFrame, out: Path) -> pd.DataFrame:
    """The tile index with the pseudo-labelled tiles' ``label`` pointing at their pseudo-label tiles.

    Args:
        index: the tile index from :func:`~pipeline.learn.dataset.load_index`.
        out: the training run's folder, after :func:`build_pseudo_labels`.

    Returns:
        A copy; pseudo-labelled rows get ``label_format`` ``"change01"`` and their pseudo change fraction.

    Raises:
        InputError: the summary is missing or unreadable.
    """
    path = out / PSEUDO_DIR / SUMMARY
    try:
        fractions = json.loads(path.read_text())["tiles"]
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(path, f"pseudo-label summary missing or unreadable ({exc})") from None
    index = index.copy()
    if "label" not in index.columns:
        index["label"] = None
    index["label"] = index["label"].astype(object)
    chosen = index["tile_id"].isin(list(fractions))
    index.loc[chosen, "label"] = [out / PSEUDO_DIR / "tiles" / f"{tile}.tif" for tile in index.loc[chosen, "tile_id"]]
    index.loc[chosen, "label_format"] = "change01"
    index.loc[chosen, "change_fraction"] = index.loc[chosen, "tile_id"].map(fractions)
    return index
