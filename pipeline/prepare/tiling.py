"""Tiling: windows over a group grid, the black/nodata filter, GeoTIFF tiles, de-duplication.

Windows are laid out inside spatial split blocks (see ``pipeline.prepare.split``): blocks of
``block_tiles × size`` px separated by a one-pixel gap, so that tiles of different blocks never
overlap nor touch and a block can go to any split without leakage. Inside a block the stride is
exact and the last window sits flush with the block edge (no zero padding, unlike GOLD).
"""

from __future__ import annotations

import warnings
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning
from rasterio.io import DatasetReader, MemoryFile
from rasterio.windows import Window
from shapely import STRtree
from shapely.geometry.base import BaseGeometry

from pipeline.config import Role, TilingConfig
from pipeline.io.atomic import atomic_path
from pipeline.io.raster import NODATA_U8, is_integer, read_window
from pipeline.prepare.grid import GroupGrid

BLOCK_GAP_PX = 1


@dataclass(frozen=True)
class TileWindow:
    """A candidate tile: its id, split block and pixel window in the group grid."""

    tile_id: str
    block: tuple[int, int]  # (block column, block row) inside the group
    window: Window


@dataclass(frozen=True)
class TileRecord:
    """A kept tile: where it lies and what it holds."""

    tile_id: str
    group: str
    block: tuple[int, int]
    col_off: int
    row_off: int
    black_fraction: dict[str, float]  # role -> fraction of nodata/black pixels
    change_fraction: float  # changed / labelled pixels (nan without label)
    change_pixels: int
    labelled_pixels: int
    bounds: tuple[float, float, float, float]  # in the group grid's CRS


def axis_positions(start: int, length: int, size: int, stride: int) -> list[int]:
    """Window starts covering [start, start + length): exact stride, last one flush with the end.

    Args:
        start: first pixel of the span.
        length: length of the span, px.
        size: window size, px.
        stride: step between window starts, px (≥ 1).

    Returns:
        The window starts, ascending; empty when the span is shorter than ``size``.
    """
    if length < size:
        return []
    positions = list(range(start, start + length - size + 1, stride))
    if positions[-1] != start + length - size:
        positions.append(start + length - size)
    return positions


