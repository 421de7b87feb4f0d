"""GF-2 PMS L1A: a multispectral (MSS) image in sensor geometry, its RPCs and its metadata.

A product is a folder (or an archive of it) holding, for one camera (PMS1 or PMS2)::

    GF2_PMS1_E113.6_N23.1_20200501_L1A0004781234-MSS1.tiff  (+ .rpb, .xml, .jpg, _thumb.jpg)
    GF2_PMS1_E113.6_N23.1_20200501_L1A0004781234-PAN1.tiff  (+ .rpb, .xml, ...)

The MSS image (4 bands blue, green, red, nir; uint16 DN) is orthorectified with its RPCs through
GDAL's RPC transformer — with a DEM when configured, else at a constant height (the config's, or the
RPC height offset) — onto a north-up grid whose pixel corners lie on multiples of the pixel size
(the product's CRS: ``products.crs``, else ``grid.crs``, else the UTM zone of the scene centre;
pixel size ``products.resolution``, else ``grid.resolution``, else the XML's ``ImageGSD``).
With ``gf2.pan`` the PAN image is orthorectified onto the same grid (area average) as band ``pan``.
With ``gf2.calibration`` DN become radiance (gain * DN + offset, float32, NaN = nodata); otherwise
DN are kept (uint16, 0 = nodata).

Metadata come from the MSS XML (``ProductMetaData``): ``SatelliteID``, ``SensorID``,
``CenterTime`` (else ``StartTime`` / ``ReceiveTime``), ``CloudPercent``, ``ImageGSD``, the four
corner latitudes / longitudes, ``ProductID``.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning

from pipeline.config import GridConfig, ProductsConfig, Sensor
from pipeline.errors import InputError
from pipeline.io.atomic import atomic_path
from pipeline.products import rpc as rpcs
from pipeline.products.common import (
    ReadProduct,
    block_rows,
    describe,
    find_files,
    geotiff_profile,
    number,
    parse_time,
    parse_xml,
    row_blocks,
    sibling,
    text,
)

NAME = re.compile(
    r"^(?P<satellite>GF2)_(?P<camera>PMS[12])_(?P<lon>[EW][\d.]+)_(?P<lat>[NS][\d.]+)_(?P<date>\d{8})"
    r"_L1A(?P<number>\d+)(?:-(?P<kind>MSS|PAN)(?P<index>[12]))?",
    re.IGNORECASE,
)
MSS_BANDS = ("blue", "green", "red", "nir")
IMAGE_SUFFIXES = (".tiff", ".tif")


def product_name(name: str) -> str | None:
    """``GF2_PMS1_..._L1A0004781234`` from any file or folder name of the product, else None.

    Args:
        name: a file or folder name, e.g. ``GF2_PMS1_E113.6_N23.1_20200501_L1A0004781234-MSS1.tiff``.

    Returns:
        The product id (up to the L1A number), or None when the name is no GF-2 product name.
    """
    match = NAME.match(name)
    if match is None:
        return None
    return name[: match.end("number")]


def is_image(name: str, kind: str) -> bool:
    """Whether ``name`` is the GF-2 image file of ``kind``.

    Args:
        name: a file name.
        kind: ``"MSS"`` or ``"PAN"`` (upper case).

    Returns:
        True for ``…-MSS1.tiff`` / ``…-PAN2.tif``-style names of that kind.
    """
    match = NAME.match(name)
    return bool(match and (match["kind"] or "").upper() == kind and name.lower().endswith(IMAGE_SUFFIXES))


def locate(root: Path, product: Path) -> tuple[Path, Path | None]:
    """The MSS image (and the PAN image, if any) of the product found at ``root``.

    Args:
        root: the product folder (searched 3 levels deep) or one of its files (its siblings are used).
        product: the product as delivered, named in errors.

    Returns:
        The MSS image and the PAN image (None when there is none).

    Raises:
        InputError: the product has no MSS image, or several.
    """
    if root.is_file():
        wanted = product_name(root.name)
        files = [p for p in root.parent.iterdir() if product_name(p.name) == wanted]
    else:
        files = find_files(root, lambda n: NAME.match(n) is not None)
    mss = [p for p in files if is_image(p.name, "MSS")]
    pan = [p for p in files if is_image(p.name, "PAN")]
    if not mss:
        raise InputError(product, "missing band file: no MSS image (…-MSS1.tiff / …-MSS2.tiff) in the GF-2 product")
    if len(mss) > 1:
        raise InputError(product, f"holds {len(mss)} MSS images ({', '.join(p.name for p in mss)}); give one product per folder")
    return mss[0], (pan[0] if pan else None)


def _sidecar(image: Path, suffix: str, product: Path) -> Path:
    found = sibling(image, (suffix,))
    if found is None:
        raise InputError(product, f"missing file {image.name.rsplit('.', 1)[0]}{suffix} beside {image.name}")
    return found


def read_metadata(xml: Path, product: Path) -> dict:
    """Acquisition time, camera, corners, cloud cover and GSD from a GF-2 XML.

    Args:
        xml: the MSS image's XML (``ProductMetaData``).
        product: the product as delivered, named in errors.

    Returns:
        ``satellite``, ``camera`` (e.g. "PMS1", "" if absent), ``acquired`` (datetime),
        ``cloud_percent``, ``gsd`` (m), ``corners`` ({corner: (lon, lat)}, only those given),
        ``product_id``, ``width`` and ``height`` (None where absent).

    Raises:
        InputError: the XML is missing or malformed, its root is not ``ProductMetaData``, or it has
            no readable CenterTime / StartTime / ReceiveTime.
    """
    root = parse_xml(xml, product)
    if root.tag.rsplit("}", 1)[-1] != "ProductMetaData":
        raise InputError(product, f"malformed XML in {xml.name}: root element is <{root.tag}>, expected <ProductMetaData>")
    acquired = parse_time(text(root, "CenterTime") or text(root, "StartTime") or text(root, "ReceiveTime"))
    if acquired is None:
        raise InputError(product, f"malformed XML in {xml.name}: no readable CenterTime / StartTime")
    corners = {}
    for corner in ("TopLeft", "TopRight", "BottomRight", "BottomLeft"):
        lat, lon = number(root, f"{corner}Latitude"), number(root, f"{corner}Longitude")
        if lat is not None and lon is not None:
            corners[corner] = (lon, lat)
    return {
        "satellite": text(root, "SatelliteID") or "GF2",
        "camera": (text(root, "SensorID") or "").upper(),
        "acquired": acquired,
        "cloud_percent": number(root, "CloudPercent"),
        "gsd": number(root, "ImageGSD"),
        "corners": corners,
        "product_id": text(root, "ProductID"),
        "width": number(root, "WidthInPixels"),
        "height": number(root, "HeightInPixels"),
    }


def _calibration(settings: ProductsConfig, camera: str, names: tuple[str, ...], product: Path):
    table = settings.gf2.calibration
    if not table:
        return None
    entry = table.get(camera) or table.get(f"GF2_{camera}")
    if entry is None:
        raise InputError(product, f"gf2.calibration has no gain/offset table for camera {camera} (has {sorted(table)})")
    missing = [n for n in names if n not in entry]
    if missing:
        raise InputError(product, f"gf2.calibration[{camera}] has no gain/offset for band(s) {', '.join(missing)}")
    return np.array([entry[n] for n in names], dtype=np.float64)  # (bands, 2)


def read(root: Path, product: Path, name: str, settings: ProductsConfig, grid: GridConfig, out: Path) -> ReadProduct:
    """Orthorectify (and optionally calibrate) the GF-2 product at ``root`` into ``out``.

    See the module docstring for the target CRS and pixel size, PAN and calibration.

    Args:
        root: the product folder or one of its files, extracted if delivered as an archive.
        product: the product as delivered, named in errors.
        name: the product id, written as the ``PRODUCT_ID`` tag.
        settings: the products config (``crs``, ``resolution``, ``height``, ``dem``, ``dem_srs``, ``gf2``).
        grid: the grid config; its ``crs`` and ``resolution`` apply when ``products`` sets none.
        out: the GeoTIFF to write (atomically).

    Returns:
        The ReadProduct (path ``out``, bands blue, green, red, nir [, pan], acquisition time, tags).

    Raises:
        InputError: the MSS image, its .xml or .rpb (or the PAN image with ``gf2.pan``) is missing or
            unreadable; the MSS image has other than 4 bands; ``gf2.calibration`` lacks the camera or a
            band; or the XML corners and the RPCs disagree by more than 5 km. The message names the product.
        rasterio.errors.RasterioError: GDAL fails to orthorectify (e.g. an unreadable DEM).
    """
    mss, pan = locate(root, product)
    meta = read_metadata(_sidecar(mss, ".xml", product), product)
    rpc = rpcs.read_rpc(_sidecar(mss, ".rpb", product))
    width, height, dtype = _mss_shape(mss, product)
    use_pan = settings.gf2.pan and pan is not None
    if settings.gf2.pan and pan is None:
        raise InputError(product, "missing band file: gf2.pan is set but the product has no PAN image")
    names = MSS_BANDS + (("pan",) if use_pan else ())
    camera = meta["camera"] or (NAME.match(mss.name)["camera"].upper())
    gains = _calibration(settings, camera, names, product)

    h = settings.height if settings.height is not None else rpc.height_off
    corner_check = _check_corners(meta["corners"], rpc, width, height, h, product)
    crs, resolution = rpcs.ortho_target(
        rpc, width, height, h, crs=settings.crs or grid.crs, resolution=settings.resolution or grid.resolution,
        default_resolution=meta["gsd"],
    )
    transform, out_width, out_height = rpcs.ortho_grid(rpc, width, height, h, crs, resolution)
    options = rpcs.rpc_warp_options(rpc, height=settings.height, dem=settings.dem, dem_srs=settings.dem_srs)
    calibrated = gains is not None
    nodata = float("nan") if calibrated else 0
    profile = geotiff_profile(
        width=out_width, height=out_height, count=len(names), dtype="float32" if calibrated else dtype,
        crs=crs, transform=transform, nodata=nodata,
    )
    tags = {
        "PRODUCT_ID": name, "SENSOR": "gf2", "SATELLITE": meta["satellite"], "CAMERA": camera,
        "ACQUISITION_TIME": meta["acquired"].isoformat(), "ACQUISITION_DATE": meta["acquired"].date().isoformat(),
        "CLOUD_PERCENT": meta["cloud_percent"], "GSD": meta["gsd"], "SOURCE": mss.name,
        "ORTHORECTIFICATION": "RPC, DEM " + str(settings.dem) if settings.dem else f"RPC, constant height {h:g} m",
        "UNITS": "radiance (gain * DN + offset)" if calibrated else "DN",
        "XML_CORNERS": ";".join(f"{k}:{lon:.6f},{lat:.6f}" for k, (lon, lat) in meta["corners"].items()) or None,
        "XML_CORNERS_VS_RPC_M": None if corner_check is None else f"{corner_check:.1f}",
    }
    with atomic_path(out) as partial:
        with rasterio.open(partial, "w+", **profile) as dst:
            rpcs.orthorectify(
                mss, dst, rpc=rpc, bands=[1, 2, 3, 4], dst_bands=[1, 2, 3, 4],
                resampling=Resampling.bilinear, src_nodata=0, dst_nodata=nodata, options=options,
            )
            if use_pan:
                pan_rpc = rpcs.read_rpc(_sidecar(pan, ".rpb", product))
                pan_options = rpcs.rpc_warp_options(pan_rpc, height=settings.height, dem=settings.dem, dem_srs=settings.dem_srs)
                rpcs.orthorectify(
                    pan, dst, rpc=pan_rpc, bands=[1], dst_bands=[5], resampling=Resampling.average,
                    src_nodata=0, dst_nodata=nodata, options=pan_options,
                )
            if calibrated:
                _apply_gains(dst, gains)
            describe(dst, names=names, tags=tags)
    return ReadProduct(out, product, Sensor.gf2, name, meta["acquired"], names, {k: str(v) for k, v in tags.items()})


def _mss_shape(mss: Path, product: Path) -> tuple[int, int, str]:
    """Width, height and dtype of the multispectral image, which must be readable with 4 bands."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        try:
            with rasterio.open(mss) as src:
                width, height, count, dtype = src.width, src.height, src.count, src.dtypes[0]
        except rasterio.errors.RasterioIOError as exc:
            raise InputError(product, f"{mss.name} is not a readable image ({exc})") from None
    if count != 4:
        raise InputError(product, f"{mss.name} has {count} bands, expected 4 (blue, green, red, nir)")
    return width, height, dtype


