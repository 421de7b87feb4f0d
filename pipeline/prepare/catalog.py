"""Catalog: one record per scene, with its valid-data footprint.

The footprint is traced from the valid mask (GDAL mask / nodata, NaN, GOLD's black rule for
integer imagery), read at a reduced resolution so that memory stays bounded for any scene size.
It is never the bounding box: collars and slanted swath edges are excluded.
"""

from __future__ import annotations

import datetime as dt
import re
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import rasterio.features
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from shapely.geometry import Polygon, shape
from shapely.geometry.base import BaseGeometry
from shapely.ops import unary_union

from pipeline.config import PrepareConfig, Role, SceneEntry, Sensor, load_scene_list
from pipeline.errors import InputError
from pipeline.io.paths import name_problem, shown
from pipeline.io.raster import bounded_gdal_cache, is_integer, open_raster, read_window
from pipeline.products import archive as product_archive
from pipeline.products import read_product, recognise

# DOTALL and \Z: a name with a newline is still seen as a scene file (and refused by name), not skipped.
INBOX_PATTERN = re.compile(r"^(?P<base>.+)_(?P<letter>[ABDE])\.(?:tif|tiff|png)\Z", re.IGNORECASE | re.DOTALL)
INBOX_ROLES = {"A": Role.A, "B": Role.B, "D": Role.C, "E": Role.label}
# Role of an inbox product whose sensor no role of ``inbox_sensors`` names.
PRODUCT_ROLES = {Sensor.gf2: Role.A, Sensor.gf3: Role.B, Sensor.s2: Role.C}


@dataclass(frozen=True)
class Scene:
    """A catalogued image: what it is, where it lies, and where its valid data are."""

    id: str
    path: Path
    sensor: Sensor
    role: Role
    date: dt.date | None
    group: str | None
    is_sar: bool
    crs: CRS | None
    transform: Affine
    width: int
    height: int
    bands: int
    dtype: str
    nodata: float | None
    footprint: BaseGeometry  # in the scene's CRS (pixel space when not georeferenced)
    source: Path | None = None  # the provider product ``path`` was read from (folder, archive)

    @property
    def resolution(self) -> tuple[float, float]:
        """Pixel size (x, y) in CRS units, positive (1, 1 in pixel space)."""
        return abs(self.transform.a), abs(self.transform.e)

    @property
    def black_value_applies(self) -> bool:
        """GOLD's black rule is for integer imagery only (not labels, not SAR in dB)."""
        return not self.role.is_label and is_integer(self.dtype)


class RefusedEntry(SceneEntry):
    """An inbox file or product refused when scanned (its name cannot become a group or scene id).

    It stays in the scene list so that the catalog reports it (:func:`catalog_scene` raises an
    InputError with ``reason``) and the rest of the batch goes on.
    """

    reason: str


def _inbox_entry(path: Path, role: Role, **fields) -> SceneEntry:
    """The entry of an inbox file or product; a RefusedEntry when its group or id is no safe name."""
    for name in (fields.get("group"), fields.get("id")):
        problem = None if name is None else name_problem(name)
        if problem is not None:
            return RefusedEntry(path=path, role=role, reason=f"inbox name {shown(name)} {problem}")
    return SceneEntry(path=path, role=role, **fields)


def _inbox_product(path: Path, roles: dict[Sensor, Role]) -> SceneEntry | None:
    """The entry of a provider product in an inbox (folder, archive or key file), else None.

    Its role comes from its sensor (``inbox_sensors``, else GF-2 → A, GF-3 → B, S2 → C); its group
    is left open, so it is grouped by footprint overlap. An archive that is no recognisable product
    still gets an entry, so that it is reported (with the reason) instead of silently skipped.
    """
    try:
        product = recognise(path)
    except InputError:
        product = None
    if product is None:
        if product_archive.is_archive(path):
            return _inbox_entry(path, Role.A, id=product_archive.archive_stem(path))
        return None
    role = roles.get(product.sensor, PRODUCT_ROLES[product.sensor])
    return _inbox_entry(path, role, sensor=product.sensor, id=product.name)


