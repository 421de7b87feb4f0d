"""Co-registration of an image against a reference that is already on the same pixel grid.

The method follows AROSICS (Scheffler et al. 2017, "AROSICS: An Automated and Robust Open-Source
Image Co-Registration Software for Multi-Sensor Satellite Data", Remote Sens. 9(7):676):

1. a global shift from phase correlation on a large central window, refined to sub-pixel precision
   with the upsampled matrix-multiply DFT of Guizar-Sicairos, Thurman & Fienup (2008, "Efficient
   subpixel image registration algorithms", Opt. Lett. 33:156), then re-measured once with the moving
   window pre-shifted by the rounded estimate, as AROSICS validates its integer shift;
2. a grid of local tie points, each an independent phase correlation of two windows, with the moving
   window pre-shifted by the rounded global shift so that multi-pixel shifts stay well inside it;
3. a reliability gate (AROSICS's reliability of the correlation surface) and a RANSAC affine fit.

Optical and SAR images share almost no radiometry (GFZ/arosics#26), so when either image is SAR both
are matched through CFOG descriptors (Ye et al., "Fast and robust matching for multimodal remote
sensing image registration", IEEE TGRS 57(11), 2019): dense per-pixel histograms of oriented
gradients whose structure survives the modality change. The multi-channel phase correlation used on
them is the frequency-domain matching of CFOG with phase (whitened) normalisation.

Nothing here resamples pixels: the result describes where each reference position lies in the moving
image, and the caller re-warps from the source once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
from rasterio.io import DatasetReader
from rasterio.windows import Window
from scipy import fft, ndimage
from scipy.signal.windows import tukey
from skimage.measure import ransac
from skimage.registration import phase_cross_correlation
from skimage.transform import AffineTransform
from threadpoolctl import threadpool_limits

from pipeline.config import CoregistrationConfig
from pipeline.errors import InputError
from pipeline.io.raster import read_window

GLOBAL_WINDOW_FACTOR = 4
"""The global window is this many tie-point windows wide (1024 px with the default 256 px window)."""

MIN_TIEPOINTS_PER_AXIS = 3
"""Small images shrink the tie-point window until this many points fit along the short side..."""

MIN_TIEPOINT_WINDOW = 32
"""...but never below this many pixels (the smallest ``CoregistrationConfig.window``)."""

TAPER_ALPHA = 0.5
"""Tukey taper of each matching window: suppresses the edge discontinuity of the periodic FFT."""

MASK_RAMP_PX = 16
"""Raised-cosine fade (px) of the data next to invalid pixels; see :func:`_tapered`."""

WHITENING_FLOOR = 1e-6
"""Whitening divides by max(|R|, this × max |R|): bins below float32 noise are not amplified."""

SPECTRAL_SIGMA = 0.1
"""Gaussian weight (cycles/px) on the whitened cross-power spectrum; see :func:`phase_shift`."""

PRESMOOTH_SIGMA = 1.0
"""Light Gaussian (px) before the CFOG gradients."""

DESCRIPTOR_SIGMA = 3.0
"""Spatial Gaussian (px) of the CFOG channels: wide enough to average SAR speckle."""

RANSAC_SEED = 0
RANSAC_TRIALS = 1000


@dataclass(frozen=True)
class TiePoint:
    """One local shift measurement.

    ``x``, ``y`` are the reference pixel coordinates of the window centre in continuous pixel space
    ((0, 0) is the top-left corner of the top-left pixel); the same ground feature lies at
    ``(x + dx, y + dy)`` in the moving image. ``reliability`` is AROSICS's percentage;
    ``inlier`` is True when the point passed the reliability and ``max_shift_px`` gate and, when an
    affine model was fitted, RANSAC.
    """

    x: float
    y: float
    dx: float
    dy: float
    reliability: float
    inlier: bool


@dataclass(frozen=True)
class CoregistrationResult:
    """Where each reference pixel position lies in the moving image.

    ``matrix`` is (a, b, c, d, e, f) in ``affine.Affine`` order: moving_col = a*col + b*row + c,
    moving_row = d*col + e*row + f, in continuous pixel coordinates. ``shift_px`` and
    ``reliability`` are those of the global phase correlation; ``rmse_px`` is the RMS residual of the
    kept tie points against ``matrix`` (nan when none is kept) and ``n_kept`` their number. In the
    translation fallback no consensus was found, so the kept points are all the gated ones and the
    RMSE says how far they are from the global translation: a large value means "do not trust".
    ``residual_px`` and ``identity_residual_px`` are the median distances of the gated tie points
    (those that passed the reliability and ``max_shift_px`` gate, before RANSAC) from ``matrix`` and
    from no correction at all; nan without gated points. See :func:`acceptance`.
    """

    method: Literal["intensity", "structure"]
    model: Literal["affine", "translation"]
    matrix: tuple[float, float, float, float, float, float]
    shift_px: tuple[float, float]
    reliability: float
    tiepoints: tuple[TiePoint, ...]
    rmse_px: float
    n_kept: int
    residual_px: float = float("nan")
    identity_residual_px: float = float("nan")


@dataclass(frozen=True)
class Acceptance:
    """The verdict on a co-registration: keep the image (corrected or not) or refuse it, and why."""

    accepted: bool
    corrected: bool
    reason: str | None


REGISTERED_HINT = "if the images are already co-registered, set `coregistration: {enabled: false}`"


# --- descriptors -------------------------------------------------------------------------------


def structure_descriptor(
    image: np.ndarray, *, orientations: int = 9, sigma: float = DESCRIPTOR_SIGMA
) -> np.ndarray:
    """CFOG descriptor (Ye et al., TGRS 2019): dense channel features of oriented gradients.

    The image is lightly smoothed and differentiated (Sobel). For each of ``orientations``
    directions θ in [0, π) the channel is |gx·cosθ + gy·sinθ|: the absolute value makes the
    descriptor blind to the contrast reversals between optical and SAR images. Channels are smoothed
    in space by a Gaussian of ``sigma`` pixels and across orientation by a circular [1, 2, 1] kernel
    (orientation wraps around at π), then L2-normalised per pixel so that only the local *shape* of
    the gradient distribution remains, not its strength.

    Args:
        image: one band, (H, W) (the log amplitude for SAR).
        orientations: number of gradient directions θ in [0, π) (≥ 3; ``CoregistrationConfig.orientations``).
        sigma: spatial Gaussian (px) of the channels; wide enough to average SAR speckle.

    Returns:
        float32 (orientations, H, W), L2-normalised per pixel.
    """
    smooth = ndimage.gaussian_filter(np.asarray(image, dtype=np.float32), PRESMOOTH_SIGMA)
    gx = ndimage.sobel(smooth, axis=1)
    gy = ndimage.sobel(smooth, axis=0)
    angles = np.arange(orientations) * np.pi / orientations
    channels = np.abs(
        np.cos(angles)[:, None, None] * gx[None] + np.sin(angles)[:, None, None] * gy[None]
    )
    channels = ndimage.gaussian_filter(channels, sigma=(0, sigma, sigma))
    channels = ndimage.convolve1d(channels, np.array([1.0, 2.0, 1.0]) / 4, axis=0, mode="wrap")
    norm = np.sqrt((channels**2).sum(axis=0))
    floor = 1e-3 * float(norm.mean()) + np.finfo(np.float32).tiny
    return (channels / (norm + floor)).astype(np.float32)


def _log_amplitude(intensity: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Logarithm of a non-negative image, so that multiplicative SAR speckle becomes additive.

    The offset (1 % of the valid mean) keeps zeros finite and makes the transform independent of
    the image's scale. Data with negative values is taken to be in dB already and returned as is.
    """
    values = intensity[valid]
    if values.size == 0 or values.min() < 0:
        return intensity
    offset = 0.01 * float(values.mean()) + np.finfo(np.float32).tiny
    return np.log(np.maximum(intensity, 0) + offset)


