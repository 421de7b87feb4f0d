"""Helpers shared by the product readers: XML access with clear errors, cache keys, GeoTIFF output."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import defusedxml.ElementTree
import numpy as np
from defusedxml import DefusedXmlException
from rasterio.windows import Window

from pipeline.config import Sensor
from pipeline.errors import InputError

READER_VERSION = "1"  # bump when a reader's output changes, so cached products are rebuilt


@dataclass(frozen=True)
class ReadProduct:
    """A provider product read into one georeferenced, analysis-ready GeoTIFF."""

    path: Path  # the GeoTIFF (cache)
    source: Path  # the product as delivered (folder, archive or key file)
    sensor: Sensor
    name: str  # product id
    acquired: dt.datetime | None
    bands: tuple[str, ...]
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def date(self) -> dt.date | None:
        """The acquisition date, or None when the acquisition time is unknown."""
        return self.acquired.date() if self.acquired else None


# --------------------------------------------------------------------------------------------------
# XML


def parse_xml(path: Path, product: Path) -> ET.Element:
    """The root element of a metadata file, parsed as untrusted XML (defusedxml).

    Provider metadata never declares entities, so any entity declaration (an entity bomb, an external
    entity reading a local file or a URL) is refused before it is expanded.

    Args:
        path: the XML file.
        product: the product it belongs to, named in errors.

    Returns:
        The root element.

    Raises:
        InputError: naming the product and the file, when the file is missing, not well-formed XML, or
            declares entities.
    """
    try:
        return defusedxml.ElementTree.parse(path).getroot()
    except FileNotFoundError:
        raise InputError(product, f"metadata file {path.name} is missing") from None
    except ET.ParseError as exc:
        raise InputError(product, f"malformed XML in {path.name}: {exc}") from None
    except DefusedXmlException as exc:
        raise InputError(
            product, f"unsafe XML in {path.name} refused: entity declarations and external references are not "
            f"allowed ({exc})"
        ) from None


def local(tag: str) -> str:
    """A tag without its XML namespace.

    Args:
        tag: an element tag, e.g. ``{http://...}imagingTime``.

    Returns:
        The local name, e.g. ``imagingTime``.
    """
    return tag.rsplit("}", 1)[-1]


def find(root: ET.Element, *names: str) -> ET.Element | None:
    """The first element along a path of local names (namespaces ignored), searched at any depth.

    Args:
        root: the element to search under (itself included).
        *names: the path: the first name at any depth, each next one a direct child of the previous.

    Returns:
        The first match in document order, or None.
    """
    candidates = [e for e in root.iter() if local(e.tag) == names[0]]
    for element in candidates:
        current: ET.Element | None = element
        for name in names[1:]:
            current = next((c for c in current if local(c.tag) == name), None)
            if current is None:
                break
        if current is not None:
            return current
    return None


def text(root: ET.Element, *names: str) -> str | None:
    """The stripped text of the element :func:`find` returns.

    Args:
        root: the element to search under.
        *names: the path of local names.

    Returns:
        The text, or None when the element is missing or its text empty.
    """
    element = find(root, *names)
    if element is None or element.text is None:
        return None
    value = element.text.strip()
    return value or None


def number(root: ET.Element, *names: str) -> float | None:
    """The numeric value of the element :func:`find` returns.

    Args:
        root: the element to search under.
        *names: the path of local names.

    Returns:
        The value, or None when missing, empty, not a number ('NULL': GF-3 writes it), NaN or infinite.
    """
    value = text(root, *names)
    if value is None:
        return None
    try:
        result = float(value)
    except ValueError:
        return None
    return result if np.isfinite(result) else None


def parse_time(value: str | None) -> dt.datetime | None:
    """A metadata time stamp as a naive datetime (a trailing Z is dropped).

    Args:
        value: e.g. '2020-05-01 11:23:53', '2020-05-01T02:10:31.024Z', '2020-05-01 11:23:53.5' or
            '2020-05-01'.

    Returns:
        The datetime, or None for an empty or unrecognised value.
    """
    if not value:
        return None
    cleaned = value.strip().replace("Z", "").replace("T", " ")
    for pattern in ("%Y-%m-%d %H:%M:%S.%f", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d"):
        try:
            return dt.datetime.strptime(cleaned, pattern)
        except ValueError:
            continue
    return None


# --------------------------------------------------------------------------------------------------
# Files


def find_files(folder: Path, predicate, *, depth: int = 3) -> list[Path]:
    """Files under a folder whose name satisfies a predicate; hidden folders are skipped.

    Args:
        folder: the folder to walk.
        predicate: called with each file name; keeps the file when true.
        depth: how many folder levels below ``folder`` are entered.

    Returns:
        The files, folder by folder, names sorted.
    """
    found = []
    base = len(folder.parts)
    for root, dirs, files in os.walk(folder):
        level = len(Path(root).parts) - base
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if level < depth else []
        found += [Path(root) / f for f in sorted(files) if predicate(f)]
    return found


def sibling(path: Path, suffixes: tuple[str, ...]) -> Path | None:
    """The file beside ``path`` with the same stem and one of ``suffixes`` (case-insensitive).

    Args:
        path: a file.
        suffixes: the suffixes to look for, dot included (e.g. ``(".rpc", ".rpb")``).

    Returns:
        The first such file in name order, or None.

    Raises:
        OSError: when ``path``'s folder cannot be listed.
    """
    stem = path.name.rsplit(".", 1)[0].lower()
    wanted = {stem + s.lower() for s in suffixes}
    for candidate in sorted(path.parent.iterdir()):
        if candidate.name.lower() in wanted:
            return candidate
    return None


def source_fingerprint(path: Path) -> list:
    """Identity of a delivered product: names, sizes and mtimes of its files (not their paths).

    Independent of where the product sits, so a product moved (inbox → archive) keeps its cache.

    Args:
        path: the product: a file (archive) or a folder.

    Returns:
        ``[[name, size, mtime_ns]]`` for a file; ``[folder name, [[relative path, size, mtime_ns], ...]]``
        for a folder (files up to 8 levels down, hidden folders skipped).

    Raises:
        OSError: when a file cannot be stat'ed.
    """
    if path.is_file():
        stat = path.stat()
        return [[path.name, stat.st_size, stat.st_mtime_ns]]
    items = []
    for file in find_files(path, lambda _: True, depth=8):
        stat = file.stat()
        items.append([str(file.relative_to(path)), stat.st_size, stat.st_mtime_ns])
    return [path.name, items]


def cache_key(*parts: object) -> str:
    """The cache key of a read product, changing with :data:`READER_VERSION`.

    Args:
        *parts: JSON-able values that identify the output (fingerprints, options); others go through ``str``.

    Returns:
        16 hex digits of the SHA-256 of the parts.
    """
    payload = json.dumps([READER_VERSION, *parts], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------------
# Output


def geotiff_profile(*, width: int, height: int, count: int, dtype: str, crs, transform, nodata) -> dict:
    """The creation profile of a reader's output GeoTIFF: tiled 256 px, deflate, band-interleaved.

    Args:
        width: columns.
        height: rows.
        count: bands.
        dtype: the numpy data type name; floats get the floating-point predictor, others the horizontal one.
        crs: the CRS, or None.
        transform: the affine transform.
        nodata: the nodata value, or None.

    Returns:
        Keyword arguments for ``rasterio.open(..., "w")``.
    """
    return dict(
        driver="GTiff", width=width, height=height, count=count, dtype=dtype, crs=crs,
        transform=transform, nodata=nodata, tiled=True, blockxsize=256, blockysize=256,
        compress="deflate", zlevel=1, predictor=3 if np.dtype(dtype).kind == "f" else 2,
        interleave="band", bigtiff="if_safer",
    )


def row_blocks(width: int, height: int, rows: int) -> Iterator[Window]:
    """Full-width strips of a raster, top to bottom.

    Args:
        width: raster columns.
        height: raster rows.
        rows: strip height (the last strip may be shorter).

    Yields:
        The strips' windows.
    """
    for row in range(0, height, rows):
        yield Window(0, row, width, min(rows, height - row))


def block_rows(width: int, bands: int, budget_bytes: int = 64 << 20, itemsize: int = 4) -> int:
    """Rows per strip so that a strip of ``bands`` bands, with four working copies, stays within a budget.

    Args:
        width: raster columns.
        bands: bands per strip.
        budget_bytes: the memory budget.
        itemsize: bytes per sample.

    Returns:
        The rows, clamped to [16, 4096] (so a very wide raster can exceed the budget).
    """
    return max(16, min(4096, budget_bytes // max(1, width * bands * itemsize * 4)))


def describe(dataset, *, names: tuple[str, ...], tags: dict[str, object]) -> None:
    """Write band descriptions and metadata tags on an open dataset.

    Args:
        dataset: a rasterio dataset open for writing.
        names: one description per band.
        tags: metadata tags; values are written as text, None values are left out.
    """
    dataset.descriptions = tuple(names)
    dataset.update_tags(**{key: str(value) for key, value in tags.items() if value is not None})


def to_db_in_place(dataset, rows: int = 512) -> None:
    """Linear power → dB on an open float32 dataset, strip by strip; values <= 0 (and NaN) become NaN.

    Args:
        dataset: a float32 rasterio dataset open in ``r+`` mode.
        rows: strip height in rows.
    """
    for window in row_blocks(dataset.width, dataset.height, rows):
        data = dataset.read(window=window)
        with np.errstate(divide="ignore", invalid="ignore"):
            db = np.where(data > 0, 10.0 * np.log10(data), np.nan).astype(np.float32)
        dataset.write(db, window=window)

