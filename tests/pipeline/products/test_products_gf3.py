"""GF-3: sigma0 calibration equals a hand computation (SLC and detected), guards, speckle, geocoding."""

from __future__ import annotations

import warnings
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import rasterio
from rasterio.errors import NotGeoreferencedWarning
from rasterio.warp import transform as transform_points

from pipeline.config import ProductsConfig, Sensor
from pipeline.errors import InputError
from pipeline.products import read_product, recognise
from pipeline.products.gf3 import sigma0_db
from pipeline.products.rpc import read_rpc, rpc_forward
from pipeline.products.speckle import filter_strips, lee, refined_lee
from tests.fixtures.products import TERRAIN_HEIGHT, write_gf3_product


def test_sigma0_formula_by_hand():
    # SLC: A = sqrt(I² + Q²) · Qv / 32767; sigma0 = 10 log10(A²) − K
    i, q, qv, k = 300.0, -400.0, 2.75, 31.5
    hand = 10 * np.log10((np.hypot(i, q) * qv / 32767) ** 2) - k
    assert sigma0_db(np.array([[[i]], [[q]]]), qv, k, slc=True)[0, 0] == pytest.approx(hand, abs=1e-5)
    # SNAP's form: every raw sample times Qv / 32767 / sqrt(10^(K/10)), then I² + Q²
    factor = qv / 32767 / np.sqrt(10 ** (k / 10))
    assert hand == pytest.approx(10 * np.log10((i * factor) ** 2 + (q * factor) ** 2), abs=1e-9)
    # detected: A = DN · Qv / 65535
    dn, qv = 1000.0, 1843.2
    hand = 10 * np.log10((dn * qv / 65535) ** 2) - k
    assert sigma0_db(np.array([[dn]]), qv, k, slc=False)[0, 0] == pytest.approx(hand, abs=1e-5)
    # nodata: DN 0, I = Q = 0
    assert np.isnan(sigma0_db(np.array([[0.0]]), qv, k, slc=False)[0, 0])
    assert np.isnan(sigma0_db(np.zeros((2, 1, 1)), qv, k, slc=True)[0, 0])