def scan_inbox(folder: Path, sensors: dict[Role, Sensor]) -> list[SceneEntry]:
    """Scene entries for an inbox: GOLD's naming ``{base}_{A|B|D|E}.{tif|png}``, and provider products.

    GOLD's letters map to roles A, B, C (``D``) and label (``E``), grouped by ``base``. Provider products
    (GF-2, GF-3, Sentinel-2 folders or archives, see :mod:`pipeline.products`) get their role from
    their sensor and are grouped by footprint overlap; an unrecognised archive is still listed, so
    that it is reported. Hidden files and other files are skipped. A base, product name or archive
    stem that is not a safe name (:func:`pipeline.io.paths.name_problem`) gives a :class:`RefusedEntry`,
    which the catalog reports with the reason.

    Args:
        folder: the inbox folder.
        sensors: the sensor assumed for each role (config ``inbox_sensors``); also maps a product's
            sensor back to its role.

    Returns:
        One entry per inbox image or product, in name order (refused ones included).

    Raises:
        InputError: ``folder`` is not a folder.
    """
    if not folder.is_dir():
        raise InputError(folder, "inbox folder not found")
    roles: dict[Sensor, Role] = {}
    for role, sensor in sensors.items():
        roles.setdefault(sensor, role)
    entries = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        match = INBOX_PATTERN.match(path.name)
        if match is None:
            product = _inbox_product(path, roles)
            if product is not None:
                entries.append(product)
            continue
        role = INBOX_ROLES[match["letter"].upper()]
        sensor = sensors.get(role, Sensor.generic)
        entries.append(_inbox_entry(path, role, sensor=sensor, group=match["base"], id=path.stem))
    return entries


def scene_entries(config: PrepareConfig) -> list[SceneEntry]:
    """All scene entries of a config: its explicit list plus its inbox, if any.

    Ids default to the file stem, prefixed with the folder name when stems repeat (the
    LEVIR-CD layout ``A/x.png``, ``B/x.png``).

    Args:
        config: the prepare config (``scenes``, ``scene_list``, ``inbox``, ``inbox_sensors``).

    Returns:
        The entries of ``scenes``, then of the scene list, then of the inbox.

    Raises:
        ConfigError: the scene list cannot be read or is invalid.
        InputError: the inbox folder is missing, or two entries have the same scene id (names the file).
    """
    entries = list(config.scenes)
    if config.scene_list is not None:
        entries += load_scene_list(config.scene_list)
    if config.inbox is not None:
        entries += scan_inbox(config.inbox, config.inbox_sensors)
    stems = [entry.path.stem for entry in entries]
    entries = [
        entry.model_copy(update={"id": f"{entry.path.parent.name}_{entry.path.stem}"})
        if entry.id is None and stems.count(entry.path.stem) > 1
        else entry
        for entry in entries
    ]
    ids = [entry.scene_id for entry in entries]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise InputError(entries[ids.index(duplicates[0])].path, f"scene id '{duplicates[0]}' is used twice")
    return entries


def footprint_from_mask(valid: np.ndarray, transform: Affine) -> BaseGeometry:
    """Union of the valid regions of a boolean mask, in the coordinates of ``transform``.

    Args:
        valid: boolean (H, W) mask of valid pixels.
        transform: the mask's pixel-to-CRS transform (identity for pixel space).

    Returns:
        The valid area as a (Multi)Polygon, made valid with ``buffer(0)``; an empty Polygon when no
        pixel is valid.
    """
    shapes = rasterio.features.shapes(valid.astype(np.uint8), mask=valid, transform=transform)
    polygons = [shape(geometry) for geometry, value in shapes if value == 1]
    return unary_union(polygons).buffer(0) if polygons else Polygon()


def catalog_scene(entry: SceneEntry, config: PrepareConfig, *, cache: Path | None = None) -> Scene:
    """Read one scene's metadata and footprint; raise InputError naming the file on bad input.

    A provider product (GF-2 / GF-3 / Sentinel-2 folder, archive or key file; or a folder or
    archive the entry's ``sensor`` names) is first read into an analysis-ready GeoTIFF in the
    products cache (``cache``, else ``products.cache``); errors name the product.

    The footprint is traced from the valid mask read at most ``footprint_max_size`` pixels on a side.

    Args:
        entry: the scene entry (a raster file or a provider product).
        config: the prepare config (``georeferenced``, ``expected_bands``, ``tiling.black_value``,
            ``footprint_max_size``, ``products``, ``grid``).
        cache: where provider products are read to; None uses ``products.cache``, else the user cache.

    Returns:
        The Scene; for a product, ``path`` is the read GeoTIFF and ``source`` the product.

    Raises:
        InputError: the file or product is missing, unreadable or no recognised product; has no CRS
            while ``georeferenced`` is true; has a band count other than expected; or has
            no valid pixel; or was refused by the inbox scan (:class:`RefusedEntry`). The message names the
            file (the product for a product).
    """
    if isinstance(entry, RefusedEntry):
        raise InputError(entry.path, entry.reason)
    product = recognise(entry.path, hint=entry.sensor)
    if product is None:
        if entry.path.is_dir() or product_archive.is_archive(entry.path):
            raise InputError(entry.path, "not a GF-2, GF-3 or Sentinel-2 product (no MSS image, meta.xml or SAFE inside)")
        return _catalog_raster(entry, config)
    try:
        read = read_product(product, config.products, config.grid, cache=cache)
    except (RasterioError, OSError, ValueError, KeyError) as exc:
        raise InputError(product.path, f"cannot be read as a {product.sensor.value} product ({exc})") from None
    except Exception as exc:  # GDAL errors (CPLE_*) of a broken product
        if type(exc).__module__.startswith("rasterio"):
            raise InputError(product.path, f"cannot be read as a {product.sensor.value} product ({exc})") from None
        raise
    image = entry.model_copy(update={
        "path": read.path, "sensor": read.sensor, "date": entry.date or read.date, "id": entry.id or product.name,
    })
    try:
        return replace(_catalog_raster(image, config), source=product.path)
    except InputError as exc:
        raise InputError(product.path, exc.problem) from None


