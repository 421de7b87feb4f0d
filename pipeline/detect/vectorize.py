"""Change rasters to change polygons: sieve → polygonise → valid → min area → simplify → GeoPackage.

The class raster (uint8: 0 no change, 1 change or semantic class ids, 255 nodata) is read block by
block, never whole. Each block goes through:

1. **Classes**: the class raster itself, or ``probability > threshold`` when a threshold is given
   (nodata wherever the probability is nodata): detection's rule (:func:`is_change`), so a
   probability raster of ``changeflow detect`` thresholded here gives its class raster.
2. **Sieve** (``rasterio.features.sieve``, 4-connected): regions of fewer than ``sieve_px`` pixels are
   merged into their largest neighbour; nodata is masked out (neither sieved nor a neighbour). The
   sieve runs on the block *plus a margin of ``sieve_px + 1`` pixels*, and only the block's core is
   kept. A region smaller than ``sieve_px`` spans fewer than ``sieve_px`` rows and columns, so any
   such region that reaches the core lies wholly inside the margin window and is sieved exactly as a
   whole-raster sieve would; a region that is cut by the margin window's edge (and so looks smaller
   than it is) cannot reach the core. For binary change maps the block-wise sieve therefore equals
   the whole-raster sieve; for semantic maps the *choice* of the largest neighbour may differ when
   that neighbour is cut by the margin window (the small region disappears either way).
3. **Polygonise** connected regions of equal non-zero class (4-connected, ``skimage.measure.label``
   then ``rasterio.features.shapes``) in *global pixel coordinates*: every vertex is an integer
   pixel corner, so pieces of one region in two blocks share their seam edge exactly. Zonal
   statistics of the probability (pixel count, sum, valid count, max) are taken per region from the
   same labels, so they are exact pixel statistics.
4. **Seam merging**: pieces whose bounds lie on an interior block edge are candidates; two candidates
   of the same class that share an edge of non-zero length (an STRtree query, then the length of
   their intersection) are joined with union-find and unioned (``shapely.union_all``, exact on the
   integer lattice); their statistics are summed / maxed. A square straddling a seam comes out as
   one polygon with exactly the pixels of the square. Pieces touching only at a corner are not
   joined, as 4-connectivity does not join them inside a block either.
5. ``make_valid`` (only on invalid pieces), then the **minimum area** in m² on the exact pixel area.
6. **Simplification** in pixel space with a tolerance of ``simplify_px`` pixels: with several
   classes, edges are first split at every pixel corner (``segmentize(1)``) so neighbouring
   polygons share identical vertices (a valid coverage; one class has no shared edges), then ``shapely.coverage_simplify`` (GEOS coverage simplifier,
   Visvalingam-Whyatt) simplifies shared edges once, so neighbouring polygons of different classes
   keep no gaps or overlaps, and each polygon stays valid. A polygon that would come out invalid
   falls back to ``simplify(preserve_topology=True)`` + ``make_valid``.
7. Pixel coordinates → map coordinates with the raster transform.

Areas and perimeters (``area_m2``, ``perimeter_m``) are those of the written (simplified) geometry,
in metres: in the raster's CRS when it is projected (times its unit factor, e.g. US feet), and in
the local UTM zone (``GeoSeries.estimate_utm_crs``) when the CRS is geographic or a Mercator
projection (whose areas are inflated by 1/cos²φ). The minimum-area filter uses the exact pixel
area of the region in the same CRS; ``n_pixels`` gives the pixel count. Without a CRS (pixel-space
runs) the transform's units are taken as metres (pixels for an identity transform).

``mean_prob`` / ``max_prob`` are the mean and max probability in [0, 1] over the region's pixels
(pixels where the probability is nodata are left out; NaN when none is valid or no probability
raster is given). A uint8 probability is ``p · 254`` with 255 = nodata; a float probability uses NaN
(or its nodata value) as nodata.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio
import shapely
from affine import Affine
from pyproj import CRS as ProjCRS
from rasterio.features import shapes, sieve
from rasterio.windows import Window
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from skimage.measure import label as label_regions

from pipeline.errors import InputError
from pipeline.io.atomic import atomic_path
from pipeline.io.raster import NODATA_U8, open_raster, read_window

log = logging.getLogger(__name__)

PROBABILITY_SCALE = 254.0
LAYER = "changes"
COLUMNS = ("id", "class", "area_m2", "perimeter_m", "mean_prob", "max_prob", "n_pixels")
SIEVE_DTYPES = ("uint8", "uint16", "int16", "int32")
SINGLE_CALL_VERTICES = 200_000  # coverage simplification in one call up to this many vertices
CHUNK_VERTICES = 20_000  # else in chunks of whole clusters of about this many


@dataclass
class _Pieces:
    """Polygon pieces in global pixel coordinates with their per-region pixel statistics."""

    geometry: list = field(default_factory=list)
    cls: list = field(default_factory=list)
    n_pixels: list = field(default_factory=list)
    prob_sum: list = field(default_factory=list)
    prob_count: list = field(default_factory=list)
    prob_max: list = field(default_factory=list)
    on_seam: list = field(default_factory=list)


def decode_uint8(values: np.ndarray) -> np.ndarray:
    """uint8 probabilities ``round(p · 254)`` as float32 probabilities (nodata is not masked here).

    Args:
        values: the stored integers.

    Returns:
        float32 ``values / 254``.
    """
    return values.astype(np.float32) / np.float32(PROBABILITY_SCALE)


def is_change(probability: np.ndarray, threshold: float) -> np.ndarray:
    """The change rule of detection's class raster and of vectorisation: ``probability > threshold``.

    Both compare in float32, so a pixel exactly at the threshold is "no change" in both.

    Args:
        probability: float32 probabilities (:func:`decode_uint8` for uint8 ones), NaN where nodata.
        threshold: the class threshold.

    Returns:
        bool, False where the probability is NaN.
    """
    return np.asarray(probability, np.float32) > np.float32(threshold)


def probability_block(dataset: rasterio.io.DatasetReader, window: Window) -> np.ndarray:
    """One window of a probability raster, as probabilities.

    Args:
        dataset: the probability raster: uint8 ``p · 254`` (nodata 255 unless it declares another) or float.
        window: the window to read.

    Returns:
        float32 (h, w) probability in [0, 1], NaN where the raster is nodata (or NaN).
    """
    data, valid = read_window(dataset, window)
    band = data[0]
    if np.issubdtype(band.dtype, np.integer):
        prob = decode_uint8(band)
        nodata = NODATA_U8 if dataset.nodata is None else dataset.nodata
        valid &= band != nodata
    else:
        prob = band.astype(np.float32)
    prob[~valid] = np.nan
    return prob


def _class_block(dataset: rasterio.io.DatasetReader, window: Window) -> tuple[np.ndarray, np.ndarray]:
    data, valid = read_window(dataset, window)
    band = data[0]
    if band.dtype.name not in SIEVE_DTYPES:
        raise InputError(dataset.name, f"class raster has dtype {band.dtype}; expected uint8 (or another integer type)")
    valid &= band != NODATA_U8
    return band, valid


def _expand(window: Window, margin: int, width: int, height: int) -> Window:
    col0 = max(0, int(window.col_off) - margin)
    row0 = max(0, int(window.row_off) - margin)
    col1 = min(width, int(window.col_off + window.width) + margin)
    row1 = min(height, int(window.row_off + window.height) + margin)
    return Window(col0, row0, col1 - col0, row1 - row0)


def _region_stats(labels: np.ndarray, count: int, prob: np.ndarray | None) -> tuple[np.ndarray, ...]:
    """Per label 1..count: pixel count, probability sum, valid-probability count, max probability."""
    flat = labels.ravel()
    inside = np.flatnonzero(flat)
    lab = flat[inside]
    n_pixels = np.bincount(lab, minlength=count + 1)[1:]
    if prob is None:
        nan = np.full(count, np.nan)
        return n_pixels, np.zeros(count), np.zeros(count, np.int64), nan
    values = prob.ravel()[inside]
    ok = np.isfinite(values)
    prob_sum = np.bincount(lab, weights=np.where(ok, values, 0.0), minlength=count + 1)[1:]
    prob_count = np.bincount(lab, weights=ok, minlength=count + 1)[1:].astype(np.int64)
    order = np.argsort(lab, kind="stable")
    starts = np.concatenate(([0], np.cumsum(n_pixels)[:-1]))
    prob_max = np.maximum.reduceat(np.where(ok, values, -np.inf)[order], starts) if count else np.zeros(0)
    prob_max = np.where(np.isfinite(prob_max), prob_max, np.nan)
    return n_pixels, prob_sum, prob_count, prob_max


def _polygonise_block(
    classes: np.ndarray, valid: np.ndarray, prob: np.ndarray | None, window: Window, shape: tuple[int, int], pieces: _Pieces
) -> None:
    """Append the regions of one core block, as polygons in global pixel coordinates."""
    height, width = shape
    col0, row0 = int(window.col_off), int(window.row_off)
    col1, row1 = col0 + int(window.width), row0 + int(window.height)
    foreground = np.where(valid, classes, 0)
    labels, count = label_regions(foreground, background=0, connectivity=1, return_num=True)
    if count == 0:
        return
    labels = labels.astype(np.int32, copy=False)
    class_of = np.zeros(count + 1, dtype=np.int64)
    class_of[labels.ravel()] = foreground.ravel()
    n_pixels, prob_sum, prob_count, prob_max = _region_stats(labels, count, prob)
    geoms: dict[int, list] = {}
    for geojson, value in shapes(labels, mask=labels > 0, connectivity=4, transform=Affine.translation(col0, row0)):
        geoms.setdefault(int(value), []).append(shapely.geometry.shape(geojson))
    for value, parts in geoms.items():
        geometry = parts[0] if len(parts) == 1 else shapely.union_all(parts)
        minx, miny, maxx, maxy = geometry.bounds
        on_seam = (minx == col0 > 0) or (maxx == col1 < width) or (miny == row0 > 0) or (maxy == row1 < height)
        pieces.geometry.append(geometry)
        pieces.cls.append(int(class_of[value]))
        pieces.n_pixels.append(int(n_pixels[value - 1]))
        pieces.prob_sum.append(float(prob_sum[value - 1]))
        pieces.prob_count.append(int(prob_count[value - 1]))
        pieces.prob_max.append(float(prob_max[value - 1]))
        pieces.on_seam.append(on_seam)


def _components(count: int, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Connected-component label of each of ``count`` nodes joined by the pairs (left, right)."""
    graph = coo_matrix((np.ones(len(left), dtype=np.int8), (left, right)), shape=(count, count))
    return connected_components(graph, directed=False)[1]


