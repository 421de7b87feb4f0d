"""A synthetic scene group on disk: its roles, sensors, dates and grids, file profiles and tags, scene list.

Roles follow GOLD: ``A`` GF-2 optical t1 (the geometric reference), ``B`` GF-3 SAR t2, ``C`` Sentinel-2
optical t2 and the change ``label``.

Misregistration convention (``SyntheticGroup.true_shift_px``): for a role with shift (dx, dy), the
content of that image, placed on A's grid by its own georeferencing, appears at reference position
+ (dx, dy) A-pixels (x to the right/east, y down/south). The images are made that way: each output
pixel's claimed ground position is taken from its own CRS and transform, moved back by the shift,
and the true scene is sampled there (bilinear).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import rasterio
import yaml
from rasterio.crs import CRS
from rasterio.transform import Affine

from pipeline.io.atomic import write_atomic

BAND_NAMES = ("blue", "green", "red", "nir")
S2_BAND_NAMES = ("B02", "B03", "B04", "B08")
UTM_EPSG = 32650  # WGS 84 / UTM zone 50N (eastern China)
ORIGIN = (517_200.0, 3_531_600.0)  # top-left corner of A, near Hefei (31.9 N, 117.2 E)
A_RES = 4.0  # GF-2 multispectral, m
C_RES = 6.0  # Sentinel-2-like optical t2, m (coarser than A, on an origin that is not A's)
B_RES_M = 8.0  # GF-3 geocoded SAR, ~m (on a lon/lat grid)
DATES = {"A": dt.date(2019, 5, 1), "C": dt.date(2021, 6, 15), "B": dt.date(2021, 6, 16)}
DATES["label"] = DATES["B"]
SENSORS = {"A": "gf2", "B": "gf3", "C": "s2", "label": "generic"}


@dataclass(frozen=True)
class SyntheticGroup:
    """A written synthetic scene group and its truth."""

    root: Path
    paths: dict[str, Path]  # role ("A", "B", "C", "label") -> GeoTIFF path
    scene_list: Path  # YAML scene list usable as a `changeflow prepare` config
    true_shift_px: dict[str, tuple[float, float]]  # role -> (dx, dy) in A pixels (see module doc)
    change_fraction: float  # changed pixels / labelled (not 255) pixels of the label


def geotiff_profile(role: str, *, width: int, height: int, crs: CRS, transform: Affine, tile: int,
                    compress: str | None = "deflate", zlevel: int = 1) -> dict:
    """The GeoTIFF creation profile of one role's file (dtype, bands, nodata and predictor per role).

    Args:
        role: "A", "B", "C" or "label".
        width: columns.
        height: rows.
        crs: the file's CRS.
        transform: the file's geotransform.
        tile: the internal tile side (px).
        compress: the GDAL compression, or None for uncompressed files.
        zlevel: the DEFLATE level.

    Returns:
        Keyword arguments for :func:`rasterio.open` in write mode.
    """
    dtype, count, nodata, predictor = {
        "A": ("uint16", 4, 0, 2),
        "C": ("uint16", 4, 0, 2),
        "B": ("float32", 1, float("nan"), 3),
        "label": ("uint8", 1, 255, 2),
    }[role]
    profile = dict(driver="GTiff", width=width, height=height, count=count, dtype=dtype, crs=crs,
                   transform=transform, nodata=nodata, tiled=True, blockxsize=tile, blockysize=tile,
                   interleave="pixel" if count > 1 else "band")
    if compress:
        profile.update(compress=compress, predictor=predictor)
        if compress == "deflate":
            profile["zlevel"] = zlevel
    return profile


def describe(dst: rasterio.io.DatasetWriter, role: str, name: str) -> None:
    """Write the band names and the date, sensor, role, group and unit tags of one role's file.

    Args:
        dst: the open file.
        role: "A", "B", "C" or "label".
        name: the group name.
    """
    date = DATES[role]
    dst.update_tags(
        TIFFTAG_DATETIME=f"{date:%Y:%m:%d} 03:00:00",
        ACQUISITION_DATE=date.isoformat(),
        SENSOR=SENSORS[role],
        ROLE=role,
        GROUP=name,
        SYNTHETIC="changeflow.pipeline.synthetic.scenes (textures: CC0 Landsat rgb_byte_cc0.tif)",
    )
    if role == "A":
        dst.descriptions = BAND_NAMES
        dst.update_tags(UNITS="DN (GF-2 PMS MSS-like)")
    elif role == "C":
        dst.descriptions = S2_BAND_NAMES
        dst.update_tags(UNITS="surface reflectance x 10000 (Sentinel-2 L2A-like)")
    elif role == "B":
        dst.descriptions = ("sigma0_db",)
        dst.update_tags(UNITS="sigma0 dB (GF-3-like, geocoded)")
    else:
        dst.descriptions = ("change",)
        dst.update_tags(VALUES="0 no change, 1 change, 255 ignore (outside the common valid area)")


def write_scene_list(root: Path, name: str, paths: dict[str, Path]) -> Path:
    """Write ``{name}_scenes.yaml``, a scene list usable as a ``changeflow prepare`` config.

    Args:
        root: the group folder.
        name: the group name.
        paths: role -> GeoTIFF path.

    Returns:
        The scene list's path.
    """
    bands = {"A": 4, "C": 4, "B": 1, "label": 1}
    scenes = [
        {"path": paths[role].name, "sensor": SENSORS[role], "role": role,
         "date": DATES[role], "group": name, "bands": bands[role]}
        for role in ("A", "C", "B", "label")
    ]
    return write_atomic(
        root / f"{name}_scenes.yaml",
        "# Synthetic scene group written by pipeline.synthetic.scenes; usable as a `changeflow prepare` config.\n"
        + yaml.safe_dump({"scenes": scenes}, sort_keys=False),
    )


def role_paths(root: Path, name: str) -> dict[str, Path]:
    """The file of each role, ``{root}/{name}_{role}.tif``.

    Args:
        root: the group folder.
        name: the group name.

    Returns:
        Role -> path, for "A", "B", "C" and "label".
    """
    return {role: root / f"{name}_{role}.tif" for role in ("A", "B", "C", "label")}
