"""Convert xBD pre/post pairs (building polygons with damage classes) into semantic-change tile folders.

xBD (R. Gupta et al., "xBD: A Dataset for Assessing Building Damage from Satellite Imagery", CVPR Workshops 2019;
CC BY-NC-SA 4.0) ships per pair ``images/<name>_{pre,post}_disaster.png`` (RGB, 1024², not georeferenced) and
``labels/<name>_{pre,post}_disaster.json`` with building polygons as WKT in pixel coordinates (``features.xy``) and
the same polygons in lon/lat (``features.lng_lat``); post-disaster polygons carry ``properties.subtype`` ∈ {no-damage,
minor-damage, major-damage, destroyed, un-classified}.

:func:`convert_xbd` writes the folder layout that :func:`pipeline.learn.dataset.load_index` reads::

    out/{train,val,test}/{A,B,label,semantic_t1,semantic_t2}/<pair>_<row>_<col>.tif

- ``A`` = pre image, ``B`` = post image (3-band uint8);
- ``semantic_t1`` (pre date): 0 background, 1 building; ``semantic_t2`` (post date): 0 background, 1 no-damage, 2 minor,
  3 major, 4 destroyed, 255 un-classified — one class list for both dates (:data:`XBD_CLASSES`, K = 5) so a shared
  semantic head (ClearSCD) predicts both: class 1 is "intact building" at either date;
- ``label`` = binary change, 0/1, 255 = ignore: **change = a building with damage ≥ minor** (minor, major, destroyed);
  intact buildings and background are "no change". With this choice change ⇔ semantic_t1 ≠ semantic_t2 on every labelled
  pixel, so the binary and the semantic labels never contradict each other. (A folder dataset reads these labels
  with ``folder_labels="change01"``; the default "binary255" would turn 255 into change.)
- ignored (255 in all three maps): un-classified buildings (t1 stays 1: the building exists before), and the few
  pixels where the pre and the post footprints disagree (the two JSONs' polygons differ by up to a few pixels);
- label tiles have nodata = 255; polygons are burnt with :func:`rasterio.features.rasterize` (pixel centres inside),
  higher damage classes over lower ones where polygons overlap, un-classified last;
- georeferencing: the pixel→lon/lat affine transform is fitted by least squares to the polygon vertices (xy vs
  lng_lat of the pre JSON; residuals on the Joplin pairs are < 0.02 px) and tiles are written in EPSG:4326. If the fit
  is impossible or off by more than half a pixel, tiles are written without CRS (the loader accepts that).
- tiles: non-overlapping ``tile``² windows (a partial edge strip is dropped). Splits per pair: pairs named in
  ``test_pairs`` (default: the last pair in name order when there are several) go to ``test``; in the other pairs the
  bottom ``val_fraction`` of the tile rows (at least one row) goes to ``val`` and the rows above to ``train``, so
  train and val are spatially blocked (they touch along one tile edge), never interleaved.

Outputs are written atomically (temporary name, then rename); a rerun skips tiles whose five files exist unless
``overwrite=True``. A pair that cannot be read is reported in the summary's ``failed`` and the others go on.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import yaml
from affine import Affine
from rasterio.errors import NotGeoreferencedWarning
from rasterio.features import rasterize
from shapely import wkt
from shapely.errors import ShapelyError

from pipeline.errors import InputError
from pipeline.io.atomic import atomic_path, write_atomic
from pipeline.io.raster import NODATA_U8

XBD_CLASSES: tuple[str, ...] = ("background", "building (no damage)", "minor-damage", "major-damage", "destroyed")
"""Semantic classes of both dates (index = label value)."""
XBD_T2_CODES: dict[str, int] = {"no-damage": 1, "minor-damage": 2, "major-damage": 3, "destroyed": 4, "un-classified": 255}
"""Post-disaster ``subtype`` → semantic_t2 value."""
CHANGE_MIN_CODE = 2
"""semantic_t2 ≥ this (minor-damage and worse) is change."""
ROLES = ("A", "B", "label", "semantic_t1", "semantic_t2")
SPLITS = ("train", "val", "test")


def find_pairs(root: Path) -> list[str]:
    """The complete xBD pairs of a folder.

    Args:
        root: an xBD folder (with ``images/``).

    Returns:
        Pair names ``<disaster>_<id>`` with both a pre and a post image under ``root/images``, sorted.

    Raises:
        InputError: naming ``root`` when it has no ``images/`` subfolder.
    """
    images = root / "images"
    if not images.is_dir():
        raise InputError(root, "is not an xBD folder: no images/ subfolder")
    pre = {p.name.removesuffix("_pre_disaster.png") for p in images.glob("*_pre_disaster.png")}
    post = {p.name.removesuffix("_post_disaster.png") for p in images.glob("*_post_disaster.png")}
    return sorted(pre & post)


def _read_image(path: Path) -> np.ndarray:
    if not path.is_file():
        raise InputError(path, "image is missing")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as src:
            data = src.read()
    if data.shape[0] < 3:
        raise InputError(path, f"expected an RGB image, got {data.shape[0]} band(s)")
    return data[:3]


def _read_polygons(path: Path) -> tuple[list[tuple[Any, str | None]], list[tuple[Any, Any]], dict]:
    """``([(pixel polygon, subtype)], [(pixel polygon, lon/lat polygon)], metadata)`` of one xBD label JSON."""
    if not path.is_file():
        raise InputError(path, "label JSON is missing")
    try:
        doc = json.loads(path.read_text())
        features = doc["features"]
        xy = [(wkt.loads(f["wkt"]), f.get("properties", {}).get("subtype")) for f in features["xy"]]
        lnglat = [wkt.loads(f["wkt"]) for f in features.get("lng_lat", [])]
    except (OSError, ValueError, KeyError, TypeError, ShapelyError) as exc:
        raise InputError(path, f"not an xBD label file: {exc}") from exc
    pairs = list(zip((g for g, _ in xy), lnglat)) if len(lnglat) == len(xy) else []
    return xy, pairs, doc.get("metadata", {})


def fit_geotransform(pairs: list[tuple[Any, Any]], max_residual_px: float = 0.5) -> tuple[Affine | None, float]:
    """Least-squares pixel→lon/lat affine from matching polygon vertices.

    Args:
        pairs: (pixel polygon, lon/lat polygon) pairs; pairs whose exteriors differ in vertex count are skipped.
        max_residual_px: the largest vertex misfit accepted, in pixels.

    Returns:
        The transform and the largest vertex misfit in pixels; ``(None, residual)`` when the fit is off by
        more than ``max_residual_px``, and ``(None, inf)`` when fewer than 3 non-collinear vertices match.
    """
    src, dst = [], []
    for pixel, world in pairs:
        a, b = np.asarray(pixel.exterior.coords), np.asarray(world.exterior.coords)
        if a.shape == b.shape:
            src.append(a)
            dst.append(b)
    if not src:
        return None, math.inf
    xy, ll = np.concatenate(src), np.concatenate(dst)
    design = np.c_[xy, np.ones(len(xy))]
    if len(xy) < 3 or np.linalg.matrix_rank(design) < 3:
        return None, math.inf
    coef, *_ = np.linalg.lstsq(design, ll, rcond=None)
    transform = Affine(coef[0, 0], coef[1, 0], coef[2, 0], coef[0, 1], coef[1, 1], coef[2, 1])
    pixel_size = math.sqrt(abs(transform.determinant))
    residual = float(np.abs(design @ coef - ll).max() / pixel_size) if pixel_size else math.inf
    if not math.isfinite(residual) or residual > max_residual_px:
        return None, residual
    return transform, residual


def _burn(shapes: list[tuple[Any, int]], shape: tuple[int, int]) -> np.ndarray:
    if not shapes:
        return np.zeros(shape, np.uint8)
    return rasterize(shapes, out_shape=shape, fill=0, dtype="uint8")  # identity transform: pixel coordinates


def rasterize_pair(
    pre: list[tuple[Any, str | None]], post: list[tuple[Any, str | None]], shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Rasterise one pair's pre and post building polygons (encodings in the module docstring).

    Higher damage classes are burnt over lower ones, un-classified last; pixels where the pre and post
    footprints disagree are 255 in all three maps.

    Args:
        pre: (pixel polygon, subtype) of the pre-disaster buildings (the subtype is not used).
        post: (pixel polygon, subtype) of the post-disaster buildings.
        shape: (height, width) of the images.

    Returns:
        ``(semantic_t1, semantic_t2, change, disagreement_pixels)``: three uint8 (height, width) maps and
        the number of footprint-disagreement pixels.

    Raises:
        ValueError: for a post subtype not in :data:`XBD_T2_CODES`.
    """
    t1 = _burn([(g, 1) for g, _ in pre if not g.is_empty], shape)
    burn_t2 = []
    for geom, subtype in post:
        if geom.is_empty:
            continue
        if subtype not in XBD_T2_CODES:
            raise ValueError(f"unknown damage subtype {subtype!r}; expected one of {sorted(XBD_T2_CODES)}")
        burn_t2.append((geom, XBD_T2_CODES[subtype]))
    burn_t2.sort(key=lambda item: item[1])  # higher damage over lower, un-classified (255) last
    t2 = _burn(burn_t2, shape)
    disagree = (t1 > 0) != (t2 > 0)
    change = np.where(t2 == NODATA_U8, NODATA_U8, (t2 >= CHANGE_MIN_CODE) & (t2 != NODATA_U8)).astype(np.uint8)
    for label in (t1, t2, change):
        label[disagree] = NODATA_U8
    return t1, t2, change, int(disagree.sum())