def _merge_seams(frame: pd.DataFrame) -> pd.DataFrame:
    """Union pieces of the same class that share an edge across a block seam; sum their statistics."""
    seam = np.flatnonzero(frame["on_seam"].to_numpy())
    if len(seam) < 2:
        return frame
    geoms = frame["geometry"].to_numpy()[seam]
    cls = frame["class"].to_numpy()[seam]
    left, right = shapely.STRtree(geoms).query(geoms, predicate="intersects")
    keep = (left < right) & (cls[left] == cls[right])
    left, right = left[keep], right[keep]
    shared = shapely.length(shapely.intersection(geoms[left], geoms[right])) > 0
    labels = _components(len(seam), left[shared], right[shared])
    if len(np.unique(labels)) == len(seam):
        return frame
    group = np.arange(len(frame))
    group[seam] = len(frame) + labels  # merged pieces share one group id
    frame = frame.assign(group=group)
    grouped = frame.groupby("group", sort=True)
    merged = grouped.agg(
        {"class": "first", "n_pixels": "sum", "prob_sum": "sum", "prob_count": "sum", "prob_max": "max", "on_seam": "first"}
    )
    merged["geometry"] = grouped["geometry"].agg(lambda parts: parts.iloc[0] if len(parts) == 1 else shapely.union_all(parts.to_numpy()))
    return merged.reset_index(drop=True)