MAX_CORNER_MISMATCH_M = 5000.0


def _check_corners(corners: dict, rpc, width: int, height: int, h: float, product: Path) -> float | None:
    """Largest distance (m) between the XML's corner coordinates and the RPC corners.

    Both come from the provider's geometry, so they agree to tens of metres; kilometres mean the
    RPB and XML belong to different images (a wrong sidecar), which is refused.
    """
    if len(corners) != 4:
        return None
    names = ("TopLeft", "TopRight", "BottomRight", "BottomLeft")
    lon, lat = rpcs.rpc_inverse(rpc, [0, width - 1, width - 1, 0], [0, 0, height - 1, height - 1], h)
    xml = np.array([corners[n] for n in names])
    dx = (xml[:, 0] - lon) * 111_320.0 * np.cos(np.radians(lat))
    dy = (xml[:, 1] - lat) * 110_574.0
    worst = float(np.hypot(dx, dy).max())
    if worst > MAX_CORNER_MISMATCH_M:
        raise InputError(product, f"the XML corner coordinates and the RPCs disagree by {worst / 1000:.1f} km; wrong .rpb or .xml?")
    return worst


def _apply_gains(dataset, gains: np.ndarray) -> None:
    """Radiance = gain * DN + offset, strip by strip, in place (NaN stays NaN)."""
    rows = block_rows(dataset.width, dataset.count)
    for window in row_blocks(dataset.width, dataset.height, rows):
        data = dataset.read(window=window)
        valid = np.isfinite(data).all(axis=0)
        out = data * gains[:, 0, None, None].astype(np.float32) + gains[:, 1, None, None].astype(np.float32)
        out[:, ~valid] = np.nan
        dataset.write(out.astype(np.float32), window=window)
