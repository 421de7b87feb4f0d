"""The output rasters of a detection: staged blocks written as COGs with georeferencing and provenance.

A probability COG (uint8 0–254 with 255 = nodata, or float32 with NaN) and a class COG (0 no change,
1 change, 255 nodata); semantic change models add the class maps per date and the from→to codes of
changed pixels. Each has overviews, the group's grid and the run's provenance tags.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

from pipeline.detect.accumulate import ProbabilityDtype
from pipeline.detect.inputs import GroupInputs
from pipeline.detect.staging import Staging
from pipeline.detect.windows import Layout, block_id
from pipeline.io.cog import write_cog_from_blocks
from pipeline.io.raster import NODATA_U8

PROBABILITY_FILE = "change_probability.tif"
CLASS_FILE = "change_class.tif"
# Semantic change models only: class maps per date, and the from→to code of changed pixels.
SEMANTIC_FILES = {"semantic_t1": "semantic_t1.tif", "semantic_t2": "semantic_t2.tif", "transitions": "semantic_change.tif"}


@dataclass(frozen=True)
class OutputPaths:
    """Where a detection's rasters go."""

    probability: Path
    classes: Path
    semantic: dict[str, Path] | None  # semantic change models: SEMANTIC_FILES keys → paths

    @classmethod
    def in_folder(cls, out_dir: Path, semantic_classes: int) -> OutputPaths:
        """The rasters of a detection in a folder.

        Args:
            out_dir: the output folder.
            semantic_classes: K of a semantic change model (its per-date and transition rasters too), else 0.

        Returns:
            The paths.
        """
        semantic = {name: out_dir / file for name, file in SEMANTIC_FILES.items()} if semantic_classes else None
        return cls(out_dir / PROBABILITY_FILE, out_dir / CLASS_FILE, semantic)


def existing_run(paths: OutputPaths, expected: dict[str, str]) -> str | None:
    """The run id of finished outputs of the same run, if there are any.

    Args:
        paths: the outputs.
        expected: tags the probability and class rasters must hold (same inputs, settings, provenance).

    Returns:
        Their ``RUN_ID`` tag when every output exists with those tags, else None.
    """
    try:
        with rasterio.open(paths.probability) as p, rasterio.open(paths.classes) as c:
            tags = [p.tags(), c.tags()]
    except rasterio.errors.RasterioIOError:
        return None
    if not all(path.exists() for path in (paths.semantic or {}).values()):
        return None
    if all(t.get(k) == v for t in tags for k, v in expected.items()):
        return tags[0].get("RUN_ID", "")
    return None


def _staged(staging: Staging, layout: Layout, name: str) -> Iterator[tuple[Window, np.ndarray]]:
    """Raster ``name`` of every staged block, with its window in the scene."""
    for i, j in layout.blocks():
        r0, c0, r1, c1 = layout.core(i, j)
        yield Window(c0, r0, c1 - c0, r1 - r0), staging.block(block_id(i, j), name)


def write_rasters(
    paths: OutputPaths,
    staging: Staging,
    layout: Layout,
    grid: GroupInputs,
    tags: dict[str, str],
    encoding: tuple[ProbabilityDtype, float],
    semantic_classes: int,
) -> None:
    """Write the staged blocks as COGs.

    Args:
        paths: the outputs (semantic ones only for a semantic change model).
        staging: every block staged.
        layout: the scene's layout.
        grid: the inputs, whose CRS, transform and size the outputs take.
        tags: provenance tags for every raster (a ``VALUES`` tag describing it is added).
        encoding: (probability dtype, class threshold), as the blocks were finalised.
        semantic_classes: K, classes per date of a semantic change model (0 otherwise).
    """
    dtype, threshold = encoding
    base = {"width": grid.width, "height": grid.height, "count": 1, "crs": grid.crs, "transform": grid.transform}
    classes = {**base, "dtype": "uint8", "nodata": NODATA_U8}
    probability = {**base, "dtype": dtype, "nodata": NODATA_U8 if dtype == "uint8" else float("nan")}
    scale = "probability × 254 (255 = nodata)" if dtype == "uint8" else "probability (NaN = nodata)"
    write_cog_from_blocks(paths.probability, probability, _staged(staging, layout, "probability"),
                          staging=staging.root / "probability.tif", categorical=False,
                          tags={**tags, "VALUES": f"change {scale}"})
    write_cog_from_blocks(paths.classes, classes, _staged(staging, layout, "classes"),
                          staging=staging.root / "classes.tif", categorical=True,
                          tags={**tags, "VALUES": f"0 no change, 1 change (probability > {threshold}), 255 nodata"})
    if paths.semantic is None:
        return
    k = semantic_classes
    values = {
        "semantic_t1": f"class 0..{k - 1} at t1, 255 nodata",
        "semantic_t2": f"class 0..{k - 1} at t2, 255 nodata",
        "transitions": f"0 no change, 1 + {k}·from_class + to_class where changed, 255 nodata",
    }
    for name, path in paths.semantic.items():
        write_cog_from_blocks(path, classes, _staged(staging, layout, name), staging=staging.root / f"{name}.tif",
                              categorical=True, tags={**tags, "VALUES": values[name], "SEMANTIC_CLASSES": str(k)})