def _polygonal(geometry: shapely.Geometry) -> shapely.Geometry:
    """The polygonal part of a geometry (make_valid can return collections with lines or points)."""
    if shapely.get_type_id(geometry) in (3, 6):
        return geometry
    parts = [part for part in shapely.get_parts(geometry) if shapely.get_type_id(part) in (3, 6)]
    return shapely.union_all(parts) if parts else shapely.Polygon()


def _make_valid(geoms: np.ndarray) -> np.ndarray:
    invalid = ~shapely.is_valid(geoms)
    if invalid.any():
        geoms = geoms.copy()
        geoms[invalid] = [_polygonal(g) for g in shapely.make_valid(geoms[invalid])]
    return geoms


def _simplification_chunks(geoms: np.ndarray, tolerance_px: float) -> list[np.ndarray]:
    """Index sets to simplify together: everything at once for a small coverage, else chunks of
    whole clusters of nearby polygons.

    GEOS' coverage simplifier grows faster than linearly with the coverage size (about 2.5 s for
    250k vertices at once, 0.8 s in chunks), so a large coverage is cut into chunks of about
    ``CHUNK_VERTICES`` vertices. Polygons closer than the distance a simplified edge can move (a
    removed lattice vertex moves an edge by at most 2 × tolerance) stay in one chunk, so no two
    polygons simplified apart can come to overlap.
    """
    vertices = shapely.get_num_coordinates(geoms)
    if vertices.sum() <= SINGLE_CALL_VERTICES:
        return [np.arange(len(geoms))]
    left, right = shapely.STRtree(geoms).query(geoms, predicate="dwithin", distance=2 * tolerance_px + 1)
    cluster = _components(len(geoms), left, right)
    order = np.argsort(cluster, kind="stable")
    ordered = cluster[order]
    bounds = list(np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])) + [len(order)]
    chunks, current, size = [], [], 0
    for begin, end in zip(bounds[:-1], bounds[1:]):
        current.append(order[begin:end])
        size += int(vertices[order[begin:end]].sum())
        if size >= CHUNK_VERTICES or end == len(order):
            chunks.append(np.concatenate(current))
            current, size = [], 0
    return chunks


