"""Nodata collars: the ragged, slanted no-data border of each synthetic image."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


class Collar:
    """An irregular nodata collar of about ``collar`` px: slanted edges with a ragged profile.

    Args:
        height: image rows.
        width: image columns.
        collar: mean collar width in pixels (0 or less: none).
        rng: the random generator of the profiles.
    """

    def __init__(self, height: int, width: int, collar: float, rng: np.random.Generator) -> None:
        self.height, self.width = height, width
        self.profiles = []
        for length in (width, width, height, height):  # top, bottom (along x); left, right (along y)
            if collar <= 0:
                self.profiles.append(np.zeros(length, np.float32))
                continue
            start, end = rng.uniform(0.4, 1.6, size=2) * collar
            slant = np.linspace(start, end, length, dtype=np.float32)
            coarse = ndimage.gaussian_filter1d(rng.standard_normal(length + 200), 25, mode="wrap")[100:-100]
            fine = ndimage.gaussian_filter1d(rng.standard_normal(length + 20), 1.5, mode="wrap")[10:-10]
            rag = 0.25 * collar * coarse / max(coarse.std(), 1e-6) + 2.0 * fine / max(fine.std(), 1e-6)
            self.profiles.append(np.maximum(slant + rag.astype(np.float32), 1.0))

    def valid(self, row0: int, col0: int, height: int, width: int) -> np.ndarray:
        """The valid-data mask of a window.

        Args:
            row0: first row of the window.
            col0: first column of the window.
            height: rows of the window.
            width: columns of the window.

        Returns:
            (height, width) bool, True inside the image and inside the collar.
        """
        top, bottom, left, right = self.profiles
        rows = np.arange(row0, row0 + height)
        cols = np.arange(col0, col0 + width)
        rin = (rows >= 0) & (rows < self.height)
        cin = (cols >= 0) & (cols < self.width)
        rc, cc = np.clip(rows, 0, self.height - 1), np.clip(cols, 0, self.width - 1)
        ok = rin[:, None] & cin[None, :]
        ok &= rows[:, None] >= top[cc][None, :]
        ok &= rows[:, None] <= self.height - 1 - bottom[cc][None, :]
        ok &= cols[None, :] >= left[rc][:, None]
        ok &= cols[None, :] <= self.width - 1 - right[rc][:, None]
        return ok
