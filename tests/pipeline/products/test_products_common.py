"""Tests of pipeline.products.common: XML access, time parsing, file discovery, cache keys, GeoTIFF output."""

from __future__ import annotations

import datetime as dt
import hashlib
import shutil

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.windows import Window

from pipeline.config import Sensor
from pipeline.errors import InputError
from pipeline.products import common
from pipeline.products.common import (
    ReadProduct,
    block_rows,
    cache_key,
    describe,
    find,
    find_files,
    geotiff_profile,
    local,
    number,
    parse_time,
    parse_xml,
    row_blocks,
    sibling,
    source_fingerprint,
    text,
    to_db_in_place,
)

GF2_XML = """<?xml version="1.0" encoding="UTF-8" ?>
<ProductMetaData>
    <SatelliteID>GF2</SatelliteID>
    <SensorID>PMS1</SensorID>
    <ReceiveTime>2020-05-01 11:23:53</ReceiveTime>
    <StartTime>2020-05-01 11:23:50</StartTime>
    <CloudPercent>  3  </CloudPercent>
    <IntegrationTime>0.000125</IntegrationTime>
    <Bands>1,2,3,4</Bands>
    <Empty>   </Empty>
    <Missing/>
</ProductMetaData>
"""

GF3_XML = """<?xml version="1.0" encoding="UTF-8"?>
<product>
  <platform><CenterTime>2020-06-12 22:10:04.500000</CenterTime></platform>
  <imageinfo>
    <imagingTime><start>2020-06-12 22:10:02.107966</start><end>2020-06-12 22:10:06.523144</end></imagingTime>
    <QualifyValue><HH>NULL</HH><HV>NaN</HV><VH>inf</VH><VV>1.23e+03</VV></QualifyValue>
    <width>1200</width>
  </imageinfo>
  <processinfo><width>not-a-number</width></processinfo>
</product>
"""

S2_XML = """<?xml version="1.0" encoding="UTF-8" standalone="no"?>
<n1:Level-2A_User_Product xmlns:n1="https://psd-14.sentinel2.eo.esa.int/PSD/User_Product_Level-2A.xsd"
    xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
<n1:General_Info>
<Product_Info>
<PRODUCT_START_TIME>2020-05-01T02:10:31.024Z</PRODUCT_START_TIME>
<Product_Organisation><Granule_List><Granule granuleIdentifier="L2A_T50SMA"/></Granule_List></Product_Organisation>
</Product_Info>
</n1:General_Info>
<n1:Quality_Indicators_Info><Cloud_Coverage_Assessment>12.500000</Cloud_Coverage_Assessment></n1:Quality_Indicators_Info>
</n1:Level-2A_User_Product>
"""


@pytest.fixture
def gf2(tmp_path):
    path = tmp_path / "GF2_PMS1_E117.2_N31.9_20200501_L1A0004789012-MSS1.xml"
    path.write_text(GF2_XML)
    return parse_xml(path, tmp_path)


@pytest.fixture
def gf3(tmp_path):
    path = tmp_path / "GF3_KAS_FSII_020321_E117.2_N31.9_20200612_L1A_HHHV_L10004842461.meta.xml"
    path.write_text(GF3_XML)
    return parse_xml(path, tmp_path)


@pytest.fixture
def s2(tmp_path):
    path = tmp_path / "MTD_MSIL2A.xml"
    path.write_text(S2_XML)
    return parse_xml(path, tmp_path)


# --------------------------------------------------------------------------------------------------
# XML


def test_parse_xml_returns_the_root(gf2, s2):
    assert gf2.tag == "ProductMetaData"
    assert local(s2.tag) == "Level-2A_User_Product"


def test_parse_xml_of_a_missing_file_names_the_product_and_the_file(tmp_path):
    product = tmp_path / "GF2_PMS1_20200501_L1A0004789012"
    with pytest.raises(InputError, match="metadata file MSS1.xml is missing") as info:
        parse_xml(product / "MSS1.xml", product)
    assert info.value.path == product
    assert str(product) in str(info.value)