def simplify_coverage(geoms: np.ndarray, tolerance_px: float, *, shared_edges: bool = True) -> np.ndarray:
    """Topology-aware simplification of lattice polygons (pixel coordinates), keeping each valid.

    GEOS' coverage simplifier (Visvalingam-Whyatt) simplifies shared edges once, so neighbours keep no
    gaps or overlaps; a polygon that comes out invalid or empty falls back to
    ``simplify(preserve_topology=True)`` + ``make_valid``.

    Args:
        geoms: polygons in pixel coordinates, vertices on pixel corners.
        tolerance_px: the tolerance in pixels; 0 or less returns ``geoms`` unchanged.
        shared_edges: False says no two polygons share an edge (one class: regions of one class
            never touch along an edge), so the pixel-corner densification that edge-matches
            neighbours is skipped (about twice as fast).

    Returns:
        The simplified polygons, in the order of ``geoms``.
    """
    if tolerance_px <= 0 or len(geoms) == 0:
        return geoms
    dense = shapely.segmentize(geoms, 1.0) if shared_edges else geoms
    simplified = np.empty(len(dense), dtype=object)
    for index in _simplification_chunks(dense, tolerance_px):
        simplified[index] = shapely.coverage_simplify(dense[index], tolerance_px)
    bad = ~shapely.is_valid(simplified) | shapely.is_empty(simplified)
    if bad.any():
        fallback = shapely.simplify(geoms[bad], tolerance_px, preserve_topology=True)
        simplified[bad] = _make_valid(fallback)
    return simplified


def _is_mercator(crs: ProjCRS) -> bool:
    operation = crs.coordinate_operation
    name = (operation.method_name if operation is not None else "").lower()
    return "mercator" in name and "transverse" not in name


