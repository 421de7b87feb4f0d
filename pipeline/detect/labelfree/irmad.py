"""Iteratively reweighted multivariate alteration detection (IR-MAD) for two optical images.

Nielsen 2007, "The regularized iteratively reweighted MAD method for change detection in multi- and
hyperspectral data", IEEE TIP 16(2):463–478. Canonical correlation analysis of the two dates X (t1)
and Y (t2) gives pairs of projections a_iᵀX, b_iᵀY with unit variance and correlation ρ_i; the MAD
variates M_i = a_iᵀ(X − μ_X) − b_iᵀ(Y − μ_Y) have variance 2(1 − ρ_i), and for no-change pixels

    Z = Σ_i (M_i / σ_{M_i})²  ~  χ²(p).

Each iteration re-estimates the means and covariances with every pixel weighted by its chance of
no change, w = P(χ²(p) > Z), until the canonical correlations move by less than ``tol``. Each
iteration is one streamed pass over a regular lattice of the scene (every pixel on small scenes,
``max_samples`` at most on large ones); the score is √Z, the length of the standardised MAD vector
(monotone in Z; Z's χ² tail — a few pixels at 10⁴–10⁵ — would otherwise squeeze the no-change mode
into Otsu's first bins). Deliberate difference: no regularisation
(λ = 0), which the paper introduces for hyperspectral data with many correlated bands; a multispectral
scene's covariance is well conditioned.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import linalg
from scipy.stats import chi2

from pipeline.detect.labelfree.scene import PairScene
from pipeline.errors import GroupError


class CanonicalTransform:
    """Means, canonical vectors and MAD standard deviations of one IR-MAD iteration.

    Args:
        moments: (Σw, Σw·v, Σw·v·vᵀ) of the stacked band vectors v = [x; y], x with ``p`` bands.
        p: t1 band count.
    """

    def __init__(self, moments: tuple[float, np.ndarray, np.ndarray], p: int) -> None:
        total, s1, s2 = moments
        self.mean = s1 / total
        cov = s2 / total - np.outer(self.mean, self.mean)
        sxx, syy, sxy = cov[:p, :p], cov[p:, p:], cov[:p, p:]
        # Σxy Σyy⁻¹ Σyx a = ρ² Σxx a, a normalised to aᵀΣxx a = 1 (eigh's convention).
        rho2, a = linalg.eigh(sxy @ linalg.solve(syy, sxy.T, assume_a="pos"), sxx)
        self.rho = np.sqrt(np.clip(rho2, 0.0, 1.0))
        b = linalg.solve(syy, sxy.T @ a, assume_a="pos") / np.maximum(self.rho, 1e-12)
        self.a, self.b, self.p = a, b, p
        self.sigma = np.sqrt(np.maximum(2.0 * (1.0 - self.rho), 1e-12))

    def chi_square(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Z of pixels given as rows.

        Args:
            x: (n, p) t1 band vectors.
            y: (n, p) t2 band vectors.

        Returns:
            (n,) sums of squared standardised MAD variates.
        """
        mad = (x - self.mean[:self.p]) @ self.a - (y - self.mean[self.p:]) @ self.b
        return ((mad / self.sigma) ** 2).sum(axis=1)


def _pixels(block: np.ndarray) -> np.ndarray:
    """(bands, H, W) → (H·W, bands)."""
    return block.reshape(block.shape[0], -1).T


class IRMAD:
    """IR-MAD: the root of the chi-square of the standardised MAD variates as the change score (Nielsen 2007).

    Args:
        max_iterations: reweighting iterations at most (the paper's examples converge in 10–30).
        tol: stop when no canonical correlation moves by more than this.
        max_samples: pixels per fitting pass at most (a regular lattice of the scene).
    """

    name = "irmad"
    kind = "optical"
    halo = 0
    max_block = 4096
    block_multiple = 1

    def __init__(self, max_iterations: int = 30, tol: float = 1e-4, max_samples: int = 1_000_000) -> None:
        self.max_iterations, self.tol, self.max_samples = max_iterations, tol, max_samples
        self.transform: CanonicalTransform | None = None
        self.iterations = 0

    def _moments(self, scene: PairScene, stride: int, p: int) -> tuple[float, np.ndarray, np.ndarray]:
        """One pass: weighted moments of the lattice pixels valid at both dates."""
        total, s1, s2 = 0.0, np.zeros(2 * p), np.zeros((2 * p, 2 * p))
        size = stride * max(1, 1024 // stride)  # blocks aligned with the lattice
        for rect in scene.blocks(size):
            x, y = (_pixels(scene.read(role, rect)[:, ::stride, ::stride]) for role in scene.roles)
            keep = np.isfinite(x).all(axis=1) & np.isfinite(y).all(axis=1)
            x, y = x[keep], y[keep]
            w = np.ones(len(x)) if self.transform is None else chi2.sf(self.transform.chi_square(x, y), p)
            v = np.hstack([x, y])
            total += w.sum()
            s1 += w @ v
            s2 += (v * w[:, None]).T @ v
        return total, s1, s2

    def fit(self, scene: PairScene) -> None:
        """Iterate the weighted canonical correlation analysis to convergence, one pass per iteration.

        Args:
            scene: the optical pair.

        Raises:
            GroupError: different band counts, or too few valid pixels for the covariances.
        """
        with_bands = [scene.read(role, (0, 0, 1, 1)).shape[0] for role in scene.roles]
        if with_bands[0] != with_bands[1]:
            raise GroupError(scene.inputs.group, f"{' and '.join(scene.roles)} have {with_bands[0]} and "
                             f"{with_bands[1]} bands: IR-MAD compares the same bands at both dates")
        p = with_bands[0]
        stride = max(1, math.ceil(math.sqrt(scene.shape[0] * scene.shape[1] / self.max_samples)))
        self.transform, previous = None, None
        for self.iterations in range(1, self.max_iterations + 1):
            moments = self._moments(scene, stride, p)
            if moments[0] <= 2 * p:
                raise GroupError(scene.inputs.group, "too few pixels valid at both dates for IR-MAD")
            self.transform = CanonicalTransform(moments, p)
            if previous is not None and np.max(np.abs(self.transform.rho - previous)) < self.tol:
                break
            previous = self.transform.rho

    def score(self, t1: np.ndarray, t2: np.ndarray) -> np.ndarray:
        """Z of a block.

        Args:
            t1: (bands, H, W) t1 pixels, NaN = nodata.
            t2: (bands, H, W) t2 pixels, NaN = nodata.

        Returns:
            (H, W) √Z, NaN where either date is nodata.
        """
        z = self.transform.chi_square(_pixels(t1), _pixels(t2))
        return np.sqrt(z).reshape(t1.shape[1:])