def test_parse_xml_of_a_malformed_file_names_the_product_and_the_file(tmp_path):
    product = tmp_path / "S2B_MSIL2A_20200501T023549.SAFE"
    product.mkdir()
    (product / "MTD_MSIL2A.xml").write_text(S2_XML[: len(S2_XML) // 2])
    with pytest.raises(InputError, match=r"malformed XML in MTD_MSIL2A.xml: .*line \d+") as info:
        parse_xml(product / "MTD_MSIL2A.xml", product)
    assert info.value.path == product


def test_local_drops_the_namespace():
    assert local("{https://psd-14.sentinel2.eo.esa.int/PSD/User_Product_Level-2A.xsd}General_Info") == "General_Info"
    assert local("StartTime") == "StartTime"


def test_find_searches_at_any_depth_ignoring_namespaces(s2, gf3):
    assert local(find(s2, "General_Info").tag) == "General_Info"
    assert find(s2, "Product_Info", "PRODUCT_START_TIME").text == "2020-05-01T02:10:31.024Z"
    assert find(s2, "Granule").get("granuleIdentifier") == "L2A_T50SMA"
    assert find(gf3, "imagingTime", "start").text == "2020-06-12 22:10:02.107966"


def test_find_follows_the_whole_path_and_tries_every_first_element(gf3):
    # Two <width> elements; the path picks the one under <processinfo>.
    assert find(gf3, "processinfo", "width").text == "not-a-number"
    assert find(gf3, "imageinfo", "width").text == "1200"
    assert find(gf3, "imageinfo", "height") is None
    assert find(gf3, "nothing") is None


def test_text_is_stripped_and_none_when_missing_or_empty(gf2):
    assert text(gf2, "SatelliteID") == "GF2"
    assert text(gf2, "CloudPercent") == "3"
    assert text(gf2, "Empty") is None
    assert text(gf2, "Missing") is None
    assert text(gf2, "NoSuchTag") is None


def test_number_reads_floats(gf2, gf3, s2):
    assert number(gf2, "CloudPercent") == 3.0
    assert number(gf2, "IntegrationTime") == 0.000125
    assert number(gf3, "QualifyValue", "VV") == 1230.0
    assert number(s2, "Cloud_Coverage_Assessment") == 12.5


@pytest.mark.parametrize(
    "names", [("QualifyValue", "HH"), ("QualifyValue", "HV"), ("QualifyValue", "VH"), ("processinfo", "width"),
              ("Empty",), ("Missing",), ("NoSuchTag",)],
)
def test_number_is_none_for_null_nan_inf_text_and_missing(gf2, gf3, names):
    root = gf3 if names[0] in ("QualifyValue", "processinfo") else gf2
    assert number(root, *names) is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2020-05-01 11:23:53", dt.datetime(2020, 5, 1, 11, 23, 53)),
        ("2020-05-01T02:10:31.024Z", dt.datetime(2020, 5, 1, 2, 10, 31, 24000)),
        ("2020-05-01 11:23:53.5", dt.datetime(2020, 5, 1, 11, 23, 53, 500000)),
        ("2020-06-12 22:10:02.107966", dt.datetime(2020, 6, 12, 22, 10, 2, 107966)),
        ("  2020-05-01T02:10:31Z\n", dt.datetime(2020, 5, 1, 2, 10, 31)),
        ("2020-05-01", dt.datetime(2020, 5, 1)),
    ],
)
def test_parse_time(value, expected):
    assert parse_time(value) == expected


@pytest.mark.parametrize("value", [None, "", "NULL", "01/05/2020", "2020-13-01 00:00:00", "2020-05-01 25:00:00"])
def test_parse_time_is_none_for_what_is_not_a_time(value):
    assert parse_time(value) is None


def test_parse_time_of_metadata(gf2, s2):
    assert parse_time(text(gf2, "ReceiveTime")) == dt.datetime(2020, 5, 1, 11, 23, 53)
    assert parse_time(text(s2, "PRODUCT_START_TIME")) == dt.datetime(2020, 5, 1, 2, 10, 31, 24000)


# --------------------------------------------------------------------------------------------------
# Files


@pytest.fixture
def product_tree(tmp_path):
    root = tmp_path / "S2B_MSIL2A_20200501T023549.SAFE"
    files = [
        "MTD_MSIL2A.xml",
        "GRANULE/L2A_T50SMA/MTD_TL.xml",
        "GRANULE/L2A_T50SMA/IMG_DATA/R10m/T50SMA_20200501T023549_B02_10m.jp2",
        "GRANULE/L2A_T50SMA/IMG_DATA/R10m/T50SMA_20200501T023549_B03_10m.jp2",
        "GRANULE/L2A_T50SMA/IMG_DATA/R10m/deeper/still/B04.jp2",
        ".hidden/B08.jp2",
    ]
    for name in files:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(name.encode())
    return root


def test_find_files_matches_names_within_the_depth(product_tree):
    found = find_files(product_tree, lambda name: name.endswith(".jp2"), depth=4)
    assert [p.name for p in found] == ["T50SMA_20200501T023549_B02_10m.jp2", "T50SMA_20200501T023549_B03_10m.jp2"]
    assert all(p.is_file() and p.is_relative_to(product_tree) for p in found)


