"""Change labels: reading, checking and encoding them.

A label is read as one band; a label whose bands are identical (an RGB 0/255 mask as shipped with
many benchmarks) is read as its first band. Its values are counted block by block, never reading
the scene whole, and the config's ``label_encoding`` is checked against them: ``auto`` picks GOLD's
0/255 masks (``binary255``) for values in {0, 255} and ``change01`` for values in {0, 1, 255}; a
value outside the encoding is an error naming the file, the values and their counts, because turning
it into "ignore" silently drops change pixels. Every label is written as 0 no change, 1 change,
255 ignore (or outside the source).
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window

from pipeline.config import LabelEncoding, SceneEntry
from pipeline.errors import InputError
from pipeline.io.raster import NODATA_U8, open_raster, read_window

Encoding = LabelEncoding | Literal["classes"]
# Pixels per streamed block of the value scan (all bands of a row band of the label).
CHUNK_PIXELS = 1 << 22
# Values listed in an error message; the rest are summarised as a count.
LISTED_VALUES = 8
MEANING = {
    "change01": "0 no change, 1 change, 255 ignore",
    "binary255": "GOLD's masks: 0 no change, 255 (any value > 127) change",
    "classes": "class ids 0..254, 255 ignore",
}


@dataclass(frozen=True)
class LabelSummary:
    """What a label holds and how it is read: its value counts, encoding and change fraction."""

    path: Path
    bands: int
    setting: str  # label_encoding as configured ("auto" or an encoding)
    encoding: Encoding  # the encoding applied
    counts: dict[int | float, int]  # source value -> valid pixels, by increasing value
    nodata_pixels: int
    change_fraction: float | None  # change / (change + no change); None for classes or no labelled pixel

    def as_json(self) -> dict:
        """The summary as written in the group manifest and the prepare report.

        Returns:
            A JSON-ready dict; ``counts`` keys are the values as strings.
        """
        return {
            "file": str(self.path), "bands": self.bands, "label_encoding": self.setting, "encoding": self.encoding,
            "counts": {str(v): n for v, n in self.counts.items()}, "nodata_pixels": self.nodata_pixels,
            "change_fraction": self.change_fraction,
        }


def chunk_windows(width: int, height: int, pixels: int = CHUNK_PIXELS) -> Iterator[Window]:
    """Full-width bands of rows holding at most ``pixels`` pixels (at least one row), top to bottom.

    Args:
        width: raster width (px).
        height: raster height (px).
        pixels: the most pixels per window (one row when a row is wider).

    Yields:
        Windows that cover the raster once.
    """
    rows = max(1, pixels // width)
    for row in range(0, height, rows):
        yield Window(0, row, width, min(rows, height - row))


def label_values(path: Path) -> tuple[Counter, int, int]:
    """Per-value pixel counts of a label, streamed block by block, checking that its bands are identical.

    Args:
        path: the label raster (or ``file.mat:key``).

    Returns:
        The counts of the first band's values over valid pixels (NaN and nodata / masked pixels are not
        counted), the number of pixels not counted, and the band count.

    Raises:
        InputError: the file cannot be read, or its bands differ (the message names the file).
    """
    counts: Counter = Counter()
    invalid = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with open_raster(path) as dataset:
            for window in chunk_windows(dataset.width, dataset.height, CHUNK_PIXELS):
                data, valid = read_window(dataset, window)
                differ = int(((data[1:] != data[0]) & valid).any(axis=0).sum())
                if differ:
                    raise InputError(path, (
                        f"its {dataset.count} bands differ at {differ:,} pixels of rows {window.row_off}.."
                        f"{window.row_off + window.height - 1}; a label needs one band, or identical bands "
                        "(e.g. an RGB 0/255 mask)"
                    ))
                invalid += int(valid.size - valid.sum())
                _count(data[0][valid], counts)
            return Counter(dict(sorted(counts.items()))), invalid, dataset.count


def _count(values: np.ndarray, counts: Counter) -> None:
    """Add the counts of ``values`` (1-D) to ``counts``; integral values are counted as ints."""
    if values.dtype in (np.uint8, np.uint16):
        binned = np.bincount(values)
        present = np.flatnonzero(binned)
        counts.update(dict(zip(present.tolist(), binned[present].tolist())))
        return
    found, number = np.unique(values, return_counts=True)
    for value, n in zip(found.tolist(), number.tolist()):
        counts[int(value) if float(value).is_integer() else value] += n


def resolve_encoding(values: set, setting: str) -> Encoding | None:
    """The encoding of a label: ``setting`` itself, or for ``auto`` the one its values fit.

    Args:
        values: the values present in the label.
        setting: ``"auto"``, ``"change01"``, ``"binary255"`` or ``"classes"``.

    Returns:
        For ``auto``: ``"binary255"`` when the values are in {0, 255} and include 255 (GOLD's masks),
        ``"change01"`` when they are in {0, 1, 255}, else None (no encoding fits). Otherwise ``setting``.
    """
    if setting != "auto":
        return setting
    if 255 in values and values <= {0, 255}:
        return "binary255"
    if values <= {0, 1, 255}:
        return "change01"
    return None


def _fits(value: int | float, encoding: Encoding) -> bool:
    """Whether a source value has a meaning in ``encoding``."""
    if encoding == "change01":
        return value in (0, 1, 255)
    return isinstance(value, int) and 0 <= value <= 255


def change_fraction(counts: dict, encoding: Encoding) -> float | None:
    """Share of change among the labelled (change or no change) pixels of a label's source values.

    Args:
        counts: source value -> pixels.
        encoding: the label's encoding.

    Returns:
        The fraction, or None for class rasters and for a label without a labelled pixel.
    """
    if encoding == "classes":
        return None
    if encoding == "binary255":
        change, labelled = sum(n for v, n in counts.items() if v > 127), sum(counts.values())
    else:
        change, labelled = counts.get(1, 0), counts.get(0, 0) + counts.get(1, 0)
    return change / labelled if labelled else None


def inspect_label(path: Path, setting: str) -> LabelSummary:
    """Read a label's values block by block and resolve and check its encoding.

    Args:
        path: the label raster (one band, or identical bands).
        setting: the config's ``label_encoding`` (``"auto"``, ``"change01"``, ``"binary255"``), or
            ``"classes"`` for semantic class rasters.

    Returns:
        The label's summary: band count, value counts, the encoding applied and the change fraction.

    Raises:
        InputError: the file cannot be read; its bands differ; its values fit no encoding (``auto``); or a
            value is outside the encoding (the message names the file, the values with their counts and
            the ``label_encoding`` setting).
    """
    counts, nodata, bands = label_values(path)
    encoding = resolve_encoding(set(counts), setting)
    if encoding is None:
        raise InputError(path, (
            f"label values {_listing(counts)} fit no label encoding (label_encoding 'auto' reads 0/255 as "
            "binary255 and 0/1/255 as change01); fix the label, or set label_encoding: binary255 to read "
            "values > 127 as change"
        ))
    outside = {v: n for v, n in counts.items() if not _fits(v, encoding)}
    if outside:
        raise InputError(path, (
            f"label values {_listing(outside)} are outside label_encoding '{encoding}' ({MEANING[encoding]}); "
            + ("fix the class raster" if encoding == "classes"
               else "fix the label or set label_encoding ('auto' reads 0/255 and 0/1/255 labels)")
        ))
    return LabelSummary(path, bands, setting, encoding, dict(counts), nodata, change_fraction(counts, encoding))


def _listing(counts: dict) -> str:
    """``2 (1,024 px), 128 (7 px)``: the first values with their counts, then how many more."""
    items = list(counts.items())
    text = ", ".join(f"{str(v)} ({n:,} px)" for v, n in items[:LISTED_VALUES])
    more = len(items) - LISTED_VALUES
    return text + (f" and {more} more values" if more > 0 else "")


def encode_label(values: np.ndarray, alpha: np.ndarray, encoding: Encoding) -> np.ndarray:
    """Canonical label: 0 no change, 1 change, 255 ignore (or outside the source).

    Args:
        values: the warped label values, (H, W).
        alpha: the warp's alpha band, (H, W); 0 marks pixels outside the source.
        encoding: ``"change01"`` (0/1 kept, any other value → 255), ``"binary255"`` (GOLD's masks:
            > 127 → 1, else 0) or ``"classes"`` (semantic rasters: the class ids 0..254 kept as they are).

    Returns:
        uint8 (H, W) label, 255 where ``alpha`` is 0.
    """
    if encoding == "classes":
        label = values.astype(np.uint8)
    elif encoding == "binary255":
        label = (values > 127).astype(np.uint8)
    else:
        label = np.where(np.isin(values, (0, 1)), values, NODATA_U8).astype(np.uint8)
    label[alpha == 0] = NODATA_U8
    return label


def refused_label_groups(failures: list[tuple[SceneEntry, str]]) -> dict[str, str]:
    """Groups whose named label the catalog refused, with the reason.

    Such a group fails instead of being prepared as if it had no label (a typo in a label's path must
    not turn a labelled run into an unlabelled one).

    Args:
        failures: the catalog's refusals as (entry, reason naming the file), see
            :func:`pipeline.prepare.catalog.build_catalog`.

    Returns:
        Group name → ``"label refused: {reason}"``, for label entries that name their group.
    """
    return {
        entry.group: f"label refused: {reason}" for entry, reason in failures if entry.role.is_label and entry.group
    }


def describe_label(summary: dict) -> str:
    """One line for a run's log: a label's file, encoding, value counts and change fraction.

    Args:
        summary: a label summary as JSON (:meth:`LabelSummary.as_json`).

    Returns:
        e.g. ``label a.tif: binary255 (label_encoding auto), values 0 (1,000 px), 255 (200 px); change 16.67 %``.
    """
    fraction = summary["change_fraction"]
    change = "no labelled pixel" if fraction is None else f"change {100 * fraction:.2f} %"
    if summary["encoding"] == "classes":
        change = "class raster"
    return (
        f"label {summary['file']}: {summary['encoding']} (label_encoding {summary['label_encoding']}), "
        f"values {_listing(summary['counts'])}; {change}"
    )
