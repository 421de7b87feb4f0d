"""The input rasters of a detection: a prepared group's grid rasters, checked against a checkpoint.

Every problem is found before inference starts: an :class:`~pipeline.errors.InputError` names the
file (a checkpoint that is not inference-ready, a raster with the wrong band count), a
:class:`~pipeline.errors.GroupError` names the group (a missing role, with the co-registration
verdict that removed it, or rasters on different grids).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import rasterio
from rasterio.errors import NotGeoreferencedWarning

from pipeline.errors import GroupError, InputError
from pipeline.io.validity import POLICY_KEY, black_values, default_rule


@dataclass(frozen=True)
class GroupInputs:
    """The grid rasters a checkpoint reads, and the grid they share."""

    group: str
    paths: dict[str, Path]  # role -> grid raster, in forward order
    black_values: dict[str, float | None]  # role -> GOLD's black value applied to it, or None
    crs: Any
    transform: Any
    height: int
    width: int


def group_manifest(group_dir: Path) -> dict:
    """The group's prepare manifest.

    Args:
        group_dir: a prepared group folder.

    Returns:
        Its ``manifest.json`` as a dict, or ``{}`` when it has none or an unreadable one.
    """
    try:
        return json.loads((group_dir / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}


def default_provenance(group_dir: Path) -> dict[str, str]:
    """Scene ids per role from the group's prepare manifest, when it has them.

    Args:
        group_dir: a prepared group folder.

    Returns:
        ``{"A_scene_id": ..., "B_scene_id": ...}`` for the reference and each accepted image.
    """
    out: dict[str, str] = {}
    for record in group_manifest(group_dir).get("coregistration", []):
        if record.get("reference"):
            out.setdefault("A_scene_id", str(record["reference"]))
        if record.get("accepted") and record.get("role") and record.get("image"):
            out[f"{record['role']}_scene_id"] = str(record["image"])
    return out


def _missing_role(group_dir: Path, role: str) -> GroupError:
    """The error for a role without a grid raster, with the co-registration verdict when there is one."""
    records = [r for r in group_manifest(group_dir).get("coregistration", []) if r.get("role") == role]
    refused = [r for r in records if not r.get("accepted", True)]
    if refused:
        reason = "; ".join(f"{r.get('image')}: {r.get('reason')}" for r in refused)
        return GroupError(group_dir.name, f"has no {role} image (it failed co-registration: {reason})")
    return GroupError(
        group_dir.name,
        f"has no {role} image ({group_dir / 'grid' / f'{role}.tif'} is missing; "
        "the group has no such scene or it failed co-registration)",
    )


def _check_checkpoint(checkpoint_path: Path, checkpoint: dict) -> list[str]:
    """The checkpoint's two input roles, once it is known to be inference-ready."""
    for key in ("bands", "inputs"):
        if key not in checkpoint:
            raise InputError(checkpoint_path, f"not an inference-ready checkpoint (missing '{key}')")
    roles = list(checkpoint["inputs"])
    if len(roles) != 2:
        raise InputError(checkpoint_path, f"expects two inputs (t1, t2), lists {roles}")
    return roles


def _describe(path: Path) -> tuple[tuple, int, str]:
    """((crs, transform, height, width), band count, dtype of band 1) of a raster."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as dataset:
                return (dataset.crs, dataset.transform, dataset.height, dataset.width), dataset.count, dataset.dtypes[0]
    except rasterio.errors.RasterioIOError as exc:
        raise InputError(path, f"not a readable raster ({exc})") from None


def check_inputs(group_dir: Path, checkpoint_path: Path, checkpoint: dict) -> GroupInputs:
    """The group's grid rasters for the checkpoint's inputs, checked against its band layout.

    The black rule applied to each input is the checkpoint's validity policy, the one its training
    data was prepared and trained with (see :mod:`pipeline.io.validity`); a checkpoint written before
    the policy gets the default rule (black value 5 for integer rasters), as detection applied then.

    Args:
        group_dir: a prepared group folder (``grid/{role}.tif``).
        checkpoint_path: the checkpoint file, named in errors.
        checkpoint: its loaded payload.

    Returns:
        The inputs, their black values and their common grid.

    Raises:
        InputError: for a checkpoint that is not inference-ready or lacks normalisation statistics
            or a validity rule for an input, a missing group folder, an unreadable raster or one with
            another band count.
        GroupError: for a missing role or rasters on different grids.
    """
    roles = _check_checkpoint(checkpoint_path, checkpoint)
    group = group_dir.name
    if not group_dir.is_dir():
        raise InputError(group_dir, "group folder not found")
    policy = checkpoint.get(POLICY_KEY)
    paths, dtypes, reference = {}, {}, None
    for role in roles:
        path = group_dir / "grid" / f"{role}.tif"
        if not path.exists():
            raise _missing_role(group_dir, role)
        expected = checkpoint["bands"].get(role)
        if role not in checkpoint["normalization"]:
            raise InputError(checkpoint_path, f"has no normalization statistics for input {role}")
        grid, count, dtype = _describe(path)
        if expected is not None and count != expected:
            raise InputError(
                path,
                f"has {count} band(s) but checkpoint {checkpoint_path.name} was trained on {expected}-band "
                f"{role} images (band layout {dict(checkpoint['bands'])})",
            )
        if reference is None:
            reference = grid
        elif grid != reference:
            raise GroupError(group, f"{path.name} is not on the grid of {roles[0]}.tif (CRS, transform or size differ)")
        paths[role] = path
        dtypes[role] = dtype
    if policy is None:
        policy = {role: default_rule(dtype) for role, dtype in dtypes.items()}
    crs, transform, height, width = reference
    return GroupInputs(group, paths, black_values(policy, roles, checkpoint_path), crs, transform, height, width)
