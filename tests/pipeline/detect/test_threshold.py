"""One change rule, ``probability > threshold``, in the class raster and in vectorisation.

A pixel exactly at the threshold is "no change" in both; with uint8 probabilities the rule applies to
the written value (round(p × 254) / 254), so reading the probability raster back and thresholding it
gives the class raster pixel for pixel.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from affine import Affine

from pipeline.detect.accumulate import finalise
from pipeline.detect.vectorize import is_change, polygonize
from tests.conftest import write_raster

EXACT = {"sieve_px": 0, "min_area_m2": 0.0, "simplify_px": 0.0}
TRANSFORM = Affine(1.0, 0, 500000.0, 0, -1.0, 3500000.0)


def _core(p: np.ndarray, semantic_classes: int = 0) -> torch.Tensor:
    """Block sums of probabilities ``p`` with weight 1 (plus flat posteriors for a semantic model)."""
    weight = np.ones_like(p, np.float32)
    posteriors = []
    for date in range(2 * semantic_classes):
        posteriors.append(np.full_like(p, 1.0 if date in (0, semantic_classes + 1) else 0.0, np.float32))
    return torch.from_numpy(np.stack([p.astype(np.float32), *posteriors, weight]))


def _polygon_pixels(tmp_path, probability: np.ndarray, threshold: float) -> int:
    nodata = 255 if probability.dtype == np.uint8 else None
    path = write_raster(tmp_path / f"prob_{probability.dtype}.tif", probability, transform=TRANSFORM, nodata=nodata)
    return int(polygonize(None, path, threshold=threshold, **EXACT)["n_pixels"].sum())


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_a_pixel_exactly_at_the_threshold_is_no_change_in_both_paths(tmp_path, dtype):
    p = np.full((4, 4), 0.5, np.float32)  # uint8: round(0.5 × 254) = 127, read back as 127 / 254 = 0.5
    rasters = finalise(_core(p), dtype, 0.5)
    assert rasters["probability"][0, 0, 0] == (127 if dtype == "uint8" else 0.5)
    assert (rasters["classes"] == 0).all()
    assert _polygon_pixels(tmp_path, rasters["probability"][0], 0.5) == 0


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_one_step_above_the_threshold_is_change_in_both_paths(tmp_path, dtype):
    above = 128 / 254 if dtype == "uint8" else np.nextafter(np.float32(0.5), np.float32(1))
    p = np.full((4, 4), above, np.float32)
    rasters = finalise(_core(p), dtype, 0.5)
    assert (rasters["classes"] == 1).all()
    assert _polygon_pixels(tmp_path, rasters["probability"][0], 0.5) == 16


def test_uint8_classes_follow_the_written_probability():
    # 0.501 and 0.5019 are written as 127 (= 0.5): not above 0.5, whatever the unrounded value was.
    p = np.array([[0.499, 0.5, 0.501, 0.5019, 0.503]], np.float32)
    rasters = finalise(_core(p), "uint8", 0.5)
    assert rasters["probability"][0].tolist() == [[127, 127, 127, 127, 128]]
    assert rasters["classes"][0].tolist() == [[0, 0, 0, 0, 1]]


def test_semantic_transitions_change_exactly_where_the_classes_do():
    p = np.array([[0.4, 0.5, 0.501, 0.6]], np.float32)
    rasters = finalise(_core(p, semantic_classes=2), "uint8", 0.5)
    assert rasters["classes"][0].tolist() == [[0, 0, 0, 1]]
    # Class 0 at t1, class 1 at t2 (K = 2): code 1 + 2·0 + 1 = 2 where changed.
    assert rasters["transitions"][0].tolist() == [[0, 0, 0, 2]]


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
@pytest.mark.parametrize("threshold", [0.5, 0.3, 77 / 254, 0.9])
def test_the_written_probability_thresholded_again_gives_the_class_raster(tmp_path, dtype, threshold):
    rng = np.random.default_rng(7)
    p = rng.random((48, 48)).astype(np.float32)
    p[::5] = threshold  # whole rows exactly at the threshold
    rasters = finalise(_core(p), dtype, threshold)
    assert 0 < int((rasters["classes"] == 1).sum()) < p.size
    assert _polygon_pixels(tmp_path, rasters["probability"][0], threshold) == int((rasters["classes"] == 1).sum())


def test_is_change_is_strictly_above_and_false_on_nodata():
    probability = np.array([0.0, 0.5, np.nextafter(np.float32(0.5), np.float32(1)), 1.0, np.nan], np.float32)
    assert is_change(probability, 0.5).tolist() == [False, False, True, True, False]
