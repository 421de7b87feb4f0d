"""Label-free change detection: a change score per pixel, Otsu's threshold, a probability — no checkpoint.

- :mod:`~pipeline.detect.labelfree.scene`: a group's two grid rasters, read block by block with a halo;
- :mod:`~pipeline.detect.labelfree.driver`: fit → score pass → histogram pass → output pass, into
  detection's COG rasters;
- :mod:`~pipeline.detect.labelfree.calibrate`: score histogram → Otsu's threshold → logistic probability;
- the methods: :mod:`~pipeline.detect.labelfree.cva` (optical), :mod:`~pipeline.detect.labelfree.irmad`
  (optical), :mod:`~pipeline.detect.labelfree.ratio` (SAR log-ratio and mean-ratio) and
  :mod:`~pipeline.detect.labelfree.npsg` (heterogeneous optical ↔ SAR).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

from pipeline.detect.inputs import group_manifest
from pipeline.detect.labelfree.cva import CVA
from pipeline.detect.labelfree.driver import ScoreMethod, detect_labelfree
from pipeline.detect.labelfree.irmad import IRMAD
from pipeline.detect.labelfree.npsg import NPSG
from pipeline.detect.labelfree.ratio import SarRatio
from pipeline.detect.labelfree.scene import PairScene, open_pair
from pipeline.errors import GroupError

METHODS: dict[str, Callable[[], ScoreMethod]] = {
    "cva": CVA, "irmad": IRMAD, "log_ratio": partial(SarRatio, "log_ratio"),
    "mean_ratio": partial(SarRatio, "mean_ratio"), "npsg": NPSG,
}
OPTICAL_SENSORS = frozenset({"gf2", "s2"})
SAR_SENSORS = frozenset({"gf3"})

__all__ = ["METHODS", "detect_labelfree", "method_roles", "open_method_pair"]


def method_roles(group_dir: Path, kind: str) -> tuple[tuple[str, str], str]:
    """Which grid rasters a kind of method compares, and how to say so in an error.

    Optical methods take A and C (optical t1, t2), or A and B when the group has no C and B is not
    SAR (a LEVIR-style optical pair); SAR and heterogeneous methods take A and B.

    Args:
        group_dir: a prepared group folder.
        kind: "optical", "sar" or "heterogeneous".

    Returns:
        ((t1 role, t2 role), what the method needs in words).
    """
    if kind == "optical":
        sensor_b = group_manifest(group_dir).get("members", {}).get("B", {}).get("sensor", "")
        pair_b = not (group_dir / "grid" / "C.tif").exists() and sensor_b not in SAR_SENSORS
        return (("A", "B") if pair_b else ("A", "C")), "two optical images of the same bands (A and C)"
    if kind == "sar":
        return ("A", "B"), "two SAR images (t1 as A, t2 as B)"
    return ("A", "B"), "an image at t1 (A) and one of another sensor at t2 (B)"


def open_method_pair(group_dir: Path, name: str) -> tuple[ScoreMethod, PairScene]:
    """A new method and the group's pair of rasters it reads, checked against what it needs.

    Args:
        group_dir: a prepared group folder.
        name: a key of :data:`METHODS`.

    Returns:
        (the method, not yet fitted, the pair).

    Raises:
        GroupError: the group lacks a role the method needs, or a SAR method is given an optical image.
    """
    method = METHODS[name]()
    roles, wanted = method_roles(group_dir, method.kind)
    scene = open_pair(group_dir, roles, name, wanted)
    if method.kind == "sar":
        optical = [f"{role} is {sensor}" for role, sensor in scene.sensors.items() if sensor in OPTICAL_SENSORS]
        if optical:
            raise GroupError(group_dir.name, f"method {name} needs {wanted}, but {', '.join(optical)} (optical)")
    return method, scene
