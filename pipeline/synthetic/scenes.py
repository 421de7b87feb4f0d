"""Synthetic scene groups for the demo and the tests, built on real imagery textures.

Two generators write GOLD-like scene groups (GF-2 optical t1 ``A``, GF-3 SAR t2 ``B``, Sentinel-2
optical t2 ``C`` and a change ``label``) as georeferenced GeoTIFFs with a known truth:

- :func:`write_synthetic_group` builds a small group (up to ~4000 px) in memory. Every image has its
  own grid (A: UTM 4 m, C: UTM 6 m on a shifted origin, B: geographic lon/lat at ~8 m), its own
  ragged nodata collar and a known misregistration against A.
- :func:`write_large_group` streams a big group (20000² px by default) block by block with windowed
  writes, for the benchmarks; memory stays bounded whatever the size.

The ground is procedural: a deterministic function of the position on A's pixel grid (and of the
seed), so any window of it can be rendered on its own and neighbouring windows agree. It mixes

- the CC0 Landsat image shipped with the package (``pipeline/synthetic/data/rgb_byte_cc0.tif``, rasterio's
  ``RGB.byte.tif``): its valid interior, cubic-upsampled and mirror-tiled, gives the large-scale
  texture;
- a brick pattern of field / block parcels with sharp edges and roads (mid scales);
- a periodic multi-octave noise tile (fine scales), so phase correlation has content at every scale;
- rectangular, optionally rotated buildings with shadows: unchanged ones, ones built between t1 and
  t2 (bright roofs in the optical t2, double bounce in the SAR) and demolished ones. The label marks
  the footprints of the built and demolished buildings, on A's grid.

Misregistration convention (``SyntheticGroup.true_shift_px``): for a role with shift (dx, dy), the
content of that image, placed on A's grid by its own georeferencing, appears at reference position
+ (dx, dy) A-pixels (x to the right/east, y down/south). The images are made that way: each output
pixel's claimed ground position is taken from its own CRS and transform, moved back by the shift,
and the true scene is sampled there (bilinear).
"""

from __future__ import annotations

import datetime as dt
import importlib.resources
import math
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import rasterio
import yaml
from pyproj import Transformer
from rasterio.crs import CRS
from rasterio.transform import Affine
from rasterio.warp import transform_bounds
from rasterio.windows import Window
from scipy import ndimage

# --------------------------------------------------------------------------------------------------
# SAR simulation


def simulate_sar_amplitude(
    optical: np.ndarray,
    *,
    looks: int = 4,
    rng: np.random.Generator,
    value_range: tuple[float, float] | None = None,
    gradient_scale: float | None = None,
) -> np.ndarray:
    """A GF-3-like speckled SAR amplitude image of the same ground as an optical image.

    SAR backscatter is not a monotone function of optical brightness: smooth dark surfaces (water,
    roads) are dark, vegetation is mid-grey, and edges and corners (buildings: double bounce) are
    bright. The reflectivity mixes an inverted, smoothed optical brightness with the local gradient
    magnitude, then multiplicative Gamma speckle with ``looks`` looks is applied to the intensity.
    Raw-intensity correlation with the optical image is therefore weak while the structure (edges)
    is shared, which is what a modality-robust co-registration must exploit.

    ``optical`` is (bands, H, W) or (H, W); returns float32 (H, W) amplitude. The brightness is
    stretched between the 1st and 99th percentiles of ``optical`` and the gradient divided by its
    99th percentile, unless ``value_range`` (lo, hi) and ``gradient_scale`` are given: give them
    when simulating a large image block by block so that the blocks agree.
    """
    image = np.asarray(optical, dtype=np.float32)
    if image.ndim == 3:
        image = image.mean(axis=0)
    lo, hi = np.percentile(image, (1, 99)) if value_range is None else value_range
    brightness = np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1)
    smooth = ndimage.gaussian_filter(brightness, 1.5)
    gradient = np.hypot(ndimage.sobel(smooth, axis=0), ndimage.sobel(smooth, axis=1))
    if gradient_scale is None:
        gradient_scale = float(np.percentile(gradient, 99))
    gradient /= max(gradient_scale, 1e-6)
    reflectivity = 0.15 + 0.5 * (1.0 - smooth) ** 2 + 1.5 * np.clip(gradient, 0, 2) ** 2
    speckle = rng.gamma(shape=looks, scale=1.0 / looks, size=reflectivity.shape)
    return np.sqrt(reflectivity * speckle).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# Constants of the synthetic groups

BAND_NAMES = ("blue", "green", "red", "nir")
S2_BAND_NAMES = ("B02", "B03", "B04", "B08")
UTM_EPSG = 32650  # WGS 84 / UTM zone 50N (eastern China)
ORIGIN = (517_200.0, 3_531_600.0)  # top-left corner of A, near Hefei (31.9 N, 117.2 E)
A_RES = 4.0  # GF-2 multispectral, m
C_RES = 6.0  # Sentinel-2-like optical t2, m (coarser than A, on an origin that is not A's)
B_RES_M = 8.0  # GF-3 geocoded SAR, ~m (on a lon/lat grid)
DATES = {"A": dt.date(2019, 5, 1), "C": dt.date(2021, 6, 15), "B": dt.date(2021, 6, 16)}
DATES["label"] = DATES["B"]
SENSORS = {"A": "gf2", "B": "gf3", "C": "s2", "label": "generic"}
SIGMA0_CALIBRATION = 0.08  # sigma0 (linear) = calibration * amplitude**2

CELL = 256  # building cell (A px): each cell's buildings stay inside it, shadows included
_CELL_MARGIN = 40
_ROW_HEIGHT = 72  # parcel row height (A px)

