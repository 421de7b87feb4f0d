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

import numpy as np
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
        return self.acquired.date() if self.acquired else None


# --------------------------------------------------------------------------------------------------
# XML


def parse_xml(path: Path, product: Path) -> ET.Element:
    """The root element of a metadata file; a clear InputError naming the product when malformed."""
    try:
        return ET.parse(path).getroot()
    except FileNotFoundError:
        raise InputError(product, f"metadata file {path.name} is missing") from None
    except ET.ParseError as exc:
        raise InputError(product, f"malformed XML in {path.name}: {exc}") from None


def local(tag: str) -> str:
    """Tag without its XML namespace."""
    return tag.rsplit("}", 1)[-1]


def find(root: ET.Element, *names: str) -> ET.Element | None:
    """First element along a path of local names (namespaces ignored), searched at any depth."""
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
    element = find(root, *names)
    if element is None or element.text is None:
        return None
    value = element.text.strip()
    return value or None


def number(root: ET.Element, *names: str) -> float | None:
    """A numeric value, or None when missing, empty, 'NULL' or NaN (GF-3 writes 'NULL')."""
    value = text(root, *names)
    if value is None:
        return None
    try:
        result = float(value)
    except ValueError:
        return None
    return result if np.isfinite(result) else None


def parse_time(value: str | None) -> dt.datetime | None:
    """'2020-05-01 11:23:53', '2020-05-01T02:10:31.024Z', '2020-05-01 11:23:53.5' → datetime."""
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
    """Files under ``folder`` (at most ``depth`` levels down) whose name satisfies ``predicate``."""
    found = []
    base = len(folder.parts)
    for root, dirs, files in os.walk(folder):
        level = len(Path(root).parts) - base
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if level < depth else []
        found += [Path(root) / f for f in sorted(files) if predicate(f)]
    return found


def sibling(path: Path, suffixes: tuple[str, ...]) -> Path | None:
    """The file beside ``path`` with the same stem and one of ``suffixes`` (case-insensitive)."""
    stem = path.name.rsplit(".", 1)[0].lower()
    wanted = {stem + s.lower() for s in suffixes}
    for candidate in sorted(path.parent.iterdir()):
        if candidate.name.lower() in wanted:
            return candidate
    return None


def source_fingerprint(path: Path) -> list:
    """Identity of a delivered product: names, sizes and mtimes of its files (not their paths).

    Independent of where the product sits, so a product moved (inbox → archive) keeps its cache.
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
    payload = json.dumps([READER_VERSION, *parts], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------------
# Output


def geotiff_profile(*, width: int, height: int, count: int, dtype: str, crs, transform, nodata) -> dict:
    return dict(
        driver="GTiff", width=width, height=height, count=count, dtype=dtype, crs=crs,
        transform=transform, nodata=nodata, tiled=True, blockxsize=256, blockysize=256,
        compress="deflate", zlevel=1, predictor=3 if np.dtype(dtype).kind == "f" else 2,
        interleave="band", bigtiff="if_safer",
    )


def row_blocks(width: int, height: int, rows: int) -> Iterator[Window]:
    for row in range(0, height, rows):
        yield Window(0, row, width, min(rows, height - row))


def block_rows(width: int, bands: int, budget_bytes: int = 64 << 20, itemsize: int = 4) -> int:
    """Rows per strip so that one strip of ``bands`` float32 bands stays within the budget."""
    return max(16, min(4096, budget_bytes // max(1, width * bands * itemsize * 4)))


def describe(dataset, *, names: tuple[str, ...], tags: dict[str, object]) -> None:
    dataset.descriptions = tuple(names)
    dataset.update_tags(**{key: str(value) for key, value in tags.items() if value is not None})


def to_db_in_place(dataset, rows: int = 512) -> None:
    """Linear power → dB on an open float32 dataset (r+), strip by strip; <= 0 becomes NaN."""
    for window in row_blocks(dataset.width, dataset.height, rows):
        data = dataset.read(window=window)
        with np.errstate(divide="ignore", invalid="ignore"):
            db = np.where(data > 0, 10.0 * np.log10(data), np.nan).astype(np.float32)
        dataset.write(db, window=window)

