"""Change score → change probability: Otsu's threshold on the scene's score histogram and a logistic around it.

A label-free method gives a change *score* (larger = more change) with no scale of its own. The
scene-wide threshold is Otsu's (Otsu 1979, "A threshold selection method from gray-level
histograms", IEEE TSMC 9(1)) on a histogram of every valid score, accumulated block by block over
the scene's score range (so it equals :func:`skimage.filters.threshold_otsu` on the whole score
array with the same bin count). The probability is the posterior of the two-class model Otsu's
criterion assumes — two classes of equal variance σ_w² (the pooled within-class variance) with means
μ0 < μ1 — which is logistic in the score with slope (μ1 − μ0) / σ_w²; it is centred on Otsu's
threshold so that probability > 0.5 is exactly "score above the threshold":

    p(s) = 1 / (1 + exp(−(μ1 − μ0) (s − t) / σ_w²))

Otsu's criterion presumes two classes: on a scene without change it would cut the no-change mode in
two and call a third of it change. So t is at least a false-alarm bound of the no-change mode,
median + 3 · 1.4826 · MAD of the score (the robust Gaussian 3σ; change is taken to be a minority of
the scene), and Otsu's own threshold is kept for provenance (``otsu``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from skimage.filters import threshold_otsu

NBINS = 1024


@dataclass(frozen=True)
class Calibration:
    """Otsu's threshold of a score and the logistic slope around it.

    Attributes:
        threshold: Otsu's threshold t of the score.
        slope: (μ1 − μ0) / σ_w², per unit of score.
        change_mean: μ1, the mean score above t.
        unchanged_mean: μ0, the mean score at or below t.
        otsu: Otsu's threshold itself (``threshold`` is the larger of it and the no-change bound).
    """

    threshold: float
    slope: float
    change_mean: float
    unchanged_mean: float
    otsu: float

    def probability(self, score: np.ndarray) -> np.ndarray:
        """The change probability of scores (NaN stays NaN).

        Args:
            score: change scores, any shape.

        Returns:
            float64 probabilities in [0, 1].
        """
        z = np.clip(self.slope * (np.asarray(score, np.float64) - self.threshold), -700.0, 700.0)
        return 1.0 / (1.0 + np.exp(-z))


class ScoreHistogram:
    """A histogram of scores accumulated block by block over a known range.

    Args:
        low: the smallest score of the scene.
        high: the largest score of the scene.
        nbins: bins between them (skimage's default for Otsu is 256; more resolve heavy tails).
    """

    def __init__(self, low: float, high: float, nbins: int = NBINS) -> None:
        self.range = (float(low), float(high))
        self.counts = np.zeros(nbins, np.int64)
        self.edges = np.histogram_bin_edges([], bins=nbins, range=self.range)

    def add(self, score: np.ndarray) -> None:
        """Count a block's finite scores.

        Args:
            score: a block of scores; NaN (nodata) is left out.
        """
        values = score[np.isfinite(score)]
        self.counts += np.histogram(values, bins=len(self.counts), range=self.range)[0]

    def calibration(self) -> Calibration:
        """Otsu's threshold and the logistic around it.

        Returns:
            The calibration; a constant score (nothing to separate) gets the threshold at that
            value and slope 0 (probability 0.5 everywhere, so no change at the default threshold).
        """
        centers = (self.edges[:-1] + self.edges[1:]) / 2
        if self.range[0] == self.range[1] or np.count_nonzero(self.counts) < 2:
            return Calibration(self.range[0], 0.0, self.range[0], self.range[0], self.range[0])
        t = float(threshold_otsu(hist=(self.counts, centers)))
        above = centers > t
        n0, n1 = self.counts[~above].sum(), self.counts[above].sum()
        mu0 = float((self.counts[~above] * centers[~above]).sum() / n0)
        mu1 = float((self.counts[above] * centers[above]).sum() / n1)
        within = ((self.counts[~above] * (centers[~above] - mu0) ** 2).sum()
                  + (self.counts[above] * (centers[above] - mu1) ** 2).sum()) / (n0 + n1)
        # Floor the variance at a bin width²: two spikes would otherwise give an infinite slope.
        bin_width = self.edges[1] - self.edges[0]
        slope = (mu1 - mu0) / max(float(within), bin_width**2)
        return Calibration(max(t, self.no_change_bound(centers)), slope, mu1, mu0, t)

    def no_change_bound(self, centers: np.ndarray, k: float = 3.0) -> float:
        """median + k · 1.4826 · MAD of the counted scores (at bin resolution).

        Args:
            centers: the bin centres.
            k: robust standard deviations above the median.

        Returns:
            The bound.
        """
        def weighted_median(values: np.ndarray) -> float:
            order = np.argsort(values, kind="stable")
            cumulative = np.cumsum(self.counts[order])
            return float(values[order][np.searchsorted(cumulative, cumulative[-1] / 2)])

        median = weighted_median(centers)
        return median + k * 1.4826 * weighted_median(np.abs(centers - median))