# Endmember reflectances (blue, green, red, nir)
_VEG = np.array([0.030, 0.060, 0.040, 0.360], np.float32)
_SOIL = np.array([0.080, 0.120, 0.160, 0.220], np.float32)
_URBAN = np.array([0.100, 0.110, 0.120, 0.150], np.float32)
_ROAD = np.array([0.060, 0.068, 0.075, 0.090], np.float32)
_RUBBLE = np.array([0.130, 0.150, 0.180, 0.210], np.float32)
_ROOFS = np.array(
    [
        [0.200, 0.210, 0.220, 0.240],  # concrete
        [0.240, 0.170, 0.100, 0.130],  # blue steel sheet
        [0.090, 0.100, 0.190, 0.220],  # red tiles
        [0.340, 0.350, 0.360, 0.370],  # white membrane
    ],
    np.float32,
)
_ROOF_P = (0.4, 0.3, 0.1, 0.2)
# GF-2 DN = offset + gain * reflectance (10-bit-like values, ~100-1300)
_GF2_OFFSET = 60.0
_GF2_GAIN = np.array([2900.0, 2700.0, 2600.0, 2300.0], np.float32)
# Sentinel-2 L2A-like: reflectance x 10000, with a residual haze and per-band gain
_S2_GAIN = np.array([0.96, 0.98, 1.00, 1.03], np.float32)
_S2_HAZE = np.array([0.012, 0.008, 0.004, 0.002], np.float32)


@dataclass(frozen=True)
class SyntheticGroup:
    """A written synthetic scene group and its truth."""

    root: Path
    paths: dict[str, Path]  # role ("A", "B", "C", "label") -> GeoTIFF path
    scene_list: Path  # YAML scene list usable as a `changeflow prepare` config
    true_shift_px: dict[str, tuple[float, float]]  # role -> (dx, dy) in A pixels (see module doc)
    change_fraction: float  # changed pixels / labelled (not 255) pixels of the label


# --------------------------------------------------------------------------------------------------
# Deterministic hashing (procedural ground)

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint64(30))
    h = h * _M1
    h = h ^ (h >> np.uint64(27))
    h = h * _M2
    return h ^ (h >> np.uint64(31))


def _hash01(seed: int, *keys: np.ndarray | int) -> np.ndarray:
    """A uniform [0, 1) float32 per element, a pure function of (seed, keys); broadcasts keys."""
    h = np.atleast_1d(np.asarray(seed, np.int64)).astype(np.uint64) * _GOLDEN
    for key in keys:
        k = np.atleast_1d(np.asarray(key, np.int64)).astype(np.uint64)
        h = _mix((h ^ k) + _GOLDEN)
    return ((h >> np.uint64(40)).astype(np.float32)) * np.float32(1.0 / (1 << 24))


# --------------------------------------------------------------------------------------------------
# Texture sources


def cc0_texture_path() -> Path:
    """The CC0 Landsat RGB image shipped in the package."""
    return Path(str(importlib.resources.files("pipeline.synthetic") / "data" / "rgb_byte_cc0.tif"))


@lru_cache(maxsize=1)
def _cc0_interior() -> np.ndarray:
    """The valid interior of the CC0 image as (3, H, W) float32 in [0, 1].

    The scene is tilted inside a black collar; the crop is the largest axis-aligned square inside
    its footprint (holes of black water pixels filled in), found once and checked here.
    """
    row, col, side = 96, 136, 514
    with rasterio.open(cc0_texture_path()) as ds:
        data = ds.read().astype(np.float32)
        mask = ds.dataset_mask() > 0
    footprint = ndimage.binary_fill_holes(mask)
    if not footprint[row : row + side, col : col + side].all():  # pragma: no cover - data file changed
        raise RuntimeError(f"{cc0_texture_path()}: the texture crop is not inside the valid area")
    data = data[:, row : row + side, col : col + side]
    holes = ~mask[row : row + side, col : col + side]
    if holes.any():  # fill the few black pixels inside with a normalised-convolution mean
        weight = ndimage.gaussian_filter((~holes).astype(np.float32), 3)
        for band in data:
            filled = ndimage.gaussian_filter(np.where(holes, 0, band), 3) / np.maximum(weight, 1e-6)
            band[holes] = filled[holes]
    for band in data:
        lo, hi = np.percentile(band, (1, 99.5))
        band[...] = np.clip((band - lo) / (hi - lo), 0, 1)
    return data


@lru_cache(maxsize=1)
def _cc0_zoomed() -> np.ndarray:
    """The CC0 interior upsampled x3 (cubic spline), (3, 1542, 1542) float32; computed once."""
    return np.stack([ndimage.zoom(band, 3, order=3) for band in _cc0_interior()])


def _periodic_noise(seed: int, size: int = 1024) -> np.ndarray:
    """A periodic multi-octave noise tile (2, size, size), zero mean, unit-ish std per channel."""
    rng = np.random.default_rng([seed, 9001])
    tiles = []
    for _ in range(2):
        white = rng.standard_normal((size, size)).astype(np.float32)
        tile = np.zeros_like(white)
        for sigma, weight in ((0.6, 0.8), (1.5, 1.0), (3.0, 1.0), (7.0, 0.8), (16.0, 0.6)):
            octave = ndimage.gaussian_filter(white, sigma, mode="wrap")
            tile += weight * octave / octave.std()
        tiles.append(tile / tile.std())
    return np.stack(tiles)


# --------------------------------------------------------------------------------------------------
# Buildings


@dataclass(frozen=True)
class _Building:
    cx: float
    cy: float
    half_w: float
    half_h: float
    angle: float
    kind: str  # "keep" (both dates), "new" (t2 only), "gone" (t1 only)
    roof: int
    shadow: tuple[float, float]  # optical shadow vector (A px)
    radar_shadow: float  # SAR shadow length to the east (A px)