def _catalog_raster(entry: SceneEntry, config: PrepareConfig) -> Scene:
    """Metadata and footprint of one raster file."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with open_raster(entry.path) as dataset:
            crs = dataset.crs
            if config.georeferenced and crs is None:
                raise InputError(
                    entry.path,
                    "has no CRS; georeference it or set 'georeferenced: false' for pixel-space tiles",
                )
            if not config.georeferenced:
                crs = None
            transform = dataset.transform if crs is not None else Affine.identity()
            # A label may hold several identical bands (an RGB mask): labels.inspect_label checks them
            # when its group is built, so a bad label fails its group instead of leaving it unlabelled.
            expected = entry.bands or config.expected_bands.get(entry.role)
            if expected is not None and dataset.count != expected:
                raise InputError(entry.path, f"has {dataset.count} bands, expected {expected} for role {entry.role.value}")
            dtype = dataset.dtypes[0]
            black = (
                config.tiling.black_value
                if not entry.role.is_label and is_integer(dtype)
                else None
            )
            scale = max(dataset.width, dataset.height) / config.footprint_max_size
            out_shape = None
            mask_transform = transform
            if scale > 1:
                out_shape = (max(1, round(dataset.height / scale)), max(1, round(dataset.width / scale)))
                mask_transform = transform @ Affine.scale(
                    dataset.width / out_shape[1], dataset.height / out_shape[0]
                )
            _, valid = read_window(dataset, black_value=black, out_shape=out_shape)
            if not valid.any():
                raise InputError(entry.path, "has no valid data (every pixel is nodata, NaN or black)")
            footprint = footprint_from_mask(valid, mask_transform)
            return Scene(
                id=entry.scene_id,
                path=entry.path,
                sensor=entry.sensor,
                role=entry.role,
                date=entry.date,
                group=entry.group,
                is_sar=entry.is_sar,
                crs=crs,
                transform=transform,
                width=dataset.width,
                height=dataset.height,
                bands=dataset.count,
                dtype=dtype,
                nodata=dataset.nodata,
                footprint=footprint,
            )


def build_catalog(
    entries: list[SceneEntry], config: PrepareConfig, *, cache: Path | None = None
) -> tuple[list[Scene], list[tuple[SceneEntry, str]]]:
    """Catalog every entry; bad inputs are returned as (entry, reason), the rest go on.

    Args:
        entries: the scene entries, e.g. from :func:`scene_entries`.
        config: the prepare config.
        cache: where provider products are read to (default ``products.cache``, else the user cache).

    Returns:
        The catalogued scenes, in entry order, and the failures as (entry, reason naming the file).
    """

    def catalogued(entry: SceneEntry) -> Scene | str:
        try:
            return catalog_scene(entry, config, cache=cache)
        except InputError as exc:
            return str(exc)

    # Scenes are independent and their footprint reads decode whole files in GDAL, without the GIL. The
    # threads' own catch_warnings interleave, so the filters are restored here, once, for the caller.
    with warnings.catch_warnings(), bounded_gdal_cache(), ThreadPoolExecutor(config.thread_count) as pool:
        results = list(pool.map(catalogued, entries))
    scenes = [result for result in results if isinstance(result, Scene)]
    failures = [(entry, result) for entry, result in zip(entries, results) if isinstance(result, str)]
    return scenes, failures
