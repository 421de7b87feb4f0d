"""Augmentation: one geometry for all arrays of a sample, jitter on optical only."""

from __future__ import annotations

import numpy as np

from pipeline.learn.augment import AugmentSettings, optical_jitter, paired_geometry


def test_geometry_is_identical_for_every_image_and_the_label():
    rng = np.random.default_rng(0)
    base = rng.random((32, 32)).astype(np.float32)
    arrays = {"A": np.stack([base, base]), "B": base[None].copy(), "label": (base > 0.5).astype(np.int64)}
    for seed in range(12):
        out = paired_geometry(arrays, AugmentSettings(crop=24), np.random.default_rng(seed))
        assert out["A"].shape == (2, 24, 24) and out["label"].shape == (24, 24)
        assert np.array_equal(out["A"][0], out["B"][0])
        assert np.array_equal(out["A"][1], out["B"][0])
        assert np.array_equal(out["label"], (out["B"][0] > 0.5).astype(np.int64))


def test_jitter_stays_in_range_and_spares_invalid_pixels():
    rng = np.random.default_rng(1)
    image = rng.random((4, 16, 16)).astype(np.float32)
    valid = np.ones((16, 16), bool)
    valid[:4] = False
    out = optical_jitter(image, valid, AugmentSettings(brightness=0.5, contrast=0.9), rng)
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert np.all(out[:, :4] == 0.0)
    assert not np.allclose(out[:, 4:], image[:, 4:])
