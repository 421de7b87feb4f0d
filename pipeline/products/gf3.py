"""GF-3 C-band SAR: calibration to sigma0 (dB), optional speckle filter, RPC geocoding.

A product is a folder (or an archive of it), e.g. for a dual-polarised fine-strip scene::

    GF3_KAS_FSII_020008_E120.3_N30.3_20200511_L1A_HHHV_L10004795305.meta.xml
    GF3_KAS_FSII_020008_E120.3_N30.3_20200511_L1A_HH_L10004795305.tiff  (+ .rpc, thumbnails)
    GF3_KAS_FSII_020008_E120.3_N30.3_20200511_L1A_HV_L10004795305.tiff  (+ .rpc)
    GF3_KAS_FSII_020008_E120.3_N30.3_20200511_L1A_HHHV_L10004795305.incidence.xml

One TIFF per polarisation: SLC (L1A, ``productType`` SLC) holds I and Q as two integer bands (or
one complex band); detected products (L1B, L2) one amplitude band (uint16).

Calibration, as SNAP's GF-3 reader does it (``meta.xml``: ``imageinfo/QualifyValue/<POL>`` = the
scene maximum before quantisation, ``processinfo/CalibrationConst/<POL>`` = K in dB)::

    SLC:      A = sqrt(I² + Q²) · QualifyValue / 32767
    detected: A = DN · QualifyValue / 65535
    sigma0_dB = 10 · log10(A²) − K

A missing, 'NULL' or NaN QualifyValue / CalibrationConst for a polarisation that is read is an
error naming the product and the polarisation (a guessed constant would shift every value).
DN 0 (I = Q = 0) is nodata. The speckle filter (``gf3.speckle``: lee / refined_lee,
``gf3.window``) works on linear sigma0 in sensor geometry; the image is then geocoded with the RPCs
like GF-2 (bilinear on linear power) and converted to dB last. A TIFF that is already georeferenced
(a geocoded L2 product) keeps its own grid. Bands are named by polarisation (HH, HV, VH, VV).
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window

from pipeline.config import GridConfig, ProductsConfig, Sensor
from pipeline.errors import InputError
from pipeline.io.atomic import atomic_path
from pipeline.products import rpc as rpcs
from pipeline.products import speckle
from pipeline.products.common import (
    ReadProduct,
    describe,
    find_files,
    geotiff_profile,
    local,
    number,
    parse_time,
    parse_xml,
    row_blocks,
    sibling,
    text,
    to_db_in_place,
)

NAME = re.compile(
    r"^(?P<satellite>GF3[BC]?)_(?P<station>[A-Z]+)_(?P<mode>[A-Z]+)_(?P<orbit>\d+)_(?P<lon>[EW][\d.]+)"
    r"_(?P<lat>[NS][\d.]+)_(?P<date>\d{8})_(?P<level>L1A|L1B|L2)_(?P<pol>[A-Z]+)_L(?P<number>\d+)",
    re.IGNORECASE,
)
POLARISATIONS = ("HH", "HV", "VH", "VV")
POLAR_MODES = {
    "AHV": ["HH", "HV", "VH", "VV"], "QUAD": ["HH", "HV", "VH", "VV"],
    "DH": ["HH"], "DV": ["VV"],
    "HHHV": ["HH", "HV"], "HVHH": ["HH", "HV"], "VVVH": ["VV", "VH"], "VHVV": ["VV", "VH"],
    "HH": ["HH"], "VV": ["VV"], "HV": ["HV"], "VH": ["VH"],
}
SLC_SCALE = 32767.0
DETECTED_SCALE = 65535.0


def product_name(name: str) -> str | None:
    """The GF-3 product id at the start of a file name.

    Args:
        name: a file name, e.g. ``GF3_KAS_FSII_020008_E120.3_N30.3_20200511_L1A_HH_L10004795305.tiff``.

    Returns:
        The name up to and including ``L<product number>``, or None when it is not a GF-3 name.
    """
    match = NAME.match(name)
    return None if match is None else name[: match.end()]


def sigma0_linear(samples: np.ndarray, qualify_value: float, calibration_const_db: float, *, slc: bool) -> np.ndarray:
    """Linear sigma0 from raw samples, with SNAP's GF-3 calibration (module docstring).

    Args:
        samples: (2, H, W) I/Q for SLC, (H, W) DN for a detected product.
        qualify_value: ``QualifyValue`` of the polarisation (the scene maximum before quantisation).
        calibration_const_db: ``CalibrationConst`` K of the polarisation, in dB.
        slc: whether ``samples`` are I/Q.

    Returns:
        float32 (H, W) linear sigma0, NaN where the samples are nodata (DN 0, I = Q = 0) or not finite.
    """
    samples = np.asarray(samples, dtype=np.float64)
    if slc:
        i, q = samples[0], samples[1]
        power = (i * i + q * q) * (qualify_value / SLC_SCALE) ** 2
        invalid = (i == 0) & (q == 0)
    else:
        power = (samples * (qualify_value / DETECTED_SCALE)) ** 2
        invalid = samples == 0
    sigma0 = power / 10.0 ** (calibration_const_db / 10.0)
    sigma0[invalid | ~np.isfinite(sigma0)] = np.nan
    return sigma0.astype(np.float32)


def sigma0_db(samples: np.ndarray, qualify_value: float, calibration_const_db: float, *, slc: bool) -> np.ndarray:
    """sigma0 in dB (SNAP's formula): 10 · log10(A²) − K.

    Args:
        samples: (2, H, W) I/Q for SLC, (H, W) DN for a detected product.
        qualify_value: ``QualifyValue`` of the polarisation.
        calibration_const_db: ``CalibrationConst`` K of the polarisation, in dB.
        slc: whether ``samples`` are I/Q.

    Returns:
        float32 (H, W) sigma0 dB, NaN where nodata or the linear value is not positive.
    """
    linear = sigma0_linear(samples, qualify_value, calibration_const_db, slc=slc)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(linear > 0, 10.0 * np.log10(linear), np.nan).astype(np.float32)


def locate(root: Path, product: Path) -> tuple[Path, dict[str, Path]]:
    """The meta.xml and the TIFF of each polarisation of a product.

    Args:
        root: the product folder (searched 3 levels down), or its meta.xml.
        product: the product as delivered, named in errors.

    Returns:
        The meta.xml and polarisation → TIFF for the TIFFs beside it with the same product number (empty
        when there are none).

    Raises:
        InputError: naming the product, when a folder holds no meta.xml or more than one.
    """
    if root.is_file():
        metas = [root]
        folder = root.parent
    else:
        metas = find_files(root, lambda n: n.lower().endswith(".meta.xml"))
        if not metas:
            raise InputError(product, "missing file: no ….meta.xml in the GF-3 product")
        if len(metas) > 1:
            raise InputError(product, f"holds {len(metas)} meta.xml files; give one product per folder")
        folder = metas[0].parent
    wanted = product_name(metas[0].name)
    tiffs: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        match = NAME.match(path.name)
        if match and path.name.lower().endswith((".tif", ".tiff")) and match["pol"].upper() in POLARISATIONS:
            same = wanted is None or (match["number"] == NAME.match(wanted)["number"])
            if same:
                tiffs[match["pol"].upper()] = path
    return metas[0], tiffs


def read_metadata(meta: Path, product: Path) -> dict:
    """What the reader needs from a GF-3 ``meta.xml``.

    Args:
        meta: the meta.xml.
        product: the product as delivered, named in errors.

    Returns:
        Acquisition time, product type and level, imaging and polar mode, the polarisations of the mode
        (None for an unknown mode), (QualifyValue, CalibrationConst) per polarisation (None when missing,
        'NULL' or NaN), looks, orbit and look direction, incidence angles, satellite and size.

    Raises:
        InputError: naming the product, when the file is missing or malformed, its root is not
            ``<product>`` or it has no readable ``imageinfo/imagingTime/start``.
    """
    root = parse_xml(meta, product)
    if local(root.tag) != "product":
        raise InputError(product, f"malformed XML in {meta.name}: root element is <{root.tag}>, expected <product>")
    acquired = parse_time(text(root, "imageinfo", "imagingTime", "start"))
    if acquired is None:
        raise InputError(product, f"malformed XML in {meta.name}: no readable imageinfo/imagingTime/start")
    mode = (text(root, "polarParams", "polar", "polarMode") or "").upper()
    calibration = {}
    for pol in POLARISATIONS:
        calibration[pol] = (number(root, "imageinfo", "QualifyValue", pol), number(root, "processinfo", "CalibrationConst", pol))
    looks_range = number(root, "processinfo", "MultilookRange") or 1.0
    looks_azimuth = number(root, "processinfo", "MultilookAzimuth") or 1.0
    return {
        "acquired": acquired,
        "product_type": (text(root, "productinfo", "productType") or "").upper(),
        "product_level": text(root, "productinfo", "productLevel"),
        "imaging_mode": text(root, "sensor", "imagingMode"),
        "polar_mode": mode,
        "polarisations": POLAR_MODES.get(mode),
        "calibration": calibration,
        "looks": looks_range * looks_azimuth,
        "direction": text(root, "Direction"),
        "look_direction": text(root, "sensor", "lookDirection"),
        "incidence_near": number(root, "processinfo", "incidenceAngleNearRange"),
        "incidence_far": number(root, "processinfo", "incidenceAngleFarRange"),
        "satellite": text(root, "satellite") or "GF3",
        "width": number(root, "imageinfo", "width"),
        "height": number(root, "imageinfo", "height"),
    }


def _rpc_file(tiff: Path, folder: Path) -> Path | None:
    found = sibling(tiff, (".rpc", ".rpb"))
    if found is not None:
        return found
    others = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".rpc", ".rpb"))
    return others[0] if others else None


@dataclass(frozen=True)
class _Images:
    """The polarisation images to read and how their samples are stored."""

    polarisations: tuple[str, ...]  # in the order of the output bands
    paths: tuple[Path, ...]  # the TIFF of each
    width: int
    height: int
    crs: Any
    transform: Any
    slc: bool  # I and Q (two bands or one complex band), else detected amplitude
    complex_dtype: bool

    @property
    def georeferenced(self) -> bool:
        return self.crs is not None and not self.transform.is_identity


def read(root: Path, product: Path, name: str, settings: ProductsConfig, grid: GridConfig, out: Path) -> ReadProduct:
    """Read a GF-3 product into one calibrated, geocoded sigma0 (dB) GeoTIFF.

    Args:
        root: the product folder (or its meta.xml).
        product: the product as delivered, named in errors.
        name: the product id.
        settings: the product reader settings (polarisations, speckle filter, ortho grid, DEM).
        grid: the run's grid, the ortho target when ``settings`` gives none.
        out: the GeoTIFF to write (atomically).

    Returns:
        The written product: one float32 band per polarisation, nodata NaN.

    Raises:
        InputError: when the product is incomplete, malformed or cannot be calibrated or geocoded.
    """
    meta_path, tiffs = locate(root, product)
    meta = read_metadata(meta_path, product)
    wanted = _polarisations(meta, tiffs, settings, product, meta_path.name)
    images = _open_images(wanted, tiffs, meta, product)
    looks = settings.gf3.looks or meta["looks"]
    tags = _tags(name, meta, wanted, images.slc, settings, looks)
    with atomic_path(out) as partial:
        stage = partial if images.georeferenced else partial.with_name(partial.stem + ".sensor.tif")
        try:
            _calibrate_all(images, meta, stage, settings, looks)
            if images.georeferenced:
                with rasterio.open(partial, "r+") as dst:
                    to_db_in_place(dst)
                    describe(dst, names=tuple(wanted), tags={**tags, "GEOCODING": "as delivered"})
            else:
                _geocode(stage, partial, images, settings, grid, product, tags)
        finally:
            if stage != partial:
                stage.unlink(missing_ok=True)
    return ReadProduct(out, product, Sensor.gf3, name, meta["acquired"], tuple(wanted), {k: str(v) for k, v in tags.items()})


def _polarisations(meta: dict, tiffs: dict[str, Path], settings: ProductsConfig, product: Path, meta_name: str) -> list[str]:
    """The polarisations to read, checked before any pixel is: delivered, with an image and calibration."""
    delivered = meta["polarisations"] or sorted(tiffs)
    if not delivered:
        raise InputError(product, f"no polarisation in {meta_name} (polarMode '{meta['polar_mode']}') and no image")
    wanted = settings.gf3.polarisations or delivered
    unknown = [p for p in wanted if p not in delivered]
    if unknown:
        raise InputError(product, f"polarisation(s) {', '.join(unknown)} asked for (gf3.polarisations) but the product has {', '.join(delivered)}")
    for pol in wanted:
        if pol not in tiffs:
            raise InputError(product, f"missing band file: no image for polarisation {pol} (…_{pol}_….tiff)")
        qualify, constant = meta["calibration"][pol]
        if qualify is None or qualify <= 0:
            raise InputError(product, f"QualifyValue for {pol} is missing or NaN in {meta_name}; cannot calibrate")
        if constant is None:
            raise InputError(product, f"CalibrationConst for {pol} is missing or NaN in {meta_name}; cannot calibrate")
    return wanted


def _open_images(wanted: list[str], tiffs: dict[str, Path], meta: dict, product: Path) -> _Images:
    """Size, georeferencing and sample layout of the polarisation images, which must agree."""
    paths = tuple(tiffs[pol] for pol in wanted)
    shapes = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        for path in paths:
            try:
                with rasterio.open(path) as src:
                    shapes.append((src.width, src.height, src.count, src.dtypes[0], src.crs, src.transform))
            except rasterio.errors.RasterioIOError as exc:
                raise InputError(product, f"{path.name} is not a readable image ({exc})") from None
    first = paths[0]
    width, height, count, dtype, crs, transform = shapes[0]
    if any(s[:2] != (width, height) for s in shapes):
        raise InputError(product, "the polarisation images differ in size")
    complex_dtype = dtype.startswith("complex")
    slc = meta["product_type"] == "SLC" or count == 2 or complex_dtype
    if slc and not (count == 2 or (count == 1 and complex_dtype)):
        raise InputError(product, f"{first.name}: SLC product with {count} band(s); expected I and Q")
    if not slc and count != 1:
        raise InputError(product, f"{first.name}: detected product with {count} bands; expected 1")
    return _Images(tuple(wanted), paths, width, height, crs, transform, slc, complex_dtype)


def _tags(name: str, meta: dict, wanted: list[str], slc: bool, settings: ProductsConfig, looks: float) -> dict:
    """The provenance and calibration tags of the output."""
    return {
        "PRODUCT_ID": name, "SENSOR": "gf3", "SATELLITE": meta["satellite"],
        "ACQUISITION_TIME": meta["acquired"].isoformat(), "ACQUISITION_DATE": meta["acquired"].date().isoformat(),
        "PRODUCT_TYPE": meta["product_type"] or ("SLC" if slc else "detected"), "PRODUCT_LEVEL": meta["product_level"],
        "IMAGING_MODE": meta["imaging_mode"], "ORBIT_DIRECTION": meta["direction"], "LOOK_DIRECTION": meta["look_direction"],
        "INCIDENCE_NEAR": meta["incidence_near"], "INCIDENCE_FAR": meta["incidence_far"],
        "POLARISATIONS": ",".join(wanted), "UNITS": "sigma0 dB",
        "CALIBRATION": "sigma0_dB = 10 log10(A^2) - K, A = " + ("sqrt(I^2+Q^2) Qv/32767" if slc else "DN Qv/65535"),
        "SPECKLE_FILTER": "none" if settings.gf3.speckle == "none" else f"{settings.gf3.speckle} {settings.gf3.window}x{settings.gf3.window}, {looks:g} looks",
        **{f"QUALIFY_VALUE_{p}": meta["calibration"][p][0] for p in wanted},
        **{f"CALIBRATION_CONST_{p}": meta["calibration"][p][1] for p in wanted},
    }


def _calibrate_all(images: _Images, meta: dict, stage: Path, settings: ProductsConfig, looks: float) -> None:
    """Linear sigma0 of every polarisation, in sensor geometry (or the delivered grid), into ``stage``."""
    profile = geotiff_profile(
        width=images.width, height=images.height, count=len(images.paths), dtype="float32",
        crs=images.crs if images.georeferenced else None, transform=images.transform, nodata=float("nan"),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(stage, "w", **profile) as dst:
            for band, (pol, tiff) in enumerate(zip(images.polarisations, images.paths), start=1):
                qualify, constant = meta["calibration"][pol]
                _calibrate(tiff, dst, band, qualify, constant, images.slc, images.complex_dtype, settings, looks)


def _geocode(stage: Path, partial: Path, images: _Images, settings: ProductsConfig, grid: GridConfig,
             product: Path, tags: dict) -> None:
    """Orthorectify the sensor-geometry ``stage`` with the RPCs into ``partial``, in dB."""
    rpc_path = _rpc_file(images.paths[0], images.paths[0].parent)
    if rpc_path is None:
        raise InputError(product, "missing RPC file (.rpc / .rpb) for geocoding")
    rpc = rpcs.read_rpc(rpc_path)
    width, height, bands = images.width, images.height, list(range(1, len(images.paths) + 1))
    h = settings.height if settings.height is not None else rpc.height_off
    crs, resolution = rpcs.ortho_target(
        rpc, width, height, h, crs=settings.crs or grid.crs, resolution=settings.resolution or grid.resolution,
    )
    transform, out_width, out_height = rpcs.ortho_grid(rpc, width, height, h, crs, resolution)
    profile = geotiff_profile(
        width=out_width, height=out_height, count=len(bands), dtype="float32",
        crs=crs, transform=transform, nodata=float("nan"),
    )
    options = rpcs.rpc_warp_options(rpc, height=settings.height, dem=settings.dem, dem_srs=settings.dem_srs)
    with rasterio.open(partial, "w+", **profile) as dst:
        rpcs.orthorectify(
            stage, dst, rpc=rpc, bands=bands, dst_bands=bands, resampling=Resampling.bilinear,
            src_nodata=float("nan"), dst_nodata=float("nan"), options=options,
        )
        to_db_in_place(dst)
        geocoding = "RPC, DEM " + str(settings.dem) if settings.dem else f"RPC, constant height {h:g} m"
        describe(dst, names=images.polarisations, tags={**tags, "GEOCODING": geocoding})


def _calibrate(tiff: Path, dst, band: int, qualify: float, constant: float, slc: bool, complex_dtype: bool,
               settings: ProductsConfig, looks: float) -> None:
    """Linear sigma0 of one polarisation into ``band`` of ``dst``, speckle-filtered if asked."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(tiff) as src:
            def read_rows(r0: int, r1: int) -> np.ndarray:
                window = Window(0, r0, src.width, r1 - r0)
                try:
                    raw = src.read(window=window)
                except rasterio.errors.RasterioIOError as exc:
                    raise InputError(tiff, f"read failed, the file may be truncated or corrupt ({exc})") from None
                if complex_dtype:
                    raw = np.stack([raw[0].real, raw[0].imag])
                samples = raw if slc else raw[0]
                return sigma0_linear(samples, qualify, constant, slc=slc)

            def write_rows(r0: int, data: np.ndarray) -> None:
                dst.write(data.astype(np.float32), band, window=Window(0, r0, data.shape[1], data.shape[0]))

            if settings.gf3.speckle == "none":
                for window in row_blocks(src.width, src.height, 512):
                    r0 = int(window.row_off)
                    write_rows(r0, read_rows(r0, r0 + int(window.height)))
            else:
                speckle.filter_strips(
                    read_rows, write_rows, src.height, method=settings.gf3.speckle,
                    window=settings.gf3.window, looks=looks,
                )
