"""Synthetic scene groups for the demo and the tests, built on real imagery textures."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def simulate_sar_amplitude(
    optical: np.ndarray, *, looks: int = 4, rng: np.random.Generator
) -> np.ndarray:
    """A GF-3-like speckled SAR amplitude image of the same ground as an optical image.

    SAR backscatter is not a monotone function of optical brightness: smooth dark surfaces (water,
    roads) are dark, vegetation is mid-grey, and edges and corners (buildings: double bounce) are
    bright. The reflectivity mixes an inverted, smoothed optical brightness with the local gradient
    magnitude, then multiplicative Gamma speckle with ``looks`` looks is applied to the intensity.
    Raw-intensity correlation with the optical image is therefore weak while the structure (edges)
    is shared, which is what a modality-robust co-registration must exploit.

    ``optical`` is (bands, H, W) or (H, W); returns float32 (H, W) amplitude.
    """
    image = np.asarray(optical, dtype=np.float32)
    if image.ndim == 3:
        image = image.mean(axis=0)
    lo, hi = np.percentile(image, (1, 99))
    brightness = np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1)
    smooth = ndimage.gaussian_filter(brightness, 1.5)
    gradient = np.hypot(ndimage.sobel(smooth, axis=0), ndimage.sobel(smooth, axis=1))
    gradient /= max(float(np.percentile(gradient, 99)), 1e-6)
    reflectivity = 0.15 + 0.5 * (1.0 - smooth) ** 2 + 1.5 * np.clip(gradient, 0, 2) ** 2
    speckle = rng.gamma(shape=looks, scale=1.0 / looks, size=reflectivity.shape)
    return np.sqrt(reflectivity * speckle).astype(np.float32)
