"""Sentinel-2 L1C and L2A SAFE products (folder, or .zip) → reflectance at 10 m.

Layout (``S2B_MSIL2A_20220216T101039_N0400_R022_T33UUU_20220216T130604.SAFE/``): the root metadata
``MTD_MSIL1C.xml`` / ``MTD_MSIL2A.xml``, band files under ``GRANULE/<id>/IMG_DATA/`` (L1C:
``T33UUU_<date>_B04.jp2``; L2A: ``R10m/T33UUU_<date>_B04_10m.jp2``, ``R20m/…_SCL_20m.jp2``).

- Bands are chosen by name (``s2.bands``; default B02, B03, B04, B08); each is read at its native
  resolution and brought onto the ``s2.resolution`` grid of the tile (bilinear; nearest for SCL).
- Reflectance = (DN + offset) / quantification, the offset read per band from the product metadata
  (L1C ``RADIO_ADD_OFFSET``, L2A ``BOA_ADD_OFFSET``, by ``band_id``; −1000 since processing baseline
  04.00, 0 before; a product of baseline >= 04.00 without the list gets −1000, the documented value),
  so products of different baselines agree and mixing them makes no fake change.
- DN 0 is nodata; with L2A, SCL classes in ``s2.cloud_classes`` (default cloud shadow, cloud medium
  and high probability, thin cirrus) and SCL 0 are nodata too, so clouds count as nodata in the
  black-tile filter. Output: float32 reflectance, NaN = nodata.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path, PurePosixPath

import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from pipeline.config import GridConfig, ProductsConfig, Sensor
from pipeline.errors import InputError
from pipeline.io.atomic import atomic_path
from pipeline.io.paths import contained
from pipeline.products.common import (
    ReadProduct,
    describe,
    find_files,
    geotiff_profile,
    local,
    number,
    parse_time,
    parse_xml,
    text,
)

NAME = re.compile(
    r"^(?P<mission>S2[A-D])_MSIL(?P<level>1C|2A)_(?P<sensing>\d{8}T\d{6})_N(?P<baseline>\d{4})"
    r"_R(?P<orbit>\d{3})_T(?P<tile>\w{5})_(?P<generated>\d{8}T\d{6})",
    re.IGNORECASE,
)
MTD = re.compile(r"^MTD_MSIL(1C|2A)\.xml$", re.IGNORECASE)
# band_id of the metadata → band name (Spectral_Information_List gives it too)
BAND_IDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
QUANTIFICATION = 10000.0
BLOCK = 1024


def product_name(name: str) -> str | None:
    """The Sentinel-2 product id a file or folder name starts with, if it does.

    Args:
        name: a file or folder name, e.g. ``S2B_MSIL2A_20220216T101039_N0400_R022_T33UUU_20220216T130604.SAFE``.

    Returns:
        The product id (the name without ``.SAFE`` / ``.zip``), or None when the name is no S2 product name.
    """
    match = NAME.match(name)
    return None if match is None else name[: match.end()]


def normalise_band(name: str) -> str:
    """Canonical band name: 'B2' → 'B02', 'b8a' → 'B8A', 'SCL' → 'SCL'.

    Args:
        name: a band name in any case, with or without the leading zero.

    Returns:
        The name as in Sentinel-2 file names; other names are upper-cased.
    """
    upper = name.upper()
    match = re.fullmatch(r"B(\d{1,2})(A?)", upper)
    if match:
        return f"B{int(match[1]):02d}" if not match[2] else f"B{int(match[1])}A"
    return upper


def locate(root: Path, product: Path) -> Path:
    """The MTD_MSIL*.xml of the SAFE at ``root`` (a SAFE folder, its MTD, or a folder holding one).

    Args:
        root: the SAFE folder, its MTD file, or a folder (e.g. an extracted .zip) holding one SAFE.
        product: the product as delivered, named in errors.

    Returns:
        The MTD_MSIL1C.xml / MTD_MSIL2A.xml path (``root`` itself when it is a file).

    Raises:
        InputError: no MTD file is found within two levels, or several SAFE products are.
    """
    if root.is_file():
        return root
    direct = [p for p in root.iterdir() if MTD.match(p.name)] if root.is_dir() else []
    if direct:
        return direct[0]
    found = find_files(root, lambda n: MTD.match(n) is not None, depth=2)
    if not found:
        what = "zip" if product.name.lower().endswith(".zip") else "folder"
        raise InputError(product, f"{what} is not a Sentinel-2 SAFE product (no MTD_MSIL1C.xml or MTD_MSIL2A.xml inside)")
    if len(found) > 1:
        raise InputError(product, f"holds {len(found)} SAFE products; give one per folder or archive")
    return found[0]


def _baseline(root, safe: Path) -> float | None:
    value = text(root, "PROCESSING_BASELINE")
    if value is None:
        match = NAME.match(safe.name)
        value = f"{match['baseline'][:2]}.{match['baseline'][2:]}" if match else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def read_metadata(mtd: Path, product: Path) -> dict:
    """What reading needs from the product metadata.

    Args:
        mtd: the MTD_MSIL1C.xml / MTD_MSIL2A.xml file.
        product: the product as delivered, named in errors.

    Returns:
        ``level`` ("1C" / "2A"), ``acquired`` (datetime), ``baseline`` (float or None), ``offsets``
        (additive DN offset per band name), ``quantification``, ``images`` (IMAGE_FILE entries),
        ``spacecraft`` and ``cloud_percent``.

    Raises:
        InputError: the file is missing or malformed XML, has no sensing time (neither in the XML nor
            in the SAFE name), or an offset is not a number.
    """
    root = parse_xml(mtd, product)
    tag = local(root.tag)
    level = "2A" if "2A" in tag or "2A" in mtd.name.upper() else "1C"
    safe = mtd.parent
    acquired = parse_time(text(root, "PRODUCT_START_TIME") or text(root, "DATATAKE_SENSING_START"))
    if acquired is None:
        match = NAME.match(safe.name)
        acquired = dt.datetime.strptime(match["sensing"].upper(), "%Y%m%dT%H%M%S") if match else None
    if acquired is None:
        raise InputError(product, f"malformed XML in {mtd.name}: no PRODUCT_START_TIME")
    names = {}
    for element in root.iter():
        if local(element.tag) == "Spectral_Information" and element.get("bandId") is not None:
            names[element.get("bandId")] = normalise_band(element.get("physicalBand", ""))
    offsets: dict[str, float] = {}
    offset_tag = "BOA_ADD_OFFSET" if level == "2A" else "RADIO_ADD_OFFSET"
    for element in root.iter():
        if local(element.tag) == offset_tag and element.get("band_id") is not None:
            band_id = element.get("band_id")
            band = names.get(band_id) or (BAND_IDS[int(band_id)] if band_id.isdigit() and int(band_id) < 13 else band_id)
            try:
                offsets[band] = float((element.text or "").strip())
            except ValueError:
                raise InputError(product, f"malformed XML in {mtd.name}: {offset_tag} band_id={band_id} is not a number") from None
    quantification = number(root, "BOA_QUANTIFICATION_VALUE") if level == "2A" else number(root, "QUANTIFICATION_VALUE")
    images = [t.strip() for t in (e.text for e in root.iter() if local(e.tag) == "IMAGE_FILE") if t]
    return {
        "level": level,
        "acquired": acquired,
        "baseline": _baseline(root, safe),
        "offsets": offsets,
        "quantification": quantification or QUANTIFICATION,
        "images": images,
        "spacecraft": text(root, "SPACECRAFT_NAME"),
        "cloud_percent": number(root, "Cloud_Coverage_Assessment") or number(root, "CLOUDY_PIXEL_PERCENTAGE"),
    }


def offset_for(band: str, meta: dict) -> float:
    """The additive DN offset of a band: from the metadata, else by processing baseline.

    Args:
        band: the band name, e.g. ``"B04"``.
        meta: the metadata from :func:`read_metadata`.

    Returns:
        The offset: the metadata's, else −1000 for baseline ≥ 04.00, else 0.
    """
    if band in meta["offsets"]:
        return meta["offsets"][band]
    baseline = meta["baseline"]
    return -1000.0 if baseline is not None and baseline >= 4.0 else 0.0


def band_file(safe: Path, band: str, meta: dict, product: Path) -> Path:
    """The finest-resolution file of ``band`` ('B04', 'SCL').

    Taken from the metadata's IMAGE_FILE list, else searched under ``GRANULE/*/IMG_DATA``.

    Args:
        safe: the SAFE folder.
        band: the band name, e.g. ``"B04"`` or ``"SCL"``.
        meta: the metadata from :func:`read_metadata`.
        product: the product as delivered, named in errors.

    Returns:
        The band's .jp2 file.

    Raises:
        InputError: no file of the band is listed or found, or the listed file is missing; or a listed
            file lies outside the SAFE (UnsafePathError, naming the SAFE folder and the entry).
    """
    pattern = re.compile(rf"_{band}(?:_(\d+)m)?$", re.IGNORECASE)
    candidates = []
    for entry in meta["images"]:
        match = pattern.search(entry)
        if match:
            # IMAGE_FILE comes from the product's XML: a '..' or absolute entry may not read outside the SAFE.
            candidates.append((int(match[1] or 0), contained(safe, *PurePosixPath(f"{entry}.jp2").parts)))
    if not candidates:
        for path in find_files(safe / "GRANULE", lambda n: n.lower().endswith(".jp2"), depth=4) if (safe / "GRANULE").is_dir() else []:
            match = pattern.search(path.stem)
            if match and "IMG_DATA" in path.parts:
                candidates.append((int(match[1] or 0), path))
    if not candidates:
        raise InputError(product, f"missing band file: no {band} image in GRANULE/*/IMG_DATA")
    candidates.sort(key=lambda c: c[0])
    path = candidates[0][1]
    if not path.is_file():
        raise InputError(product, f"missing band file: {path.relative_to(safe)}")
    return path


def _target_grid(files: dict[str, Path], resolution: float, product: Path) -> tuple:
    with rasterio.open(next(iter(files.values()))) as src:
        crs, bounds = src.crs, src.bounds
    if crs is None:
        raise InputError(product, "band files carry no CRS")
    width = int(round((bounds.right - bounds.left) / resolution))
    height = int(round((bounds.top - bounds.bottom) / resolution))
    return crs, Affine(resolution, 0, bounds.left, 0, -resolution, bounds.top), width, height


class _Band:
    """One band file seen on the output grid (a WarpedVRT unless it already is on it)."""

    def __init__(self, path: Path, crs, transform: Affine, width: int, height: int, resampling: Resampling, product: Path):
        try:
            self.src = rasterio.open(path)
        except rasterio.errors.RasterioIOError as exc:
            raise InputError(product, f"{path.name} is not a readable image ({exc})") from None
        same = self.src.crs == crs and self.src.transform.almost_equals(transform) and self.src.shape == (height, width)
        self.view = self.src if same else WarpedVRT(
            self.src, crs=crs, transform=transform, width=width, height=height, resampling=resampling,
            src_nodata=0, nodata=0,
        )
        self.path, self.product = path, product

    def read(self, window: Window) -> np.ndarray:
        try:
            return self.view.read(1, window=window)
        except rasterio.errors.RasterioIOError as exc:
            raise InputError(self.product, f"{self.path.name}: read failed, the file may be truncated or corrupt ({exc})") from None

    def close(self) -> None:
        if self.view is not self.src:
            self.view.close()
        self.src.close()


def read(root: Path, product: Path, name: str, settings: ProductsConfig, grid: GridConfig, out: Path) -> ReadProduct:
    """Read a SAFE product into a float32 reflectance GeoTIFF at ``s2.resolution`` (NaN = nodata).

    Bands are resampled onto the tile's grid (bilinear; nearest for SCL); DN 0 and, for L2A, the SCL
    classes in ``s2.cloud_classes`` (and SCL 0) become NaN.

    Args:
        root: the SAFE folder (or its MTD, or a folder holding one), extracted if delivered as .zip.
        product: the product as delivered, named in errors.
        name: the product id, written as the ``PRODUCT_ID`` tag.
        settings: the products config (``s2.bands``, ``s2.resolution``, ``s2.cloud_classes``).
        grid: the grid config (not used: the output stays on the product's UTM tile grid).
        out: the GeoTIFF to write (atomically).

    Returns:
        The ReadProduct (path ``out``, band names, acquisition time, tags).

    Raises:
        InputError: the SAFE, its metadata or a band file is missing or unreadable, or the band files
            carry no CRS; the message names the product.
    """
    mtd = locate(root, product)
    safe = mtd.parent
    meta = read_metadata(mtd, product)
    bands = [normalise_band(b) for b in settings.s2.bands]
    files = {band: band_file(safe, band, meta, product) for band in bands}
    use_scl = meta["level"] == "2A" and bool(settings.s2.cloud_classes)
    if use_scl:
        files["SCL"] = band_file(safe, "SCL", meta, product)
    crs, transform, width, height = _target_grid({b: files[b] for b in bands}, settings.s2.resolution, product)
    offsets = np.array([offset_for(b, meta) for b in bands], np.float32)
    scale = np.float32(1.0 / meta["quantification"])
    cloud_classes = np.array(sorted(set(settings.s2.cloud_classes) | {0}))
    tags = {
        "PRODUCT_ID": name, "SENSOR": "s2", "SATELLITE": meta["spacecraft"], "PROCESSING_LEVEL": f"Level-{meta['level']}",
        "PROCESSING_BASELINE": f"{meta['baseline']:05.2f}" if meta["baseline"] is not None else None,
        "ACQUISITION_TIME": meta["acquired"].isoformat(), "ACQUISITION_DATE": meta["acquired"].date().isoformat(),
        "CLOUD_PERCENT": meta["cloud_percent"],
        "UNITS": "reflectance = (DN + offset) / " + f"{meta['quantification']:g}",
        "ADD_OFFSETS": ",".join(f"{b}:{o:g}" for b, o in zip(bands, offsets)),
        "MASKED_SCL_CLASSES": ",".join(map(str, cloud_classes)) if use_scl else None,
    }
    readers = {}
    try:
        for band, path in files.items():
            resampling = Resampling.nearest if band == "SCL" else Resampling.bilinear
            readers[band] = _Band(path, crs, transform, width, height, resampling, product)
        profile = geotiff_profile(width=width, height=height, count=len(bands), dtype="float32",
                                  crs=crs, transform=transform, nodata=float("nan"))
        with atomic_path(out) as partial, rasterio.open(partial, "w", **profile) as dst:
            for row in range(0, height, BLOCK):
                for col in range(0, width, BLOCK):
                    window = Window(col, row, min(BLOCK, width - col), min(BLOCK, height - row))
                    dn = np.stack([readers[b].read(window) for b in bands]).astype(np.float32)
                    valid = (dn > 0).all(axis=0)
                    if use_scl:
                        valid &= ~np.isin(readers["SCL"].read(window), cloud_classes)
                    reflectance = (dn + offsets[:, None, None]) * scale
                    reflectance[:, ~valid] = np.nan
                    dst.write(reflectance, window=window)
            describe(dst, names=tuple(bands), tags=tags)
    finally:
        for reader in readers.values():
            reader.close()
    return ReadProduct(out, product, Sensor.s2, name, meta["acquired"], tuple(bands), {k: str(v) for k, v in tags.items() if v is not None})