def metric_series(geometry: gpd.GeoSeries) -> tuple[gpd.GeoSeries, float]:
    """The geometries in a CRS where lengths are metres after multiplying by the returned factor.

    A projected CRS is kept (its unit factor, e.g. US feet, is returned); a geographic or Mercator
    CRS (areas inflated by 1/cos²φ) is replaced by the local UTM zone.

    Args:
        geometry: the geometries, with or without a CRS.

    Returns:
        The geometries (reprojected or not) and the factor that turns their lengths into metres; an
        empty series or one without a CRS is returned as is with factor 1.
    """
    crs = geometry.crs
    if crs is None or len(geometry) == 0:
        return geometry, 1.0
    if crs.is_projected and not _is_mercator(crs):
        return geometry, float(crs.axis_info[0].unit_conversion_factor)
    utm = geometry.estimate_utm_crs()
    return geometry.to_crs(utm), 1.0


def to_map(geoms: np.ndarray, transform: Affine) -> np.ndarray:
    """Pixel (col, row) coordinates to map coordinates with the raster transform.

    Args:
        geoms: geometries in pixel coordinates.
        transform: the raster's affine transform.

    Returns:
        The geometries in map coordinates.
    """
    a, b, c, d, e, f = tuple(transform)[:6]
    matrix = np.array([[a, d], [b, e]])
    return shapely.transform(geoms, lambda xy: xy @ matrix + (c, f))


def check_same_grid(first: rasterio.io.DatasetReader, second: rasterio.io.DatasetReader) -> None:
    """Check that two rasters share size, CRS and transform.

    Args:
        first: the reference raster.
        second: the raster checked against it.

    Raises:
        InputError: naming ``second``, when its size or grid (CRS, transform) differs.
    """
    if (first.width, first.height) != (second.width, second.height):
        raise InputError(second.name, f"size {second.width}×{second.height} differs from {first.name} ({first.width}×{first.height})")
    if not first.transform.almost_equals(second.transform) or first.crs != second.crs:
        raise InputError(second.name, f"grid (CRS / transform) differs from {first.name}")


def _block_pieces(
    cls_ds: rasterio.io.DatasetReader | None,
    prob_ds: rasterio.io.DatasetReader | None,
    core: Window,
    margin: int,
    threshold: float | None,
    sieve_px: int,
    pieces: _Pieces,
) -> None:
    """Classify, sieve (on the core plus ``margin``) and polygonise one core block into ``pieces``."""
    base = cls_ds if cls_ds is not None else prob_ds
    width, height = base.width, base.height
    outer = _expand(core, margin, width, height)
    if cls_ds is not None:
        block, valid = _class_block(cls_ds, outer)
    else:
        prob_outer = probability_block(prob_ds, outer)
        valid = np.isfinite(prob_outer)
        block = is_change(prob_outer, threshold).astype(np.uint8)
    if not valid.any():
        return
    if margin:
        block = sieve(block, size=sieve_px, connectivity=4, mask=valid)
    inner = (
        slice(int(core.row_off - outer.row_off), int(core.row_off - outer.row_off + core.height)),
        slice(int(core.col_off - outer.col_off), int(core.col_off - outer.col_off + core.width)),
    )
    if prob_ds is None:
        prob = None
    elif cls_ds is None:
        prob = prob_outer[inner]
    else:
        prob = probability_block(prob_ds, core)
    _polygonise_block(block[inner], valid[inner], prob, core, (height, width), pieces)


def _pieces_frame(pieces: _Pieces) -> pd.DataFrame:
    """The pieces as a frame with one typed column per statistic."""
    return pd.DataFrame(
        {
            "geometry": pieces.geometry,
            "class": np.asarray(pieces.cls, dtype=np.int64),
            "n_pixels": np.asarray(pieces.n_pixels, dtype=np.int64),
            "prob_sum": np.asarray(pieces.prob_sum, dtype=np.float64),
            "prob_count": np.asarray(pieces.prob_count, dtype=np.int64),
            "prob_max": np.asarray(pieces.prob_max, dtype=np.float64),
            "on_seam": np.asarray(pieces.on_seam, dtype=bool),
        }
    )


