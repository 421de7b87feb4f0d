"""Provider products as delivered: GF-2 PMS L1A, GF-3 SAR, Sentinel-2 L1C / L2A SAFE.

:func:`recognise` tells from a path's name (and, for folders and archives, from the files inside)
which product it is; :func:`read_product` reads it — extracting an archive safely, orthorectifying
with the RPCs, calibrating — into one analysis-ready GeoTIFF in a cache folder: georeferenced,
tiled, nodata as a value the catalog turns into the valid mask, band descriptions = band names, and
tags with the acquisition time, sensor, cloud cover and product id. The catalog then handles that
GeoTIFF like any other image, so grid, co-registration and tiling need nothing new.

Why two resampling steps for RPC products (ortho here, then the group grid in prepare): the group
grid exists only after the catalog has grouped scenes by their georeferenced footprints, and the
footprints need the orthorectified image. The ortho grid is therefore chosen so the second step is a
crop, not a resampling, whenever possible: its pixel corners lie on multiples of the pixel size in
the target CRS, and its CRS / pixel size follow ``grid.crs`` / ``grid.resolution`` when set. A GF-2
reference (role A) fixes the group grid itself, so it is only cropped; with ``grid.crs`` and
``grid.resolution`` set, every RPC product lands on the group lattice directly.

The cache is keyed by the product's identity (file names, sizes, mtimes — not its location, so a
product moved from the inbox to the archive is not read again) and by the settings that shape the
output; an interrupted read leaves no file behind (temporary name, then rename).
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import GridConfig, ProductsConfig, Sensor
from pipeline.errors import InputError
from pipeline.io.paths import contained
from pipeline.products import archive, gf2, gf3, sentinel2
from pipeline.products.common import ReadProduct, cache_key, source_fingerprint

__all__ = ["Product", "ReadProduct", "default_cache", "read_product", "recognise", "PRODUCT_SENSORS"]

PRODUCT_SENSORS = frozenset({Sensor.gf2, Sensor.gf3, Sensor.s2})
_READERS = {Sensor.gf2: gf2.read, Sensor.gf3: gf3.read, Sensor.s2: sentinel2.read}
_DATE = re.compile(r"(?<!\d)(20\d{6})(?!\d)")


@dataclass(frozen=True)
class Product:
    """A recognised product: its sensor, where it is, and its id (from its name)."""

    sensor: Sensor
    path: Path  # folder, archive, or key file (GF-2 MSS image, GF-3 meta.xml, S2 MTD xml)
    name: str

    @property
    def date(self) -> dt.date | None:
        """The acquisition date in the product id (the first ``20YYMMDD``), or None."""
        match = _DATE.search(self.name)
        if match is None:
            return None
        try:
            return dt.datetime.strptime(match[1], "%Y%m%d").date()
        except ValueError:
            return None


def default_cache() -> Path:
    """The products cache used when neither the caller nor the config names one.

    Returns:
        ``$CHANGEFLOW_CACHE``, else ``$XDG_CACHE_HOME/changeflow``, else ``~/.cache/changeflow``.
    """
    if os.environ.get("CHANGEFLOW_CACHE"):
        return Path(os.environ["CHANGEFLOW_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "changeflow"


def _by_name(name: str) -> tuple[Sensor, str] | None:
    """(sensor, product id) from a folder, archive or key-file name."""
    stem = name[:-5] if name.upper().endswith(".SAFE") else name
    if sentinel2.NAME.match(stem):
        return Sensor.s2, sentinel2.product_name(stem)
    if gf2.NAME.match(stem):
        return Sensor.gf2, gf2.product_name(stem)
    if gf3.NAME.match(stem):
        return Sensor.gf3, gf3.product_name(stem)
    return None


def _by_members(names: list[str]) -> Sensor | None:
    """The kind of the one product whose files are inside a folder or archive, else None.

    Only the top two levels count (a product's own files, or its folder at the top), and a
    folder holding several products is not a product.
    """
    paths = [n.replace("\\", "/").strip("/") for n in names]
    top = [p for p in paths if p.count("/") <= 1]
    base = [p.rsplit("/", 1)[-1] for p in top]
    found = {
        Sensor.s2: sum(bool(sentinel2.MTD.match(n)) for n in base),
        Sensor.gf2: sum(gf2.is_image(n, "MSS") for n in base),
        Sensor.gf3: sum(n.lower().endswith(".meta.xml") for n in base),
    }
    kinds = [sensor for sensor, count in found.items() if count]
    if len(kinds) == 1 and found[kinds[0]] == 1:
        return kinds[0]
    return None


def recognise(path: Path, hint: Sensor | None = None) -> Product | None:
    """The product at ``path`` (a folder, an archive, or a product's key file), or None.

    Key files: a GF-2 ``…-MSS1.tiff``, a GF-3 ``….meta.xml``, a Sentinel-2 ``MTD_MSIL*.xml``.
    Other files of a product (PAN, sidecars, thumbnails, band files) are not products on their own.
    ``hint`` (a scene list's ``sensor``) names the kind of a folder or archive whose name and
    content do not tell; it never turns a plain GeoTIFF into a product.

    Args:
        path: a folder, an archive (.zip, .tar, .tar.gz, .tgz) or a file.
        hint: the sensor the scene list names; only GF-2, GF-3 and Sentinel-2 count.

    Returns:
        The Product (sensor, path, product id), or None when ``path`` is no product (or does not exist).

    Raises:
        InputError: the name (or content) and the hint disagree, or an archive cannot be listed safely
            (see :func:`pipeline.products.archive.list_members`).
    """
    path = Path(path)
    hint = hint if hint in PRODUCT_SENSORS else None
    if path.is_file() and not archive.is_archive(path):
        name = path.name
        if gf2.is_image(name, "MSS"):
            return Product(Sensor.gf2, path, gf2.product_name(name))
        if name.lower().endswith(".meta.xml") and gf3.NAME.match(name):
            return Product(Sensor.gf3, path, gf3.product_name(name))
        if sentinel2.MTD.match(name):
            safe = path.parent
            return Product(Sensor.s2, path, _by_name(safe.name)[1] if _by_name(safe.name) else safe.stem)
        return None
    if not (path.is_dir() or archive.is_archive(path)):
        return None
    stem = archive.archive_stem(path) if archive.is_archive(path) else path.name
    named = _by_name(stem)
    sensor = named[0] if named else None
    if sensor is None:
        if path.is_dir():
            members = [str(p.relative_to(path)) for p in path.glob("*")] + [str(p.relative_to(path)) for p in path.glob("*/*")]
        else:
            members = archive.list_members(path)
        sensor = _by_members(members) or hint
    if sensor is None:
        return None
    if hint is not None and hint is not sensor:
        raise InputError(path, f"is named as a {hint.value} scene but looks like a {sensor.value} product")
    name = named[1] if named else (stem[:-5] if stem.upper().endswith(".SAFE") else stem)
    return Product(sensor, path, name)


def read_product(
    product: Product, settings: ProductsConfig, grid: GridConfig = GridConfig(), *, cache: Path | None = None
) -> ReadProduct:
    """Read ``product`` into an analysis-ready GeoTIFF in the cache (reused when up to date).

    The cache key covers the product's identity (names, sizes, mtimes), the products settings and
    ``grid.crs`` / ``grid.resolution``. An archive is extracted safely under ``cache/extracted``, and
    the extracted copy is removed once read.

    Args:
        product: the recognised product (see :func:`recognise`).
        settings: the products config.
        grid: the grid config (its ``crs`` and ``resolution`` shape RPC orthorectification).
        cache: the cache folder; None uses ``settings.cache``, else :func:`default_cache`.

    Returns:
        The ReadProduct; the GeoTIFF is ``cache/products/{name}-{key}.tif``.

    Raises:
        InputError: the archive is refused or corrupt, or the product is incomplete or malformed
            (the message names the product); or its name would lead out of the cache (UnsafePathError,
            naming the cache folder and the name).
        rasterio.errors.RasterioError: GDAL fails on the product's files (the catalog reports it as an
            InputError naming the product).
    """
    cache = Path(cache or settings.cache or default_cache())
    key = cache_key(
        product.sensor.value, product.name, source_fingerprint(product.path),
        settings.model_dump(mode="json", exclude={"cache", "max_archive_bytes", "max_archive_members"}),
        grid.model_dump(mode="json", include={"crs", "resolution"}),
    )
    # Product names and archive stems come from file names: they may not lead out of the cache.
    out = contained(cache / "products", f"{product.name}-{key}.tif")
    root = product.path
    extracted = None
    if archive.is_archive(product.path):
        limits = archive.Limits(settings.max_archive_bytes, settings.max_archive_members)
        extracted = contained(cache / "extracted", f"{archive.archive_stem(product.path)}-{key}")
        if not out.exists():
            root = archive.extract(product.path, extracted, limits)
    if out.exists():
        return _cached(out, product)
    try:
        result = _READERS[product.sensor](root, product.path, product.name, settings, grid, out)
    finally:
        if extracted is not None:
            shutil.rmtree(extracted, ignore_errors=True)
    return result


def _cached(path: Path, product: Product) -> ReadProduct:
    import rasterio

    from pipeline.products.common import parse_time

    with rasterio.open(path) as src:
        tags = src.tags()
        names = tuple(d or f"band{i}" for i, d in enumerate(src.descriptions, start=1))
    return ReadProduct(path, product.path, product.sensor, product.name, parse_time(tags.get("ACQUISITION_TIME")), names, tags)
