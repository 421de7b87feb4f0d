"""The procedural ground: reflectance at t1 and t2 at any window of A's pixel grid.

The ground is a deterministic function of the position on A's pixel grid (and of the seed), so any
window of it can be rendered on its own and neighbouring windows agree. It mixes

- the CC0 Landsat texture (:mod:`pipeline.synthetic.textures`), cubic-upsampled and mirror-tiled, for
  the large scales;
- a brick pattern of field / block parcels with sharp edges and roads (mid scales);
- a periodic multi-octave noise tile (fine scales), so phase correlation has content at every scale;
- rectangular, optionally rotated buildings with shadows (:mod:`pipeline.synthetic.buildings`):
  unchanged ones, ones built between t1 and t2 (bright roofs in the optical t2, double bounce in
  the SAR) and demolished ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pipeline.synthetic.buildings import CELL, CELL_MARGIN, Building, cell_buildings, draw_building
from pipeline.synthetic.textures import cc0_zoomed, hash01, periodic_noise

_ROW_HEIGHT = 72  # parcel row height (A px)

# Endmember reflectances (blue, green, red, nir)
_VEG = np.array([0.030, 0.060, 0.040, 0.360], np.float32)
_SOIL = np.array([0.080, 0.120, 0.160, 0.220], np.float32)
_URBAN = np.array([0.100, 0.110, 0.120, 0.150], np.float32)
_ROAD = np.array([0.060, 0.068, 0.075, 0.090], np.float32)


@dataclass
class Render:
    """One rendered window of the ground, both dates."""

    t1: np.ndarray  # (4, h, w) float32 reflectance at t1
    t2: np.ndarray  # (4, h, w) float32 reflectance at t2
    change: np.ndarray  # (h, w) bool: footprints of new or demolished buildings
    sar_boost: np.ndarray  # (h, w) float32 SAR amplitude factor at t2 (double bounce, shadow)


class Ground:
    """Reflectance of the synthetic ground at t1 or t2, at any integer window of A's pixel grid.

    Args:
        seed: the group's seed; the ground is a pure function of it.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed
        rng = np.random.default_rng([seed, 1])
        texture = cc0_zoomed()
        texture = np.rot90(texture, k=int(rng.integers(4)), axes=(1, 2))
        if rng.random() < 0.5:
            texture = texture[:, :, ::-1]
        self.texture = np.ascontiguousarray(texture)
        self.texture_scale = float(rng.uniform(0.8, 1.25))  # texture px per A px
        self.texture_offset = rng.uniform(0, 2 * self.texture.shape[1], size=2)
        self.noise = periodic_noise(seed)
        self.noise_offset = rng.integers(0, self.noise.shape[1], size=2)
        self.wave = rng.uniform(0, 2 * np.pi, size=4)  # low-frequency brightness modulation
        self.wavelength = rng.uniform(1500, 4000, size=2)  # A px
        self.parcel_offset = rng.uniform(0, 10_000, size=2)
        self._buildings: dict[tuple[int, int], list[Building]] = {}

    # -- pieces ------------------------------------------------------------------------------------

    def _cc0(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Mirror-tiled, bilinear-sampled CC0 texture (3, h, w); separable."""
        n = self.texture.shape[1]
        period = 2 * (n - 1)

        def fold(coord: np.ndarray, offset: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            t = np.mod(coord * self.texture_scale + offset, period)
            t = np.where(t > n - 1, period - t, t)
            i0 = np.clip(np.floor(t).astype(np.int64), 0, n - 2)
            return i0, i0 + 1, (t - i0).astype(np.float32)

        r0, r1, fr = fold(rows.astype(np.float64), self.texture_offset[0])
        c0, c1, fc = fold(cols.astype(np.float64), self.texture_offset[1])
        tex = self.texture
        by_rows = tex[:, r0] * (1 - fr)[None, :, None] + tex[:, r1] * fr[None, :, None]
        return by_rows[:, :, c0] * (1 - fc) + by_rows[:, :, c1] * fc

    def _fine_noise(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        n = self.noise.shape[1]
        r = np.mod(rows + self.noise_offset[0], n)
        c = np.mod(cols + self.noise_offset[1], n)
        return self.noise[:, r[:, None], c[None, :]]

    def _parcels(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Brick pattern of parcels with per-parcel land cover, plus roads on some boundaries.

        Parcels are rows of ``_ROW_HEIGHT`` px cut into parcels of a per-row width, so parcel
        properties are computed once per (parcel row, column) and expanded to the window:
        returns (row -> parcel row index, properties of shape (parcel rows, width) or (height,)).
        """
        seed = self.seed
        y = rows.astype(np.float64) + self.parcel_offset[0]
        i = np.floor(y / _ROW_HEIGHT).astype(np.int64)
        bands, inverse = np.unique(i, return_inverse=True)
        width = 40.0 + 110.0 * hash01(seed, bands, 1).astype(np.float64)
        shift = hash01(seed, bands, 2) * width
        x = cols[None, :].astype(np.float64) + self.parcel_offset[1] + shift[:, None]
        j = np.floor(x / width[:, None]).astype(np.int64)
        lx = x - j * width[:, None]
        ii = bands[:, None]
        kind = hash01(seed, ii, j, 3)
        veg = hash01(seed, ii, j, 5)
        crop = kind < 0.45
        soil = (kind >= 0.45) & (kind < 0.60)
        urban = (kind >= 0.60) & (kind < 0.85)
        park = kind >= 0.85
        parcel = {
            "veg": np.select([crop, park, soil], [0.55 + 0.4 * veg, 0.45 + 0.3 * veg, 0.1 * veg],
                             0.12 * veg).astype(np.float32),
            "urban": np.where(urban, 0.75, 0.05).astype(np.float32),
            "bright": (0.85 + 0.3 * hash01(seed, ii, j, 4)).astype(np.float32),
            "harvest": crop & (hash01(seed, ii, j, 6) < 0.08),
            "road_v": (hash01(seed, ii, j, 8) < 0.3) & (lx < 2.5),
            "road_h": (hash01(seed, i, 7) < 0.35) & (y - i * _ROW_HEIGHT < 3.0),  # per row
        }
        return inverse, parcel

    def buildings(self, ci: int, cj: int) -> list[Building]:
        """The buildings of a cell (cached: neighbouring windows share cells).

        Args:
            ci: the cell's column.
            cj: the cell's row.

        Returns:
            The cell's buildings.
        """
        key = (ci, cj)
        if key not in self._buildings:
            if len(self._buildings) > 4096:
                self._buildings.clear()
            self._buildings[key] = cell_buildings(self.seed, ci, cj)
        return self._buildings[key]

    # -- rendering ---------------------------------------------------------------------------------

    def render(self, row0: int, col0: int, height: int, width: int) -> Render:
        """Both dates of the window rows [row0, row0+height), cols [col0, col0+width).

        The texture, parcels and brightness are shared by the two dates; they differ by the
        vegetation (season, harvested fields) and the buildings.

        Args:
            row0: first A row of the window (may be negative: the ground extends everywhere).
            col0: first A column of the window.
            height: rows of the window.
            width: columns of the window.

        Returns:
            The window's reflectance at t1 and t2, change mask and SAR boost.
        """
        f32 = np.float32
        rows = np.arange(row0, row0 + height, dtype=np.int64)
        cols = np.arange(col0, col0 + width, dtype=np.int64)
        cc0 = self._cc0(rows, cols)
        noise = self._fine_noise(rows, cols)
        inverse, parcel = self._parcels(rows, cols)
        bright = self._brightness(rows, cols, cc0, noise[0], parcel["bright"][inverse])
        road = parcel["road_v"][inverse]
        road |= parcel["road_h"][:, None]
        surface = _Surface(
            urban=parcel["urban"][inverse], bright=bright, road=road, road_texture=f32(1) + f32(0.05) * noise[0],
            colour=[f32(0.8) + f32(0.4) * cc0[2 - b] for b in range(3)],  # some CC0 colour
        )
        # vegetation fraction at t1; at t2 (June vs May) greener, some fields harvested
        veg1 = parcel["veg"][inverse]
        veg1 += f32(0.35) * (cc0[1] - cc0[0])
        veg1 += f32(0.05) * noise[1]
        del cc0, bright, road
        veg2 = veg1 * f32(1.08)
        np.copyto(veg2, f32(0.08), where=parcel["harvest"][inverse])
        t1 = surface.reflectance(veg1)
        t2 = surface.reflectance(veg2)
        t2[3] *= f32(1.03)  # NIR a little higher in June than in May
        del surface, veg1, veg2
        change, boost = self._draw_buildings(row0, col0, rows, cols, t1, t2, noise[1])
        return Render(t1, t2, change, boost)

    def _brightness(self, rows: np.ndarray, cols: np.ndarray, cc0: np.ndarray, noise: np.ndarray,
                    parcel_bright: np.ndarray) -> np.ndarray:
        """Brightness (h, w): CC0 lightness, parcel, low-frequency waves, fine noise."""
        f32 = np.float32
        ry = 2 * np.pi * rows / self.wavelength[0] + self.wave[0]
        cx = 2 * np.pi * cols / self.wavelength[1] + self.wave[1]
        dy, dx = 2 * np.pi * rows / 2900.0 + self.wave[2], 2 * np.pi * cols / 2900.0
        bright = cc0.mean(axis=0)
        bright *= f32(0.9)
        bright += f32(0.55)
        bright *= parcel_bright
        bright *= (f32(1) + (0.08 * np.sin(ry)).astype(f32)[:, None] * np.cos(cx).astype(f32)[None, :]
                   + (0.05 * np.sin(dy)).astype(f32)[:, None] * np.cos(dx).astype(f32)[None, :]
                   + (0.05 * np.cos(dy)).astype(f32)[:, None] * np.sin(dx).astype(f32)[None, :])
        bright *= f32(1) + f32(0.10) * noise
        return bright

    def _draw_buildings(self, row0: int, col0: int, rows: np.ndarray, cols: np.ndarray, t1: np.ndarray,
                        t2: np.ndarray, noise: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Draw every building reaching the window on t1 and t2; returns the change mask and SAR boost."""
        height, width = rows.size, cols.size
        change = np.zeros((height, width), bool)
        boost = np.ones((height, width), np.float32)
        # cells whose buildings (shadows included, up to ~CELL_MARGIN px out) reach the window
        reach = CELL_MARGIN + 8
        ci0, ci1 = math.floor((col0 - reach) / CELL), math.floor((col0 + width - 1 + reach) / CELL)
        cj0, cj1 = math.floor((row0 - reach) / CELL), math.floor((row0 + height - 1 + reach) / CELL)
        for ci in range(ci0, ci1 + 1):
            for cj in range(cj0, cj1 + 1):
                for b in self.buildings(ci, cj):
                    draw_building(b, rows, cols, t1, t2, change, boost, noise)
        return change, boost


@dataclass
class _Surface:
    """The land cover shared by both dates, mixed with a date's vegetation fraction into reflectance."""

    urban: np.ndarray  # urban fraction (h, w)
    bright: np.ndarray  # brightness (h, w)
    road: np.ndarray  # (h, w) bool
    road_texture: np.ndarray
    colour: list[np.ndarray]  # per visible band factor

    def reflectance(self, veg: np.ndarray) -> np.ndarray:
        """(4, h, w) float32 reflectance for the vegetation fraction ``veg`` (clipped in place)."""
        f32 = np.float32
        np.clip(veg, 0, 1, out=veg)
        urb = np.minimum(self.urban, 1 - veg)
        reflectance = np.empty((4, *veg.shape), f32)
        for b in range(4):
            band = reflectance[b]
            # veg * V + urb * U + (1 - veg - urb) * S
            np.multiply(veg, _VEG[b] - _SOIL[b], out=band)
            band += urb * (_URBAN[b] - _SOIL[b])
            band += _SOIL[b]
            if b < 3:
                band *= self.colour[b]
            band *= self.bright
            np.copyto(band, _ROAD[b] * self.road_texture, where=self.road)
        return reflectance
