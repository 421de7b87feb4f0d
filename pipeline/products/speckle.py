"""Speckle filters for SAR intensity (linear power): Lee and refined Lee.

Both are NaN-aware (nodata pixels neither count in the local statistics nor are filled) and work
strip by strip with a halo (:func:`filter_strips`), so memory stays bounded.

- **Lee** (Lee 1980): with the local mean m and variance v over a w×w window and the speckle
  variance σ² = 1/L for L looks, the signal variance is var_x = (v − m²σ²) / (1 + σ²) and the
  output m + b (x − m) with b = max(var_x, 0) / v.
- **Refined Lee** (Lee 1981): the same estimator, but the statistics come from the half of the
  window on the pixel's side of the strongest local edge. Means of 3×3 sub-windows on a 3×3 lattice
  of the window give gradients in four directions (vertical, horizontal, both diagonals); the
  direction with the largest gradient picks an edge-aligned half window (8 possible), and of its two
  sides the one whose sub-window mean is closer to the centre's is used.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage


def _nan_stats(x: np.ndarray, kernel: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Local (count, mean, mean of squares) over ``kernel`` ignoring NaN."""
    valid = np.isfinite(x)
    z = np.where(valid, x, 0.0).astype(np.float64)
    count = ndimage.correlate(valid.astype(np.float64), kernel, mode="constant")
    s1 = ndimage.correlate(z, kernel, mode="constant")
    s2 = ndimage.correlate(z * z, kernel, mode="constant")
    with np.errstate(invalid="ignore", divide="ignore"):
        return count, s1 / count, s2 / count


