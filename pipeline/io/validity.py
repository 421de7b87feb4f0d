"""The validity policy: which pixels of each image role hold data, as prepare decided it.

Every read masks a raster's own nodata / alpha (GDAL's mask) and, for floating-point data, NaN and
inf. GOLD's black rule (integer imagery: a pixel whose bands are all <= ``black_value`` is invalid)
is a setting of prepare (``tiling.black_value``), so the policy records it per image role::

    {"A": {"black_value": 5.0, "nodata": 0.0}, "B": {"black_value": None, "nodata": None}}

``black_value`` is None where prepare applied no black rule (floating-point images); ``nodata`` is
the grid raster's nodata value (None for NaN), recorded for the reader of the record: the tiles and
grid rasters carry it, and their mask applies it. Prepare writes the policy into each group manifest,
training applies it to the tiles and stores it in the checkpoint, detection applies the
checkpoint's. Without a recorded policy (a checkpoint or manifest written before it) the rule is
:func:`default_rule`, detection's rule of that time.
"""

from __future__ import annotations

import math
from pathlib import Path

from pipeline.config import TilingConfig
from pipeline.errors import InputError
from pipeline.io.raster import is_integer

POLICY_KEY = "validity"  # the key of the policy in group manifests and checkpoints


def image_rule(dtype: str, nodata: float | None, black_value: float) -> dict[str, float | None]:
    """The rule prepare applies to one image: the black rule for integer imagery only.

    Args:
        dtype: the image's data type, e.g. ``"uint16"``.
        nodata: the nodata value of its grid raster (NaN or None when it has none).
        black_value: prepare's ``tiling.black_value``.

    Returns:
        ``{"black_value": float or None, "nodata": float or None}``.
    """
    black = float(black_value) if is_integer(dtype) else None
    return {"black_value": black, "nodata": None if nodata is None or math.isnan(nodata) else float(nodata)}


def default_rule(dtype: str, nodata: float | None = None) -> dict[str, float | None]:
    """The rule of an image without a recorded policy: prepare's default black value for integer imagery.

    Args:
        dtype: the image's data type.
        nodata: its nodata value, if known.

    Returns:
        :func:`image_rule` with ``TilingConfig``'s default black value (5).
    """
    return image_rule(dtype, nodata, TilingConfig().black_value)


def black_values(policy: dict[str, dict], roles: list[str], source: Path) -> dict[str, float | None]:
    """The black value to apply to each of ``roles`` under ``policy``.

    Args:
        policy: role → rule (see the module docstring).
        roles: the image roles read.
        source: the file the policy comes from (checkpoint or manifest), named in errors.

    Returns:
        role → black value, None where no black rule applies.

    Raises:
        InputError: naming ``source``, when the policy has no rule for one of ``roles``.
    """
    missing = [role for role in roles if role not in policy]
    if missing:
        raise InputError(source, f"its validity policy has no rule for input {', '.join(missing)} (it has {sorted(policy)})")
    return {role: policy[role]["black_value"] for role in roles}
