"""Normalisation: optical percentile stretch, SAR in decibels, both to [0, 1]."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.learn.normalization import BandStats, fit_stats, normalize


def test_optical_stretch_maps_percentiles_to_unit_range():
    rng = np.random.default_rng(0)
    samples = rng.integers(100, 1100, (4, 10000)).astype(np.uint16)
    stats = fit_stats(samples, "optical")
    assert stats.low[0] == pytest.approx(np.percentile(samples[0], 2))
    image = samples[:, :100].reshape(4, 10, 10)
    out = normalize(image, np.ones((10, 10), bool), stats)
    assert out.dtype == np.float32 and out.min() >= 0 and out.max() <= 1


def test_sar_amplitude_is_scaled_in_decibels():
    rng = np.random.default_rng(0)
    amplitude = rng.gamma(1.0, 0.1, (1, 10000)).astype(np.float32)
    stats = fit_stats(amplitude, "sar")
    assert stats.decibels
    assert stats.low[0] == pytest.approx(np.percentile(20 * np.log10(amplitude), 1), rel=1e-3)
    db = 10 * np.log10(amplitude) - 3  # sigma0 already in dB: negative values, no conversion
    assert not fit_stats(db, "sar").decibels


def test_invalid_pixels_are_zero_and_band_mismatch_is_an_error():
    stats = BandStats("optical", (0.0,), (10.0,), False)
    valid = np.array([[True, False]])
    assert normalize(np.array([[[5, 5]]], np.uint16), valid, stats).tolist() == [[[0.5, 0.0]]]
    with pytest.raises(ValueError, match="2 bands"):
        normalize(np.zeros((2, 1, 2), np.uint16), valid, stats)
    assert BandStats.from_dict(stats.to_dict()) == stats