def test_find_files_goes_deeper_with_a_larger_depth(product_tree):
    found = find_files(product_tree, lambda name: name.endswith(".jp2"), depth=8)
    assert [p.name for p in found] == [
        "T50SMA_20200501T023549_B02_10m.jp2", "T50SMA_20200501T023549_B03_10m.jp2", "B04.jp2",
    ]


def test_find_files_skips_hidden_folders_and_respects_the_predicate(product_tree):
    assert find_files(product_tree, lambda name: name == "B08.jp2", depth=8) == []
    assert [p.name for p in find_files(product_tree, lambda name: name.startswith("MTD"), depth=0)] == ["MTD_MSIL2A.xml"]
    assert [p.relative_to(product_tree).as_posix() for p in find_files(product_tree, lambda n: n.startswith("MTD"))] == [
        "MTD_MSIL2A.xml", "GRANULE/L2A_T50SMA/MTD_TL.xml",
    ]


def test_sibling_finds_the_same_stem_case_insensitively(tmp_path):
    image = tmp_path / "GF2_PMS1_E117.2_N31.9_20200501_L1A0004789012-MSS1.tiff"
    image.write_bytes(b"")
    rpb = tmp_path / "GF2_PMS1_E117.2_N31.9_20200501_L1A0004789012-MSS1.RPB"
    rpb.write_text("satId = \"GF2\";")
    (tmp_path / "GF2_PMS1_E117.2_N31.9_20200501_L1A0004789012-PAN1.rpb").write_text("")
    assert sibling(image, (".rpb", "_rpc.txt")) == rpb
    assert sibling(image, (".xml",)) is None


def test_sibling_takes_the_first_suffix_file_found_in_name_order(tmp_path):
    image = tmp_path / "scene.tif"
    image.write_bytes(b"")
    (tmp_path / "scene_rpc.txt").write_text("")
    (tmp_path / "scene.rpb").write_text("")
    assert sibling(image, (".rpb", "_rpc.txt")) == tmp_path / "scene.rpb"


def test_source_fingerprint_does_not_depend_on_where_the_product_is(product_tree, tmp_path):
    moved = tmp_path / "archive" / product_tree.name
    moved.parent.mkdir()
    shutil.copytree(product_tree, moved)  # copy2: sizes and mtimes kept, as a move keeps them
    assert source_fingerprint(moved) == source_fingerprint(product_tree)
    assert cache_key(source_fingerprint(moved)) == cache_key(source_fingerprint(product_tree))


def test_source_fingerprint_changes_when_a_file_changes(product_tree):
    before = source_fingerprint(product_tree)
    (product_tree / "MTD_MSIL2A.xml").write_text("changed content, longer than before")
    assert source_fingerprint(product_tree) != before


def test_source_fingerprint_of_an_archive_file(tmp_path):
    archive = tmp_path / "GF3_KAS_FSII_020321.tar.gz"
    archive.write_bytes(b"x" * 10)
    stat = archive.stat()
    assert source_fingerprint(archive) == [["GF3_KAS_FSII_020321.tar.gz", 10, stat.st_mtime_ns]]


def test_cache_key_is_short_stable_and_sensitive_to_every_part(monkeypatch):
    key = cache_key("gf2", {"pan": True, "bands": [1, 2]}, 4.0)
    assert len(key) == 16 and int(key, 16) >= 0
    assert key == cache_key("gf2", {"bands": [1, 2], "pan": True}, 4.0)  # key order does not matter
    assert key != cache_key("gf2", {"pan": False, "bands": [1, 2]}, 4.0)
    assert key != cache_key("gf3", {"pan": True, "bands": [1, 2]}, 4.0)
    monkeypatch.setattr(common, "READER_VERSION", "2")
    assert key != cache_key("gf2", {"pan": True, "bands": [1, 2]}, 4.0)  # a reader change rebuilds the cache


def test_cache_key_is_the_sha256_of_the_versioned_parts():
    expected = hashlib.sha256(b'["1", "a", 2]').hexdigest()[:16]
    assert common.READER_VERSION == "1"
    assert cache_key("a", 2) == expected


# --------------------------------------------------------------------------------------------------
# Output


