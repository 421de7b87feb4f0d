"""Checks on a geometry posted by the browser before it may reach the store.

A posted geometry is GeoJSON in the group's CRS. It must be a Polygon or MultiPolygon with finite
coordinates, valid (OGC rules, as shapely judges them), not empty, of positive area, inside the
group's extent, and with at most :data:`MAX_VERTICES` vertices; anything else is refused with the
reason, and the store is left as it was.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import shapely
from shapely.geometry import box, shape
from shapely.validation import explain_validity

MAX_VERTICES = 10_000
TYPES = ("Polygon", "MultiPolygon")


class GeometryProblem(ValueError):
    """A posted geometry the store refuses; the message says why."""


def checked_geometry(geojson: Any, extent: tuple[float, float, float, float],
                     max_vertices: int = MAX_VERTICES) -> shapely.Geometry:
    """The shapely polygon of a posted GeoJSON geometry, once it passes every check.

    Args:
        geojson: the posted geometry (a dict with ``type`` and ``coordinates``).
        extent: (left, bottom, right, top) of the group's grid, in its CRS.
        max_vertices: the most vertices allowed.

    Returns:
        The polygon or multipolygon.

    Raises:
        GeometryProblem: the geometry is malformed, of another type, invalid, empty, outside the extent
            or has too many vertices.
    """
    if not isinstance(geojson, dict) or geojson.get("type") not in TYPES:
        kind = geojson.get("type") if isinstance(geojson, dict) else type(geojson).__name__
        raise GeometryProblem(f"a {kind!r} geometry; only {' and '.join(TYPES)} are accepted")
    try:
        geometry = shape(geojson)
        coordinates = shapely.get_coordinates(geometry)
    except (TypeError, ValueError, IndexError, KeyError, AttributeError, shapely.errors.ShapelyError) as exc:
        raise GeometryProblem(f"malformed {geojson['type']} coordinates ({exc})") from None
    if len(coordinates) > max_vertices:
        raise GeometryProblem(f"{len(coordinates)} vertices, more than the {max_vertices} allowed")
    if not np.isfinite(coordinates).all():
        raise GeometryProblem("coordinates that are not finite numbers")
    if geometry.is_empty:
        raise GeometryProblem("an empty geometry (no area)")
    if not geometry.is_valid:
        raise GeometryProblem(f"an invalid geometry: {explain_validity(geometry)}")
    if geometry.area <= 0:
        raise GeometryProblem("an empty geometry (no area)")
    if not box(*extent).covers(geometry):
        raise GeometryProblem(f"a geometry outside the group's extent {tuple(round(v, 3) for v in extent)} "
                              f"(its bounds {tuple(round(v, 3) for v in geometry.bounds)})")
    return geometry
