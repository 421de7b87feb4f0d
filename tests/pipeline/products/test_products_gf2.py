"""GF-2 PMS L1A: recognised by name, orthorectified where the RPCs say, metadata, PAN, calibration."""

from __future__ import annotations

import datetime as dt
import shutil
import warnings

import numpy as np
import pytest
import rasterio
from rasterio.errors import NotGeoreferencedWarning
from rasterio.warp import transform as transform_points

from pipeline.config import ProductsConfig, Sensor
from pipeline.errors import InputError
from pipeline.products import read_product, recognise
from pipeline.products.rpc import read_rpc, rpc_forward
from tests.fixtures.products import TERRAIN_HEIGHT, write_gf2_product

SCALE = 50.0  # sensor coordinates encoded as 1 + SCALE * (col, row)


def _mss(folder):
    return next(folder.glob("*-MSS1.tiff"))


def _encode_coordinates(folder):
    """Replace the MSS pixels by their own (col, row), so the ortho output says where each came from."""
    path = _mss(folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "r+") as dst:  # not "w": GDAL would delete the .rpb sidecar
            h, w = dst.shape
            cols, rows = np.meshgrid(np.arange(w), np.arange(h))
            data = np.stack([1 + SCALE * cols, 1 + SCALE * rows, np.full_like(cols, 500), np.full_like(cols, 500)])
            dst.write(data.astype(np.uint16))
    return w, h


def _decoded_errors(path, rpc, height):
    """Per valid output pixel: decoded sensor position − RPC forward model of its ground point (px).

    Returns (d_samp, d_line, samp, line). Pixels whose ground point falls less than half a pixel
    outside the outermost sensor pixel centres are valid too, but hold an edge value (there is no
    neighbour to interpolate with): compare where 0 <= samp <= width - 1 (see ``inside``).
    """
    with rasterio.open(path) as src:
        data = src.read().astype(np.float64)
        transform, crs = src.transform, src.crs
    rows, cols = np.nonzero(data[0] > 0)
    x, y = transform @ (cols + 0.5, rows + 0.5)
    lon, lat = transform_points(crs, "EPSG:4326", x, y)
    samp, line = rpc_forward(rpc, lon, lat, height)
    decoded_s = (data[0, rows, cols] - 1) / SCALE
    decoded_l = (data[1, rows, cols] - 1) / SCALE
    return decoded_s - samp, decoded_l - line, samp, line


def _inside(samp, line, width, height):
    return (samp >= 0) & (samp <= width - 1) & (line >= 0) & (line <= height - 1)


def test_recognised_from_folder_key_file_and_archive(pristine, tmp_path, scenery):
    folder = pristine("gf2")
    product = recognise(folder)
    assert product.sensor is Sensor.gf2 and product.name == folder.name
    assert product.date == dt.date(2019, 5, 1)
    assert recognise(_mss(folder)).name == folder.name
    for other in ("*-MSS1.rpb", "*-MSS1.xml", "*-MSS1.jpg"):
        assert recognise(next(folder.glob(other))) is None
    archived = write_gf2_product(tmp_path, scenery, size=64, archive="tar.gz")
    assert archived.path.name.endswith(".tar.gz")
    assert recognise(archived.path).name == archived.name
    renamed = tmp_path / "my_scene"
    shutil.copytree(folder, renamed)
    assert recognise(renamed).sensor is Sensor.gf2  # by the files inside
    with pytest.raises(InputError, match="named as a s2 scene but looks like a gf2 product"):
        recognise(renamed, Sensor.s2)


def test_read_product_metadata_and_grid(pristine, settings):
    read = read_product(recognise(pristine("gf2")), settings)
    assert read.bands == ("blue", "green", "red", "nir")
    assert read.acquired == dt.datetime(2019, 5, 1, 11, 23, 53)
    with rasterio.open(read.path) as src:
        assert src.crs.to_epsg() == 32650  # the UTM zone of the scene centre
        assert src.res == (3.2, 3.2)  # the XML's ImageGSD
        assert src.transform.c / 3.2 == pytest.approx(round(src.transform.c / 3.2))  # lattice of the pixel size
        assert src.descriptions == ("blue", "green", "red", "nir")
        assert (src.dtypes[0], src.nodata) == ("uint16", 0)
        tags = src.tags()
        data = src.read()
    assert tags["SENSOR"] == "gf2" and tags["CAMERA"] == "PMS1" and tags["CLOUD_PERCENT"] == "2.0"
    assert tags["ACQUISITION_TIME"] == "2019-05-01T11:23:53" and tags["PRODUCT_ID"] == pristine("gf2").name
    assert "constant height 35 m" in tags["ORTHORECTIFICATION"]
    assert float(tags["XML_CORNERS_VS_RPC_M"]) < 1.0 and tags["XML_CORNERS"].startswith("TopLeft:117.")
    valid = data[0] > 0
    assert 0.6 < valid.mean() < 0.95  # a rotated footprint inside a north-up grid
    assert data[:, valid].min() >= 1 and data.max() <= 1023  # 10-bit DN kept
    # cached: reading again returns the same file without rewriting it
    mtime = read.path.stat().st_mtime_ns
    again = read_product(recognise(pristine("gf2")), settings)
    assert again.path == read.path and again.path.stat().st_mtime_ns == mtime and again.acquired == read.acquired


