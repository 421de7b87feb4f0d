"""Buildings of the synthetic ground: unchanged, built between t1 and t2, and demolished ones.

The ground is cut into CELL x CELL cells; each cell's buildings (footprint, height, roof, shadows) are a pure
function of the seed and the cell, so any window can draw the buildings that reach it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

CELL = 256  # building cell (A px): each cell's buildings stay inside it, shadows included
CELL_MARGIN = 40

# Reflectances (blue, green, red, nir)
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


@dataclass(frozen=True)
class Building:
    """A rectangular, optionally rotated building of a cell, in A pixels."""

    cx: float
    cy: float
    half_w: float
    half_h: float
    angle: float
    kind: str  # "keep" (both dates), "new" (t2 only), "gone" (t1 only)
    roof: int
    shadow: tuple[float, float]  # optical shadow vector (A px)
    radar_shadow: float  # SAR shadow length to the east (A px)


def cell_buildings(seed: int, ci: int, cj: int) -> list[Building]:
    """The buildings of one cell, a pure function of the seed and the cell.

    Args:
        seed: the group's seed.
        ci: the cell's column (A px // CELL).
        cj: the cell's row.

    Returns:
        The buildings of the CELL x CELL cell, centred at least CELL_MARGIN px inside it and not overlapping.
    """
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
                cx = ci * CELL + rng.uniform(CELL_MARGIN, CELL - CELL_MARGIN)
                cy = cj * CELL + rng.uniform(CELL_MARGIN, CELL - CELL_MARGIN)
                cx, cy = float(cx), float(cy)
                box = (cx - radius - 3, cy - radius - 3, cx + radius + 3, cy + radius + 3)
                if all(box[2] < p[0] or p[2] < box[0] or box[3] < p[1] or p[3] < box[1] for p in placed):
                    placed.append(box)
                    buildings.append(
                        Building(cx, cy, float(half_w), float(half_h), angle, kind, roof,
                                  (-0.35 * height, -0.8 * height), 0.7 * height)
                    )
                    break
    return buildings


def _coverage(b: Building, ys: np.ndarray, xs: np.ndarray, dx: float = 0.0, dy: float = 0.0) -> np.ndarray:
    """Approximate area coverage (0..1) of building ``b`` moved by (dx, dy) on the grid ys x xs."""
    cos, sin = math.cos(b.angle), math.sin(b.angle)
    ox = (xs - (b.cx + dx))[None, :]
    oy = (ys - (b.cy + dy))[:, None]
    u = ox * cos + oy * sin
    v = oy * cos - ox * sin
    return np.clip(b.half_w + 0.5 - np.abs(u), 0, 1) * np.clip(b.half_h + 0.5 - np.abs(v), 0, 1)


def _sweep(b: Building, ys: np.ndarray, xs: np.ndarray, vx: float, vy: float) -> np.ndarray:
    """Coverage of the footprint swept along (vx, vy): a cast shadow, footprint included."""
    steps = max(1, int(math.ceil(math.hypot(vx, vy) / 1.5)))
    out = np.zeros((ys.size, xs.size), np.float32)
    for k in range(1, steps + 1):
        np.maximum(out, _coverage(b, ys, xs, vx * k / steps, vy * k / steps), out=out)
    return out


def draw_building(b: Building, rows: np.ndarray, cols: np.ndarray, t1: np.ndarray, t2: np.ndarray,
                  change: np.ndarray, boost: np.ndarray, noise: np.ndarray) -> None:
    """Draw a building (roof, optical shadow; SAR double bounce and shadow at t2) on both dates, in place.

    Args:
        b: the building.
        rows: the window's A rows (sorted).
        cols: the window's A columns (sorted).
        t1: (4, h, w) reflectance at t1.
        t2: (4, h, w) reflectance at t2.
        change: (h, w) change mask, set on new and demolished footprints.
        boost: (h, w) SAR amplitude factor at t2.
        noise: (h, w) fine noise for the roof texture.
    """
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
