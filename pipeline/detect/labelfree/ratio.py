"""SAR–SAR change by ratios of speckle-filtered σ⁰: log-ratio and mean-ratio.

SAR speckle is multiplicative, so two dates are compared by their ratio, not their difference.
Both operators work on intensity in linear power: GF-3 grid rasters hold σ⁰ in dB (see
:mod:`pipeline.products.gf3`) and are converted with 10^(x/10); other sensors' values are taken as
they are (amplitude or intensity: the ratio's threshold does not depend on the scale). Each date is
first filtered with the refined Lee filter (Lee 1981, :func:`pipeline.products.speckle.refined_lee`)
on the block and a halo of half its window. Several bands (polarisations) are averaged in the score.

- **log-ratio** (Dekker 1998, "Speckle filtering in satellite SAR change detection imagery", IJRS
  19(6); Bazi, Bruzzone & Melgani 2005, IEEE TGRS 43(4)): |ln(I₂ / I₁)|;
- **mean-ratio** (Inglada & Mercier 2007, "A new statistical similarity measure for change detection
  in multitemporal SAR images and its extension to multiscale change analysis", IEEE TGRS 45(5)):
  1 − min(μ₁/μ₂, μ₂/μ₁) with μ the local means over a ``mean_window`` × ``mean_window`` window.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from pipeline.detect.labelfree.scene import PairScene
from pipeline.products.speckle import refined_lee

FLOOR = 1e-6  # linear power (−60 dB), below any sensor's noise floor: keeps the ratio finite on zeros


def local_mean(x: np.ndarray, size: int) -> np.ndarray:
    """NaN-aware mean over a size × size window (NaN pixels neither count nor are filled).

    Args:
        x: (H, W) values, NaN = nodata.
        size: window side (odd).

    Returns:
        (H, W) local means, NaN where ``x`` is NaN.
    """
    finite = np.isfinite(x)
    total = ndimage.uniform_filter(np.where(finite, x, 0.0), size, mode="constant")
    count = ndimage.uniform_filter(finite.astype(np.float64), size, mode="constant")
    return np.where(finite, total / np.maximum(count, 1e-12), np.nan)


class SarRatio:
    """Ratio operators on refined-Lee-filtered σ⁰ of two SAR dates.

    Args:
        operator: "log_ratio" or "mean_ratio".
        window: refined Lee window (odd, ≥ 5).
        looks: equivalent number of looks of the filter.
        mean_window: mean-ratio's local mean window (odd).
    """

    kind = "sar"
    max_block = 4096
    block_multiple = 1

    def __init__(self, operator: str, window: int = 7, looks: float = 1.0, mean_window: int = 3) -> None:
        self.name, self.window, self.looks, self.mean_window = operator, window, looks, mean_window
        self.halo = window // 2 + (mean_window // 2 if operator == "mean_ratio" else 0)
        self.db: tuple[bool, bool] = (False, False)

    def fit(self, scene: PairScene) -> None:
        """Note which dates hold σ⁰ in dB (GF-3); no scene statistics are needed.

        Args:
            scene: the SAR pair.
        """
        first, second = (scene.sensors[role] == "gf3" for role in scene.roles)
        self.db = (first, second)

    def _intensity(self, image: np.ndarray, db: bool) -> np.ndarray:
        """Filtered linear intensity per band (bands, H, W)."""
        linear = 10.0 ** (image / 10.0) if db else image
        linear = np.where(np.isfinite(linear), np.maximum(linear, FLOOR), np.nan)
        return np.stack([refined_lee(band, self.window, self.looks).astype(np.float64) for band in linear])

    def score(self, t1: np.ndarray, t2: np.ndarray) -> np.ndarray:
        """The ratio score of a block.

        Args:
            t1: (bands, H, W) t1 σ⁰ (dB for GF-3), NaN = nodata.
            t2: (bands, H, W) t2 σ⁰, NaN = nodata.

        Returns:
            (H, W) scores (larger = more change), NaN where either date is nodata.
        """
        i1, i2 = self._intensity(t1, self.db[0]), self._intensity(t2, self.db[1])
        i1, i2 = np.maximum(i1, FLOOR), np.maximum(i2, FLOOR)  # the filter can undershoot to ≤ 0
        if self.name == "log_ratio":
            return np.abs(np.log(i2 / i1)).mean(axis=0)
        m1 = np.stack([local_mean(band, self.mean_window) for band in i1])
        m2 = np.stack([local_mean(band, self.mean_window) for band in i2])
        return (1.0 - np.minimum(m1 / m2, m2 / m1)).mean(axis=0)
