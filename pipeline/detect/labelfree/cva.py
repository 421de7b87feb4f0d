"""Change vector analysis (CVA) on standardised bands, for two optical images of the same band layout.

Malila 1980, "Change vector analysis: an approach for detecting forest changes with Landsat", LARS
Symposia; magnitude-only CVA as in Bovolo & Bruzzone 2007, "A theoretical framework for
unsupervised change detection based on change vector analysis in the polar domain", IEEE TGRS
45(1). Each band of each date is standardised with its own scene-wide mean and standard deviation
(so a gain or offset between the dates is not change), and the score is the magnitude of the
difference vector ‖z₂ − z₁‖.
"""

from __future__ import annotations

import numpy as np

from pipeline.detect.labelfree.scene import PairScene
from pipeline.errors import GroupError


class BandMoments:
    """Per-band count, sum and sum of squares of valid pixels, accumulated block by block."""

    def __init__(self, bands: int) -> None:
        self.n = np.zeros(bands)
        self.s1 = np.zeros(bands)
        self.s2 = np.zeros(bands)

    def add(self, block: np.ndarray) -> None:
        """Count a (bands, H, W) block's finite pixels."""
        finite = np.isfinite(block)
        values = np.where(finite, block, 0.0)
        self.n += finite.sum(axis=(1, 2))
        self.s1 += values.sum(axis=(1, 2))
        self.s2 += (values * values).sum(axis=(1, 2))

    def mean_std(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-band mean and standard deviation (a constant band gets std 1: it carries no change)."""
        n = np.maximum(self.n, 1.0)
        mean = self.s1 / n
        std = np.sqrt(np.maximum(self.s2 / n - mean * mean, 0.0))
        return mean[:, None, None], np.where(std > 0, std, 1.0)[:, None, None]


def band_statistics(scene: PairScene, block_size: int = 1024) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per-band mean and std of each date over its valid pixels, from one streamed pass.

    Args:
        scene: the pair.
        block_size: block side of the pass.

    Returns:
        [(mean, std) of t1, (mean, std) of t2], each (bands, 1, 1).

    Raises:
        GroupError: the two images have different band counts.
    """
    moments: list[BandMoments] = []
    for rect in scene.blocks(block_size):
        for k, role in enumerate(scene.roles):
            block = scene.read(role, rect)
            if len(moments) <= k:
                moments.append(BandMoments(block.shape[0]))
            moments[k].add(block)
    counts = [len(m.n) for m in moments]
    if counts[0] != counts[1]:
        raise GroupError(scene.inputs.group, f"{' and '.join(scene.roles)} have {counts[0]} and {counts[1]} bands: "
                         "an optical method compares the same bands at both dates")
    return [m.mean_std() for m in moments]


class CVA:
    """Change vector analysis: ‖z₂ − z₁‖ of the per-date standardised band vectors.

    Reference: Bovolo & Bruzzone 2007, IEEE TGRS 45(1):218–236 (magnitude of the change vector, with
    the threshold on it chosen automatically; here Otsu's, :mod:`~pipeline.detect.labelfree.calibrate`).
    """

    name = "cva"
    kind = "optical"
    halo = 0
    max_block = 4096
    block_multiple = 1

    def __init__(self) -> None:
        self.stats: list[tuple[np.ndarray, np.ndarray]] = []

    def fit(self, scene: PairScene) -> None:
        """Per-band mean and std of each date (first pass).

        Args:
            scene: the optical pair.
        """
        self.stats = band_statistics(scene)

    def score(self, t1: np.ndarray, t2: np.ndarray) -> np.ndarray:
        """The change magnitude of a block.

        Args:
            t1: (bands, H, W) t1 pixels, NaN = nodata.
            t2: (bands, H, W) t2 pixels, NaN = nodata.

        Returns:
            (H, W) ‖z₂ − z₁‖, NaN where either date is nodata.
        """
        (m1, s1), (m2, s2) = self.stats
        difference = (t2 - m2) / s2 - (t1 - m1) / s1
        return np.sqrt((difference * difference).sum(axis=0))