# --- phase correlation -------------------------------------------------------------------------


def _as_channels(image: np.ndarray) -> np.ndarray:
    array = np.asarray(image, dtype=np.float32)
    if array.ndim == 2:
        return array[np.newaxis]
    if array.ndim == 3:
        return array
    raise ValueError(f"expected an (H, W) or (C, H, W) array, got shape {array.shape}")


def _tapered(channels: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    """Remove each channel's valid mean and taper the window edges and the edges of invalid areas.

    Invalid pixels become 0 (the mean) and the data fades in over ``MASK_RAMP_PX`` around them
    with a raised cosine, as it does at the window edges (Tukey): a sharp mask edge has a broad
    spectrum, which whitening would turn into a correlation peak at the mask's own (zero) shift.
    """
    height, width = channels.shape[1:]
    taper = np.outer(tukey(height, TAPER_ALPHA), tukey(width, TAPER_ALPHA)).astype(np.float32)
    if valid is None or valid.all():
        return (channels - channels.mean(axis=(1, 2), keepdims=True)) * taper
    count = int(valid.sum())
    if count == 0:
        return np.zeros_like(channels)
    data = np.where(valid, channels, 0.0)  # invalid pixels may hold NaN
    means = data.sum(axis=(1, 2), keepdims=True) / count
    ramp = np.clip(ndimage.distance_transform_edt(valid) / MASK_RAMP_PX, 0.0, 1.0)
    fade = (0.5 - 0.5 * np.cos(np.pi * ramp)).astype(np.float32)
    return np.where(valid, data - means, 0.0).astype(np.float32) * (taper * fade)


def _reliability(surface: np.ndarray) -> float:
    """AROSICS reliability (%) of a correlation surface with its peak at the maximum.

    100 − 100·(mean + 2σ of the surface outside the 3×3 peak) ÷ (mean of the 3×3 peak), clamped
    to 0–100: a sharp isolated peak scores near 100, a flat or multi-modal surface near 0.
    """
    centred = np.fft.fftshift(np.abs(surface))
    row, col = np.unravel_index(np.argmax(centred), centred.shape)
    peak = np.zeros(centred.shape, dtype=bool)
    peak[max(row - 1, 0) : row + 2, max(col - 1, 0) : col + 2] = True
    peak_mean = float(centred[peak].mean())
    outside = centred[~peak]
    if peak_mean <= 0 or outside.size == 0:
        return 0.0
    noise = float(outside.mean() + 2 * outside.std())
    return float(np.clip(100.0 - 100.0 * noise / peak_mean, 0.0, 100.0))


def _spectral_weight(shape: tuple[int, int]) -> np.ndarray:
    """Gaussian low-pass of ``SPECTRAL_SIGMA`` cycles/px over the FFT frequencies of ``shape``."""
    fy = fft.fftfreq(shape[0])[:, None]
    fx = fft.fftfreq(shape[1])[None, :]
    return np.exp(-(fx**2 + fy**2) / (2 * SPECTRAL_SIGMA**2))


def phase_shift(
    reference: np.ndarray,
    moving: np.ndarray,
    *,
    upsample_factor: int = 50,
    reference_valid: np.ndarray | None = None,
    moving_valid: np.ndarray | None = None,
) -> tuple[float, float, float]:
    """Sub-pixel shift of ``moving`` against ``reference`` by multi-channel phase correlation.

    Inputs are (H, W) or (C, H, W) of equal shape; the optional (H, W) valid masks mark pixels to
    ignore (they are set to the valid mean and faded in, see :func:`_tapered`). The per-channel
    cross-power spectra are summed, R = Σ_c F_c·conj(G_c), and whitened (phase correlation), so
    every channel votes for one common peak; scikit-image then locates and refines that peak with
    the upsampled DFT of Guizar-Sicairos et al. (2008) to 1/``upsample_factor`` px. Before that the
    whitened spectrum is weighted by a Gaussian low-pass (``SPECTRAL_SIGMA``): the highest
    frequencies carry aliasing and the phase errors of resampling (a cubic or bilinear reprojection
    otherwise pulls the estimate towards whole pixels by up to 0.1 px), which is why Stone et al.
    (IEEE TGRS 39(10), 2001) mask them out.

    Shifts are only defined modulo the window size, so keep them well below half of it.

    Args:
        reference: the reference window, (H, W) or (C, H, W).
        moving: the moving window, same shape.
        upsample_factor: sub-pixel precision, 1/``upsample_factor`` px.
        reference_valid: boolean (H, W) mask of valid reference pixels; None: all valid.
        moving_valid: boolean (H, W) mask of valid moving pixels; None: all valid.

    Returns:
        (dx, dy, reliability): the feature at reference position p lies at p + (dx, dy) in the moving
        image (columns, rows, px), and AROSICS's reliability of the correlation surface in percent
        (0–100). (0, 0, 0) when nothing valid is left to correlate.

    Raises:
        ValueError: the windows differ in shape or are not (H, W) / (C, H, W).
    """
    ref = _as_channels(reference)
    mov = _as_channels(moving)
    if ref.shape != mov.shape:
        raise ValueError(f"reference {ref.shape} and moving {mov.shape} differ in shape")
    spectrum_ref = fft.fft2(_tapered(ref, reference_valid), workers=-1)
    spectrum_mov = fft.fft2(_tapered(mov, moving_valid), workers=-1)
    cross_power = (spectrum_ref * spectrum_mov.conj()).sum(axis=0)
    magnitude = np.abs(cross_power)
    if not magnitude.max() > 0:
        return 0.0, 0.0, 0.0  # nothing valid to correlate
    cross_power /= np.maximum(magnitude, WHITENING_FLOOR * magnitude.max())
    reliability = _reliability(fft.ifft2(cross_power, workers=-1))
    cross_power *= _spectral_weight(cross_power.shape)
    # skimage forms reference·conj(moving); with the ones array that product is R itself. Its
    # result is the shift that registers moving onto reference, i.e. minus the feature displacement.
    (row_shift, col_shift), _, _ = phase_cross_correlation(
        cross_power,
        np.ones_like(cross_power),
        space="fourier",
        upsample_factor=upsample_factor,
        normalization=None,
    )
    return -float(col_shift), -float(row_shift), reliability


# --- reading matching windows ------------------------------------------------------------------


@dataclass(frozen=True)
class _Source:
    """A dataset with how to read it for matching."""

    dataset: DatasetReader
    black: float | None


def _matching_image(
    source: _Source, window: Window, *, structure: bool, orientations: int
) -> tuple[np.ndarray, np.ndarray, float]:
    """(channels, usable mask, valid fraction) of a window: band-mean intensity or its CFOG descriptor.

    For the structure path the intensity goes through :func:`_log_amplitude` first. The API does not
    say which side is SAR, so both sides get it: for SAR it turns speckle additive, and for optical
    imagery it only makes gradients relative to local brightness, which CFOG tolerates. Invalid
    pixels are filled with the valid mean before the descriptor is computed, and the usable mask is
    the valid mask eroded by the descriptor's reach: the step between data and fill would otherwise
    become an edge shared by both images (same grid, same footprint) and pull the shift to zero.
    """
    data, valid = read_window(source.dataset, window, black_value=source.black)
    fraction = float(valid.mean())
    intensity = data.astype(np.float32).mean(axis=0)
    if not structure:
        return intensity, valid, fraction
    filled = np.where(valid, _log_amplitude(intensity, valid), 0.0)
    if valid.any():
        filled[~valid] = filled[valid].mean()
    descriptor = structure_descriptor(filled, orientations=orientations)
    if not valid.all():
        reach = math.ceil(3 * (PRESMOOTH_SIGMA + DESCRIPTOR_SIGMA)) + 1  # Gaussians at 3σ, Sobel
        valid = ndimage.minimum_filter(valid, size=2 * reach + 1)
    return descriptor, valid, fraction


def _match(
    reference: _Source,
    moving: _Source,
    window: Window,
    offset: tuple[int, int],
    *,
    structure: bool,
    config: CoregistrationConfig,
    min_valid_fraction: float = 0.0,
) -> tuple[float, float, float] | None:
    """Phase correlation of a reference window against the moving window displaced by ``offset``.

    Returns (dx, dy, reliability) with the offset included in (dx, dy), or None when either window
    has no valid pixel or less than ``min_valid_fraction`` of them.
    """
    moved = Window(window.col_off + offset[0], window.row_off + offset[1], window.width, window.height)
    options = {"structure": structure, "orientations": config.orientations}
    ref, ref_usable, ref_fraction = _matching_image(reference, window, **options)
    mov, mov_usable, mov_fraction = _matching_image(moving, moved, **options)
    fraction = min(ref_fraction, mov_fraction)
    if fraction == 0 or fraction < min_valid_fraction:
        return None
    dx, dy, reliability = phase_shift(
        ref,
        mov,
        upsample_factor=config.upsample_factor,
        reference_valid=ref_usable,
        moving_valid=mov_usable,
    )
    return dx + offset[0], dy + offset[1], reliability


# --- global shift ------------------------------------------------------------------------------


def _central_window(width: int, height: int, size: int, offset: tuple[int, int]) -> Window:
    """The centred square reference window of side ≤ ``size`` whose displaced copy stays in bounds."""
    usable_w = width - abs(offset[0])
    usable_h = height - abs(offset[1])
    side = min(size, usable_w, usable_h)
    col = max(0, -offset[0]) + (usable_w - side) // 2
    row = max(0, -offset[1]) + (usable_h - side) // 2
    return Window(col, row, side, side)


def _global_shift(
    reference: _Source, moving: _Source, *, structure: bool, config: CoregistrationConfig
) -> tuple[float, float, float]:
    """(dx, dy, reliability) of the whole image from a large central window, measured twice.

    The second measurement pre-shifts the moving window by the rounded first estimate, so the
    residual is below a pixel, the overlap of the two windows is maximal and the taper does not
    bias the sub-pixel estimate. A first estimate beyond ``max_shift_px``, or a central window
    without valid pixels, is reported with reliability 0.
    """
    width, height = reference.dataset.width, reference.dataset.height
    size = GLOBAL_WINDOW_FACTOR * config.window
    window = _central_window(width, height, size, (0, 0))
    first = _match(reference, moving, window, (0, 0), structure=structure, config=config)
    if first is None:
        return 0.0, 0.0, 0.0
    dx, dy, _ = first
    if math.hypot(dx, dy) > config.max_shift_px:
        return dx, dy, 0.0
    offset = (round(dx), round(dy))
    window = _central_window(width, height, size, offset)
    second = _match(reference, moving, window, offset, structure=structure, config=config)
    return second if second is not None else (dx, dy, 0.0)


# --- tie points --------------------------------------------------------------------------------


def _tiepoint_geometry(config: CoregistrationConfig, width: int, height: int) -> tuple[int, int]:
    """(window, spacing) in pixels; small images get both shrunk so that enough points fit, and
    large ones a wider spacing so that at most ``config.max_tiepoints`` are measured."""
    short_side = min(width, height)
    fitting = short_side // (MIN_TIEPOINTS_PER_AXIS + 1) // 2 * 2
    window = max(MIN_TIEPOINT_WINDOW, min(config.window, fitting))
    spacing = max(1, round(config.grid_spacing * window / config.window))
    spacing = max(spacing, math.ceil(math.sqrt(width * height / config.max_tiepoints)))
    return window, spacing


def _grid_offsets(size: int, window: int, spacing: int, shift: int) -> range:
    """Window offsets along one axis, centred, with the reference and displaced windows in bounds."""
    low = max(0, -shift)
    high = size - window - max(0, shift)
    if high < low:
        return range(0)
    start = low + ((high - low) % spacing) // 2
    return range(start, high + 1, spacing)


def _tiepoints(
    reference: _Source,
    moving: _Source,
    offset: tuple[int, int],
    *,
    structure: bool,
    config: CoregistrationConfig,
) -> list[TiePoint]:
    """Measure every tie point of the grid that has enough valid pixels in both images.

    ``inlier`` is set by the reliability and ``max_shift_px`` gate here; RANSAC refines it later.
    """
    width, height = reference.dataset.width, reference.dataset.height
    size, spacing = _tiepoint_geometry(config, width, height)
    points = []
    for row in _grid_offsets(height, size, spacing, offset[1]):
        for col in _grid_offsets(width, size, spacing, offset[0]):
            window = Window(col, row, size, size)
            match = _match(
                reference, moving, window, offset, structure=structure, config=config,
                min_valid_fraction=config.min_valid_fraction,
            )
            if match is None:
                continue
            dx, dy, reliability = match
            passed = reliability >= config.min_reliability and math.hypot(dx, dy) <= config.max_shift_px
            points.append(TiePoint(col + size / 2, row + size / 2, dx, dy, reliability, passed))
    return points


# --- model fitting -----------------------------------------------------------------------------


def _point_arrays(points: list[TiePoint]) -> tuple[np.ndarray, np.ndarray]:
    """(source, destination) coordinates of tie points as (N, 2) arrays of (col, row)."""
    src = np.array([(p.x, p.y) for p in points], dtype=np.float64).reshape(-1, 2)
    shifts = np.array([(p.dx, p.dy) for p in points], dtype=np.float64).reshape(-1, 2)
    return src, src + shifts


def _rmse(distances: np.ndarray) -> float:
    return float(np.sqrt(np.mean(distances**2))) if distances.size else float("nan")


def _fit_affine(
    points: list[TiePoint], config: CoregistrationConfig
) -> tuple[tuple[float, ...], list[TiePoint], float] | None:
    """Seeded RANSAC affine fit of the gated points (``inlier`` True on entry).

    Returns (matrix, points with RANSAC's verdict in ``inlier``, RMSE of the inliers), or None when
    fewer than ``config.min_tiepoints`` points agree on one affine or they lie on one line.
    """
    gated = [i for i, point in enumerate(points) if point.inlier]
    if len(gated) < config.min_tiepoints:
        return None
    src, dst = _point_arrays([points[i] for i in gated])
    transform, inliers = ransac(
        (src, dst),
        AffineTransform,
        min_samples=3,
        residual_threshold=config.ransac_threshold_px,
        max_trials=RANSAC_TRIALS,
        rng=RANSAC_SEED,
    )
    if transform is None or inliers is None or inliers.sum() < config.min_tiepoints:
        return None
    if np.linalg.matrix_rank(src[inliers] - src[inliers].mean(axis=0)) < 2:
        return None  # collinear points leave the affine undetermined across the line
    rejected = {i for i, inlier in zip(gated, inliers) if not inlier}
    flagged = [replace(p, inlier=False) if i in rejected else p for i, p in enumerate(points)]
    matrix = tuple(float(v) for v in transform.params[:2].ravel())
    return matrix, flagged, _rmse(transform.residuals(src[inliers], dst[inliers]))


def _median_residuals(points: list[TiePoint], matrix: tuple[float, ...]) -> tuple[float, float]:
    """Median distance (px) of the points from ``matrix`` and from the identity (nan without points)."""
    if not points:
        return float("nan"), float("nan")
    src, dst = _point_arrays(points)
    fitted = src @ np.reshape(matrix, (2, 3))[:, :2].T + np.reshape(matrix, (2, 3))[:, 2]
    return float(np.median(np.hypot(*(dst - fitted).T))), float(np.median(np.hypot(*(dst - src).T)))


def acceptance(result: CoregistrationResult, config: CoregistrationConfig) -> Acceptance:
    """Whether to apply a correction, keep the image uncorrected, or refuse it.

    A correction is applied only if it beats no correction: when the gated tie points lie as close to
    the identity as to the fitted model (median distance), the image is kept uncorrected, as a
    pre-registered pair whose tie points are noise would be. When nothing can be measured (no reliable
    tie point and an unreliable global shift) there is no correction to apply either: the image is kept
    uncorrected and reported as unverified. Otherwise the correction must pass the ``max_rmse_px`` gate,
    or the image is refused with a message that says how to turn co-registration off for pre-registered
    data.

    Args:
        result: the measurement of :func:`coregister`.
        config: the co-registration settings (``max_rmse_px``, ``min_reliability``).

    Returns:
        The verdict; ``reason`` explains an uncorrected or refused image, with the measured residuals.
    """
    fit, identity = result.residual_px, result.identity_residual_px
    if identity <= fit:  # False when either is nan (no gated tie point)
        return Acceptance(True, False, (
            f"kept uncorrected: the tie points lie as close to no correction (median residual {identity:.2f} px) "
            f"as to the fitted {result.model} ({fit:.2f} px)"
        ))
    if math.isnan(result.rmse_px):
        if result.reliability < config.min_reliability:
            # Nothing measured, nothing to correct: a correction must beat none, and none is all there is.
            return Acceptance(True, False, (
                f"kept uncorrected, unverified: no reliable tie points and global reliability "
                f"{result.reliability:.1f}% < {config.min_reliability}% (the displacement cannot be measured; "
                "check that the pair is co-registered)"
            ))
        return Acceptance(True, True, None)
    if result.rmse_px > config.max_rmse_px:
        return Acceptance(False, False, (
            f"tie-point RMSE {result.rmse_px:.2f} px > max_rmse_px {config.max_rmse_px} (median residual "
            f"{fit:.2f} px corrected, {identity:.2f} px uncorrected); {REGISTERED_HINT}"
        ))
    return Acceptance(True, True, None)


def _translation_rmse(points: list[TiePoint], shift: tuple[float, float]) -> float:
    """RMS distance of the gated points from the global translation (nan without any)."""
    src, dst = _point_arrays([point for point in points if point.inlier])
    return _rmse(np.hypot(*(dst - src - np.array(shift)).T))


# --- entry point -------------------------------------------------------------------------------


def coregister(
    reference: DatasetReader,
    moving: DatasetReader,
    config: CoregistrationConfig,
    *,
    structure: bool,
    reference_black: float | None = None,
    moving_black: float | None = None,
) -> CoregistrationResult:
    """Measure how ``moving`` is displaced against ``reference`` (both on the same pixel grid).

    Reads windows only, never the whole raster. The global shift comes from a large central window;
    the tie-point grid (every ``config.grid_spacing`` px, ``config.window`` px windows, moving windows
    pre-shifted by the rounded global shift) is gated by reliability and ``max_shift_px`` and fitted
    with a seeded RANSAC affine. With fewer than ``config.min_tiepoints`` kept points the model is
    the global translation, and its RMSE is that of the gated points against it. ``structure=True``
    (either image is SAR) matches CFOG descriptors of the log amplitude instead of intensities.
    ``*_black`` is GOLD's black rule for integer imagery (see :func:`pipeline.io.raster.read_window`).

    The correction is not applied: the caller re-warps from the source with ``matrix``, and refusing an
    image above ``config.max_rmse_px`` (or one no better than no correction) is the caller's decision
    too (see :func:`acceptance`).

    Args:
        reference: the reference image, open.
        moving: the image to measure, open, with the reference's width and height.
        config: the co-registration settings (window, grid spacing, gates, RANSAC threshold); the caller
            puts ``ransac_threshold_sar_px`` into ``ransac_threshold_px`` for optical↔SAR pairs.
        structure: match CFOG descriptors of the log amplitude (either image is SAR) instead of intensities.
        reference_black: GOLD's black value for an integer reference, else None.
        moving_black: GOLD's black value for an integer moving image, else None.

    Returns:
        The CoregistrationResult: model, matrix, global shift and reliability, tie points, RMSE, kept count.

    Raises:
        InputError: the two images differ in size, or a window read fails (names the file).
    """
    if (reference.width, reference.height) != (moving.width, moving.height):
        raise InputError(
            moving.name,
            f"{moving.width}×{moving.height} px, but the reference {reference.name} is "
            f"{reference.width}×{reference.height} px; co-registration needs both on the same grid",
        )
    ref_source = _Source(reference, reference_black)
    mov_source = _Source(moving, moving_black)
    # One BLAS thread: multi-threaded reductions differ in the last bits between processes, which
    # can flip a borderline RANSAC inlier, and prepare must give the same tiles on threads and Dask.
    with threadpool_limits(limits=1, user_api="blas"):
        dx, dy, reliability = _global_shift(ref_source, mov_source, structure=structure, config=config)
        offset = (round(dx), round(dy)) if reliability > 0 else (0, 0)
        points = _tiepoints(ref_source, mov_source, offset, structure=structure, config=config)
        gated = [point for point in points if point.inlier]
        fit = _fit_affine(points, config)
    if fit is not None:
        matrix, points, rmse = fit
        model: Literal["affine", "translation"] = "affine"
    else:
        matrix = (1.0, 0.0, dx, 0.0, 1.0, dy)
        rmse = _translation_rmse(points, (dx, dy))
        model = "translation"
    residual, identity_residual = _median_residuals(gated, matrix)
    return CoregistrationResult(
        method="structure" if structure else "intensity",
        model=model,
        matrix=matrix,
        shift_px=(dx, dy),
        reliability=reliability,
        tiepoints=tuple(points),
        rmse_px=rmse,
        n_kept=sum(point.inlier for point in points),
        residual_px=residual,
        identity_residual_px=identity_residual,
    )
