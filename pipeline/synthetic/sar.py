"""The SAR side of the synthetic groups: a GF-3-like speckled amplitude from an optical image, and sigma0 in dB."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

SIGMA0_CALIBRATION = 0.08  # sigma0 (linear) = calibration * amplitude**2


def simulate_sar_amplitude(
    optical: np.ndarray,
    *,
    looks: int = 4,
    rng: np.random.Generator,
    value_range: tuple[float, float] | None = None,
    gradient_scale: float | None = None,
) -> np.ndarray:
    """A GF-3-like speckled SAR amplitude image of the same ground as an optical image.

    SAR backscatter is not a monotone function of optical brightness: smooth dark surfaces (water,
    roads) are dark, vegetation is mid-grey, and edges and corners (buildings: double bounce) are
    bright. The reflectivity mixes an inverted, smoothed optical brightness with the local gradient
    magnitude, then multiplicative Gamma speckle with ``looks`` looks is applied to the intensity.
    Raw-intensity correlation with the optical image is therefore weak while the structure (edges)
    is shared, which is what a modality-robust co-registration must exploit.

    Args:
        optical: (bands, H, W) or (H, W) optical image; bands are averaged into one brightness.
        looks: number of looks of the Gamma speckle (more looks, less speckle).
        rng: the random generator of the speckle.
        value_range: (lo, hi) brightness stretch; default the 1st and 99th percentiles of ``optical``.
        gradient_scale: divisor of the gradient magnitude; default its 99th percentile. Give both
            ``value_range`` and ``gradient_scale`` when simulating a large image block by block, so
            that the blocks agree.

    Returns:
        float32 (H, W) amplitude.
    """
    image = np.asarray(optical, dtype=np.float32)
    if image.ndim == 3:
        image = image.mean(axis=0)
    lo, hi = np.percentile(image, (1, 99)) if value_range is None else value_range
    brightness = np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1)
    smooth = ndimage.gaussian_filter(brightness, 1.5)
    gradient = np.hypot(ndimage.sobel(smooth, axis=0), ndimage.sobel(smooth, axis=1))
    if gradient_scale is None:
        gradient_scale = float(np.percentile(gradient, 99))
    gradient /= max(gradient_scale, 1e-6)
    reflectivity = 0.15 + 0.5 * (1.0 - smooth) ** 2 + 1.5 * np.clip(gradient, 0, 2) ** 2
    speckle = rng.gamma(shape=looks, scale=1.0 / looks, size=reflectivity.shape)
    return np.sqrt(reflectivity * speckle).astype(np.float32)


def sigma0_db(amplitude: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Calibrated sigma0 in dB of a simulated amplitude image.

    Args:
        amplitude: (H, W) amplitude from :func:`simulate_sar_amplitude`.
        valid: (H, W) bool, False where the image has no data.

    Returns:
        float32 (H, W) sigma0 dB (floored at -40 dB), NaN where not ``valid``.
    """
    intensity = SIGMA0_CALIBRATION * amplitude.astype(np.float32) ** 2
    db = 10.0 * np.log10(np.maximum(intensity, 1e-4))
    return np.where(valid, db, np.nan).astype(np.float32)
