"""Overlap: group co-located scenes by the overlap of their valid footprints.

The ratio is GOLD's: area(intersection) / area(smaller footprint), computed in one projected CRS
whatever the inputs' CRSs (GOLD compared raw coordinates of each file's own CRS).
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import shapely
from pyproj import Transformer
from pyproj.aoi import AreaOfInterest
from pyproj.database import query_utm_crs_info
from rasterio.crs import CRS
from shapely import segmentize
from shapely.geometry.base import BaseGeometry

from pipeline.config import Role
from pipeline.prepare.catalog import Scene

MEMBER_ROLES = (Role.B, Role.C, Role.label, Role.semantic_t1, Role.semantic_t2)


@dataclass(frozen=True)
class Group:
    """A reference scene (role A) with the co-located scenes of the other roles."""

    name: str
    members: dict[Role, Scene]
    ratios: dict[Role, float]  # overlap of each member with the reference
    common_area: BaseGeometry  # intersection of the images' footprints (not the label's), common CRS
    excluded: dict[str, str] = field(default_factory=dict)  # scene id -> reason

    @property
    def reference(self) -> Scene:
        """The group's role-A scene (optical t1)."""
        return self.members[Role.A]


def common_crs(scenes: list[Scene]) -> CRS | None:
    """One projected CRS for all areas: the scenes' own if they share a projected one, else UTM.

    The UTM zone (WGS 84) is the one of the mean centroid of the georeferenced footprints.

    Args:
        scenes: the catalogued scenes.

    Returns:
        The common projected CRS; None in pixel space (no scene has a CRS).
    """
    crss = {scene.crs for scene in scenes if scene.crs is not None}
    if not crss:
        return None
    if len(crss) == 1 and next(iter(crss)).is_projected:
        return next(iter(crss))
    lonlat = [footprint_in(scene, CRS.from_epsg(4326)).centroid for scene in scenes if scene.crs is not None]
    lon = sum(point.x for point in lonlat) / len(lonlat)
    lat = sum(point.y for point in lonlat) / len(lonlat)
    info = query_utm_crs_info(
        datum_name="WGS 84", area_of_interest=AreaOfInterest(lon, lat, lon, lat)
    )[0]
    return CRS.from_epsg(int(info.code))


def reproject_geometry(geometry: BaseGeometry, src: CRS | None, dst: CRS | None, *, densify: float | None = None) -> BaseGeometry:
    """Geometry from ``src`` to ``dst``; edges are densified first so curved images stay exact.

    Polygons are repaired with ``buffer(0)`` after projection; points and lines stay as they are.

    Args:
        geometry: the geometry, in ``src`` coordinates.
        src: its CRS; None (pixel space) returns ``geometry`` unchanged.
        dst: the target CRS; None returns ``geometry`` unchanged.
        densify: longest edge (in ``src`` units) before projection; None does not densify.

    Returns:
        The geometry in ``dst`` coordinates.
    """
    if src is None or dst is None or src == dst:
        return geometry
    if densify:
        geometry = segmentize(geometry, densify)
    transformer = Transformer.from_crs(src, dst, always_xy=True)
    def project(coords: np.ndarray) -> np.ndarray:
        return np.column_stack(transformer.transform(coords[:, 0], coords[:, 1]))

    projected = shapely.transform(geometry, project)
    # buffer(0) repairs polygons the projection twisted; it would turn a point into an empty polygon.
    return projected.buffer(0) if projected.geom_type in ("Polygon", "MultiPolygon") else projected


def footprint_in(scene: Scene, crs: CRS | None) -> BaseGeometry:
    """The scene's valid footprint in ``crs``.

    Args:
        scene: the catalogued scene.
        crs: the target CRS; None keeps the footprint as it is (pixel space).

    Returns:
        The footprint, densified every 16 pixels before reprojection.
    """
    step = 16 * max(scene.resolution)
    return reproject_geometry(scene.footprint, scene.crs, crs, densify=step)


def overlap_ratio(first: BaseGeometry, second: BaseGeometry) -> float:
    """GOLD's overlap: intersection area over the smaller area (0 when either is empty).

    Args:
        first: a footprint, in the same projected CRS as ``second``.
        second: the other footprint.

    Returns:
        The ratio, 0–1.
    """
    smaller = min(first.area, second.area)
    if smaller <= 0:
        return 0.0
    return first.intersection(second).area / smaller


