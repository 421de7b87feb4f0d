"""Tests of pipeline.prepare.grid: the group grid, warping onto it pixel-exactly, COGs on the grid."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning
from rasterio.warp import transform_geom
from rasterio.windows import Window
from shapely.geometry import box, mapping, shape

from pipeline.config import GridConfig, Role, Sensor
from pipeline.io.raster import NODATA_U8
from pipeline.prepare.catalog import Scene
from pipeline.prepare.grid import (
    GroupGrid,
    block_windows,
    encode_label,
    grid_nodata,
    reference_grid,
    warped,
    write_cog,
)
from pipeline.prepare.overlap import Group
from tests.conftest import write_raster

UTM = CRS.from_epsg(32650)
X0, Y0 = 500000.0, 3500000.0
A_TRANSFORM = Affine(4.0, 0, X0, 0, -4.0, Y0)


def scene_of(path, role: Role = Role.A, scene_id: str | None = None) -> Scene:
    """A catalogued scene of a written raster; its footprint is its bounding box."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as src:
            return Scene(
                id=scene_id or path.stem, path=path, sensor=Sensor.generic, role=role, date=None, group="g",
                is_sar=False, crs=src.crs, transform=src.transform, width=src.width, height=src.height,
                bands=src.count, dtype=src.dtypes[0], nodata=src.nodata, footprint=box(*src.bounds),
            )


def group_of(*scenes: Scene, area=None, name: str = "g") -> Group:
    members = {scene.role: scene for scene in scenes}
    if area is None:
        area = members[Role.A].footprint
        for scene in scenes:
            if not scene.role.is_label:
                area = area.intersection(scene.footprint)
    return Group(name, members, {role: 1.0 for role in members}, area)


def pattern(height: int, width: int, bands: int = 1) -> np.ndarray:
    """Distinct values per pixel and band, so any shift is visible."""
    return (np.arange(bands * height * width).reshape(bands, height, width) % 60000 + 1).astype(np.uint16)


@pytest.fixture
def reference(tmp_path) -> Scene:
    return scene_of(write_raster(tmp_path / "a.tif", pattern(80, 100), transform=A_TRANSFORM))


# --------------------------------------------------------------------------------------------------
# reference_grid


def test_grid_takes_the_reference_crs_and_resolution_over_the_common_area_snapped_to_its_lattice(reference):
    area = box(X0 + 10, Y0 - 300, X0 + 200, Y0 - 100)
    grid = reference_grid(group_of(reference, area=area), UTM, GridConfig())
    assert grid.crs == UTM
    assert grid.resolution == 4.0
    # Columns 2..50 and rows 25..75 of the reference: the smallest lattice window covering the area.
    assert grid.transform == Affine(4.0, 0, X0 + 8, 0, -4.0, Y0 - 100)
    assert (grid.width, grid.height) == (48, 50)


def test_grid_of_a_lattice_aligned_area_is_exactly_that_area(reference):
    area = box(X0 + 40, Y0 - 200, X0 + 120, Y0 - 80)
    grid = reference_grid(group_of(reference, area=area), UTM, GridConfig())
    assert grid.transform == Affine(4.0, 0, X0 + 40, 0, -4.0, Y0 - 80)
    assert (grid.width, grid.height) == (20, 30)
    left, top = grid.transform @ (0, 0)
    right, bottom = grid.transform @ (grid.width, grid.height)
    assert (left, bottom, right, top) == area.bounds


def test_grid_covers_the_intersection_of_the_images(tmp_path, reference):
    b_transform = Affine(4.0, 0, X0 + 120, 0, -4.0, Y0 - 60)  # 30 px right, 15 px down
    b = scene_of(write_raster(tmp_path / "b.tif", pattern(80, 100), transform=b_transform), Role.B)
    grid = reference_grid(group_of(reference, b), UTM, GridConfig())
    assert grid.transform == Affine(4.0, 0, X0 + 120, 0, -4.0, Y0 - 60)
    assert (grid.width, grid.height) == (70, 65)


