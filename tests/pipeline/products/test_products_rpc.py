"""RPC sidecars: parsing (against GDAL's own reader), the forward model, and orthorectification."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest
import rasterio
from rasterio.errors import NotGeoreferencedWarning
from rasterio.warp import transform as transform_points

from pipeline.errors import InputError
from pipeline.products.rpc import (
    format_rpb,
    image_corners,
    ortho_grid,
    orthorectify,
    parse_rpb,
    read_rpc,
    rpc_forward,
    rpc_inverse,
    rpc_warp_options,
    utm_crs,
)
from tests.fixtures.products import TERRAIN_HEIGHT, sensor_model_rpc


def test_real_worldview_rpb_parses_like_gdal(shared_data, tmp_path):
    source = shared_data / "geo-misc" / "gdal-md" / "md_dg.RPB"
    ours = read_rpc(source)
    # GDAL reads a same-basename .RPB sidecar into the RPC domain
    shutil.copy(source, tmp_path / "md_dg.RPB")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(tmp_path / "md_dg.tif", "w", driver="GTiff", width=8, height=8, count=1, dtype="uint8"):
            pass
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(tmp_path / "md_dg.tif") as src:
            gdal = src.rpcs
    assert gdal is not None
    for key, value in ours.to_dict().items():
        if key.startswith("err"):
            continue
        assert np.allclose(value, getattr(gdal, key)), key
    assert (ours.line_off, ours.samp_off, ours.lat_off, ours.long_off) == (812, 850, 41.8791, 12.5798)
    assert ours.line_num_coeff[2] == pytest.approx(-1.109763)
    # RPB text round trip
    again = parse_rpb(format_rpb(ours))
    for key, value in ours.to_dict().items():
        assert np.allclose(value, getattr(again, key)), key


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("lineOffset = 1;", "missing"),
        ("lineNumCoef = (1, 2, 3);", "has 3 coefficients, expected 20"),
        ("lineOffset = abc;", "not a number"),
    ],
)
def test_malformed_rpb_names_the_file(tmp_path, text, problem):
    path = tmp_path / "x-MSS1.rpb"
    path.write_text(text)
    with pytest.raises(InputError, match=problem) as info:
        read_rpc(path)
    assert info.value.path == path


def test_inverse_inverts_the_forward_model(shared_data):
    rpc = read_rpc(shared_data / "geo-misc" / "gdal-md" / "md_dg.RPB")
    samp = np.array([0.0, 1699.0, 850.3, 12.5])
    line = np.array([0.0, 1599.0, 812.7, 1400.25])
    lon, lat = rpc_inverse(rpc, samp, line, 120.0)
    back_s, back_l = rpc_forward(rpc, lon, lat, 120.0)
    assert np.abs(back_s - samp).max() < 1e-6 and np.abs(back_l - line).max() < 1e-6


def _coordinate_image(path, width, height):
    cols, rows = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=2, dtype="float32") as dst:
            dst.write(np.stack([cols, rows]))


def test_orthorectified_pixels_land_where_the_rpcs_say(scenery, tmp_path):
    """Every output pixel holds the sensor position the RPC forward model gives for its ground point."""
    width, height = 300, 260
    rpc = sensor_model_rpc(scenery, width=width, height=height, gsd=3.2, heading_deg=8.0)
    _coordinate_image(tmp_path / "coords.tif", width, height)
    crs = utm_crs(rpc.long_off, rpc.lat_off)
    transform, out_w, out_h = ortho_grid(rpc, width, height, TERRAIN_HEIGHT, crs, 3.2)
    profile = dict(driver="GTiff", width=out_w, height=out_h, count=2, dtype="float32", crs=crs,
                   transform=transform, nodata=np.nan)
    with rasterio.open(tmp_path / "ortho.tif", "w", **profile) as dst:
        orthorectify(tmp_path / "coords.tif", dst, rpc=rpc, bands=[1, 2], dst_bands=[1, 2], src_nodata=None,
                     dst_nodata=np.nan, options=rpc_warp_options(rpc, height=None, dem=None, dem_srs=None))
    with rasterio.open(tmp_path / "ortho.tif") as src:
        data = src.read()
    rows, cols = np.mgrid[0:out_h, 0:out_w]
    x, y = transform @ (cols + 0.5, rows + 0.5)
    lon, lat = transform_points(crs, "EPSG:4326", x.ravel(), y.ravel())
    samp, line = rpc_forward(rpc, lon, lat, TERRAIN_HEIGHT)
    samp, line = samp.reshape(out_h, out_w), line.reshape(out_h, out_w)
    inside = (samp >= 0) & (samp <= width - 1) & (line >= 0) & (line <= height - 1)
    valid = np.isfinite(data[0])
    # the valid area is the image's footprint
    assert (valid & inside).sum() >= 0.999 * inside.sum()
    error = np.hypot(data[0] - samp, data[1] - line)[inside & valid]
    assert error.max() < 0.5, error.max()
    # corners: the valid output pixel nearest each corner pixel holds that corner's sensor position
    for sx, sy in ((0, 0), (width - 1, 0), (width - 1, height - 1), (0, height - 1)):
        distance = np.where(valid, np.hypot(samp - sx, line - sy), np.inf)
        r, c = np.unravel_index(np.argmin(distance), distance.shape)
        assert distance[r, c] < 1.0  # an output pixel centre within one sensor pixel of the corner
        assert abs(data[0, r, c] - samp[r, c]) < 0.5 and abs(data[1, r, c] - line[r, c]) < 0.5


def test_outer_corners_bound_the_ortho_grid(scenery):
    rpc = sensor_model_rpc(scenery, width=200, height=200, gsd=5.0, heading_deg=-11.0)
    crs = utm_crs(rpc.long_off, rpc.lat_off)
    transform, w, h = ortho_grid(rpc, 200, 200, TERRAIN_HEIGHT, crs, 5.0)
    lon, lat = image_corners(rpc, 200, 200, TERRAIN_HEIGHT)
    x, y = transform_points("EPSG:4326", crs, lon.tolist(), lat.tolist())
    cols, rows = ~transform @ (np.array(x), np.array(y))
    assert cols.min() >= 0 and rows.min() >= 0 and cols.max() <= w and rows.max() <= h
    assert transform.c % 5.0 == 0 and transform.f % 5.0 == 0  # on the lattice of the pixel size