def block_extents(length: int, block: int) -> list[tuple[int, int]]:
    """The split blocks along one axis: as many ``block``-long blocks as fit, remainder spread evenly.

    Neighbouring blocks are separated by ``BLOCK_GAP_PX`` pixel(s), so their tiles never touch.

    Args:
        length: the grid's extent along the axis, px.
        block: the nominal block length, px (``block_tiles × size``).

    Returns:
        ``(start, length)`` of each block, in order; a single block of the whole extent when it is
        shorter than ``block``.
    """
    count = max(1, (length + BLOCK_GAP_PX) // (block + BLOCK_GAP_PX))
    usable = length - (count - 1) * BLOCK_GAP_PX
    base, extra = divmod(usable, count)
    extents, start = [], 0
    for index in range(count):
        size = base + (1 if index < extra else 0)
        extents.append((start, size))
        start += size + BLOCK_GAP_PX
    return extents


def tile_windows(group: str, grid: GroupGrid, config: TilingConfig, block_tiles: int) -> list[TileWindow]:
    """All candidate windows of a group grid, block by block, in a deterministic order.

    Args:
        group: the group's name, prefix of the tile ids ``{group}_x{col}_y{row}``.
        grid: the group's grid.
        config: the tiling settings (``size`` and ``stride``, px).
        block_tiles: the split block's side, in tile sizes.

    Returns:
        The windows, by block row, block column, then row and column inside the block.
    """
    block = block_tiles * config.size
    windows = []
    for by, (row0, height) in enumerate(block_extents(grid.height, block)):
        for bx, (col0, width) in enumerate(block_extents(grid.width, block)):
            for row in axis_positions(row0, height, config.size, config.stride):
                for col in axis_positions(col0, width, config.size, config.stride):
                    windows.append(
                        TileWindow(
                            tile_id=f"{group}_x{col}_y{row}",
                            block=(bx, by),
                            window=Window(col, row, config.size, config.size),
                        )
                    )
    return windows


@dataclass(frozen=True)
class _TileFormat:
    """What a tile of one image carries besides its pixels; read once from the open image."""

    crs: CRS | None
    nodata: float | None
    descriptions: tuple[str | None, ...]
    level: int

    @classmethod
    def of(cls, dataset: DatasetReader, level: int) -> _TileFormat:
        return cls(dataset.crs, dataset.nodata, tuple(dataset.descriptions), level)


def _encode_tile(data: np.ndarray, tile_format: _TileFormat, transform: Affine) -> bytes:
    """One tile as GeoTIFF bytes (deterministic): DEFLATE with a predictor, 256 px internal tiles.

    Runs on the writer threads: GDAL compresses without the GIL, in memory, so that the files are
    still written one at a time in window order.
    """
    with MemoryFile() as memfile:
        with memfile.open(
            driver="GTiff",
            width=data.shape[2],
            height=data.shape[1],
            count=data.shape[0],
            dtype=data.dtype,
            crs=tile_format.crs,
            transform=transform,
            nodata=tile_format.nodata,
            compress="deflate",
            zlevel=tile_format.level,
            predictor=2 if is_integer(data.dtype) else 3,
            tiled=True,
            blockxsize=256,
            blockysize=256,
        ) as dst:
            dst.write(data)
            for band, description in enumerate(tile_format.descriptions[: data.shape[0]], start=1):
                if description:
                    dst.set_band_description(band, description)
        return memfile.read()


def _write_tile(path: Path, content: bytes) -> None:
    """One tile file, atomically (temporary name, then rename)."""
    with atomic_path(path) as partial:
        _write_geotiff(partial, content)


def _write_geotiff(path: Path, content: bytes) -> None:
    path.write_bytes(content)


def _cut(
    group: str, images: dict[Role, DatasetReader], grid: GroupGrid, candidate: TileWindow, config: TilingConfig
) -> tuple[dict[Role, np.ndarray], TileRecord | None]:
    """The pixels of one window in every image, and its record; None when the window is dropped as black."""
    window = candidate.window
    blocks: dict[Role, np.ndarray] = {}
    black: dict[str, float] = {}
    for role, dataset in images.items():
        is_label = role.is_label
        black_value = config.black_value if not is_label and is_integer(dataset.dtypes[0]) else None
        data, valid = read_window(dataset, window, black_value=black_value)
        blocks[role] = data
        if not is_label:
            black[role.value] = float(1.0 - valid.mean())
    if any(fraction >= config.black_threshold for fraction in black.values()):
        return blocks, None
    change_pixels, labelled = 0, 0
    if Role.label in blocks:
        label = blocks[Role.label][0]
        change_pixels = int((label == 1).sum())
        labelled = int((label != NODATA_U8).sum())
    left, bottom, right, top = rasterio.windows.bounds(window, grid.transform)
    return blocks, TileRecord(
        tile_id=candidate.tile_id,
        group=group,
        block=candidate.block,
        col_off=int(window.col_off),
        row_off=int(window.row_off),
        black_fraction=black,
        change_fraction=change_pixels / labelled if labelled else float("nan"),
        change_pixels=change_pixels,
        labelled_pixels=labelled,
        bounds=(min(left, right), min(bottom, top), max(left, right), max(bottom, top)),
    )


def cut_tiles(
    group: str,
    images: dict[Role, DatasetReader],
    grid: GroupGrid,
    windows: list[TileWindow],
    config: TilingConfig,
    out_dir: Path,
    progress: callable | None = None,
    *,
    threads: int = 1,
) -> tuple[list[TileRecord], int]:
    """Filter and write the tiles of one group.

    A tile is dropped when ``config.black_threshold`` or more of its pixels are nodata or black in
    ANY image (GOLD checked optical t1 only). Labels are not images: their zeros are "no change".
    Windows are read and filtered in order on the calling thread; kept tiles are compressed on
    ``threads`` threads (a few windows ahead at most, so memory stays bounded) and written in window
    order, so the first write that fails is the last file written.

    Args:
        group: the group's name.
        images: role → the open grid COG of that image or label.
        grid: the group's grid.
        windows: the candidate windows (see :func:`tile_windows`).
        config: the tiling settings (``black_value``, ``black_threshold``, ``deflate_level``).
        out_dir: the tiles folder; a kept tile is written to ``{out_dir}/{role}/{tile_id}.tif`` per role.
        progress: called with 1 after each window is read.
        threads: threads compressing tiles; the files do not depend on it.

    Returns:
        The records of the kept tiles, in window order, and the number of tiles dropped as black.

    Raises:
        InputError: a window cannot be read (truncated or corrupt file).
        OSError: a tile cannot be written.
    """
    formats = {role: _TileFormat.of(dataset, config.deflate_level) for role, dataset in images.items()}
    kept: list[TileRecord] = []
    encoded: deque[tuple[Path, Future]] = deque()
    with ThreadPoolExecutor(threads) as pool, warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # pixel-space tiles
        try:
            for candidate in windows:
                blocks, record = _cut(group, images, grid, candidate, config)
                if progress is not None:
                    progress(1)
                if record is None:
                    continue
                kept.append(record)
                transform = grid.window_transform(candidate.window)
                for role, data in blocks.items():
                    path = out_dir / role.value / f"{candidate.tile_id}.tif"
                    encoded.append((path, pool.submit(_encode_tile, data, formats[role], transform)))
                while len(encoded) > 2 * threads * len(images):
                    _write_tile(*_done(encoded.popleft()))
            while encoded:
                _write_tile(*_done(encoded.popleft()))
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise
    return kept, len(windows) - len(kept)


def _done(item: tuple[Path, Future]) -> tuple[Path, bytes]:
    """A tile's path and its bytes, once compressed."""
    return item[0], item[1].result()


def find_duplicates(
    footprints: list[tuple[str, str, BaseGeometry]], max_overlap: float
) -> list[str]:
    """Tile ids to drop as duplicates of an already kept tile of another group (GOLD's rule).

    A tile whose overlap with a kept tile of another group exceeds ``max_overlap`` of the smaller is
    dropped. Tiles of one group never duplicate each other: their overlap is the stride's.

    Args:
        footprints: ``(tile_id, group, geometry)``, geometries in one CRS, in priority order; groups
            are taken in the order of their first tile.
        max_overlap: the overlap fraction (intersection / smaller area, 0–1) above which a tile is dropped.

    Returns:
        The ids of the dropped tiles.
    """
    by_group: dict[str, list[tuple[str, BaseGeometry]]] = {}
    for tile_id, group, geometry in footprints:
        by_group.setdefault(group, []).append((tile_id, geometry))
    kept: list[BaseGeometry] = []
    duplicates: list[str] = []
    for group_tiles in by_group.values():
        tree = STRtree(kept) if kept else None
        for tile_id, geometry in group_tiles:
            if tree is not None and any(
                kept[i].intersection(geometry).area / min(kept[i].area, geometry.area) > max_overlap
                for i in tree.query(geometry, predicate="intersects")
            ):
                duplicates.append(tile_id)
            else:
                kept.append(geometry)
    return duplicates