def _polygons(frame: pd.DataFrame, transform: Affine, crs: object, min_area_m2: float, simplify_px: float) -> gpd.GeoDataFrame:
    """Merged pieces → valid, large enough, simplified polygons in map coordinates with their columns."""
    geoms = _make_valid(frame["geometry"].to_numpy())
    exact = gpd.GeoSeries(to_map(geoms, transform), crs=crs)
    metric, factor = metric_series(exact)
    keep = (metric.area.to_numpy() * factor**2 >= min_area_m2) & ~shapely.is_empty(geoms)
    frame, geoms = frame[keep].reset_index(drop=True), geoms[keep]
    geoms = simplify_coverage(geoms, simplify_px, shared_edges=frame["class"].nunique() > 1)
    out = gpd.GeoDataFrame(frame[["class", "n_pixels"]].copy(), geometry=gpd.GeoSeries(to_map(geoms, transform), crs=crs))
    metric, factor = metric_series(out.geometry)
    out["area_m2"] = metric.area.to_numpy() * factor**2
    out["perimeter_m"] = metric.length.to_numpy() * factor
    with np.errstate(invalid="ignore", divide="ignore"):
        out["mean_prob"] = np.where(frame["prob_count"] > 0, frame["prob_sum"] / frame["prob_count"], np.nan)
    out["max_prob"] = frame["prob_max"].to_numpy()
    bounds = out.geometry.bounds
    order = np.lexsort((bounds["minx"].to_numpy(), -bounds["maxy"].to_numpy())) if len(out) else []
    out = out.iloc[order].reset_index(drop=True)
    return out[["class", "area_m2", "perimeter_m", "mean_prob", "max_prob", "n_pixels", "geometry"]]


def polygonize(
    classes: Path | None,
    probability: Path | None = None,
    *,
    threshold: float | None = None,
    sieve_px: int = 16,
    min_area_m2: float = 50.0,
    simplify_px: float = 1.0,
    block_size: int = 2048,
) -> gpd.GeoDataFrame:
    """Polygons of the non-zero classes of a change raster. See the module docstring for the steps.

    Args:
        classes: the class raster, or None to threshold ``probability``.
        probability: the probability raster, for the zonal statistics (and the classes with a threshold).
        threshold: None to use ``classes``; a value gives the classes ``probability > threshold`` (:func:`is_change`).
        sieve_px: regions smaller than this many pixels are merged into their largest neighbour.
        min_area_m2: polygons of a smaller exact pixel area are dropped.
        simplify_px: simplification tolerance in pixels (0: none).
        block_size: block side in pixels.

    Returns:
        Columns class, area_m2, perimeter_m, mean_prob, max_prob, n_pixels and the geometry, in the
        raster's CRS, top-left first.

    Raises:
        ValueError: without a class raster, or a threshold without a probability raster.
        InputError: for an unreadable raster, a class raster of another dtype, or rasters on
            different grids.
    """
    if threshold is None and classes is None:
        raise ValueError("give a class raster, or a probability raster and a threshold")
    if threshold is not None and probability is None:
        raise ValueError("a threshold needs a probability raster")
    source = Path(probability if threshold is not None else classes)
    pieces = _Pieces()
    margin = sieve_px + 1 if sieve_px > 1 else 0
    with open_raster(source) as base:
        crs, transform, width, height = base.crs, base.transform, base.width, base.height
        cls_ds = None if threshold is not None else base
        with (open_raster(probability) if probability is not None else nullcontext()) as prob_ds:
            if prob_ds is not None and threshold is None:
                check_same_grid(base, prob_ds)
            for row_off in range(0, height, block_size):
                for col_off in range(0, width, block_size):
                    core = Window(col_off, row_off, min(block_size, width - col_off), min(block_size, height - row_off))
                    _block_pieces(cls_ds, prob_ds, core, margin, threshold, sieve_px, pieces)
    frame = _merge_seams(_pieces_frame(pieces))
    return _polygons(frame, transform, crs, min_area_m2, simplify_px)