def _cell_buildings(seed: int, ci: int, cj: int) -> list[_Building]:
    """The buildings of one CELL x CELL cell, centred at least _CELL_MARGIN px inside it."""
    rng = np.random.default_rng([seed, 4242, ci + (1 << 20), cj + (1 << 20)])
    intensity = rng.gamma(4.0, 0.25)  # urbanisation varies from cell to cell, mean 1
    counts = {"new": rng.poisson(2.4 * intensity), "gone": rng.poisson(0.7 * intensity),
              "keep": rng.poisson(4.0 * intensity)}
    sizes = {"new": (6.0, 22.0), "gone": (5.0, 15.0), "keep": (4.0, 12.0)}
    placed: list[tuple[float, float, float, float]] = []
    buildings = []
    for kind in ("new", "gone", "keep"):
        for _ in range(counts[kind]):
            half_w, half_h = rng.uniform(*sizes[kind], size=2)
            angle = float(rng.uniform(-0.4, 0.4)) if rng.random() < 0.6 else 0.0
            height = rng.uniform(3.0, 12.0)
            roof = int(rng.choice(len(_ROOFS), p=_ROOF_P))
            radius = math.hypot(half_w, half_h)
            for _try in range(20):
                cx = ci * CELL + rng.uniform(_CELL_MARGIN, CELL - _CELL_MARGIN)
                cy = cj * CELL + rng.uniform(_CELL_MARGIN, CELL - _CELL_MARGIN)
                cx, cy = float(cx), float(cy)
                box = (cx - radius - 3, cy - radius - 3, cx + radius + 3, cy + radius + 3)
                if all(box[2] < p[0] or p[2] < box[0] or box[3] < p[1] or p[3] < box[1] for p in placed):
                    placed.append(box)
                    buildings.append(
                        _Building(cx, cy, float(half_w), float(half_h), angle, kind, roof,
                                  (-0.35 * height, -0.8 * height), 0.7 * height)
                    )
                    break
    return buildings


def _coverage(b: _Building, ys: np.ndarray, xs: np.ndarray, dx: float = 0.0, dy: float = 0.0) -> np.ndarray:
    """Approximate area coverage (0..1) of building ``b`` moved by (dx, dy) on the grid ys x xs."""
    cos, sin = math.cos(b.angle), math.sin(b.angle)
    ox = (xs - (b.cx + dx))[None, :]
    oy = (ys - (b.cy + dy))[:, None]
    u = ox * cos + oy * sin
    v = oy * cos - ox * sin
    return np.clip(b.half_w + 0.5 - np.abs(u), 0, 1) * np.clip(b.half_h + 0.5 - np.abs(v), 0, 1)


def _sweep(b: _Building, ys: np.ndarray, xs: np.ndarray, vx: float, vy: float) -> np.ndarray:
    """Coverage of the footprint swept along (vx, vy): a cast shadow, footprint included."""
    steps = max(1, int(math.ceil(math.hypot(vx, vy) / 1.5)))
    out = np.zeros((ys.size, xs.size), np.float32)
    for k in range(1, steps + 1):
        np.maximum(out, _coverage(b, ys, xs, vx * k / steps, vy * k / steps), out=out)
    return out


# --------------------------------------------------------------------------------------------------
# The procedural ground


@dataclass
class _Render:
    t1: np.ndarray  # (4, h, w) float32 reflectance at t1
    t2: np.ndarray  # (4, h, w) float32 reflectance at t2
    change: np.ndarray  # (h, w) bool: footprints of new or demolished buildings
    sar_boost: np.ndarray  # (h, w) float32 SAR amplitude factor at t2 (double bounce, shadow)


