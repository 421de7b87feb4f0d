"""Optical sensor radiometry of the synthetic groups: reflectance to GF-2 and Sentinel-2 DN with sensor noise."""

from __future__ import annotations

import math

import numpy as np

# GF-2 DN = offset + gain * reflectance (10-bit-like values, ~100-1300)
_GF2_OFFSET = 60.0
_GF2_GAIN = np.array([2900.0, 2700.0, 2600.0, 2300.0], np.float32)
# Sentinel-2 L2A-like: reflectance x 10000, with a residual haze and per-band gain
_S2_GAIN = np.array([0.96, 0.98, 1.00, 1.03], np.float32)
_S2_HAZE = np.array([0.012, 0.008, 0.004, 0.002], np.float32)


def _sensor_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Zero-mean float32 noise of standard deviation ``sigma``: the sum of two uniform bytes
    (triangular, close enough to Gaussian for sensor noise and ~5x cheaper to draw)."""
    count = int(np.prod(shape))
    pair = np.frombuffer(rng.bytes(2 * count), np.uint8).reshape(2, *shape)
    noise = np.add(pair[0], pair[1], dtype=np.int16)
    noise -= 255
    return noise.astype(np.float32) * np.float32(sigma / math.sqrt(2 * (256**2 - 1) / 12))


def _to_dn(reflectance: np.ndarray, valid: np.ndarray, rng: np.random.Generator, *,
           gain: np.ndarray, offset: np.ndarray, noise: float) -> np.ndarray:
    """uint16 DN = offset + gain * reflectance + Gaussian noise, >= 1 on valid pixels, 0 elsewhere."""
    dn = np.empty(reflectance.shape, np.uint16)
    invalid = ~valid
    for b in range(reflectance.shape[0]):
        band = _sensor_noise(rng, reflectance.shape[1:], noise)
        band += np.float32(gain[b]) * reflectance[b]
        band += np.float32(offset[b])
        np.rint(band, out=band)
        np.clip(band, 1, 65535, out=band)
        band[invalid] = 0
        dn[b] = band
    return dn


def gf2_dn(reflectance: np.ndarray, valid: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """GF-2-like DN (~100-1300) from reflectance.

    Args:
        reflectance: (4, H, W) float32 reflectance (blue, green, red, nir).
        valid: (H, W) bool, False where the image has no data.
        rng: the noise stream.

    Returns:
        uint16 (4, H, W): >= 1 on valid pixels, 0 (nodata) elsewhere.
    """
    offset = np.full(4, _GF2_OFFSET, np.float32)
    return _to_dn(reflectance, valid, rng, gain=_GF2_GAIN, offset=offset, noise=4.0)


def s2_dn(reflectance: np.ndarray, valid: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Sentinel-2 L2A-like reflectance x 10000, with a residual haze and per-band gains.

    Args:
        reflectance: (4, H, W) float32 reflectance (B02, B03, B04, B08).
        valid: (H, W) bool, False where the image has no data.
        rng: the noise stream.

    Returns:
        uint16 (4, H, W): >= 1 on valid pixels, 0 (nodata) elsewhere.
    """
    return _to_dn(reflectance, valid, rng, gain=10000.0 * _S2_GAIN, offset=10000.0 * _S2_HAZE, noise=15.0)
