"""Per-modality normalisation, with statistics computed on the training split.

GOLD normalised every image, SAR included, with ImageNet mean/std after a ÷255 (spec §2), which
assumes 8-bit RGB. Here optical imagery (often 16-bit) gets a per-band percentile stretch and SAR a
clipped decibel scale, both to [0, 1]. The statistics travel in the checkpoint so that inference
normalises exactly as training did.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

Modality = Literal["optical", "sar"]
PERCENTILES = {"optical": (2.0, 98.0), "sar": (1.0, 99.0)}


@dataclass(frozen=True)
class BandStats:
    """What maps one image role to [0, 1]."""

    modality: Modality
    low: tuple[float, ...]  # per band, after the dB transform for SAR amplitude
    high: tuple[float, ...]
    decibels: bool  # SAR given as amplitude: converted with 20·log10 before clipping

    def to_dict(self) -> dict:
        """The statistics as a plain dict (stored in the checkpoint).

        Returns:
            ``modality``, ``low``, ``high`` and ``decibels``.
        """
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> BandStats:
        """Statistics from the dict written by :meth:`to_dict`.

        Args:
            data: a dict with ``modality``, ``low``, ``high`` and ``decibels``.

        Returns:
            The BandStats.

        Raises:
            KeyError: a key is missing (e.g. a checkpoint written without statistics).
        """
        return cls(data["modality"], tuple(data["low"]), tuple(data["high"]), bool(data["decibels"]))


def _to_db(amplitude: np.ndarray) -> np.ndarray:
    return 20.0 * np.log10(np.maximum(amplitude, 1e-6))


def sar_is_amplitude(samples: np.ndarray) -> bool:
    """Whether SAR samples are amplitude: amplitude is non-negative, σ⁰ in dB has negative values.

    Args:
        samples: SAR pixel values (any shape); NaN is ignored.

    Returns:
        True when no sample is negative.
    """
    return bool(np.nanmin(samples) >= 0)


def fit_stats(samples: np.ndarray, modality: Modality) -> BandStats:
    """Statistics from (bands, N) valid training pixels of one role.

    Per band, the 2nd–98th percentiles (optical) or 1st–99th percentiles in dB (SAR; amplitude is
    converted with 20·log10 first) become ``low`` and ``high``; a flat band gets ``high = low + 1``.

    Args:
        samples: valid pixel values, shape (bands, N) with N > 0.
        modality: ``"optical"`` or ``"sar"``.

    Returns:
        The BandStats mapping this role to [0, 1].
    """
    values = samples.astype(np.float64)
    decibels = modality == "sar" and sar_is_amplitude(values)
    if decibels:
        values = _to_db(values)
    low_q, high_q = PERCENTILES[modality]
    low = np.nanpercentile(values, low_q, axis=1)
    high = np.nanpercentile(values, high_q, axis=1)
    high = np.where(high > low, high, low + 1.0)
    return BandStats(modality, tuple(map(float, low)), tuple(map(float, high)), decibels)


def normalize(data: np.ndarray, valid: np.ndarray, stats: BandStats) -> np.ndarray:
    """(bands, H, W) raw values → float32 in [0, 1]; invalid pixels become 0.

    Args:
        data: the raw image, shape (bands, H, W), in the dtype and units it was read in.
        valid: boolean (H, W) mask of valid pixels.
        stats: the statistics of the image's role, fitted on the training split.

    Returns:
        The normalised image, float32 (bands, H, W); NaN becomes 0.

    Raises:
        ValueError: the image's band count differs from the statistics'.
    """
    if data.shape[0] != len(stats.low):
        raise ValueError(f"image has {data.shape[0]} bands, the statistics {len(stats.low)}")
    values = data.astype(np.float32)
    if stats.decibels:
        values = _to_db(values)
    low = np.asarray(stats.low, np.float32)[:, None, None]
    high = np.asarray(stats.high, np.float32)[:, None, None]
    out = np.clip((values - low) / (high - low), 0.0, 1.0)
    out[:, ~valid] = 0.0
    return np.nan_to_num(out, nan=0.0)