def _write(path: Path, data: np.ndarray, transform: Affine | None, nodata: int | None) -> None:
    array = data if data.ndim == 3 else data[np.newaxis]
    profile: dict[str, Any] = {
        "driver": "GTiff", "width": array.shape[2], "height": array.shape[1], "count": array.shape[0],
        "dtype": array.dtype, "nodata": nodata, "compress": "deflate",
    }
    if array.shape[1] % 16 == 0 and array.shape[2] % 16 == 0:
        profile.update(tiled=True, blockxsize=min(256, array.shape[2]), blockysize=min(256, array.shape[1]))
    if transform is not None:
        profile.update(crs="EPSG:4326", transform=transform)
    with warnings.catch_warnings(), atomic_path(path) as partial:
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(partial, "w", **profile) as dst:
            dst.write(array)


def _row_splits(rows: int, val_fraction: float) -> list[str]:
    """Split of each tile row: the bottom ``val_fraction`` (≥ 1 row if > 0, ≥ 1 training row kept) is val."""
    n_val = 0
    if val_fraction > 0 and rows > 1:
        n_val = min(rows - 1, max(1, math.ceil(rows * val_fraction)))
    return ["train"] * (rows - n_val) + ["val"] * n_val


def convert_xbd(
    root: str | Path,
    out: str | Path,
    tile: int = 256,
    *,
    test_pairs: Sequence[str] | None = None,
    val_fraction: float = 0.25,
    pairs: Sequence[str] | None = None,
    georeference: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Convert the xBD pairs under ``root`` (``images/``, ``labels/``) into tile folders under ``out``.

    Args:
        root: xBD folder (e.g. ``.../xbd-joplin/tier3``).
        out: output root (``out/{train,val,test}/{A,B,label,semantic_t1,semantic_t2}/``).
        tile: tile size in pixels (non-overlapping windows; edge strips that do not fill a tile are dropped).
        test_pairs: pair names (``joplin-tornado_00000001``) or indices in name order that go to ``test``; default:
            the last pair when there are several, none when there is one.
        val_fraction: share of tile rows (the bottom ones) of each non-test pair that goes to ``val``.
        pairs: restrict to these pair names (default: every complete pair).
        georeference: fit a lon/lat transform from the JSON polygons (EPSG:4326 tiles); False = pixel-space tiles.
        overwrite: rewrite existing tiles (default: skip tiles whose five files exist).

    Returns:
        A summary (also written to ``out/xbd_summary.json``): per pair its split counts, building / class /
        change / ignored pixel counts, georeferencing residual; tiles per split; ``failed`` pairs with their
        error (a pair that cannot be read does not stop the others).

    Raises:
        ValueError: for ``tile`` < 16.
        InputError: naming ``root`` when it is not an xBD folder, holds no pair, lacks a pair of ``pairs``
            or ``test_pairs``, or no pair could be converted.
    """
    root, out = Path(root), Path(out)
    if tile < 16:
        raise ValueError(f"tile must be ≥ 16 pixels, got {tile}")
    names = find_pairs(root)
    if pairs is not None:
        missing = sorted(set(pairs) - set(names))
        if missing:
            raise InputError(root, f"pairs not found: {', '.join(missing)}")
        names = [n for n in names if n in set(pairs)]
    if not names:
        raise InputError(root, "no xBD pair (<name>_pre_disaster.png with <name>_post_disaster.png) in images/")
    if test_pairs is None:
        test = {names[-1]} if len(names) > 1 else set()
    else:
        test = {names[p] if isinstance(p, int) else p for p in test_pairs}
        unknown = sorted(test - set(names))
        if unknown:
            raise InputError(root, f"test pairs not found: {', '.join(unknown)}")

    summary: dict[str, Any] = {
        "root": str(root), "out": str(out), "tile": tile, "classes": list(XBD_CLASSES),
        "change": "building with damage >= minor-damage (semantic_t2 in 2..4); 255 = ignore",
        "pairs": {}, "tiles": dict.fromkeys(SPLITS, 0), "failed": {},
    }
    for name in names:
        try:
            summary["pairs"][name] = _convert_pair(root, out, name, tile, name in test, val_fraction, georeference,
                                                   overwrite)
        except (InputError, ValueError, OSError, rasterio.errors.RasterioError) as exc:
            summary["failed"][name] = str(exc)
            continue
        for split, count in summary["pairs"][name]["split_tiles"].items():
            summary["tiles"][split] += count
    if not summary["pairs"]:
        raise InputError(root, f"no xBD pair could be converted: {summary['failed']}")
    write_atomic(out / "xbd_summary.json", json.dumps(summary, indent=2))
    return summary


def _convert_pair(
    root: Path, out: Path, name: str, tile: int, is_test: bool, val_fraction: float, georeference: bool,
    overwrite: bool,
) -> dict[str, Any]:
    pre_img = _read_image(root / "images" / f"{name}_pre_disaster.png")
    post_img = _read_image(root / "images" / f"{name}_post_disaster.png")
    if pre_img.shape != post_img.shape:
        raise InputError(root / "images" / f"{name}_post_disaster.png",
                         f"size {post_img.shape[1:]} differs from the pre image {pre_img.shape[1:]}")
    pre, vertices, _ = _read_polygons(root / "labels" / f"{name}_pre_disaster.json")
    post, _, _ = _read_polygons(root / "labels" / f"{name}_post_disaster.json")
    height, width = pre_img.shape[1:]
    try:
        t1, t2, change, disagree = rasterize_pair(pre, post, (height, width))
    except ValueError as exc:
        raise InputError(root / "labels" / f"{name}_post_disaster.json", str(exc)) from exc
    transform, residual = fit_geotransform(vertices) if georeference else (None, math.nan)
    rows, cols = height // tile, width // tile
    if rows == 0 or cols == 0:
        raise InputError(root / "images" / f"{name}_pre_disaster.png", f"{height}×{width} is smaller than one {tile}² tile")
    row_split = ["test"] * rows if is_test else _row_splits(rows, val_fraction)
    split_tiles = {s: 0 for s in sorted(set(row_split))}
    written = skipped = 0
    for r in range(rows):
        for c in range(cols):
            y, x = r * tile, c * tile
            split = row_split[r]
            stem = f"{name}_{y:04d}_{x:04d}"
            paths = {role: out / split / role / f"{stem}.tif" for role in ROLES}
            split_tiles[split] += 1
            if not overwrite and all(p.exists() for p in paths.values()):
                skipped += 1
                continue
            window = (slice(y, y + tile), slice(x, x + tile))
            tile_transform = transform @ Affine.translation(x, y) if transform is not None else None
            _write(paths["A"], pre_img[(slice(None), *window)], tile_transform, None)
            _write(paths["B"], post_img[(slice(None), *window)], tile_transform, None)
            for role, label in (("label", change), ("semantic_t1", t1), ("semantic_t2", t2)):
                _write(paths[role], label[window], tile_transform, NODATA_U8)
            written += 1
    covered = (slice(0, rows * tile), slice(0, cols * tile))
    t2c = t2[covered]
    return {
        "split_tiles": split_tiles,
        "tiles_written": written,
        "tiles_skipped": skipped,
        "size": [int(height), int(width)],
        "buildings_pre": len(pre),
        "buildings_post": len(post),
        "building_pixels_t1": int((t1[covered] == 1).sum()),
        "t2_pixels": {XBD_CLASSES[k]: int((t2c == k).sum()) for k in range(len(XBD_CLASSES))},
        "changed_pixels": int((change[covered] == 1).sum()),
        "ignored_pixels": int((change[covered] == NODATA_U8).sum()),
        "footprint_disagreement_pixels": disagree,
        "georeferenced": transform is not None,
        "georeference_residual_px": residual if math.isfinite(residual) else None,
    }


def write_xbd_scenes(root: str | Path, out: str | Path, *, pairs: Sequence[str] | None = None) -> Path:
    """Whole-scene rasters of each xBD pair plus a scene list, for ``changeflow prepare``.

    Writes ``out/<pair>/{A,C,label,semantic_t1,semantic_t2}.tif`` (A = pre, C = post: an optical pair;
    classes and change as for :func:`convert_xbd`, georeferenced in EPSG:4326 when the lon/lat fit
    works) and ``out/xbd_scenes.yaml`` listing them, one scene group per pair. Prepare then grids,
    tiles and splits them like any other group, with per-date class tiles in the tile index.

    Args:
        root: an xBD folder (``images/``, ``labels/``).
        out: the output folder.
        pairs: restrict to these pair names (default: every complete pair).

    Returns:
        The scene list ``out/xbd_scenes.yaml``.

    Raises:
        InputError: naming the folder or file, when ``root`` is not an xBD folder or holds no (selected)
            pair, or an image or label JSON is missing or unreadable (the first such pair stops the run).
        OSError: when an output cannot be written.
    """
    root, out = Path(root), Path(out)
    names = find_pairs(root)
    if pairs is not None:
        names = [n for n in names if n in set(pairs)]
    if not names:
        raise InputError(root, "no xBD pair (<name>_pre_disaster.png with <name>_post_disaster.png) in images/")
    entries = []
    for name in names:
        pre_img = _read_image(root / "images" / f"{name}_pre_disaster.png")
        post_img = _read_image(root / "images" / f"{name}_post_disaster.png")
        pre, vertices, _ = _read_polygons(root / "labels" / f"{name}_pre_disaster.json")
        post, _, _ = _read_polygons(root / "labels" / f"{name}_post_disaster.json")
        try:
            t1, t2, change, _ = rasterize_pair(pre, post, pre_img.shape[1:])
        except ValueError as exc:
            raise InputError(root / "labels" / f"{name}_post_disaster.json", str(exc)) from exc
        transform, _ = fit_geotransform(vertices)
        rasters = {"A": (pre_img, None), "C": (post_img, None), "label": (change, NODATA_U8),
                   "semantic_t1": (t1, NODATA_U8), "semantic_t2": (t2, NODATA_U8)}
        for role, (data, nodata) in rasters.items():
            path = out / name / f"{role}.tif"
            _write(path, data, transform, nodata)
            entries.append({"path": str(path.relative_to(out)), "role": role, "group": name, "id": f"{name}_{role}"})
    scene_list = out / "xbd_scenes.yaml"
    write_atomic(scene_list, yaml.safe_dump({"scenes": entries}, sort_keys=False))
    return scene_list