def _lee_weighting(x, mean, mean_sq, looks: float) -> np.ndarray:
    sigma2 = 1.0 / looks
    var = np.maximum(mean_sq - mean * mean, 0.0)
    var_x = np.maximum((var - mean * mean * sigma2) / (1.0 + sigma2), 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        b = np.where(var > 0, var_x / var, 0.0)
    out = mean + b * (x - mean)
    return np.where(np.isfinite(x), out, np.nan)


def lee(intensity: np.ndarray, window: int = 7, looks: float = 1.0) -> np.ndarray:
    """Lee filter (Lee 1980) of a 2-D intensity array (NaN = nodata).

    Args:
        intensity: SAR intensity in linear power, (H, W); NaN pixels stay NaN and are left out of the stats.
        window: side of the square window (px, odd).
        looks: equivalent number of looks L (speckle variance 1/L).

    Returns:
        The filtered intensity, float32 (H, W).
    """
    kernel = np.ones((window, window))
    _, mean, mean_sq = _nan_stats(intensity, kernel)
    return _lee_weighting(intensity, mean, mean_sq, looks).astype(np.float32)


def _direction_masks(window: int) -> list[np.ndarray]:
    """The 8 edge-aligned half windows, in the order of (direction, side) used below."""
    c = window // 2
    i, j = np.mgrid[0:window, 0:window]
    return [
        (j <= c), (j >= c),  # vertical edge: left half, right half
        (i <= c), (i >= c),  # horizontal edge: top half, bottom half
        (i + j <= 2 * c), (i + j >= 2 * c),  # edge along '/': top-left, bottom-right triangles
        (j >= i), (j <= i),  # edge along '\': top-right, bottom-left triangles
    ]


def refined_lee(intensity: np.ndarray, window: int = 7, looks: float = 1.0) -> np.ndarray:
    """Refined Lee filter (Lee 1981) of a 2-D intensity array (NaN = nodata); ``window`` odd, >= 5.

    Args:
        intensity: SAR intensity in linear power, (H, W); NaN pixels stay NaN and are left out of the stats.
        window: side of the square window (px, odd, ≥ 5).
        looks: equivalent number of looks L (speckle variance 1/L).

    Returns:
        The filtered intensity, float32 (H, W).

    Raises:
        ValueError: ``window`` < 5.
    """
    if window < 5:
        raise ValueError("refined Lee needs a window of at least 5 px")
    sub = 3 if window <= 9 else (window // 3) | 1
    d = (window - sub) // 2
    _, sub_mean, _ = _nan_stats(intensity, np.ones((sub, sub)))

    def m(di: int, dj: int) -> np.ndarray:
        """Sub-window mean centred at (di*d, dj*d) from each pixel."""
        shifted = np.full_like(sub_mean, np.nan)
        h, w = sub_mean.shape
        oy, ox = di * d, dj * d
        ys, yd = slice(max(oy, 0), h + min(oy, 0)), slice(max(-oy, 0), h + min(-oy, 0))
        xs, xd = slice(max(ox, 0), w + min(ox, 0)), slice(max(-ox, 0), w + min(-ox, 0))
        shifted[yd, xd] = sub_mean[ys, xs]
        return shifted

    centre = sub_mean
    left, right, top, bottom = m(0, -1), m(0, 1), m(-1, 0), m(1, 0)
    top_left, bottom_right, top_right, bottom_left = m(-1, -1), m(1, 1), m(-1, 1), m(1, -1)
    gradients = np.stack([
        np.abs(left - right), np.abs(top - bottom), np.abs(top_left - bottom_right), np.abs(top_right - bottom_left),
    ])
    gradients = np.where(np.isfinite(gradients), gradients, -1.0)
    direction = np.argmax(gradients, axis=0)
    near = [
        np.abs(left - centre) <= np.abs(right - centre),
        np.abs(top - centre) <= np.abs(bottom - centre),
        np.abs(top_left - centre) <= np.abs(bottom_right - centre),
        np.abs(top_right - centre) <= np.abs(bottom_left - centre),
    ]
    choice = np.zeros(intensity.shape, np.int64)
    for k in range(4):
        side = np.where(near[k], 0, 1)  # first or second half of direction k
        choice = np.where(direction == k, 2 * k + side, choice)
    mean = np.zeros(intensity.shape, np.float64)
    mean_sq = np.zeros(intensity.shape, np.float64)
    for index, mask in enumerate(_direction_masks(window)):
        selected = choice == index
        if not selected.any():
            continue
        _, mk, mk2 = _nan_stats(intensity, mask.astype(np.float64))
        mean = np.where(selected, mk, mean)
        mean_sq = np.where(selected, mk2, mean_sq)
    return _lee_weighting(intensity, mean, mean_sq, looks).astype(np.float32)


FILTERS: dict[str, Callable[[np.ndarray, int, float], np.ndarray]] = {"lee": lee, "refined_lee": refined_lee}


def filter_strips(
    read_rows: Callable[[int, int], np.ndarray],
    write_rows: Callable[[int, np.ndarray], None],
    height: int,
    *,
    method: str,
    window: int,
    looks: float,
    rows: int = 512,
) -> None:
    """Filter a tall image strip by strip, each strip read with a halo of ``window // 2`` rows.

    Args:
        read_rows: ``read_rows(r0, r1)`` gives rows [r0, r1) as a 2-D intensity array (NaN = nodata).
        write_rows: ``write_rows(r0, rows)`` stores filtered rows starting at row ``r0``.
        height: image height (rows).
        method: ``"lee"`` or ``"refined_lee"``.
        window: filter window (px, odd).
        looks: equivalent number of looks.
        rows: rows per strip (without the halo).

    Raises:
        KeyError: ``method`` is not a known filter.
        ValueError: ``window`` < 5 with ``"refined_lee"``.
    """
    halo = window // 2  # the farthest pixel either filter looks at
    filter_ = FILTERS[method]
    for r0 in range(0, height, rows):
        r1 = min(height, r0 + rows)
        a0, a1 = max(0, r0 - halo), min(height, r1 + halo)
        block = read_rows(a0, a1)
        filtered = filter_(block, window, looks)
        write_rows(r0, filtered[r0 - a0 : r0 - a0 + (r1 - r0)])
