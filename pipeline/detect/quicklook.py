"""The quick look of a detection: a 2×2 PNG mosaic of the inputs, the prediction and its errors.

t1 (first three bands, 2–98 % stretch), t2 (three bands like t1, or one band log/dB-stretched in
grey), the prediction (change white, other classes coloured, nodata grey) and the errors (TP white,
FP red, FN blue, TN black, ignored grey), read decimated (``out_shape``, overviews when the file has
them) so the PNG is at most 2048 px wide and high.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning
from rasterio.io import MemoryFile

from pipeline.io.atomic import write_atomic
from pipeline.io.raster import NODATA_U8, open_raster

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
    """Up to three bands and the valid mask, read decimated to ``shape``."""
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
    """Classes in colour (change white), invalid pixels grey."""
    rgb = CLASS_COLOURS[np.minimum(classes, len(CLASS_COLOURS) - 1)]
    rgb[classes >= len(CLASS_COLOURS)] = CLASS_COLOURS[1]
    rgb[~valid] = COLOURS["ignored"]
    return np.moveaxis(rgb, -1, 0)


def _error_panel(pred: np.ndarray, pred_valid: np.ndarray, truth: np.ndarray, truth_valid: np.ndarray) -> np.ndarray:
    """TP white, FP red, FN blue, TN black; pixels without prediction or label grey."""
    rgb = np.zeros((*pred.shape, 3), np.uint8)
    p, t = pred > 0, truth > 0
    for name, where in (("tp", p & t), ("fp", p & ~t), ("fn", ~p & t), ("tn", ~p & ~t)):
        rgb[where] = COLOURS[name]
    rgb[~(pred_valid & truth_valid)] = COLOURS["ignored"]
    return np.moveaxis(rgb, -1, 0)


def _classes_small(path: Path, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A class raster read decimated (nearest) to ``shape``, and where it is valid."""
    data, valid = _read_small(path, shape, Resampling.nearest)
    band = data[0]
    return band, valid & (band != NODATA_U8)


def panel_shape(width: int, height: int, limit: int = PANEL_MAX) -> tuple[int, int]:
    """The size of a quick-look panel: the raster scaled down (never up) to fit ``limit`` px.

    Args:
        width: raster columns.
        height: raster rows.
        limit: the largest panel side.

    Returns:
        (rows, cols) of the panel, each at least 1.
    """
    scale = min(1.0, limit / width, limit / height)
    return max(1, round(height * scale)), max(1, round(width * scale))


def _panels(quicklook: Mapping[str, Path | None], shape: tuple[int, int]) -> dict[str, np.ndarray]:
    """The four RGB panels (3, rows, cols); those without input are dark grey."""
    blank = np.empty((3, *shape), np.uint8)
    blank[:] = np.array(COLOURS["missing"], np.uint8)[:, None, None]
    panels = {name: blank for name in ("t1", "t2", "prediction", "errors")}
    for name in ("t1", "t2"):
        if quicklook.get(name):
            panels[name] = _image_panel(Path(quicklook[name]), shape)
    pred = None
    if quicklook.get("prediction"):
        pred = _classes_small(Path(quicklook["prediction"]), shape)
        panels["prediction"] = _class_panel(*pred)
    if quicklook.get("label"):
        truth = _classes_small(Path(quicklook["label"]), shape)
        panels["errors"] = _error_panel(*pred, *truth) if pred is not None else _class_panel(*truth)
    return panels


def _png(mosaic: np.ndarray) -> bytes:
    """An RGB array (3, rows, cols) encoded as PNG."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with MemoryFile() as memfile:
            with memfile.open(driver="PNG", width=mosaic.shape[2], height=mosaic.shape[1], count=3, dtype="uint8") as dst:
                dst.write(mosaic)
            return memfile.read()


def write_quicklook(path: Path, quicklook: Mapping[str, Path | None]) -> Path:
    """Write the 2×2 quick-look mosaic [t1, t2 / prediction, errors] as a PNG, atomically.

    Without a label the errors panel is empty; with a label but no prediction it shows the label.

    Args:
        path: the PNG to write.
        quicklook: rasters by name, "t1", "t2", "prediction", "label"; missing or None ones are
            drawn dark grey.

    Returns:
        ``path``.

    Raises:
        ValueError: if none of the four rasters is given.
    """
    reference = next((quicklook.get(k) for k in ("prediction", "label", "t1", "t2") if quicklook.get(k)), None)
    if reference is None:
        raise ValueError("quicklook needs at least one of prediction, label, t1, t2")
    with open_raster(reference) as dataset:
        shape = panel_shape(dataset.width, dataset.height)
    panels = _panels(quicklook, shape)
    mosaic = np.concatenate(
        [np.concatenate([panels["t1"], panels["t2"]], axis=2), np.concatenate([panels["prediction"], panels["errors"]], axis=2)],
        axis=1,
    )
    write_atomic(path, _png(mosaic))
    return path