def test_orthorectified_corners_match_the_rpc_forward_model(copy_of, settings):
    folder = copy_of("gf2")
    width, height = _encode_coordinates(folder)
    rpc = read_rpc(next(folder.glob("*-MSS1.rpb")))
    read = read_product(recognise(folder), settings)
    ds, dl, samp, line = _decoded_errors(read.path, rpc, TERRAIN_HEIGHT)
    error = np.hypot(ds, dl)
    inside = _inside(samp, line, width, height)
    assert inside.sum() > 0.98 * width * height  # same pixel size: as many output pixels as sensor pixels
    assert error[inside].max() < 0.5, f"max {error[inside].max():.3f} px"
    assert np.abs(ds).mean() < 0.05 and np.abs(dl).mean() < 0.05  # no bias
    # corner by corner: the valid output pixels nearest the four image corners
    for sx, sy in ((0, 0), (width - 1, 0), (width - 1, height - 1), (0, height - 1)):
        k = np.argmin(np.where(inside, np.hypot(samp - sx, line - sy), np.inf))
        assert np.hypot(samp[k] - sx, line[k] - sy) < 1.0
        assert error[k] < 0.5


def test_dem_heights_move_pixels_as_the_rpcs_say(copy_of, settings, tmp_path):
    folder = copy_of("gf2")
    _encode_coordinates(folder)
    rpc = read_rpc(next(folder.glob("*-MSS1.rpb")))
    dem = tmp_path / "dem.tif"
    with rasterio.open(dem, "w", driver="GTiff", width=50, height=50, count=1, dtype="float32", crs="EPSG:4326",
                       transform=rasterio.transform.from_bounds(117.1, 31.8, 117.3, 32.0, 50, 50)) as dst:
        dst.write(np.full((1, 50, 50), TERRAIN_HEIGHT + 100.0, np.float32))
    flat = read_product(recognise(folder), settings)
    raised = read_product(recognise(folder), settings.model_copy(update={"dem": dem}))
    assert raised.path != flat.path  # the DEM is part of the cache key
    ds, dl, samp, line = _decoded_errors(raised.path, rpc, TERRAIN_HEIGHT + 100.0)
    assert np.hypot(ds, dl)[_inside(samp, line, 640, 640)].max() < 0.5
    # 100 m higher ground is seen 0.25 * 100 m = 7.8 px further across track by this fixture's sensor
    fs, _, _, _ = _decoded_errors(raised.path, rpc, TERRAIN_HEIGHT)
    assert np.median(fs) == pytest.approx(0.25 * 100 / 3.2, abs=0.3)


def test_pan_band_and_calibration(tmp_path, scenery):
    product = write_gf2_product(tmp_path / "in", scenery, size=96, pan=True, camera=2)
    settings = ProductsConfig(cache=tmp_path / "cache", gf2={"pan": True})
    read = read_product(recognise(product.path), settings)
    assert read.bands == ("blue", "green", "red", "nir", "pan")
    with rasterio.open(read.path) as src:
        dn = src.read().astype(np.float64)
        assert src.count == 5 and src.res == (3.2, 3.2)
    valid = (dn > 0).all(axis=0)
    assert valid.sum() > 0.5 * valid.size
    assert np.corrcoef(dn[4][valid], dn[:3, valid].mean(axis=0))[0, 1] > 0.8  # PAN sees the same ground

    table = {"PMS2": {"blue": [0.1453, 0.0], "green": [0.1826, -0.5], "red": [0.1727, 0.2], "nir": [0.1908, 0.0],
                      "pan": [0.1538, 0.0]}}
    calibrated = read_product(
        recognise(product.path), ProductsConfig(cache=tmp_path / "cache", gf2={"pan": True, "calibration": table})
    )
    with rasterio.open(calibrated.path) as src:
        radiance = src.read()
        assert src.dtypes[0] == "float32" and np.isnan(src.nodata) and src.tags()["UNITS"].startswith("radiance")
    gains = np.array([table["PMS2"][b] for b in read.bands])
    expected = gains[:, 0, None] * dn[:, valid] + gains[:, 1, None]
    # the uint16 read rounds the interpolated DN, the calibrated one keeps them: within half a DN
    assert (np.abs(radiance[:, valid] - expected) <= 0.5 * gains[:, 0, None] + 1e-3).all()
    assert np.isnan(radiance[:, ~valid]).all()
    with pytest.raises(InputError, match="no gain/offset table for camera PMS2"):
        read_product(recognise(product.path), ProductsConfig(gf2={"calibration": {"PMS1": table["PMS2"]}}))


def test_bad_products_give_clear_errors(copy_of, settings):
    folder = copy_of("gf2")
    next(folder.glob("*-MSS1.xml")).write_text("<ProductMetaData><CenterTime>2019-05-01 11:23")
    with pytest.raises(InputError, match=r"malformed XML in .*-MSS1.xml") as info:
        read_product(recognise(folder), settings)
    assert info.value.path == folder

    folder = copy_of("gf2")
    xml = next(folder.glob("*-MSS1.xml"))
    xml.write_text(xml.read_text().replace("CenterTime", "Centre").replace("StartTime", "Begin").replace("ReceiveTime", "Got"))
    with pytest.raises(InputError, match="no readable CenterTime"):
        read_product(recognise(folder), settings)

    folder = copy_of("gf2")
    xml = next(folder.glob("*-MSS1.xml"))
    xml.write_text(xml.read_text().replace("<TopLeftLatitude>31.", "<TopLeftLatitude>30."))
    with pytest.raises(InputError, match="XML corner coordinates and the RPCs disagree by 1..\\.. km"):
        read_product(recognise(folder), settings)

    for missing, problem in (("*-MSS1.tiff", "missing band file: no MSS image"), ("*-MSS1.rpb", r"missing file .*-MSS1.rpb")):
        folder = copy_of("gf2")
        next(folder.glob(missing)).unlink()
        with pytest.raises(InputError, match=problem) as info:
            read_product(recognise(folder), settings)
        assert info.value.path == folder
