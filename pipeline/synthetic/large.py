"""Large scene groups for the benchmarks, streamed block by block: memory stays bounded whatever the size.

All four files are ``size`` x ``size`` px on the SAME grid (EPSG:32650, 4 m, A's origin), rendered from the
procedural ground of :mod:`pipeline.synthetic.ground` window by window with a halo for the shifts and the SAR
filters; nothing is ever held for the whole scene. Windows are ``block`` x ``block`` blocks cut into strips of
at most 512 rows; each strip is computed (by ``workers`` threads, default min(2, CPUs)) and written at once
with a windowed write, in a fixed order. The peak memory is about 100 MB per worker plus GDAL's cache (capped
at 64 MB here) and ~200 MB of libraries and textures, whatever ``size`` (measured: 500 MB peak RSS at 20000
px, block 2048, 2 workers; ~175 s of CPU, 5 min wall on a busy 2-core machine). The same arguments give
byte-identical files, whatever ``workers``.

Files are tiled (512 px when ``block`` is a multiple of 512, else 256; keep ``block`` a multiple of the tile
size so that no tile is written twice) and compressed with DEFLATE level 1 + predictor by default: level 1 is
the cheapest DEFLATE (the noise in synthetic imagery leaves little to gain at higher levels) and still roughly
halves the disk use (raw 20000² x 4 bands uint16 is 3.2 GB per optical image, 8.4 GB for the group).
``compress=None`` writes uncompressed files. Files over 4 GB become BigTIFF.
"""

from __future__ import annotations

import math
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.transform import Affine
from rasterio.windows import Window
from scipy import ndimage

from pipeline.io.atomic import atomic_path
from pipeline.io.raster import bounded_gdal_cache
from pipeline.synthetic.collar import Collar
from pipeline.synthetic.ground import Ground
from pipeline.synthetic.group import (
    A_RES,
    ORIGIN,
    UTM_EPSG,
    SyntheticGroup,
    describe,
    geotiff_profile,
    role_paths,
    write_scene_list,
)
from pipeline.synthetic.optical import gf2_dn, s2_dn
from pipeline.synthetic.sar import sigma0_db, simulate_sar_amplitude

ROLES = ("A", "C", "B", "label")  # the order the files are opened and each window's images are written


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

    ``A`` is GF-2-like uint16 x 4 bands (nodata 0), ``C`` Sentinel-2-like uint16 x 4 bands (nodata 0,
    content shifted by ``shift_c`` A-px), ``B`` GF-3-like SAR sigma0 dB float32 (nodata NaN, content
    shifted by ``shift_b``) and ``label`` uint8 (0/1/255, nodata 255). Each image has its own ragged
    collar of about ``collar`` px; the label is 255 outside the area valid in all three. See the
    module documentation for memory, time and compression.

    Args:
        root: the folder to write to (created if missing).
        size: the side of every image in pixels.
        block: the side of the blocks computed at once (a multiple of the tile size).
        seed: the random seed.
        name: the group name, prefix of the files.
        shift_b: the misregistration (dx, dy) of B, in A pixels.
        shift_c: the misregistration (dx, dy) of C, in A pixels.
        collar: the nodata collar's width in pixels.
        compress: the GDAL compression (DEFLATE level 1 by default), or None.
        workers: threads computing windows; default min(2, CPUs).

    Returns:
        The written group and its truth.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    paths = role_paths(root, name)
    ctx = _context(size, seed, collar, shift_b, shift_c)
    tile = 512 if block % 512 == 0 else 256
    profiles = {role: {**geotiff_profile(role, width=size, height=size, crs=CRS.from_epsg(UTM_EPSG),
                                         transform=Affine(A_RES, 0, ORIGIN[0], 0, -A_RES, ORIGIN[1]),
                                         tile=tile, compress=compress, zlevel=1), "BIGTIFF": "IF_SAFER"}
                for role in ROLES}
    with bounded_gdal_cache(), ExitStack() as files:
        # entered last, so each file is closed before its temporary name is renamed
        datasets = {role: files.enter_context(rasterio.open(files.enter_context(atomic_path(paths[role])), "w",
                                                            **profiles[role])) for role in ROLES}
        counts = _write_windows(ctx, _windows(size, block), datasets, workers or min(2, os.cpu_count() or 1))
        for role, dst in datasets.items():
            describe(dst, role, name)
    changed, labelled = counts
    return SyntheticGroup(
        root=root,
        paths=paths,
        scene_list=write_scene_list(root, name, paths),
        true_shift_px={"A": (0.0, 0.0), "B": ctx.shift_b, "C": ctx.shift_c, "label": (0.0, 0.0)},
        change_fraction=changed / max(labelled, 1),
    )


def _context(size: int, seed: int, collar: int, shift_b: tuple[float, float],
             shift_c: tuple[float, float]) -> _LargeContext:
    """The ground, one collar per image and one SAR brightness scale for every window (windows must agree)."""
    ground = Ground(seed)
    centre = max(0, size // 2 - 256)
    sample = ground.render(centre, centre, 512, 512).t2.mean(axis=0)
    lo, hi = (float(v) for v in np.percentile(sample, (1, 99)))
    smooth = ndimage.gaussian_filter(np.clip((sample - lo) / (hi - lo), 0, 1), 1.5)
    gradient_scale = float(np.percentile(np.hypot(ndimage.sobel(smooth, 0), ndimage.sobel(smooth, 1)), 99))
    return _LargeContext(
        ground=ground,
        collars={role: Collar(size, size, collar, np.random.default_rng([seed, 3, k]))
                 for k, role in enumerate(("A", "C", "B"))},
        seed=seed,
        shift_b=tuple(map(float, shift_b)),
        shift_c=tuple(map(float, shift_c)),
        halo=_SAR_HALO + int(math.ceil(max(map(abs, (*shift_b, *shift_c))))) + 2,
        value_range=(lo, hi),
        gradient_scale=gradient_scale,
    )


def _windows(size: int, block: int) -> list[Window]:
    """The write order: blocks row by row, each cut into strips of at most 512 rows."""
    strip = min(block, 512)
    return [
        Window(col0, s, min(block, size - col0), min(strip, row0 + block - s, size - s))
        for row0 in range(0, size, block)
        for col0 in range(0, size, block)
        for s in range(row0, min(row0 + block, size), strip)
    ]


def _write_windows(ctx: _LargeContext, windows: list[Window], datasets: dict, workers: int) -> tuple[int, int]:
    """Compute windows on ``workers`` threads, at most ``workers`` ahead, and write them in order.

    Returns:
        The changed and the labelled (not 255) pixel counts of the label.
    """
    changed = labelled = 0
    pending: deque = deque()
    with ThreadPoolExecutor(workers) as pool:
        try:
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
        finally:
            for _, future in pending:
                future.cancel()
    return changed, labelled


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
    """What every window of a large group shares: the ground, the collars, the shifts and the SAR scale."""

    ground: Ground
    collars: dict[str, Collar]
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
    out = {"A": gf2_dn(scene.t1[:, halo : halo + h, halo : halo + w], valid["A"], rng)}
    change = scene.change[halo : halo + h, halo : halo + w]
    del scene.t1
    out["C"] = s2_dn(_translate(scene.t2, halo, *ctx.shift_c, h, w), valid["C"], rng)
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
    out["B"] = sigma0_db(amplitude, valid["B"])[None]
    common = valid["A"] & valid["B"] & valid["C"]
    out["label"] = np.where(common, change, 255).astype(np.uint8)[None]
    return out
