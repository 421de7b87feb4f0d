"""Tiling: window layout, the black filter on every image, GeoTIFF tiles, de-duplication."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS
from shapely.geometry import box

from pipeline.config import Role, TilingConfig
from pipeline.prepare.grid import GroupGrid
from pipeline.prepare.tiling import axis_positions, block_extents, cut_tiles, find_duplicates, tile_windows
from tests.conftest import write_raster

TRANSFORM = Affine(2.0, 0, 300000.0, 0, -2.0, 4000000.0)


def test_last_window_is_flush_with_the_edge():
    assert axis_positions(0, 1300, 512, 256) == [0, 256, 512, 768, 788]
    assert axis_positions(0, 1280, 512, 256) == [0, 256, 512, 768]
    assert axis_positions(0, 500, 512, 256) == []


def test_blocks_are_separated_and_share_the_remainder():
    extents = block_extents(2 * 2048 + 1 + 300, 2048)
    assert extents == [(0, 2048 + 150), (2048 + 150 + 1, 2048 + 150)]
    assert block_extents(300, 2048) == [(0, 300)]
    # Tiles of neighbouring blocks neither overlap nor touch: one pixel apart.
    grid = GroupGrid(CRS.from_epsg(32650), TRANSFORM, 2 * 2048 + 1 + 300, 600)
    windows = tile_windows("g", grid, TilingConfig(), block_tiles=4)
    left = [w for w in windows if w.block == (0, 0)]
    right = [w for w in windows if w.block == (1, 0)]
    assert max(w.window.col_off + 512 for w in left) == 2198
    assert min(w.window.col_off for w in right) == 2199
    assert all(w.window.col_off + 512 <= grid.width and w.window.row_off + 512 <= grid.height for w in windows)


@pytest.mark.parametrize(("black_fraction", "kept"), [(0.94, True), (0.96, False)])
@pytest.mark.parametrize("black_role", [Role.A, Role.B])
def test_black_filter_is_exact_and_checks_every_image(tmp_path, black_fraction, kept, black_role):
    size = 100
    images = {}
    for role in (Role.A, Role.B):
        data = np.full((3, size, size), 200, dtype=np.uint16)
        if role is black_role:
            black_rows = round(black_fraction * size)
            data[:, :black_rows, :] = 3  # below black_value 5
        images[role] = write_raster(tmp_path / f"{role.value}.tif", data, crs="EPSG:32650", transform=TRANSFORM)
    label = np.zeros((size, size), dtype=np.uint8)
    label[:10, :20] = 1
    images[Role.label] = write_raster(tmp_path / "label.tif", label, crs="EPSG:32650", transform=TRANSFORM, nodata=255)
    config = TilingConfig(size=size, stride=size)
    grid = GroupGrid(CRS.from_epsg(32650), TRANSFORM, size, size)
    windows = tile_windows("g", grid, config, block_tiles=1)
    datasets = {role: rasterio.open(path) for role, path in images.items()}
    records, dropped = cut_tiles("g", datasets, grid, windows, config, tmp_path / "tiles")
    assert (len(records) == 1) is kept and dropped == (0 if kept else 1)
    if kept:
        record = records[0]
        assert record.black_fraction[black_role.value] == pytest.approx(black_fraction)
        assert record.change_fraction == pytest.approx(200 / size**2)
        with rasterio.open(tmp_path / "tiles" / "A" / f"{record.tile_id}.tif") as tile:
            assert tile.crs == CRS.from_epsg(32650)
            assert tile.transform == TRANSFORM
            assert tile.count == 3 and tile.dtypes[0] == "uint16"


def test_deduplication_across_groups_only():
    tiles = [
        ("a_1", "a", box(0, 0, 10, 10)),
        ("a_2", "a", box(1, 0, 11, 10)),  # same group: kept even at 0.9 overlap
        ("b_1", "b", box(1.5, 0, 11.5, 10)),  # 0.85 of a kept tile of group a: dropped
        ("b_2", "b", box(3, 0, 13, 10)),  # 0.8 exactly: kept (GOLD: strictly greater)
    ]
    assert find_duplicates(tiles, 0.8) == ["b_1"]


def _textured_images(tmp_path, size: int = 300) -> dict[Role, rasterio.DatasetReader]:
    """A smooth, compressible 4-band uint16 image with a black corner, a float32 image and a label."""
    rows, cols = np.mgrid[:size, :size]
    noise = np.random.default_rng(0).integers(0, 4, (4, size, size))
    optical = (1000 + 3 * rows + 2 * cols + noise).astype(np.uint16)
    optical[:, :40, :40] = 0
    sar = (np.sin(rows / 17.0) * np.cos(cols / 23.0)).astype(np.float32)
    label = ((rows // 50 + cols // 50) % 2).astype(np.uint8)
    paths = {
        Role.A: write_raster(tmp_path / "A.tif", optical, crs="EPSG:32650", transform=TRANSFORM),
        Role.B: write_raster(tmp_path / "B.tif", sar, crs="EPSG:32650", transform=TRANSFORM, nodata=float("nan")),
        Role.label: write_raster(tmp_path / "label.tif", label, crs="EPSG:32650", transform=TRANSFORM, nodata=255),
    }
    return {role: rasterio.open(path) for role, path in paths.items()}


def _cut(tmp_path, name: str, *, level: int, threads: int):
    config = TilingConfig(size=128, stride=64, deflate_level=level)
    datasets = _textured_images(tmp_path)
    grid = GroupGrid(CRS.from_epsg(32650), TRANSFORM, 300, 300)
    windows = tile_windows("g", grid, config, block_tiles=2)
    try:
        records, dropped = cut_tiles("g", datasets, grid, windows, config, tmp_path / name, threads=threads)
    finally:
        for dataset in datasets.values():
            dataset.close()
    files = {path.relative_to(tmp_path / name): path.read_bytes() for path in sorted((tmp_path / name).rglob("*.tif"))}
    return records, dropped, files


def test_tiles_do_not_depend_on_the_writer_threads(tmp_path):
    one = _cut(tmp_path, "one", level=3, threads=1)
    three = _cut(tmp_path, "three", level=3, threads=3)
    records, _, files = one
    assert len(records) == 16 and len(files) == 3 * 16  # 4 x 4 windows, 3 images each
    assert three == one  # records, dropped count and every file's bytes
    assert not any(path.name.startswith(".") for path in (tmp_path / "three").rglob("*"))  # no partial left


def test_the_deflate_level_changes_the_bytes_not_the_pixels(tmp_path):
    _, _, fast = _cut(tmp_path, "fast", level=1, threads=2)
    _, _, small = _cut(tmp_path, "small", level=9, threads=2)
    assert fast.keys() == small.keys()
    optical = [name for name in fast if name.parts[0] == "A"]
    assert sum(len(small[name]) for name in optical) < sum(len(fast[name]) for name in optical)
    for name in fast:
        with rasterio.open(tmp_path / "fast" / name) as a, rasterio.open(tmp_path / "small" / name) as b:
            assert a.profile["compress"] == b.profile["compress"] == "deflate"
            assert (a.crs, a.transform, a.dtypes) == (b.crs, b.transform, b.dtypes)
            assert np.array_equal(a.read(), b.read(), equal_nan=True)
