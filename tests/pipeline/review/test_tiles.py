"""Tiles on the group grid: equal to rasterio window reads of the grid COGs, stretched PNGs, the overlay."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning
from rasterio.io import MemoryFile
from rasterio.windows import Window

from pipeline.review.tiles import NoTile, TileSource, grid_tms
from tests.pipeline.review.scene import HEIGHT, ORIGIN, PIXEL, WIDTH


def _window_read(path, z, x, y, maxzoom, bands):
    """The reference: a rasterio read of the tile's window at that level (from the overview GDAL picks)."""
    factor = 2 ** (maxzoom - z)
    window = Window(x * 256 * factor, y * 256 * factor, 256 * factor, 256 * factor)
    with rasterio.open(path) as dataset:
        return dataset.read(bands, window=window, out_shape=(len(bands), 256, 256), boundless=True,
                            resampling=Resampling.nearest)


def _png(data: bytes) -> np.ndarray:
    with warnings.catch_warnings(), MemoryFile(data) as memfile, memfile.open() as dataset:
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # a PNG tile has no georeferencing
        return dataset.read()


def test_tile_matrix_set_is_the_group_grid(group):
    tms = grid_tms(group.grid)
    assert tms.maxzoom == 2  # 600 px wide: 256 → 512 → 1024 px tiles cover it
    finest = tms.matrix(tms.maxzoom)
    assert finest.cellSize == PIXEL and tuple(finest.pointOfOrigin) == ORIGIN
    assert [tms.matrix(z).cellSize for z in range(3)] == [16.0, 8.0, 4.0]


@pytest.mark.parametrize(("z", "x", "y"), [(2, 0, 0), (2, 1, 1), (2, 2, 2), (1, 0, 0), (1, 1, 1), (0, 0, 0)])
def test_tile_equals_a_window_read_of_the_cog_at_that_level(group, z, x, y):
    tiles = TileSource(group)
    for role in ("A", "B"):
        bands = tiles.layers[role].bands
        tile = tiles.read(str(group.images[role]), z, x, y, bands)
        expected = _window_read(group.images[role], z, x, y, tiles.tms.maxzoom, bands)
        assert tile.array.shape == (len(bands), 256, 256)
        np.testing.assert_array_equal(np.ma.getdata(tile.array), expected)


def test_full_resolution_tile_is_pixel_exact(group):
    tiles = TileSource(group)
    tile = tiles.read(str(group.images["C"]), 2, 1, 0, [1])
    with rasterio.open(group.images["C"]) as dataset:
        pixels = dataset.read(1, window=Window(256, 0, 256, 256))
    np.testing.assert_array_equal(np.ma.getdata(tile.array)[0], pixels)


def test_png_is_the_stretched_tile_with_nodata_transparent(group):
    tiles = TileSource(group)
    layer = tiles.layers["A"]
    assert layer.bands == [3, 2, 1] and not layer.db
    rgba = _png(tiles.image_png("A", 2, 0, 0))
    raw = _window_read(group.images["A"], 2, 0, 0, 2, layer.bands).astype(np.float64)
    expected = np.stack([np.clip((b - lo) / (hi - lo) * 255, 0, 255) for b, (lo, hi) in zip(raw, layer.stretch)])
    assert rgba.shape == (4, 256, 256)
    np.testing.assert_array_equal(rgba[:3, :, 8:], expected.astype(np.uint8)[:, :, 8:])
    assert (rgba[3, :, :8] == 0).all() and (rgba[3, :, 8:] == 255).all()  # the zero strip is nodata


def test_sar_is_stretched_in_db(group):
    tiles = TileSource(group)
    layer = tiles.layers["B"]
    assert layer.db and layer.bands == [1]
    with rasterio.open(group.images["B"]) as dataset:
        sigma0 = dataset.read(1)
    low, high = layer.stretch[0]
    assert low == pytest.approx(np.percentile(10 * np.log10(sigma0), 2), abs=1.0)
    assert high == pytest.approx(np.percentile(10 * np.log10(sigma0), 98), abs=1.0)


def test_probability_overlay_shows_pixels_above_the_threshold(group):
    tiles = TileSource(group)
    rgba = _png(tiles.probability_png(2, 0, 0, 0.5))
    with rasterio.open(group.probability) as dataset:
        probability = dataset.read(1, window=Window(0, 0, 256, 256)) / 254
    np.testing.assert_array_equal(rgba[3] == 255, probability > 0.5)
    lower = _png(tiles.probability_png(2, 0, 0, 0.3))
    np.testing.assert_array_equal(lower[3] == 255, probability > 0.3)


def test_tiles_outside_the_grid_are_not_found(group, client):
    tiles = TileSource(group)
    with pytest.raises(NoTile):
        tiles.read(str(group.images["A"]), 2, 3, 0, [1])  # starts at column 768 > 600
    with pytest.raises(NoTile):
        tiles.read(str(group.images["A"]), 3, 0, 0, [1])
    assert client.get("/tiles/A/2/3/0.png").status_code == 404
    assert client.get("/tiles/label/2/0/0.png").status_code == 404  # not an image layer
    answer = client.get("/tiles/probability/1/0/0.png?threshold=0.5")
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/png"
    assert _png(answer.content).shape == (4, 256, 256)
    assert (HEIGHT, WIDTH) == (group.grid.height, group.grid.width)