def _group_from(name: str, reference: Scene, candidates: dict[Role, list[Scene]], footprints: dict[str, BaseGeometry], min_overlap: float) -> tuple[Group | None, dict[str, str]]:
    """Best-overlapping member per role; members below ``min_overlap`` are reasons, not members."""
    members = {Role.A: reference}
    ratios: dict[Role, float] = {}
    rejected: dict[str, str] = {}
    ref_fp = footprints[reference.id]
    for role in MEMBER_ROLES:
        scored = sorted(
            ((overlap_ratio(ref_fp, footprints[scene.id]), scene) for scene in candidates.get(role, [])),
            key=lambda item: (-item[0], item[1].id),
        )
        for ratio, scene in scored:
            if ratio >= min_overlap and role not in members:
                members[role] = scene
                ratios[role] = ratio
            else:
                reason = (
                    f"overlaps reference '{reference.id}' by {ratio:.3f} < min_overlap {min_overlap}"
                    if ratio < min_overlap
                    else f"a better-overlapping {role.value} image ('{members[role].id}') is in group '{name}'"
                )
                rejected[scene.id] = reason
    if Role.B not in members and Role.C not in members:
        return None, rejected
    # A label's unlabelled pixels (255) are not missing data: it does not shrink the common area.
    common = ref_fp
    for role, scene in members.items():
        if not role.is_label:
            common = common.intersection(footprints[scene.id])
    return Group(name=name, members=members, ratios=ratios, common_area=common, excluded=rejected), rejected


def build_groups(scenes: list[Scene], min_overlap: float) -> tuple[list[Group], dict[str, str], CRS | None]:
    """Form co-located groups; returns (groups, unpaired scene id -> reason, common CRS).

    Scenes with a group name (scene list or inbox base name) are grouped by it; the others are
    paired with the reference scene they overlap most. No scene is dropped silently: every scene
    that ends in no group is returned with the reason. A group needs one A image and a B or C image.

    Args:
        scenes: the catalogued scenes.
        min_overlap: the least overlap ratio (see :func:`overlap_ratio`, 0–1] of a member with the A image.

    Returns:
        The groups (named groups in name order, then the free references: dated ones in date order,
        then undated ones by id), the reason per ungrouped scene id, and the common CRS of the
        footprints (None in pixel space).
    """
    crs = common_crs(scenes)
    footprints = {scene.id: footprint_in(scene, crs) for scene in scenes}
    named: dict[str, list[Scene]] = defaultdict(list)
    free: list[Scene] = []
    for scene in scenes:
        (named[scene.group] if scene.group else free).append(scene)

    groups: list[Group] = []
    unpaired: dict[str, str] = {}
    for name in sorted(named):
        by_role: dict[Role, list[Scene]] = defaultdict(list)
        for scene in named[name]:
            by_role[scene.role].append(scene)
        references = sorted(by_role.pop(Role.A, []), key=lambda s: s.id)
        if len(references) != 1:
            problem = "has no A (optical t1) image" if not references else f"has {len(references)} A images"
            unpaired.update({scene.id: f"group '{name}' {problem}" for scene in named[name]})
            continue
        group, rejected = _group_from(name, references[0], by_role, footprints, min_overlap)
        unpaired.update(rejected)
        if group is None:
            unpaired[references[0].id] = f"group '{name}': no B or C image overlaps it by >= {min_overlap}"
        else:
            groups.append(group)

    # Dated references first, in date order, then undated ones by id (a date and an id never compare).
    references = sorted(
        (s for s in free if s.role is Role.A), key=lambda s: (s.date is None, s.date or dt.date.min, s.id)
    )
    pool: dict[Role, list[Scene]] = defaultdict(list)
    for scene in free:
        if scene.role is not Role.A:
            pool[scene.role].append(scene)
    for reference in references:
        group, _ = _group_from(reference.id, reference, pool, footprints, min_overlap)
        if group is None:
            unpaired[reference.id] = f"no B or C image overlaps it by >= {min_overlap}"
            continue
        groups.append(group)
        for role, member in group.members.items():
            if role is not Role.A:
                pool[role].remove(member)
    for role_scenes in pool.values():
        for scene in role_scenes:
            best = max((overlap_ratio(footprints[r.id], footprints[scene.id]) for r in references), default=0.0)
            unpaired[scene.id] = f"pairs with no A image (best overlap {best:.3f} < min_overlap {min_overlap})" if best < min_overlap else "another image of its role was paired with the same A image"
    return groups, unpaired, crs
