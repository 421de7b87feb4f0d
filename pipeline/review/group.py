"""The group under review: its grid COGs (prepare) and its detection outputs, checked to belong together.

Everything the app serves is found here, from the command line's folders, before the server starts:
paths never come from the browser. A detection belongs to the group when its probability raster is on
the group's grid (CRS, transform, size) and names the group in its ``GROUP`` tag; its polygons must be
in the group's CRS.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pyogrio
import rasterio
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import Affine
from rasterio.windows import Window

from pipeline.errors import ChangeflowError, InputError
from pipeline.io.paths import contained, name_problem

IMAGE_ROLES = ("A", "B", "C")
PROBABILITY = "change_probability.tif"
POLYGONS = "changes.gpkg"
DEFAULT_THRESHOLD = 0.5
CELL_PX = 512  # side of a review cell in pixels (a reviewer marks a cell reviewed when done with it)


@dataclass(frozen=True)
class Grid:
    """A group's pixel grid: CRS, affine transform and size."""

    crs: CRS
    transform: Affine
    width: int
    height: int

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in the grid's CRS."""
        left, top = self.transform @ (0, 0)
        right, bottom = self.transform @ (self.width, self.height)
        return min(left, right), min(bottom, top), max(left, right), max(bottom, top)

    def cells(self, cell_px: int = CELL_PX) -> tuple[int, int]:
        """(rows, cols) of review cells of ``cell_px`` pixels covering the grid from its top-left corner."""
        return -(-self.height // cell_px), -(-self.width // cell_px)

    def cell_window(self, row: int, col: int, cell_px: int = CELL_PX) -> Window:
        """The pixel window of a review cell (cut at the grid's edge)."""
        return Window(col * cell_px, row * cell_px, min(cell_px, self.width - col * cell_px),
                      min(cell_px, self.height - row * cell_px))

    @property
    def resolution(self) -> float:
        """The pixel size in CRS units (square pixels)."""
        return abs(self.transform.a)


@dataclass(frozen=True)
class ReviewGroup:
    """One prepared group and its detection, as the review app uses them."""

    name: str
    group_dir: Path
    detection_dir: Path
    grid: Grid
    images: dict[str, Path]  # role -> grid COG, for the image roles the group has
    sensors: dict[str, str]  # role -> sensor name from the prepare manifest
    t1: str  # roles shown in the two panes
    t2: str
    threshold: float  # the detection's class threshold on the probability
    provenance: dict[str, str] = field(default_factory=dict)  # detection run id, model, scene ids

    @property
    def probability(self) -> Path:
        """The detection's change probability COG."""
        return self.detection_dir / PROBABILITY

    @property
    def polygons(self) -> Path:
        """The detection's change polygons (layer ``changes``)."""
        return self.detection_dir / POLYGONS


def _grid_of(path: Path) -> tuple[Grid, dict[str, str]]:
    """The grid and tags of a raster; an InputError naming it when it cannot be read."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as dataset:
                return Grid(dataset.crs, dataset.transform, dataset.width, dataset.height), dataset.tags()
    except rasterio.errors.RasterioIOError as exc:
        problem = "is missing" if not path.exists() else f"is not a readable raster ({exc})"
        raise InputError(path, problem) from None


def _choose_group(prepared: Path, group: str | None) -> Path:
    """The prepared group folder: the one named, or the only one."""
    groups = prepared / "groups"
    if group is None:
        found = sorted(p.parent.name for p in groups.glob("*/manifest.json"))
        if len(found) != 1:
            listing = ", ".join(found) if found else "none"
            raise ChangeflowError(f"{prepared}: choose a group with --group (prepared groups: {listing})")
        group = found[0]
    problem = name_problem(group)
    if problem is not None:
        raise ChangeflowError(f"--group {group!r} {problem}")
    folder = contained(groups, group)
    if not (folder / "manifest.json").is_file():
        raise InputError(folder, "is not a prepared group (no manifest.json; run `changeflow prepare` first)")
    return folder


def _manifest_grid(group_dir: Path, manifest: dict) -> Grid:
    """The grid the prepare manifest records; an InputError when it has none or a rotated one."""
    try:
        recorded = manifest["grid"]
        grid = Grid(CRS.from_wkt(recorded["crs"]), Affine(*recorded["transform"]), recorded["width"],
                    recorded["height"])
    except (KeyError, TypeError, ValueError, rasterio.errors.CRSError) as exc:
        raise InputError(group_dir / "manifest.json", f"has no usable grid record ({exc})") from None
    if grid.transform.b or grid.transform.d or abs(abs(grid.transform.a) - abs(grid.transform.e)) > 1e-9 * grid.resolution:
        raise InputError(group_dir / "manifest.json", "the grid is rotated or its pixels are not square; "
                                                      "the review tiles need a north-up grid of square pixels")
    return grid


def _detection_settings(tags: dict[str, str]) -> tuple[float, list[str]]:
    """(class threshold, input roles) recorded in the detection's ``DETECT_SETTINGS`` tag."""
    try:
        settings = json.loads(tags.get("DETECT_SETTINGS", "{}"))
    except ValueError:
        settings = {}
    return float(settings.get("threshold", DEFAULT_THRESHOLD)), list(settings.get("inputs", []))


def _check_detection(name: str, grid: Grid, detection_dir: Path) -> tuple[dict[str, str], float, list[str]]:
    """The detection's tags, threshold and inputs, once its rasters and polygons are known to fit the group."""
    probability = detection_dir / PROBABILITY
    found, tags = _grid_of(probability)
    if tags.get("GROUP", name) != name:
        raise InputError(probability, f"is the detection of group {tags['GROUP']!r}, not of {name!r}")
    if found != grid:
        raise InputError(probability, f"is not on the grid of group {name!r} (its grid {found.width} x {found.height} "
                                      f"{found.transform[:6]} differs from the group's {grid.width} x {grid.height} "
                                      f"{grid.transform[:6]}, or its CRS differs): it belongs to another group")
    polygons = detection_dir / POLYGONS
    if not polygons.is_file():
        raise InputError(polygons, "is missing (run `changeflow detect` first)")
    try:
        info = pyogrio.read_info(polygons, layer="changes")
    except Exception as exc:  # pyogrio raises its own DataSourceError / DataLayerError
        raise InputError(polygons, f"has no readable layer 'changes' ({exc})") from None
    if info["crs"] is None or CRS.from_user_input(info["crs"]) != grid.crs:
        raise InputError(polygons, f"is in CRS {info['crs']}, not the CRS of group {name!r}")
    threshold, inputs = _detection_settings(tags)
    return tags, threshold, inputs


def open_review_group(prepared: Path, detections: Path, group: str | None = None) -> ReviewGroup:
    """Find and check one prepared group and its detection for review.

    Args:
        prepared: a ``changeflow prepare`` output folder (``groups/{group}/grid/*.tif``, ``manifest.json``).
        detections: a ``changeflow detect`` output folder (``{group}/change_probability.tif``, ``changes.gpkg``).
        group: the group's name; may be omitted when ``prepared`` holds one group.

    Returns:
        The group, its grid COGs per image role and its detection.

    Raises:
        ChangeflowError: no such group, several groups and none chosen, or an unsafe name.
        InputError: naming the file: a missing or unreadable grid COG, a grid COG or detection raster off
            the group's grid, a detection of another group, polygons missing or in another CRS.
    """
    group_dir = _choose_group(prepared, group)
    manifest = json.loads((group_dir / "manifest.json").read_text())
    grid = _manifest_grid(group_dir, manifest)
    members = manifest.get("members", {})
    images = {role: group_dir / "grid" / f"{role}.tif" for role in IMAGE_ROLES if role in members}
    for role, path in images.items():
        found, _ = _grid_of(path)
        if found != grid:
            raise InputError(path, f"is not on the grid recorded in {group_dir / 'manifest.json'}")
    if "A" not in images or len(images) < 2:
        raise InputError(group_dir / "manifest.json", f"lists images {sorted(images)}; review needs A and B or C")
    detection_dir = contained(detections, group_dir.name)
    tags, threshold, inputs = _check_detection(group_dir.name, grid, detection_dir)
    t1, t2 = inputs if len(inputs) == 2 and set(inputs) <= set(images) else ("A", "C" if "C" in images else "B")
    keys = ("RUN_ID", "MODEL", "CHECKPOINT_SHA256", "T1_SCENE_ID", "T2_SCENE_ID", "T1_DATE", "T2_DATE")
    return ReviewGroup(
        name=group_dir.name, group_dir=group_dir, detection_dir=detection_dir, grid=grid, images=images,
        sensors={role: str(members[role].get("sensor", "")) for role in images}, t1=t1, t2=t2, threshold=threshold,
        provenance={key.lower(): tags[key] for key in keys if key in tags},
    )
