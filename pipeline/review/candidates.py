"""The detection's polygons as review candidates, copied once into the group's review store.

The detection outputs are only read: the candidates are copies, and every review action changes the
copy in the store.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import geopandas as gpd

from pipeline.errors import InputError
from pipeline.review.group import ReviewGroup
from pipeline.review.store import ReviewStore

STORE = "review.sqlite"


def detection_candidates(group: ReviewGroup) -> list[dict[str, Any]]:
    """The detection's polygons with their id, class and mean probability.

    Args:
        group: the checked group (:func:`pipeline.review.group.open_review_group`).

    Returns:
        Dicts with ``geometry`` (shapely, group CRS), ``detection_id``, ``class`` and ``mean_prob``.

    Raises:
        InputError: the polygons lack the columns a candidate needs.
    """
    frame = gpd.read_file(group.polygons, layer="changes")
    missing = sorted({"id", "class", "mean_prob"} - set(frame.columns))
    if missing:
        raise InputError(group.polygons, f"has no column(s) {missing}; is it a `changeflow detect` output?")
    return [
        {"geometry": row.geometry, "detection_id": row.id, "class": row["class"], "mean_prob": row.mean_prob}
        for _, row in frame.iterrows() if row.geometry is not None and not row.geometry.is_empty
    ]


def open_store(group: ReviewGroup, review_dir: Path) -> ReviewStore:
    """The group's review store in ``review_dir``, holding the detection's candidates.

    Args:
        group: the checked group.
        review_dir: the folder of the store (created when missing).

    Returns:
        The store; its candidates are imported on first use.

    Raises:
        InputError: the store belongs to another group or detection run, or is not a review store.
    """
    store = ReviewStore(review_dir / STORE)
    meta = {
        "group": group.name, "crs": group.grid.crs.to_wkt(), "detection_run_id": group.provenance.get("run_id", ""),
        "threshold": repr(group.threshold), "polygons": str(group.polygons.resolve()),
    }
    if "group" not in store.meta():
        store.import_candidates(detection_candidates(group), meta)
    else:
        store.import_candidates([], meta)  # only checks that the store is this detection's
    return store