class _Ground:
    """Reflectance of the synthetic ground at t1 or t2, at any integer window of A's pixel grid."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        rng = np.random.default_rng([seed, 1])
        texture = _cc0_zoomed()
        texture = np.rot90(texture, k=int(rng.integers(4)), axes=(1, 2))
        if rng.random() < 0.5:
            texture = texture[:, :, ::-1]
        self.texture = np.ascontiguousarray(texture)
        self.texture_scale = float(rng.uniform(0.8, 1.25))  # texture px per A px
        self.texture_offset = rng.uniform(0, 2 * self.texture.shape[1], size=2)
        self.noise = _periodic_noise(seed)
        self.noise_offset = rng.integers(0, self.noise.shape[1], size=2)
        self.wave = rng.uniform(0, 2 * np.pi, size=4)  # low-frequency brightness modulation
        self.wavelength = rng.uniform(1500, 4000, size=2)  # A px
        self.parcel_offset = rng.uniform(0, 10_000, size=2)
        self._buildings: dict[tuple[int, int], list[_Building]] = {}

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
        width = 40.0 + 110.0 * _hash01(seed, bands, 1).astype(np.float64)
        shift = _hash01(seed, bands, 2) * width
        x = cols[None, :].astype(np.float64) + self.parcel_offset[1] + shift[:, None]
        j = np.floor(x / width[:, None]).astype(np.int64)
        lx = x - j * width[:, None]
        ii = bands[:, None]
        kind = _hash01(seed, ii, j, 3)
        veg = _hash01(seed, ii, j, 5)
        crop = kind < 0.45
        soil = (kind >= 0.45) & (kind < 0.60)
        urban = (kind >= 0.60) & (kind < 0.85)
        park = kind >= 0.85
        parcel = {
            "veg": np.select([crop, park, soil], [0.55 + 0.4 * veg, 0.45 + 0.3 * veg, 0.1 * veg],
                             0.12 * veg).astype(np.float32),
            "urban": np.where(urban, 0.75, 0.05).astype(np.float32),
            "bright": (0.85 + 0.3 * _hash01(seed, ii, j, 4)).astype(np.float32),
            "harvest": crop & (_hash01(seed, ii, j, 6) < 0.08),
            "road_v": (_hash01(seed, ii, j, 8) < 0.3) & (lx < 2.5),
            "road_h": (_hash01(seed, i, 7) < 0.35) & (y - i * _ROW_HEIGHT < 3.0),  # per row
        }
        return inverse, parcel

    def buildings(self, ci: int, cj: int) -> list[_Building]:
        key = (ci, cj)
        if key not in self._buildings:
            if len(self._buildings) > 4096:
                self._buildings.clear()
            self._buildings[key] = _cell_buildings(self.seed, ci, cj)
        return self._buildings[key]

    # -- rendering ---------------------------------------------------------------------------------

    def render(self, row0: int, col0: int, height: int, width: int) -> _Render:
        """Both dates of the window rows [row0, row0+height), cols [col0, col0+width).

        The texture, parcels and brightness are shared by the two dates; they differ by the
        vegetation (season, harvested fields) and the buildings.
        """
        f32 = np.float32
        rows = np.arange(row0, row0 + height, dtype=np.int64)
        cols = np.arange(col0, col0 + width, dtype=np.int64)
        cc0 = self._cc0(rows, cols)
        noise = self._fine_noise(rows, cols)
        inverse, parcel = self._parcels(rows, cols)

        # brightness: CC0 lightness, parcel, low-frequency waves, fine noise
        ry = 2 * np.pi * rows / self.wavelength[0] + self.wave[0]
        cx = 2 * np.pi * cols / self.wavelength[1] + self.wave[1]
        dy, dx = 2 * np.pi * rows / 2900.0 + self.wave[2], 2 * np.pi * cols / 2900.0
        bright = cc0.mean(axis=0)
        bright *= f32(0.9)
        bright += f32(0.55)
        bright *= parcel["bright"][inverse]
        bright *= (f32(1) + (0.08 * np.sin(ry)).astype(f32)[:, None] * np.cos(cx).astype(f32)[None, :]
                   + (0.05 * np.sin(dy)).astype(f32)[:, None] * np.cos(dx).astype(f32)[None, :]
                   + (0.05 * np.cos(dy)).astype(f32)[:, None] * np.sin(dx).astype(f32)[None, :])
        bright *= f32(1) + f32(0.10) * noise[0]
        road = parcel["road_v"][inverse]
        road |= parcel["road_h"][:, None]
        road_texture = f32(1) + f32(0.05) * noise[0]
        colour = [f32(0.8) + f32(0.4) * cc0[2 - b] for b in range(3)]  # some CC0 colour
        # vegetation fraction at t1; at t2 (June vs May) greener, some fields harvested
        veg1 = parcel["veg"][inverse]
        veg1 += f32(0.35) * (cc0[1] - cc0[0])
        veg1 += f32(0.05) * noise[1]
        del cc0
        veg2 = veg1 * f32(1.08)
        np.copyto(veg2, f32(0.08), where=parcel["harvest"][inverse])
        urban = parcel["urban"][inverse]

        dates = []
        for veg, t2 in ((veg1, False), (veg2, True)):
            np.clip(veg, 0, 1, out=veg)
            urb = np.minimum(urban, 1 - veg)
            reflectance = np.empty((4, height, width), f32)
            for b in range(4):
                band = reflectance[b]
                # veg * V + urb * U + (1 - veg - urb) * S
                np.multiply(veg, _VEG[b] - _SOIL[b], out=band)
                band += urb * (_URBAN[b] - _SOIL[b])
                band += _SOIL[b]
                if b < 3:
                    band *= colour[b]
                band *= bright
                np.copyto(band, _ROAD[b] * road_texture, where=road)
            if t2:
                reflectance[3] *= f32(1.03)  # NIR a little higher in June than in May
            dates.append(reflectance)
            del urb
        del veg1, veg2, urban, bright, road, road_texture, colour

        t1, t2 = dates
        change = np.zeros((height, width), bool)
        boost = np.ones((height, width), f32)
        # cells whose buildings (shadows included, up to ~_CELL_MARGIN px out) reach the window
        reach = _CELL_MARGIN + 8
        ci0, ci1 = math.floor((col0 - reach) / CELL), math.floor((col0 + width - 1 + reach) / CELL)
        cj0, cj1 = math.floor((row0 - reach) / CELL), math.floor((row0 + height - 1 + reach) / CELL)
        for ci in range(ci0, ci1 + 1):
            for cj in range(cj0, cj1 + 1):
                for b in self.buildings(ci, cj):
                    _draw(b, rows, cols, t1, t2, change, boost, noise[1])
        return _Render(t1, t2, change, boost)


def _draw(b: _Building, rows, cols, t1, t2, change, boost, noise) -> None:
    """Draw a building (roof, optical shadow; SAR double bounce and shadow at t2) on both dates."""
    reach = math.hypot(b.half_w, b.half_h) + max(abs(b.shadow[0]), abs(b.shadow[1]), b.radar_shadow) + 3
    r0, r1 = np.searchsorted(rows, [b.cy - reach, b.cy + reach])
    c0, c1 = np.searchsorted(cols, [b.cx - reach, b.cx + reach])
    if r0 >= r1 or c0 >= c1:
        return
    ys = rows[r0:r1].astype(np.float64)
    xs = cols[c0:c1].astype(np.float64)
    window = (slice(None), slice(r0, r1), slice(c0, c1))
    cover = _coverage(b, ys, xs).astype(np.float32)
    local_noise = noise[window[1:]]
    if b.kind in ("new", "gone"):
        change[window[1:]] |= cover >= 0.5
    shadow = np.clip(_sweep(b, ys, xs, *b.shadow) - cover, 0, 1)
    roof = _ROOFS[b.roof][:, None, None] * (1 + 0.04 * local_noise)[None]
    for image, present in ((t1, b.kind != "new"), (t2, b.kind != "gone")):
        area = image[window]
        if present:
            area *= 1 - 0.65 * shadow[None]
            area[...] = area * (1 - cover[None]) + roof * cover[None]
        elif image is t2:  # demolished: rubble
            rubble = _RUBBLE[:, None, None] * (1 + 0.15 * local_noise)[None]
            area[...] = area * (1 - cover[None]) + rubble * cover[None]
    if b.kind != "gone":
        # SAR at t2: double bounce along the sensor-facing (west) wall, centred on the footprint
        # edge; radar shadow behind the building (east)
        wall = np.clip(_coverage(b, ys, xs, dx=-1.0) - _coverage(b, ys, xs, dx=1.0), 0, 1)
        radar_shadow = np.clip(_sweep(b, ys, xs, b.radar_shadow, 0.0) - cover, 0, 1)
        factor = (1 + 4.0 * wall) * (1 + 0.6 * cover) * (1 - 0.5 * radar_shadow)
        boost[window[1:]] *= factor.astype(np.float32)


# --------------------------------------------------------------------------------------------------
# Nodata collars


class _Collar:
    """An irregular nodata collar of about ``collar`` px: slanted edges with a ragged profile."""

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


# --------------------------------------------------------------------------------------------------
# Radiometry


def _sensor_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Zero-mean float32 noise of standard deviation ``sigma``: the sum of two uniform bytes
    (triangular, close enough to Gaussian for sensor noise and ~5x cheaper to draw)."""
    count = int(np.prod(shape))
    pair = np.frombuffer(rng.bytes(2 * count), np.uint8).reshape(2, *shape)
    noise = np.add(pair[0], pair[1], dtype=np.int16)
    noise -= 255
    return noise.astype(np.float32) * np.float32(sigma / math.sqrt(2 * (256**2 - 1) / 12))


