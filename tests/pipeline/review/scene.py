"""A small prepared group and its detection, as `changeflow prepare` and `changeflow detect` lay them out.

Grid COGs A (GF-2-like uint16, 4 bands), B (GF-3-like linear σ⁰, float32) and C (uint16) with overviews,
a truth label, the manifest; a probability COG (uint8 × 254), the class COG and ``changes.gpkg`` written
by detection's own vectoriser. Three changes are detected (p 0.9), one false alarm (p 0.6), and one faint
change (p 0.4) is missed at threshold 0.5.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

from pipeline.detect.vectorize import vectorize
from pipeline.io.cog import write_cog_from_blocks

CRS_CODE = "EPSG:32650"
PIXEL = 4.0
ORIGIN = (500000.0, 3500000.0)
HEIGHT, WIDTH = 520, 600
# (row, col, side) of the changes at t2; the first three are detected, the last one is the faint one
CHANGES = [(40, 60, 30), (200, 300, 40), (400, 480, 24), (300, 100, 20)]
FALSE_ALARM = (100, 400, 20)
RUN_ID = "20260101T000000Z-test"


@dataclass(frozen=True)
class Scene:
    """Where the scene is written."""

    prepared: Path
    detections: Path
    group: str

    @property
    def group_dir(self) -> Path:
        return self.prepared / "groups" / self.group

    @property
    def detection_dir(self) -> Path:
        return self.detections / self.group


def transform() -> Affine:
    """The grid's transform."""
    return Affine(PIXEL, 0, ORIGIN[0], 0, -PIXEL, ORIGIN[1])


def pixel_box(row: int, col: int, side: int) -> tuple[float, float, float, float]:
    """(left, bottom, right, top) map bounds of a square of pixels."""
    left, top = transform() @ (col, row)
    right, bottom = transform() @ (col + side, row + side)
    return left, bottom, right, top


def write_cog(path: Path, array: np.ndarray, *, nodata: float | None, categorical: bool,
              tags: dict[str, str] | None = None) -> Path:
    """A (bands, H, W) array as a COG with overviews, through the pipeline's COG writer."""
    profile = {"width": array.shape[2], "height": array.shape[1], "count": array.shape[0], "dtype": array.dtype.name,
               "crs": CRS.from_string(CRS_CODE), "transform": transform(), "nodata": nodata}
    blocks = [(Window(0, 0, array.shape[2], array.shape[1]), array)]
    return write_cog_from_blocks(path, profile, blocks, staging=path.with_suffix(".staging.tif"),
                                 categorical=categorical, tags=tags)


def _images(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    optical = rng.integers(300, 900, (4, HEIGHT, WIDTH)).astype(np.uint16)
    after = optical.copy()
    sigma0 = rng.gamma(4.0, 0.05 / 4.0, (1, HEIGHT, WIDTH)).astype(np.float32)
    for row, col, side in CHANGES:
        after[:, row:row + side, col:col + side] = 2500
        sigma0[:, row:row + side, col:col + side] *= 8
    optical[:, :, :8] = 0  # a nodata strip on the left
    return {"A": optical, "B": sigma0, "C": after}


def write_scene(root: Path, group: str = "g1", seed: int = 0) -> Scene:
    """Write the prepared group and its detection under ``root``.

    Args:
        root: a folder (``prepared/`` and ``detect/`` are made in it).
        group: the group's name.
        seed: seed of the image noise.

    Returns:
        The scene's folders.
    """
    scene = Scene(root / "prepared", root / "detect", group)
    grid_dir = scene.group_dir / "grid"
    for role, array in _images(seed).items():
        write_cog(grid_dir / f"{role}.tif", array, nodata=0 if array.dtype == np.uint16 else None, categorical=False)
    truth = np.zeros((1, HEIGHT, WIDTH), np.uint8)
    probability = np.full((1, HEIGHT, WIDTH), round(0.05 * 254), np.uint8)
    for index, (row, col, side) in enumerate(CHANGES):
        truth[:, row:row + side, col:col + side] = 1
        probability[:, row:row + side, col:col + side] = round((0.4 if index == 3 else 0.9) * 254)
    row, col, side = FALSE_ALARM
    probability[:, row:row + side, col:col + side] = round(0.6 * 254)
    write_cog(grid_dir / "label.tif", truth, nodata=255, categorical=True)
    members = {role: {"id": f"{group}_{role}", "sensor": sensor, "path": f"/scenes/{role}.tif", "date": date}
               for role, sensor, date in (("A", "gf2", "2019-05-01"), ("B", "gf3", "2021-06-16"),
                                          ("C", "s2", "2021-06-20"))}
    manifest = {"members": members, "grid": {"crs": CRS.from_string(CRS_CODE).to_wkt(), "transform": list(transform())[:6],
                                             "width": WIDTH, "height": HEIGHT}, "coregistration": [], "tiles": []}
    (scene.group_dir / "manifest.json").write_text(json.dumps(manifest))
    tags = {"GROUP": group, "RUN_ID": RUN_ID, "MODEL": "fc_siam_diff",
            "DETECT_SETTINGS": json.dumps({"threshold": 0.5, "inputs": ["A", "C"]})}
    write_cog(scene.detection_dir / "change_probability.tif", probability, nodata=255, categorical=False, tags=tags)
    classes = (probability > round(0.5 * 254)).astype(np.uint8)
    write_cog(scene.detection_dir / "change_class.tif", classes, nodata=255, categorical=True, tags=tags)
    vectorize(scene.detection_dir / "change_class.tif", scene.detection_dir / "change_probability.tif",
              scene.detection_dir / "changes.gpkg", attributes={"run_id": RUN_ID, "model": "fc_siam_diff"})
    return scene
