"""Training augmentation: paired geometry for every image and the label, photometry on optical only.

GOLD drew ColorJitter factors per image including the SAR (hue and saturation on SAR are
meaningless) and rotated by arbitrary angles, filling corners with black "no change" (spec §2).
Here geometry is restricted to flips, 90° rotations and crops, applied identically to all arrays
of a sample, and brightness/contrast jitter touches optical images only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class AugmentSettings:
    """Augmentation of training samples: geometry for every array, brightness/contrast for optical images."""

    flips: bool = True
    rotate90: bool = True
    crop: int | None = None  # random crop side; None keeps the tile size
    brightness: float = 0.1  # optical: additive shift in normalised units, ± this
    contrast: float = 0.2  # optical: multiplicative factor in 1 ± this


def paired_geometry(
    arrays: dict[str, np.ndarray], settings: AugmentSettings, rng: np.random.Generator,
    focus: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """The same flips, 90° rotation and crop for every (…, H, W) array of a sample.

    Args:
        arrays: the sample's arrays by name (images, valid masks, labels), all with the same (H, W).
        settings: which transforms are drawn; the crop applies only when smaller than both H and W.
        rng: the generator the crop offset, flips (p = 0.5 each) and number of quarter turns are drawn from.
        focus: boolean (H, W) pixels one of which the crop must contain (e.g. change, for class-balanced
            sampling): one is drawn, then the offset among those that hold it; None or no True pixel:
            any offset.

    Returns:
        The transformed arrays, contiguous, by the same names.
    """
    height, width = next(iter(arrays.values())).shape[-2:]
    top = left = 0
    size_h, size_w = height, width
    if settings.crop is not None and settings.crop < min(height, width):
        size_h = size_w = settings.crop
        rows, cols = (0, height - size_h), (0, width - size_w)  # inclusive offset ranges
        if focus is not None and focus.any():
            where = np.flatnonzero(focus)
            row, col = divmod(int(where[rng.integers(0, where.size)]), width)
            rows = (max(0, row - size_h + 1), min(row, height - size_h))
            cols = (max(0, col - size_w + 1), min(col, width - size_w))
        top = int(rng.integers(rows[0], rows[1] + 1))
        left = int(rng.integers(cols[0], cols[1] + 1))
    flip_h = settings.flips and rng.random() < 0.5
    flip_v = settings.flips and rng.random() < 0.5
    turns = int(rng.integers(0, 4)) if settings.rotate90 else 0
    out = {}
    for name, array in arrays.items():
        array = array[..., top : top + size_h, left : left + size_w]
        if flip_h:
            array = array[..., :, ::-1]
        if flip_v:
            array = array[..., ::-1, :]
        if turns:
            array = np.rot90(array, turns, axes=(-2, -1))
        out[name] = np.ascontiguousarray(array)
    return out


def optical_jitter(image: np.ndarray, valid: np.ndarray, settings: AugmentSettings, rng: np.random.Generator) -> np.ndarray:
    """Brightness and contrast jitter of a normalised optical image, kept in [0, 1].

    The contrast is scaled about each band's mean over the valid pixels; invalid pixels stay 0.

    Args:
        image: the normalised optical image, float (bands, H, W) in [0, 1].
        valid: boolean (H, W) mask of valid pixels.
        settings: the jitter ranges (``brightness`` additive, ``contrast`` multiplicative, ± each).
        rng: the generator the two factors are drawn from.

    Returns:
        The jittered image, float32 (bands, H, W) in [0, 1].
    """
    contrast = 1.0 + rng.uniform(-settings.contrast, settings.contrast)
    brightness = rng.uniform(-settings.brightness, settings.brightness)
    mean = image[:, valid].mean(axis=1, keepdims=True)[..., None] if valid.any() else 0.0
    out = np.clip((image - mean) * contrast + mean + brightness, 0.0, 1.0).astype(np.float32)
    out[:, ~valid] = 0.0
    return out