def test_config_resolution_overrides_the_reference(reference):
    area = box(X0 + 10, Y0 - 300, X0 + 200, Y0 - 100)
    grid = reference_grid(group_of(reference, area=area), UTM, GridConfig(resolution=10.0))
    assert grid.crs == UTM
    assert grid.resolution == 10.0
    assert grid.transform == Affine(10.0, 0, X0 + 10, 0, -10.0, Y0 - 100)
    assert (grid.width, grid.height) == (19, 20)


def test_config_crs_overrides_the_reference(reference):
    area = box(X0 + 10, Y0 - 300, X0 + 200, Y0 - 100)
    grid = reference_grid(group_of(reference, area=area), UTM, GridConfig(crs="EPSG:3857", resolution=5.0))
    assert grid.crs == CRS.from_epsg(3857)
    assert grid.transform.a == 5.0 and grid.transform.e == -5.0
    assert grid.transform.c % 5 == 0 and grid.transform.f % 5 == 0  # snapped to the 5 m lattice
    projected = shape(transform_geom(UTM, "EPSG:3857", mapping(area)))
    left, top = grid.transform @ (0, 0)
    right, bottom = grid.transform @ (grid.width, grid.height)
    assert box(left, bottom, right, top).contains(projected)
    pl, pb, pr, pt = projected.bounds
    assert max(pl - left, pb - bottom, right - pr, top - pt) < 5.0  # no more than one pixel of margin


def test_config_crs_without_resolution_keeps_the_reference_ground_resolution(reference):
    grid = reference_grid(group_of(reference), UTM, GridConfig(crs="EPSG:32651"))
    assert grid.crs == CRS.from_epsg(32651)
    assert grid.resolution == pytest.approx(4.0, rel=0.05)
    assert grid.width * grid.resolution == pytest.approx(400, rel=0.1)


def test_config_reference_role_chooses_the_reference(tmp_path, reference):
    c_transform = Affine(10.0, 0, X0 - 3, 0, -10.0, Y0 + 7)
    c = scene_of(write_raster(tmp_path / "c.tif", pattern(50, 50), transform=c_transform), Role.C)
    area = box(X0 + 10, Y0 - 300, X0 + 200, Y0 - 100)
    grid = reference_grid(group_of(reference, c, area=area), UTM, GridConfig(reference_role=Role.C))
    assert grid.resolution == 10.0
    assert (grid.transform.c - c_transform.c) % 10 == 0 and (grid.transform.f - c_transform.f) % 10 == 0
    assert grid.transform == Affine(10.0, 0, X0 + 7, 0, -10.0, Y0 - 93)
    assert (grid.width, grid.height) == (20, 21)


def test_an_empty_common_area_is_an_error_naming_the_group(reference):
    group = group_of(reference, area=box(0, 0, 1, 1).intersection(box(5, 5, 6, 6)), name="hefei-07")
    with pytest.raises(ValueError, match="group 'hefei-07' has no common valid area"):
        reference_grid(group, UTM, GridConfig())


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_pixel_space_grid_covers_the_common_area_in_pixels(tmp_path):
    a = scene_of(write_raster(tmp_path / "a.tif", pattern(40, 50), crs=None, transform=Affine.identity()))
    grid = reference_grid(group_of(a, area=box(2.5, 3, 30, 20.2)), None, GridConfig())
    assert grid.crs is None
    assert grid.transform == Affine(1, 0, 2, 0, 1, 3)
    assert (grid.width, grid.height) == (28, 18)


def test_group_grid_window_transform():
    grid = GroupGrid(UTM, A_TRANSFORM, 100, 80)
    assert grid.window_transform(Window(10, 5, 20, 20)) == Affine(4.0, 0, X0 + 40, 0, -4.0, Y0 - 20)


# --------------------------------------------------------------------------------------------------
# warped


def test_a_whole_pixel_shifted_image_lands_on_the_grid_pixel_exactly(tmp_path, reference):
    data = pattern(60, 70, bands=3)
    b_transform = Affine(4.0, 0, X0 + 12, 0, -4.0, Y0 + 8)  # 3 px right, 2 px up of the reference
    b = scene_of(write_raster(tmp_path / "b.tif", data, transform=b_transform), Role.B)
    grid = GroupGrid(UTM, Affine(4.0, 0, X0 + 40, 0, -4.0, Y0 - 20), 30, 25)  # reference px (10, 5)
    with warped(b, grid) as src:
        assert src.crs == UTM
        assert src.transform == grid.transform
        assert (src.count, src.height, src.width) == (3, 25, 30)
        out = src.read()
    # Grid pixel (r, c) is reference pixel (r + 5, c + 10), B pixel (r + 7, c + 7).
    np.testing.assert_array_equal(out, data[:, 7:32, 7:37])