def _attribute_value(value: object) -> object:
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple, set)):
        return ",".join(str(v) for v in value)
    return value


def write_layer(frame: gpd.GeoDataFrame, out_gpkg: Path, layer: str) -> None:
    """Write ``layer`` atomically: into a copy of the file (other layers kept), then rename over it.

    Args:
        frame: the polygons and their columns.
        out_gpkg: the GeoPackage (created if missing).
        layer: the layer to write or replace.

    Raises:
        OutputError: naming ``out_gpkg``, when the disk is full or the folder is read-only or not
            writable (the file is kept as it was).
    """
    out_gpkg = Path(out_gpkg)
    with atomic_path(out_gpkg) as partial:
        partial.unlink(missing_ok=True)  # left by a killed process that had the same pid
        if out_gpkg.exists():
            shutil.copyfile(out_gpkg, partial)
        frame.to_file(partial, layer=layer, driver="GPKG", engine="pyogrio", SPATIAL_INDEX="YES")


def vectorize(
    classes: Path | None,
    probability: Path | None,
    out_gpkg: Path,
    *,
    threshold: float | None = None,
    sieve_px: int = 16,
    min_area_m2: float = 50.0,
    simplify_px: float = 1.0,
    block_size: int = 2048,
    attributes: dict[str, object] | None = None,
    layer: str = LAYER,
    transition_classes: int = 0,
) -> int:
    """Polygonise a change raster into a GeoPackage layer (see :func:`polygonize` for the steps).

    The layer has columns id (1..n, top-left first), class, area_m2, perimeter_m, mean_prob, max_prob,
    n_pixels, the attributes, the raster's CRS and an R-tree spatial index.

    Args:
        classes: the class raster, or None to threshold ``probability``.
        probability: the probability raster (zonal statistics; the classes with a threshold), or None.
        out_gpkg: the GeoPackage; an existing file keeps its other layers.
        threshold: None to use ``classes``; a value gives the classes ``probability > threshold`` (:func:`is_change`).
        sieve_px: regions smaller than this many pixels are merged into their largest neighbour.
        min_area_m2: polygons of a smaller exact pixel area are dropped.
        simplify_px: simplification tolerance in pixels (0: none).
        block_size: block side in pixels.
        attributes: constant columns on every polygon (scene ids and dates, sensors, model,
            checkpoint hash, run id); dates become ISO strings, paths strings, lists comma-joined.
        layer: the layer to write or replace.
        transition_classes: K > 0 when ``classes`` is a semantic change raster (``1 + K·from + to``
            where changed, see :mod:`pipeline.detect.accumulate`): polygons get class 1 and columns
            from_class, to_class. 0 for a plain class raster.

    Returns:
        The number of polygons written.

    Raises:
        ValueError: for an attribute named like a layer column, or as :func:`polygonize`.
        InputError: as :func:`polygonize`.
    """
    attributes = dict(attributes or {})
    clash = sorted(set(attributes) & {*COLUMNS, "geometry", "geom"})
    if clash:
        raise ValueError(f"attribute names {clash} clash with the layer's own columns")
    frame = polygonize(
        classes, probability, threshold=threshold, sieve_px=sieve_px, min_area_m2=min_area_m2,
        simplify_px=simplify_px, block_size=block_size,
    )
    if transition_classes:
        code = frame["class"].to_numpy() - 1
        frame.insert(1, "from_class", code // transition_classes)
        frame.insert(2, "to_class", code % transition_classes)
        frame["class"] = 1
    frame.insert(0, "id", np.arange(1, len(frame) + 1, dtype=np.int64))
    for name, value in attributes.items():
        frame[name] = _attribute_value(value)
    frame = frame[[c for c in frame.columns if c != "geometry"] + ["geometry"]]
    write_layer(frame, Path(out_gpkg), layer)
    log.info("%s: %d polygons in layer %s", out_gpkg, len(frame), layer)
    return len(frame)
