"""Heterogeneous (e.g. optical ↔ SAR) change by nonlocal patch similarity graphs (NPSG).

Sun, Lei, Li, Sun & Kuang 2021, "Nonlocal patch similarity based heterogeneous remote sensing change
detection", Pattern Recognition 109:107598 (code: github.com/yulisun/NPSG). The two images are never
compared directly: each image's own self-similarity structure is. For a target patch, its K most
similar patches within a search window form a graph in each image; where nothing changed, the
neighbours of a patch in image X are also close to it in image Y. With d_X, d_Y the patch distances
in each image, N_X, N_Y the K nearest candidates of the target in each image:

    f_X = | mean_{j ∈ N_Y} d_X(i, j) − mean_{j ∈ N_X} d_X(i, j) |   (Y's graph measured in X)
    f_Y = | mean_{j ∈ N_X} d_Y(i, j) − mean_{j ∈ N_Y} d_Y(i, j) |   (X's graph measured in Y)

Targets sit on a lattice of step ``target_step``; a pixel's forward / backward difference images are
the means of f_Y / f_X over the target patches covering it, and the score is their average (the
authors' code's fusion). Parameters are the authors' defaults (patch 5 × 5, search half-width 50 with
candidate step 5, target step 3, K = 35). Each image is min–max normalised over the scene (first
pass); SAR σ⁰ in dB (GF-3) is already the log transform the paper applies to SAR.

Windowed: a block is scored with a halo covering every candidate patch of every target patch that
touches it, on a target lattice fixed in scene coordinates, so blocks equal the whole-scene result.
Deliberate differences: patch distances are means over the pixel pairs valid at both positions (the
paper has no nodata), and candidates are those whose centre is valid in both images and inside the
scene (the code shifts edge patches inward instead).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from pipeline.detect.labelfree.scene import PairScene


class NPSG:
    """Nonlocal patch similarity graph change score of two images of any two sensors.

    Args:
        patch: patch half-width p (patch side 2p + 1).
        search: search window half-width.
        search_step: step between candidate patch centres.
        target_step: step between target patch centres (≤ 2p + 1 so every pixel is covered).
        k: neighbours per graph.
    """

    name = "npsg"
    kind = "heterogeneous"

    def __init__(self, patch: int = 2, search: int = 50, search_step: int = 5, target_step: int = 3,
                 k: int = 35) -> None:
        self.patch, self.step, self.k = patch, target_step, k
        reach = (search - patch) // search_step * search_step
        self.offsets = [(dy, dx) for dy in range(-reach, reach + 1, search_step)
                        for dx in range(-reach, reach + 1, search_step)]
        need = reach + 2 * patch  # covering target, its farthest candidate, that candidate's patch
        self.halo = -(-need // target_step) * target_step  # a multiple of the step: the lattice stays aligned
        self.block_multiple = target_step
        self.max_block = 170 * target_step  # ~0.3 GB of candidate distances per block
        self.ranges: list[tuple[float, float]] = []

    def fit(self, scene: PairScene) -> None:
        """Each image's min and max over its valid pixels (first pass), for min–max normalisation.

        Args:
            scene: the pair.
        """
        low, high = [np.inf, np.inf], [-np.inf, -np.inf]
        for rect in scene.blocks(1024):
            for k, role in enumerate(scene.roles):
                block = scene.read(role, rect)
                if np.isfinite(block).any():
                    low[k], high[k] = min(low[k], np.nanmin(block)), max(high[k], np.nanmax(block))
        self.ranges = [(lo, hi if hi > lo else lo + 1.0) for lo, hi in zip(low, high)]

    def _distances(self, image: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """Patch distances from each target to each candidate: (offsets, target rows, target cols), NaN invalid."""
        size, s = 2 * self.patch + 1, self.step
        h, w = valid.shape
        filled = np.where(valid, image, 0.0).astype(np.float32)
        out = np.full((len(self.offsets), len(range(0, h, s)), len(range(0, w, s))), np.nan, np.float32)
        for n, (dy, dx) in enumerate(self.offsets):
            shifted, both = np.zeros_like(filled), np.zeros(valid.shape, bool)
            src = (slice(max(dy, 0), h + min(dy, 0)), slice(max(dx, 0), w + min(dx, 0)))
            dst = (slice(max(-dy, 0), h + min(-dy, 0)), slice(max(-dx, 0), w + min(-dx, 0)))
            shifted[(slice(None), *dst)] = filled[(slice(None), *src)]
            both[dst] = valid[dst] & valid[src]
            squared = np.where(both, ((filled - shifted) ** 2).mean(axis=0), 0.0)
            # Box sums along rows, keep the lattice rows, then along columns: only targets are needed.
            sums, counts = (ndimage.uniform_filter1d(a, size, axis=0, mode="constant")[::s]
                            for a in (squared, both.astype(np.float32)))
            sums, counts = (ndimage.uniform_filter1d(a, size, axis=1, mode="constant")[:, ::s] for a in (sums, counts))
            centre = both[::s, ::s]  # the candidate's centre is valid in this image and the target's too
            out[n] = np.where(centre & (counts > 0), sums / np.maximum(counts, 1e-12), np.nan)
        return out

    def _structure_differences(self, dx: np.ndarray, dy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(f_X, f_Y) at the targets from the two images' candidate distances."""
        usable = np.isfinite(dx) & np.isfinite(dy)
        dx, dy = np.where(usable, dx, np.inf), np.where(usable, dy, np.inf)
        k_eff = np.minimum(self.k, usable.sum(axis=0))
        first_k = np.arange(self.k)[:, None, None] < k_eff
        rank_x, rank_y = np.argsort(dx, axis=0)[:self.k], np.argsort(dy, axis=0)[:self.k]

        def mean_k(values: np.ndarray, ranks: np.ndarray) -> np.ndarray:
            taken = np.take_along_axis(values, ranks, axis=0)
            return np.where(first_k, taken, 0.0).sum(axis=0) / np.maximum(k_eff, 1)

        f_x = np.abs(mean_k(dx, rank_y) - mean_k(dx, rank_x))
        f_y = np.abs(mean_k(dy, rank_x) - mean_k(dy, rank_y))
        return np.where(k_eff > 0, f_x, np.nan), np.where(k_eff > 0, f_y, np.nan)

    def _spread(self, f: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """Mean of target values over the target patches covering each pixel."""
        grid, weight = np.zeros(shape), np.zeros(shape)
        finite = np.isfinite(f)
        grid[::self.step, ::self.step] = np.where(finite, f, 0.0)
        weight[::self.step, ::self.step] = finite
        size = 2 * self.patch + 1
        total = ndimage.uniform_filter(grid, size, mode="constant")
        count = ndimage.uniform_filter(weight, size, mode="constant")
        return np.where(count > 1e-9, total / np.maximum(count, 1e-12), np.nan)

    def score(self, t1: np.ndarray, t2: np.ndarray) -> np.ndarray:
        """The fused NPSG difference image of a block with its halo.

        Args:
            t1: (bands, H, W) t1 pixels, NaN = nodata; the block origin minus the halo lies on the lattice.
            t2: (bands, H, W) t2 pixels of any sensor, NaN = nodata.

        Returns:
            (H, W) scores (valid on the block; the halo's own values are cut off by the driver).
        """
        images = [(image - lo) / (hi - lo) for image, (lo, hi) in zip((t1, t2), self.ranges)]
        valid = [np.isfinite(image).all(axis=0) for image in images]
        f_x, f_y = self._structure_differences(*(self._distances(im, v) for im, v in zip(images, valid)))
        fused = (self._spread(f_y, valid[0].shape) + self._spread(f_x, valid[0].shape)) / 2
        return np.where(valid[0] & valid[1], fused, np.nan)