def test_the_reference_itself_is_only_cropped(reference):
    grid = GroupGrid(UTM, Affine(4.0, 0, X0 + 40, 0, -4.0, Y0 - 20), 30, 25)
    with warped(reference, grid) as src:
        np.testing.assert_array_equal(src.read(1), pattern(80, 100)[0, 5:30, 10:40])


def test_outside_the_image_and_its_nodata_are_nodata_on_the_grid(tmp_path, reference):
    data = pattern(20, 20)
    data[0, 5:8, 5:8] = 0
    b_transform = Affine(4.0, 0, X0 + 40, 0, -4.0, Y0 - 20)  # reference px (10, 5)
    b = scene_of(write_raster(tmp_path / "b.tif", data, transform=b_transform, nodata=0), Role.B)
    grid = GroupGrid(UTM, A_TRANSFORM, 40, 30)
    with warped(b, grid) as src:
        assert src.nodata == 0
        out = src.read(1)
        mask = src.read_masks(1)
    valid = np.zeros((30, 40), bool)
    valid[5:25, 10:30] = True
    valid[10:13, 15:18] = False  # the hole
    np.testing.assert_array_equal(mask > 0, valid)
    np.testing.assert_array_equal(out[valid], pattern(20, 20)[0][valid[5:25, 10:30]])
    assert (out[~valid] == 0).all()


def test_float_images_without_nodata_get_nan_outside(tmp_path):
    data = np.full((1, 10, 10), 2.5, np.float32)
    a = scene_of(write_raster(tmp_path / "a.tif", data, transform=A_TRANSFORM))
    grid = GroupGrid(UTM, Affine(4.0, 0, X0 - 8, 0, -4.0, Y0), 12, 10)  # 2 px left of the image
    with warped(a, grid) as src:
        out = src.read(1)
    assert np.isnan(out[:, :2]).all()
    assert (out[:, 2:] == 2.5).all()


def test_a_label_keeps_its_255_as_data_with_an_alpha_band(tmp_path, reference):
    label = np.zeros((20, 20), np.uint8)
    label[4:10, 4:10] = 255  # GOLD's change value
    label_transform = Affine(4.0, 0, X0 + 40, 0, -4.0, Y0 - 20)
    scene = scene_of(write_raster(tmp_path / "label.tif", label, transform=label_transform), Role.label)
    grid = GroupGrid(UTM, A_TRANSFORM, 40, 30)
    with warped(scene, grid) as src:
        assert src.count == 2
        values, alpha = src.read()
    np.testing.assert_array_equal(values[5:25, 10:30], label)
    inside = np.zeros((30, 40), bool)
    inside[5:25, 10:30] = True
    np.testing.assert_array_equal(alpha, np.where(inside, 255, 0))


def test_a_correction_is_applied_in_the_same_warp(tmp_path, reference):
    data = pattern(60, 70)
    b = scene_of(write_raster(tmp_path / "b.tif", data, transform=A_TRANSFORM), Role.B)
    grid = GroupGrid(UTM, Affine(4.0, 0, X0 + 40, 0, -4.0, Y0 - 20), 30, 25)
    with warped(b, grid, correction=Affine.translation(2, -1)) as src:
        out = src.read(1)
        write_cog(src, tmp_path / "b_grid.tif", grid=grid, block_size=16)
    # Grid pixel (r, c) shows what the uncorrected warp has at (r - 1, c + 2).
    np.testing.assert_array_equal(out, data[0, 4:29, 12:42])
    with rasterio.open(tmp_path / "b_grid.tif") as cog:
        assert cog.transform == grid.transform  # labelled with the grid, not the corrected transform
        np.testing.assert_array_equal(cog.read(1), data[0, 4:29, 12:42])


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_pixel_space_images_are_warped_by_the_affine_only(tmp_path):
    data = pattern(30, 40)
    a = scene_of(write_raster(tmp_path / "a.tif", data, crs=None, transform=Affine.identity()))
    grid = GroupGrid(None, Affine.translation(5, 3), 20, 10)
    with warped(a, grid, correction=Affine.translation(1, 0)) as src:
        assert src.crs is None
        assert src.transform == grid.transform
        out = src.read(1)
    np.testing.assert_array_equal(out, data[0, 3:13, 6:26])