def _to_dn(reflectance: np.ndarray, valid: np.ndarray, rng: np.random.Generator, *,
           gain: np.ndarray, offset: np.ndarray, noise: float) -> np.ndarray:
    """uint16 DN = offset + gain * reflectance + Gaussian noise, >= 1 on valid pixels, 0 elsewhere."""
    dn = np.empty(reflectance.shape, np.uint16)
    invalid = ~valid
    for b in range(reflectance.shape[0]):
        band = _sensor_noise(rng, reflectance.shape[1:], noise)
        band += np.float32(gain[b]) * reflectance[b]
        band += np.float32(offset[b])
        np.rint(band, out=band)
        np.clip(band, 1, 65535, out=band)
        band[invalid] = 0
        dn[b] = band
    return dn


def _gf2_dn(reflectance: np.ndarray, valid: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """GF-2-like DN (~100-1300) from reflectance."""
    offset = np.full(4, _GF2_OFFSET, np.float32)
    return _to_dn(reflectance, valid, rng, gain=_GF2_GAIN, offset=offset, noise=4.0)


def _s2_dn(reflectance: np.ndarray, valid: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Sentinel-2 L2A-like reflectance x 10000, with a residual haze and per-band gains."""
    return _to_dn(reflectance, valid, rng, gain=10000.0 * _S2_GAIN, offset=10000.0 * _S2_HAZE, noise=15.0)


def _sigma0_db(amplitude: np.ndarray, valid: np.ndarray) -> np.ndarray:
    intensity = SIGMA0_CALIBRATION * amplitude.astype(np.float32) ** 2
    db = 10.0 * np.log10(np.maximum(intensity, 1e-4))
    return np.where(valid, db, np.nan).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# Writing


def _profile(role: str, *, width: int, height: int, crs: CRS, transform: Affine, tile: int,
             compress: str | None = "deflate", zlevel: int = 1) -> dict:
    dtype, count, nodata, predictor = {
        "A": ("uint16", 4, 0, 2),
        "C": ("uint16", 4, 0, 2),
        "B": ("float32", 1, float("nan"), 3),
        "label": ("uint8", 1, 255, 2),
    }[role]
    profile = dict(driver="GTiff", width=width, height=height, count=count, dtype=dtype, crs=crs,
                   transform=transform, nodata=nodata, tiled=True, blockxsize=tile, blockysize=tile,
                   interleave="pixel" if count > 1 else "band")
    if compress:
        profile.update(compress=compress, predictor=predictor)
        if compress == "deflate":
            profile["zlevel"] = zlevel
    return profile


def _describe(dst, role: str, name: str) -> None:
    date = DATES[role]
    dst.update_tags(
        TIFFTAG_DATETIME=f"{date:%Y:%m:%d} 03:00:00",
        ACQUISITION_DATE=date.isoformat(),
        SENSOR=SENSORS[role],
        ROLE=role,
        GROUP=name,
        SYNTHETIC="changeflow.pipeline.synthetic.scenes (textures: CC0 Landsat rgb_byte_cc0.tif)",
    )
    if role == "A":
        dst.descriptions = BAND_NAMES
        dst.update_tags(UNITS="DN (GF-2 PMS MSS-like)")
    elif role == "C":
        dst.descriptions = S2_BAND_NAMES
        dst.update_tags(UNITS="surface reflectance x 10000 (Sentinel-2 L2A-like)")
    elif role == "B":
        dst.descriptions = ("sigma0_db",)
        dst.update_tags(UNITS="sigma0 dB (GF-3-like, geocoded)")
    else:
        dst.descriptions = ("change",)
        dst.update_tags(VALUES="0 no change, 1 change, 255 ignore (outside the common valid area)")


def _tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.stem}.tmp{path.suffix}")


def _write_scene_list(root: Path, name: str, paths: dict[str, Path]) -> Path:
    bands = {"A": 4, "C": 4, "B": 1, "label": 1}
    scenes = [
        {"path": paths[role].name, "sensor": SENSORS[role], "role": role,
         "date": DATES[role], "group": name, "bands": bands[role]}
        for role in ("A", "C", "B", "label")
    ]
    path = root / f"{name}_scenes.yaml"
    tmp = _tmp_path(path)
    tmp.write_text(
        "# Synthetic scene group written by pipeline.synthetic.scenes; usable as a `changeflow prepare` config.\n"
        + yaml.safe_dump({"scenes": scenes}, sort_keys=False)
    )
    os.replace(tmp, path)
    return path


def _role_paths(root: Path, name: str) -> dict[str, Path]:
    return {role: root / f"{name}_{role}.tif" for role in ("A", "B", "C", "label")}


# --------------------------------------------------------------------------------------------------
# Small groups, in memory


def _sample(image: np.ndarray, rows: np.ndarray, cols: np.ndarray, *, strip: int = 512) -> np.ndarray:
    """Bilinear samples of a 2-D array at fractional (rows, cols), strip by strip."""
    out = np.empty(rows.shape, np.float32)
    for s in range(0, rows.shape[0], strip):
        coords = np.stack([rows[s : s + strip], cols[s : s + strip]])
        out[s : s + strip] = ndimage.map_coordinates(image, coords, order=1, mode="nearest")
    return out


def write_synthetic_group(
    root: Path,
    *,
    name: str = "demo",
    size: int = 1536,
    seed: int = 0,
    shift_b: tuple[float, float] = (2.6, -3.4),
    shift_c: tuple[float, float] = (0.35, -0.45),
    collar: int = 40,
) -> SyntheticGroup:
    """Write a GOLD-like scene group with a known misregistration and change label.

    Files (in ``root``, named ``{name}_{role}.tif``, deflate-compressed tiled GeoTIFFs):

    - ``A``: GF-2-like optical t1, 4 bands (blue, green, red, nir) uint16 DN (~100-1300, NIR high
      on vegetation), EPSG:32650, 4 m, size x size, nodata 0 with a ragged slanted collar of about
      ``collar`` px. The geometric reference (shift 0).
    - ``C``: Sentinel-2-like optical t2, 4 bands uint16 reflectance x 10000, EPSG:32650, 6 m, on an
      origin offset from A's pixel edges; content shifted by ``shift_c`` A-px; own collar; nodata 0.
    - ``B``: GF-3-like SAR t2, 1 band float32 sigma0 in dB (speckled, double bounce on buildings),
      EPSG:4326 at ~8 m (lon/lat steps), content shifted by ``shift_b`` A-px; nodata NaN.
    - ``label``: uint8 on A's grid, 0 no change, 1 change (built or demolished buildings), 255
      outside the area valid in A, B and C (nodata 255).

    plus ``{name}_scenes.yaml``, a scene list with sensors, roles, dates and the group.
    The same arguments give byte-identical files.

    Everything is built in memory: the true t1 and t2 scenes on A's grid plus a margin (2 x 4 bands
    float32), the resampling coordinates and the outputs, about 70 bytes per A pixel on top of
    ~200 MB of libraries and textures (measured peak RSS 1.3 GB and ~20 s at 4000 px). Fine up to
    ~4000 px; use :func:`write_large_group` beyond that.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    paths = _role_paths(root, name)
    crs_utm = CRS.from_epsg(UTM_EPSG)
    crs_geo = CRS.from_epsg(4326)
    x0, y0 = ORIGIN
    transform_a = Affine(A_RES, 0, x0, 0, -A_RES, y0)
    extent = size * A_RES
    def rng(role: str, purpose: int) -> np.random.Generator:
        """An independent random stream per (role, purpose): collar 0, noise 1."""
        return np.random.default_rng([seed, 2, "ABC".index(role), purpose])

    ground = _Ground(seed)

    # Grids of C (UTM, 6 m, origin off A's pixel edges) and B (lon/lat, ~8 m)
    margin = 2 * C_RES
    cx0 = math.floor((x0 - margin) / C_RES) * C_RES + 1.0  # 2.75 A px west of A's origin
    cy0 = math.ceil((y0 + margin) / C_RES) * C_RES - 2.0  # 2.5 A px north of it
    c_width = math.ceil((x0 + extent + margin - cx0) / C_RES)
    c_height = math.ceil((cy0 - (y0 - extent - margin)) / C_RES)
    transform_c = Affine(C_RES, 0, cx0, 0, -C_RES, cy0)

    west, south, east, north = transform_bounds(
        crs_utm, crs_geo, x0, y0 - extent, x0 + extent, y0, densify_pts=21
    )
    lat_c = 0.5 * (south + north)
    dlat = round(B_RES_M / 111_320.0, 9)
    dlon = round(B_RES_M / (111_320.0 * math.cos(math.radians(lat_c))), 9)
    bx0, by0 = west - 2 * dlon, north + 2 * dlat
    b_width = math.ceil((east + 2 * dlon - bx0) / dlon)
    b_height = math.ceil((by0 - (south - 2 * dlat)) / dlat)
    transform_b = Affine(dlon, 0, bx0, 0, -dlat, by0)
    to_utm = Transformer.from_crs(crs_geo, crs_utm, always_xy=True)
    to_geo = Transformer.from_crs(crs_utm, crs_geo, always_xy=True)

    def a_pixel(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Ground (UTM) -> fractional A (row, col) of pixel centres."""
        return (y0 - y) / A_RES - 0.5, (x - x0) / A_RES - 0.5

    # Where C and B pixels sample the true scene: claimed position minus the misregistration
    c_rows1, _ = a_pixel(np.zeros(1), cy0 - (np.arange(c_height) + 0.5) * C_RES)
    _, c_cols1 = a_pixel(cx0 + (np.arange(c_width) + 0.5) * C_RES, np.zeros(1))
    c_rows = np.broadcast_to((c_rows1 - shift_c[1])[:, None], (c_height, c_width))
    c_cols = np.broadcast_to((c_cols1 - shift_c[0])[None, :], (c_height, c_width))
    lon = bx0 + (np.arange(b_width) + 0.5) * dlon
    lat = by0 - (np.arange(b_height) + 0.5) * dlat
    bx, by = to_utm.transform(*np.meshgrid(lon, lat))
    b_rows, b_cols = a_pixel(bx, by)
    del bx, by
    b_rows -= shift_b[1]
    b_cols -= shift_b[0]

    # The true scenes on A's grid plus a margin covering every sample position
    need = max(
        1.0,
        -float(min(c_rows.min(), c_cols.min(), b_rows.min(), b_cols.min())),
        float(max(c_rows.max(), c_cols.max(), b_rows.max(), b_cols.max())) - (size - 1),
    )
    pad = int(math.ceil(need)) + 4
    full = size + 2 * pad
    t1 = np.empty((4, full, full), np.float32)
    t2 = np.empty((4, full, full), np.float32)
    boost = np.empty((full, full), np.float32)
    change = np.empty((full, full), bool)
    for s in range(0, full, 512):
        h = min(512, full - s)
        scene = ground.render(s - pad, -pad, h, full)
        t1[:, s : s + h], t2[:, s : s + h] = scene.t1, scene.t2
        boost[s : s + h], change[s : s + h] = scene.sar_boost, scene.change
    inner = (slice(pad, pad + size), slice(pad, pad + size))

    # A: the t1 scene on its own grid
    collar_a = _Collar(size, size, collar, rng("A", 0))
    valid_a = collar_a.valid(0, 0, size, size)
    a_dn = _gf2_dn(t1[:, inner[0], inner[1]], valid_a, rng("A", 1))
    del t1

    # C: t2, anti-aliased for the coarser pixel, sampled at the shifted positions
    collar_c = _Collar(c_height, c_width, collar * A_RES / C_RES, rng("C", 0))
    valid_c = collar_c.valid(0, 0, c_height, c_width)
    c_refl = np.empty((4, c_height, c_width), np.float32)
    for b in range(4):
        band = ndimage.gaussian_filter(t2[b], 0.35 * C_RES / A_RES)
        c_refl[b] = _sample(band, c_rows + pad, c_cols + pad)
    c_dn = _s2_dn(c_refl, valid_c, rng("C", 1))
    del c_refl

    # B: SAR simulated from the t2 scene sampled on the lon/lat grid, with double bounce
    collar_b = _Collar(b_height, b_width, collar * A_RES / B_RES_M, rng("B", 0))
    valid_b = collar_b.valid(0, 0, b_height, b_width)
    optical = ndimage.gaussian_filter(t2.mean(axis=0), 0.35 * B_RES_M / A_RES)
    del t2
    b_optical = _sample(optical, b_rows + pad, b_cols + pad)
    b_boost = _sample(boost, b_rows + pad, b_cols + pad)
    del optical, boost, b_rows, b_cols
    amplitude = simulate_sar_amplitude(b_optical, looks=4, rng=rng("B", 1)) * b_boost
    b_db = _sigma0_db(amplitude, valid_b)
    del amplitude, b_optical, b_boost

    # label: changes on A's grid, 255 where A, B or C has no data (by their own georeferencing)
    common = valid_a.copy()
    a_x = x0 + (np.arange(size) + 0.5) * A_RES
    a_y = y0 - (np.arange(size) + 0.5) * A_RES
    ci = np.floor((a_x - cx0) / C_RES).astype(np.int64)
    cj = np.floor((cy0 - a_y) / C_RES).astype(np.int64)
    inside = ((cj >= 0) & (cj < c_height))[:, None] & ((ci >= 0) & (ci < c_width))[None, :]
    common &= inside & valid_c[np.clip(cj, 0, c_height - 1)[:, None], np.clip(ci, 0, c_width - 1)[None, :]]
    for s in range(0, size, 512):
        gx, gy = np.meshgrid(a_x, a_y[s : s + 512])
        glon, glat = to_geo.transform(gx, gy)
        bi = np.floor((glon - bx0) / dlon).astype(np.int64)
        bj = np.floor((by0 - glat) / dlat).astype(np.int64)
        ok = (bi >= 0) & (bi < b_width) & (bj >= 0) & (bj < b_height)
        ok &= valid_b[np.clip(bj, 0, b_height - 1), np.clip(bi, 0, b_width - 1)]
        common[s : s + 512] &= ok
    label = np.where(common, change[inner].astype(np.uint8), 255).astype(np.uint8)
    labelled = int(common.sum())
    change_fraction = float((label == 1).sum()) / max(labelled, 1)

    # Write (temporary names, then rename)
    tile = 256
    outputs = {
        "A": (a_dn, crs_utm, transform_a),
        "C": (c_dn, crs_utm, transform_c),
        "B": (b_db[None], crs_geo, transform_b),
        "label": (label[None], crs_utm, transform_a),
    }
    for role, (array, crs, transform) in outputs.items():
        profile = _profile(role, width=array.shape[2], height=array.shape[1], crs=crs,
                           transform=transform, tile=tile)
        tmp = _tmp_path(paths[role])
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(array)
            _describe(dst, role, name)
        os.replace(tmp, paths[role])

    return SyntheticGroup(
        root=root,
        paths=paths,
        scene_list=_write_scene_list(root, name, paths),
        true_shift_px={"A": (0.0, 0.0), "B": tuple(map(float, shift_b)),
                       "C": tuple(map(float, shift_c)), "label": (0.0, 0.0)},
        change_fraction=change_fraction,
    )


# --------------------------------------------------------------------------------------------------
# Large groups, streamed block by block


def _translate(image: np.ndarray, halo: int, dx: float, dy: float, height: int, width: int) -> np.ndarray:
    """out[q] = image(q + halo - (dy, dx)) bilinearly: content moved by +(dx, dy), halo cropped."""
    ny, nx = math.floor(dy), math.floor(dx)
    fy, fx = np.float32(dy - ny), np.float32(dx - nx)
    r, c = halo - ny, halo - nx

    def part(rr: int, cc: int) -> np.ndarray:
        return image[..., rr : rr + height, cc : cc + width]

    out = part(r, c) * ((1 - fy) * (1 - fx))
    out += part(r, c - 1) * ((1 - fy) * fx)
    out += part(r - 1, c) * (fy * (1 - fx))
    out += part(r - 1, c - 1) * (fy * fx)
    return out


@dataclass(frozen=True)
class _LargeContext:
    ground: _Ground
    collars: dict[str, _Collar]
    seed: int
    shift_b: tuple[float, float]
    shift_c: tuple[float, float]
    halo: int
    value_range: tuple[float, float]
    gradient_scale: float


_SAR_HALO = 8  # rows/cols of context for the SAR simulation filters


def _large_window(ctx: _LargeContext, row0: int, col0: int, h: int, w: int) -> dict[str, np.ndarray]:
    """All four images of one window of a large group, as arrays ready to write."""
    rng = np.random.default_rng([ctx.seed, 5, row0, col0])
    halo = ctx.halo
    valid = {role: c.valid(row0, col0, h, w) for role, c in ctx.collars.items()}
    scene = ctx.ground.render(row0 - halo, col0 - halo, h + 2 * halo, w + 2 * halo)
    out = {"A": _gf2_dn(scene.t1[:, halo : halo + h, halo : halo + w], valid["A"], rng)}
    change = scene.change[halo : halo + h, halo : halo + w]
    del scene.t1
    out["C"] = _s2_dn(_translate(scene.t2, halo, *ctx.shift_c, h, w), valid["C"], rng)
    # B: translate onto the window plus the SAR halo, simulate, crop the halo
    inner = halo - _SAR_HALO
    grid_h, grid_w = h + 2 * _SAR_HALO, w + 2 * _SAR_HALO
    optical = _translate(scene.t2.mean(axis=0), inner, *ctx.shift_b, grid_h, grid_w)
    boost = _translate(scene.sar_boost, inner, *ctx.shift_b, grid_h, grid_w)
    del scene
    amplitude = simulate_sar_amplitude(
        optical, looks=4, rng=rng, value_range=ctx.value_range, gradient_scale=ctx.gradient_scale
    )
    amplitude *= boost
    del optical, boost
    amplitude = amplitude[_SAR_HALO : _SAR_HALO + h, _SAR_HALO : _SAR_HALO + w]
    out["B"] = _sigma0_db(amplitude, valid["B"])[None]
    common = valid["A"] & valid["B"] & valid["C"]
    out["label"] = np.where(common, change, 255).astype(np.uint8)[None]
    return out


def write_large_group(
    root: Path,
    *,
    size: int = 20000,
    block: int = 2048,
    seed: int = 0,
    name: str = "large",
    shift_b: tuple[float, float] = (2.6, -3.4),
    shift_c: tuple[float, float] = (0.35, -0.45),
    collar: int = 64,
    compress: str | None = "deflate",
    workers: int | None = None,
) -> SyntheticGroup:
    """Write a big scene group block by block (for benchmarks); memory stays bounded.

    All four files are ``size`` x ``size`` px on the SAME grid (EPSG:32650, 4 m, A's origin):
    ``A`` GF-2-like uint16 x 4 bands (nodata 0), ``C`` Sentinel-2-like uint16 x 4 bands (nodata 0,
    content shifted by ``shift_c`` A-px), ``B`` GF-3-like SAR sigma0 dB float32 (nodata NaN,
    content shifted by ``shift_b``) and ``label`` uint8 (0/1/255, nodata 255). Each image has its
    own ragged collar of about ``collar`` px; the label is 255 outside the area valid in all three.

    The ground is the procedural ground of :func:`write_synthetic_group` (CC0 texture mirrored
    over the whole scene, parcels, roads, buildings and their changes), rendered window by window
    with a halo for the shifts and the SAR filters; nothing is ever held for the whole scene.
    Windows are ``block`` x ``block`` blocks cut into strips of at most 512 rows; each strip is
    computed (by ``workers`` threads, default min(2, CPUs)) and written at once with a windowed
    write. The peak memory is about 100 MB per worker plus GDAL's cache (capped at 64 MB here)
    and ~200 MB of libraries and textures, whatever ``size`` (measured: 500 MB peak RSS at 20000
    px, block 2048, 2 workers; ~175 s of CPU, 5 min wall on a busy 2-core machine). The same
    arguments give byte-identical files, whatever ``workers``.

    Files are tiled (512 px when ``block`` is a multiple of 512, else 256; keep ``block`` a
    multiple of the tile size so that no tile is written twice) and compressed with DEFLATE level
    1 + predictor by default: level 1 is the cheapest DEFLATE (the noise in synthetic imagery
    leaves little to gain at higher levels) and still roughly halves the disk use (raw 20000² x 4
    bands uint16 is 3.2 GB per optical image, 8.4 GB for the group). ``compress=None`` writes
    uncompressed files. Files over 4 GB become BigTIFF.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    paths = _role_paths(root, name)
    crs = CRS.from_epsg(UTM_EPSG)
    transform = Affine(A_RES, 0, ORIGIN[0], 0, -A_RES, ORIGIN[1])
    ground = _Ground(seed)
    tile = 512 if block % 512 == 0 else 256
    strip = min(block, 512)
    workers = workers or min(2, os.cpu_count() or 1)

    # One brightness range for the SAR simulation of every window (windows must agree)
    centre = max(0, size // 2 - 256)
    sample = ground.render(centre, centre, 512, 512).t2.mean(axis=0)
    lo, hi = (float(v) for v in np.percentile(sample, (1, 99)))
    smooth = ndimage.gaussian_filter(np.clip((sample - lo) / (hi - lo), 0, 1), 1.5)
    gradient_scale = float(np.percentile(np.hypot(ndimage.sobel(smooth, 0), ndimage.sobel(smooth, 1)), 99))
    ctx = _LargeContext(
        ground=ground,
        collars={role: _Collar(size, size, collar, np.random.default_rng([seed, 3, k]))
                 for k, role in enumerate(("A", "C", "B"))},
        seed=seed,
        shift_b=tuple(map(float, shift_b)),
        shift_c=tuple(map(float, shift_c)),
        halo=_SAR_HALO + int(math.ceil(max(map(abs, (*shift_b, *shift_c))))) + 2,
        value_range=(lo, hi),
        gradient_scale=gradient_scale,
    )
    windows = [
        Window(col0, s, min(block, size - col0), min(strip, row0 + block - s, size - s))
        for row0 in range(0, size, block)
        for col0 in range(0, size, block)
        for s in range(row0, min(row0 + block, size), strip)
    ]

    tmp = {role: _tmp_path(path) for role, path in paths.items()}
    datasets = {}
    changed = labelled = 0
    with rasterio.Env(GDAL_CACHEMAX=64), ThreadPoolExecutor(workers) as pool:
        try:
            for role in ("A", "C", "B", "label"):
                profile = _profile(role, width=size, height=size, crs=crs, transform=transform,
                                   tile=tile, compress=compress, zlevel=1)
                profile.update(BIGTIFF="IF_SAFER")
                datasets[role] = rasterio.open(tmp[role], "w", **profile)
            pending: deque = deque()
            for k in range(len(windows) + workers):
                if k < len(windows):
                    win = windows[k]
                    pending.append((win, pool.submit(_large_window, ctx, win.row_off, win.col_off,
                                                     win.height, win.width)))
                if len(pending) > workers or (k >= len(windows) and pending):
                    win, future = pending.popleft()
                    arrays = future.result()
                    for role, array in arrays.items():
                        datasets[role].write(array, window=win)
                    label = arrays["label"]
                    changed += int(np.count_nonzero(label == 1))
                    labelled += int(np.count_nonzero(label != 255))
            for role, dst in datasets.items():
                _describe(dst, role, name)
        finally:
            for future in (f for _, f in pending):
                future.cancel()
            for dst in datasets.values():
                dst.close()
    for role in paths:
        os.replace(tmp[role], paths[role])

    return SyntheticGroup(
        root=root,
        paths=paths,
        scene_list=_write_scene_list(root, name, paths),
        true_shift_px={"A": (0.0, 0.0), "B": ctx.shift_b, "C": ctx.shift_c, "label": (0.0, 0.0)},
        change_fraction=changed / max(labelled, 1),
    )
