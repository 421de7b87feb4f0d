"""The two images a label-free method compares: a prepared group's grid rasters, read block by block with a halo.

Pixels come as float64 with NaN wherever a pixel is nodata (GDAL mask, non-finite, GOLD's black
rule of the group manifest's validity policy) or outside the scene, so a method that looks at neighbours sees the scene
edge as it sees nodata, and a block read with a halo gives the same result as the whole scene.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window

from pipeline.detect.inputs import GroupInputs, group_manifest
from pipeline.errors import GroupError
from pipeline.io.raster import read_window
from pipeline.io.validity import POLICY_KEY, black_values, default_rule

Rect = tuple[int, int, int, int]  # (row0, col0, row1, col1), end-exclusive


@dataclass(frozen=True)
class PairScene:
    """The t1 and t2 grid rasters of a group, their sensors (from the prepare manifest) and grid.

    Attributes:
        inputs: the grid rasters (t1 role first), black values and the shared grid.
        sensors: the sensor of each role ("gf2", "gf3", "s2", "generic"; "" when unknown).
    """

    inputs: GroupInputs
    sensors: dict[str, str]

    @property
    def roles(self) -> tuple[str, str]:
        """(t1 role, t2 role)."""
        first, second = self.inputs.paths
        return first, second

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols) of the grid."""
        return self.inputs.height, self.inputs.width

    def blocks(self, size: int) -> Iterator[Rect]:
        """The scene in row-major blocks of ``size`` × ``size`` (the last ones clipped).

        Args:
            size: the block side in pixels.

        Yields:
            (row0, col0, row1, col1) of each block.
        """
        h, w = self.shape
        for r0 in range(0, h, size):
            for c0 in range(0, w, size):
                yield r0, c0, min(h, r0 + size), min(w, c0 + size)

    def read(self, role: str, rect: Rect, halo: int = 0) -> np.ndarray:
        """One image's pixels over ``rect`` grown by ``halo`` on every side.

        Args:
            role: "A", "B" or "C".
            rect: the block, in scene pixels.
            halo: margin in pixels; the part outside the scene is NaN.

        Returns:
            float64 (bands, rows + 2·halo, cols + 2·halo), NaN where invalid or outside the scene.
        """
        h, w = self.shape
        r0, c0, r1, c1 = rect[0] - halo, rect[1] - halo, rect[2] + halo, rect[3] + halo
        a0, b0, a1, b1 = max(r0, 0), max(c0, 0), min(r1, h), min(c1, w)
        with warnings.catch_warnings(), rasterio.open(self.inputs.paths[role]) as dataset:
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            out = np.full((dataset.count, r1 - r0, c1 - c0), np.nan)
            data, valid = read_window(dataset, Window(b0, a0, b1 - b0, a1 - a0),
                                      black_value=self.inputs.black_values[role])
        out[:, a0 - r0:a1 - r0, b0 - c0:b1 - c0] = np.where(valid, data, np.nan)
        return out


def _grid(path: Path) -> tuple[tuple, int, str]:
    with warnings.catch_warnings(), rasterio.open(path) as dataset:
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        return (dataset.crs, dataset.transform, dataset.height, dataset.width), dataset.count, dataset.dtypes[0]


def open_pair(group_dir: Path, roles: tuple[str, str], method: str, wanted: str) -> PairScene:
    """The group's grid rasters of two roles, checked to exist and to share a grid.

    Pixels are masked by the validity policy prepare recorded in the group manifest (key
    ``validity``, :mod:`pipeline.io.validity`): its black value per role; a manifest without one
    gets :func:`~pipeline.io.validity.default_rule` (black value 5 for integer rasters).

    Args:
        group_dir: a prepared group folder (``grid/{role}.tif``, ``manifest.json``).
        roles: (t1 role, t2 role).
        method: the method's name, for errors.
        wanted: what the method needs, in words (e.g. "an optical t1 (A) and an optical t2 (C)").

    Returns:
        The pair.

    Raises:
        GroupError: a role is missing, or the rasters are on different grids.
        InputError: the manifest's validity policy has no rule for one of ``roles``.
    """
    paths = {role: group_dir / "grid" / f"{role}.tif" for role in roles}
    missing = [role for role, path in paths.items() if not path.exists()]
    if missing:
        raise GroupError(group_dir.name, f"method {method} needs {wanted}; the group has no "
                         + ", ".join(f"{role} ({paths[role]} is missing)" for role in missing))
    grids = {role: _grid(path) for role, path in paths.items()}
    (first, (grid, _, _)), (second, (other, _, _)) = grids.items()
    if grid != other:
        raise GroupError(group_dir.name, f"{second}.tif is not on the grid of {first}.tif (CRS, transform or size differ)")
    manifest = group_manifest(group_dir)
    policy = manifest.get(POLICY_KEY) or {role: default_rule(dtype) for role, (_, _, dtype) in grids.items()}
    black = black_values(policy, list(roles), group_dir / "manifest.json")
    sensors = {role: str(manifest.get("members", {}).get(role, {}).get("sensor", "")) for role in roles}
    crs, transform, height, width = grid
    return PairScene(GroupInputs(group_dir.name, paths, black, crs, transform, height, width), sensors)