def _cells(size: int, cell: int, seed: int = 0) -> np.ndarray:
    """Piecewise-constant sigma0 (dB) in sensor geometry: cells of one value each, −25…0 dB."""
    values = np.random.default_rng(seed).uniform(-25, 0, (size // cell + 1, size // cell + 1))
    rows, cols = np.mgrid[0:size, 0:size] // cell
    return values[rows, cols]


def _hand_sigma0(folder, pol: str, slc: bool) -> np.ndarray:
    """sigma0 dB of every sensor pixel, computed here from the raw file and the meta.xml values."""
    meta = ET.parse(next(folder.glob("*.meta.xml"))).getroot()
    qv = float(meta.find(f"imageinfo/QualifyValue/{pol}").text)
    k = float(meta.find(f"processinfo/CalibrationConst/{pol}").text)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(next(folder.glob(f"*_{pol}_*.tiff"))) as src:
            raw = src.read().astype(np.float64)
    amplitude = np.hypot(raw[0], raw[1]) * qv / 32767 if slc else raw[0] * qv / 65535
    return 10 * np.log10(amplitude**2) - k


@pytest.mark.parametrize("slc", [False, True], ids=["detected", "slc"])
def test_geocoded_sigma0_equals_hand_computation(tmp_path, scenery, slc):
    size, cell = 160, 20
    truth = _cells(size, cell)
    product = write_gf3_product(tmp_path / "in", scenery, slc=slc, size=size, polarisations=("VV", "VH"), sigma0_db=truth)
    read = read_product(recognise(product.path), ProductsConfig(cache=tmp_path / "cache"))
    assert read.sensor is Sensor.gf3 and read.bands == ("VV", "VH")
    hand = _hand_sigma0(product.path, "VV", slc)
    with rasterio.open(read.path) as src:
        out = src.read(1)
        transform, crs = src.transform, src.crs
        tags = src.tags()
        assert src.res == (5.0, 5.0) and src.dtypes[0] == "float32" and np.isnan(src.nodata)
    assert tags["UNITS"] == "sigma0 dB" and tags["PRODUCT_TYPE"] == ("SLC" if slc else "DGM")
    # output pixels well inside one cell (>= 2 px from its edges): the cell's value, whatever the resampling
    rows, cols = np.nonzero(np.isfinite(out))
    x, y = transform @ (cols + 0.5, rows + 0.5)
    lon, lat = transform_points(crs, "EPSG:4326", x, y)
    rpc = read_rpc(next(product.path.glob("*_VV_*.rpc")))
    samp, line = rpc_forward(rpc, np.array(lon), np.array(lat), TERRAIN_HEIGHT)
    in_cell = lambda v: (np.mod(v, cell) >= 2) & (np.mod(v, cell) <= cell - 3)  # noqa: E731
    interior = in_cell(samp) & in_cell(line) & (samp >= 0) & (line >= 0) & (samp < size) & (line < size)
    assert interior.sum() > 0.3 * size * size
    expected = hand[np.rint(line[interior]).astype(int), np.rint(samp[interior]).astype(int)]
    difference = np.abs(out[rows[interior], cols[interior]] - expected)
    assert difference.max() < (0.01 if slc else 1e-3), difference.max()
    # and the hand values are the sigma0 the product was made from (quantisation aside)
    assert np.abs(hand - truth).max() < (0.05 if slc else 0.01)


def test_missing_or_nan_qualify_value_is_an_error(tmp_path, scenery):
    product = write_gf3_product(tmp_path / "in", scenery, size=48, qualify_override={"HV": None})
    settings = ProductsConfig(cache=tmp_path / "cache")
    with pytest.raises(InputError, match="QualifyValue for HV is missing or NaN") as info:
        read_product(recognise(product.path), settings)
    assert info.value.path == product.path
    # the other polarisation alone is fine
    read = read_product(recognise(product.path), ProductsConfig(cache=tmp_path / "cache", gf3={"polarisations": ["hh"]}))
    assert read.bands == ("HH",)
    meta = next(product.path.glob("*.meta.xml"))
    meta.write_text(meta.read_text().replace("<HV>NULL</HV>", "<HV>NaN</HV>", 1))
    with pytest.raises(InputError, match="QualifyValue for HV"):
        read_product(recognise(product.path), settings)
    meta.write_text(meta.read_text().replace("<CalibrationConst><HH>31.480000</HH>", "<CalibrationConst><HH></HH>"))
    with pytest.raises(InputError, match="CalibrationConst for HH is missing"):
        read_product(recognise(product.path), ProductsConfig(cache=tmp_path / "c2", gf3={"polarisations": ["HH"]}))


def test_bad_gf3_products(copy_of, settings):
    folder = copy_of("gf3")
    next(folder.glob("*_HV_*.tiff")).unlink()
    with pytest.raises(InputError, match="missing band file: no image for polarisation HV"):
        read_product(recognise(folder), settings)
    folder = copy_of("gf3")
    next(folder.glob("*.meta.xml")).write_text("<product><imageinfo>")
    with pytest.raises(InputError, match=r"malformed XML in .*\.meta\.xml") as info:
        read_product(recognise(folder), settings)
    assert info.value.path == folder
    folder = copy_of("gf3")
    for rpc in folder.glob("*.rpc"):
        rpc.unlink()
    with pytest.raises(InputError, match="missing RPC file"):
        read_product(recognise(folder), settings)
    with pytest.raises(InputError, match="polarisation\\(s\\) VV asked for"):
        read_product(recognise(copy_of("gf3")), ProductsConfig(cache=settings.cache, gf3={"polarisations": ["VV"]}))


def test_recognised_by_name_and_meta_xml(pristine):
    folder = pristine("gf3")
    product = recognise(folder)
    assert product.sensor is Sensor.gf3 and product.name == folder.name
    assert recognise(next(folder.glob("*.meta.xml"))).name == folder.name
    assert recognise(next(folder.glob("*_HH_*.tiff"))) is None  # a band file is not a product
    slc = pristine("gf3slc")
    assert "_L1A_VV_" in slc.name and recognise(slc).sensor is Sensor.gf3


def test_speckle_filters_reduce_speckle_and_keep_edges():
    rng = np.random.default_rng(0)
    truth = np.where(np.arange(96)[None, :] < 48, 0.02, 0.2) * np.ones((96, 1))
    looks = 1.0
    speckled = truth * rng.gamma(looks, 1 / looks, truth.shape)
    enl = lambda a: a.mean() ** 2 / a.var()  # noqa: E731
    flat = (slice(10, 86), slice(10, 38))
    for method in (lee, refined_lee):
        filtered = method(speckled, 7, looks)
        assert enl(filtered[flat]) > 4 * enl(speckled[flat])  # speckle reduced
        assert filtered[flat].mean() == pytest.approx(truth[flat].mean(), rel=0.1)  # radiometry kept
    # refined Lee keeps the edge sharper: less dark-side contamination right next to it
    edge_lee = lee(speckled, 7, looks)[10:86, 45:48].mean()
    edge_refined = refined_lee(speckled, 7, looks)[10:86, 45:48].mean()
    assert edge_refined < edge_lee


def test_speckle_filters_respect_nodata_and_strips():
    rng = np.random.default_rng(1)
    image = rng.gamma(4, 0.25, (90, 70)).astype(np.float32)
    image[:, :10] = np.nan
    image[40:45, 30:35] = np.nan
    for name, method in (("lee", lee), ("refined_lee", refined_lee)):
        whole = method(image, 5, 4.0)
        assert np.isnan(whole[:, :10]).all() and np.isnan(whole[40:45, 30:35]).all()
        assert np.isfinite(whole[:, 10:][~np.isnan(image[:, 10:])]).all()
        out = np.full_like(image, -1.0)

        def write(r0, block):
            out[r0 : r0 + block.shape[0]] = block

        filter_strips(lambda a, b: image[a:b], write, image.shape[0], method=name, window=5, looks=4.0, rows=17)
        assert np.allclose(out, whole, equal_nan=True)


def test_speckle_filter_in_the_reader(pristine, tmp_path):
    plain = read_product(recognise(pristine("gf3")), ProductsConfig(cache=tmp_path / "c"))
    filtered = read_product(
        recognise(pristine("gf3")), ProductsConfig(cache=tmp_path / "c", gf3={"speckle": "refined_lee", "window": 7})
    )
    with rasterio.open(plain.path) as a, rasterio.open(filtered.path) as b:
        x, y = a.read(1), b.read(1)
        assert "refined_lee 7x7" in b.tags()["SPECKLE_FILTER"]
    both = np.isfinite(x) & np.isfinite(y)
    assert both.mean() > 0.5
    assert np.std(y[both]) < 0.8 * np.std(x[both])  # smoother, in dB
    assert abs(np.median(y[both]) - np.median(x[both])) < 1.5


def test_georeferenced_l2_keeps_its_grid(copy_of, settings):
    folder = copy_of("gf3")
    transform = rasterio.Affine(5.0, 0, 517100.0, 0, -5.0, 3531700.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        for tiff in folder.glob("*.tiff"):
            with rasterio.open(tiff, "r+") as dst:
                dst.crs, dst.transform = "EPSG:32650", transform
    read = read_product(recognise(folder), settings)
    with rasterio.open(read.path) as src:
        assert src.crs.to_epsg() == 32650 and src.transform == transform and src.shape == (560, 560)
        assert src.tags()["GEOCODING"] == "as delivered"
        out = src.read(2)
    hand = _hand_sigma0(folder, "HV", slc=False)
    assert np.allclose(out, hand, atol=1e-4)