@pytest.mark.parametrize(("dtype", "predictor"), [("float32", 3), ("uint16", 2), ("int16", 2), ("uint8", 2)])
def test_geotiff_profile_writes_a_tiled_deflate_geotiff(tmp_path, dtype, predictor):
    profile = geotiff_profile(
        width=300, height=200, count=2, dtype=dtype, crs="EPSG:32650",
        transform=Affine(4.0, 0, 517200.0, 0, -4.0, 3531600.0), nodata=0,
    )
    assert profile["predictor"] == predictor
    data = (np.arange(2 * 200 * 300).reshape(2, 200, 300) % 200).astype(dtype)
    with rasterio.open(tmp_path / "out.tif", "w", **profile) as dst:
        dst.write(data)
    with rasterio.open(tmp_path / "out.tif") as src:
        assert src.profile["tiled"] and src.block_shapes == [(256, 256), (256, 256)]
        assert src.compression.name == "deflate"
        assert src.tags(ns="IMAGE_STRUCTURE")["PREDICTOR"] == str(predictor)
        assert src.crs.to_epsg() == 32650
        assert src.transform == Affine(4.0, 0, 517200.0, 0, -4.0, 3531600.0)
        assert src.nodata == 0
        np.testing.assert_array_equal(src.read(), data)


def test_row_blocks_cover_every_row_once():
    windows = list(row_blocks(300, 1000, 256))
    assert windows == [Window(0, 0, 300, 256), Window(0, 256, 300, 256), Window(0, 512, 300, 256),
                       Window(0, 768, 300, 232)]
    assert list(row_blocks(10, 5, 16)) == [Window(0, 0, 10, 5)]


def test_block_rows_keeps_a_strip_within_the_budget():
    rows = block_rows(width=10000, bands=4)
    assert rows * 10000 * 4 * 4 * 4 <= 64 << 20
    assert (rows + 1) * 10000 * 4 * 4 * 4 > 64 << 20
    assert block_rows(width=1000, bands=1, budget_bytes=1 << 20) == 65


def test_block_rows_is_clamped_between_16_and_4096():
    assert block_rows(width=200_000, bands=8) == 16
    assert block_rows(width=1, bands=1) == 4096
    assert block_rows(width=0, bands=0) == 4096


def test_describe_sets_band_names_and_string_tags_without_none(tmp_path):
    profile = geotiff_profile(width=8, height=8, count=2, dtype="float32", crs="EPSG:32650",
                              transform=Affine(4.0, 0, 0, 0, -4.0, 0), nodata=None)
    with rasterio.open(tmp_path / "gf3.tif", "w", **profile) as dst:
        describe(dst, names=("HH", "HV"), tags={"sensor": "gf3", "incidence": 31.5, "orbit": None, "looks": 1})
    with rasterio.open(tmp_path / "gf3.tif") as src:
        assert src.descriptions == ("HH", "HV")
        tags = src.tags()
    assert tags["sensor"] == "gf3" and tags["incidence"] == "31.5" and tags["looks"] == "1"
    assert "orbit" not in tags


def test_to_db_in_place_converts_power_to_decibels_and_non_positive_to_nan(tmp_path):
    power = np.array([[[1.0, 10.0, 100.0, 0.001], [0.0, -1.0, 0.5, 2.0]]], np.float32)
    power = np.tile(power, (1, 5, 1))  # 10 rows, converted in strips of 3
    profile = geotiff_profile(width=4, height=10, count=1, dtype="float32", crs="EPSG:32650",
                              transform=Affine(4.0, 0, 0, 0, -4.0, 0), nodata=None)
    with rasterio.open(tmp_path / "sigma0.tif", "w", **profile) as dst:
        dst.write(power)
    with rasterio.open(tmp_path / "sigma0.tif", "r+") as dataset:
        to_db_in_place(dataset, rows=3)
    with rasterio.open(tmp_path / "sigma0.tif") as src:
        db = src.read(1)
    expected = np.tile(np.array([[0.0, 10.0, 20.0, -30.0], [np.nan, np.nan, 10 * np.log10(0.5), 10 * np.log10(2.0)]],
                                np.float32), (5, 1))
    np.testing.assert_allclose(db, expected, rtol=1e-6, atol=1e-5)


def test_read_product_date_is_the_acquisition_day(tmp_path):
    product = ReadProduct(tmp_path / "cache.tif", tmp_path / "GF2.tar.gz", Sensor.gf2, "GF2_PMS1",
                          dt.datetime(2020, 5, 1, 23, 59, 59), ("blue", "green", "red", "nir"))
    assert product.date == dt.date(2020, 5, 1)
    assert product.tags == {}
    assert ReadProduct(tmp_path, tmp_path, Sensor.s2, "S2", None, ()).date is None