def test_grid_nodata():
    def fake(role, dtype, nodata):
        return Scene("s", None, Sensor.generic, role, None, None, False, UTM, A_TRANSFORM, 1, 1, 1, dtype, nodata,
                     box(0, 0, 1, 1))

    assert grid_nodata(fake(Role.label, "uint8", 0)) == NODATA_U8
    assert grid_nodata(fake(Role.A, "uint16", 65535)) == 65535
    assert grid_nodata(fake(Role.A, "uint16", None)) == 0
    assert np.isnan(grid_nodata(fake(Role.B, "float32", None)))


# --------------------------------------------------------------------------------------------------
# labels, blocks, COGs


def test_encode_label():
    values = np.array([[0, 1, 2, 127], [128, 255, 1, 0]], np.uint8)
    alpha = np.array([[255, 255, 255, 255], [255, 255, 255, 0]], np.uint8)
    np.testing.assert_array_equal(encode_label(values, alpha, "binary255"), [[0, 0, 0, 0], [1, 1, 0, 255]])
    np.testing.assert_array_equal(encode_label(values, alpha, "change01"), [[0, 1, 255, 255], [255, 255, 1, 255]])
    np.testing.assert_array_equal(encode_label(values, alpha, "classes"), [[0, 1, 2, 127], [128, 255, 1, 255]])


def test_block_windows_tile_the_raster_once():
    windows = list(block_windows(5, 3, 2))
    assert windows[0] == Window(0, 0, 2, 2)
    assert windows[-1] == Window(4, 2, 1, 1)
    covered = np.zeros((3, 5), int)
    for w in windows:
        covered[w.row_off : w.row_off + w.height, w.col_off : w.col_off + w.width] += 1
    assert (covered == 1).all()


def test_write_cog_stores_the_warped_image_on_the_grid(tmp_path, reference):
    data = pattern(60, 70, bands=2)
    b = scene_of(write_raster(tmp_path / "b.tif", data, transform=A_TRANSFORM, nodata=0), Role.B)
    grid = GroupGrid(UTM, Affine(4.0, 0, X0 + 40, 0, -4.0, Y0 - 20), 30, 25)
    destination = tmp_path / "grid" / "b.tif"
    with warped(b, grid) as src:
        write_cog(src, destination, grid=grid, block_size=16, tags={"role": "B"})
    with rasterio.open(destination) as cog:
        assert cog.crs == UTM
        assert cog.transform == grid.transform
        assert (cog.count, cog.height, cog.width) == (2, 25, 30)
        assert cog.dtypes == ("uint16", "uint16")
        assert cog.nodata == 0
        assert cog.tags()["role"] == "B"
        assert cog.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        np.testing.assert_array_equal(cog.read(), data[:, 5:30, 10:40])
    assert sorted(p.name for p in destination.parent.iterdir()) == ["b.tif"]


def test_write_cog_encodes_a_label_with_255_outside(tmp_path, reference):
    label = np.zeros((20, 20), np.uint8)
    label[4:10, 4:10] = 255
    label_transform = Affine(4.0, 0, X0 + 40, 0, -4.0, Y0 - 20)
    scene = scene_of(write_raster(tmp_path / "label.tif", label, transform=label_transform), Role.label)
    grid = GroupGrid(UTM, A_TRANSFORM, 40, 30)
    with warped(scene, grid) as src:
        write_cog(src, tmp_path / "label_grid.tif", grid=grid, block_size=16, label_encoding="binary255")
    expected = np.full((30, 40), NODATA_U8, np.uint8)
    expected[5:25, 10:30] = 0
    expected[9:15, 14:20] = 1
    with rasterio.open(tmp_path / "label_grid.tif") as cog:
        assert cog.count == 1 and cog.dtypes == ("uint8",)
        assert cog.nodata == NODATA_U8
        assert cog.transform == grid.transform
        np.testing.assert_array_equal(cog.read(1), expected)
