"""The catalog reads provider products: recognised in an inbox or a scene list; bad ones reported."""

from __future__ import annotations

import datetime as dt
import shutil
import tarfile
import zipfile

import numpy as np
import pytest

from pipeline.config import PrepareConfig, Role, SceneEntry, Sensor
from pipeline.errors import InputError
from pipeline.prepare.catalog import build_catalog, catalog_scene, scan_inbox
from tests.conftest import write_raster
from tests.fixtures.products import write_hostile_zip


def _pack(folder, kind):
    if kind == "zip":
        target = folder.with_name(folder.name + ".zip")
        with zipfile.ZipFile(target, "w") as zf:
            for file in sorted(folder.rglob("*")):
                zf.write(file, str(file.relative_to(folder.parent)))
    else:
        target = folder.with_name(folder.name + ".tar.gz")
        with tarfile.open(target, "w:gz") as tf:
            tf.add(folder, arcname=folder.name)
    shutil.rmtree(folder)
    return target


@pytest.fixture
def inbox(tmp_path, pristine):
    """GF-2 folder, GF-3 tar.gz, S2 zip, a GOLD-named file and things that are not scenes."""
    box = tmp_path / "inbox"
    box.mkdir()
    shutil.copytree(pristine("gf2"), box / pristine("gf2").name)
    _pack(shutil.copytree(pristine("gf3"), box / pristine("gf3").name), "tar.gz")
    _pack(shutil.copytree(pristine("s2"), box / pristine("s2").name), "zip")
    write_raster(box / "x1_A.tif", np.full((3, 8, 8), 100, np.uint8))
    (box / "notes.txt").write_text("hello")
    (box / "misc").mkdir()
    (box / ".partial").mkdir()
    write_hostile_zip(box / "unknown.zip", "absolute")
    return box


def test_inbox_recognises_products(inbox):
    entries = {e.path.name: e for e in scan_inbox(inbox, PrepareConfig(inbox=inbox).inbox_sensors)}
    gf2 = next(e for n, e in entries.items() if n.startswith("GF2_"))
    gf3 = next(e for n, e in entries.items() if n.startswith("GF3_"))
    s2 = next(e for n, e in entries.items() if n.startswith("S2B_"))
    assert (gf2.sensor, gf2.role, gf2.group) == (Sensor.gf2, Role.A, None)
    assert (gf3.sensor, gf3.role) == (Sensor.gf3, Role.B) and gf3.path.name.endswith(".tar.gz")
    assert (s2.sensor, s2.role) == (Sensor.s2, Role.C) and s2.path.name.endswith(".SAFE.zip")
    assert s2.id == s2.path.name[: -len(".SAFE.zip")] and gf3.id == gf3.path.name[: -len(".tar.gz")]
    assert entries["x1_A.tif"].group == "x1"
    assert "unknown.zip" in entries  # reported later, not skipped
    assert not {"notes.txt", "misc", ".partial"} & set(entries)
    # roles follow inbox_sensors
    swapped = {Role.A: Sensor.s2, Role.C: Sensor.gf2, Role.B: Sensor.gf3}
    roles = {e.sensor: e.role for e in scan_inbox(inbox, swapped)}
    assert roles[Sensor.s2] is Role.A and roles[Sensor.gf2] is Role.C


def test_catalog_reads_products_and_reports_bad_ones(inbox, tmp_path, pristine):
    # bad products beside the good ones
    bad_xml = shutil.copytree(pristine("gf2"), tmp_path / "bad" / pristine("gf2").name.replace("4781234", "4781299"))
    next(bad_xml.glob("*-MSS1.xml")).write_text("<ProductMetaData><CenterTime>")
    no_band = shutil.copytree(pristine("s2"), tmp_path / "bad" / pristine("s2").name.replace("N0400", "N0401"))
    next(no_band.rglob("*_B03_10m.jp2")).unlink()
    not_safe = tmp_path / "bad" / "S2A_MSIL2A_20220101T000000_N0400_R001_T50SNA_20220101T000000.SAFE.zip"
    with zipfile.ZipFile(not_safe, "w") as zf:
        zf.writestr("readme.txt", "no product here")
    slip = write_hostile_zip(tmp_path / "bad" / "GF2_PMS2_E117.2_N31.9_20200101_L1A0000000001.zip", "dotdot")
    config = PrepareConfig(inbox=inbox, products={"cache": tmp_path / "cache"})
    entries = scan_inbox(inbox, config.inbox_sensors) + scan_inbox(tmp_path / "bad", config.inbox_sensors)
    scenes, failures = build_catalog(entries, config)

    by_id = {s.id: s for s in scenes}
    assert set(by_id) == {pristine("gf2").name, pristine("gf3").name, pristine("s2").name[: -len(".SAFE")], "x1_A"}
    gf2, gf3, s2 = (next(s for s in scenes if s.source and s.sensor is k) for k in (Sensor.gf2, Sensor.gf3, Sensor.s2))
    assert gf2.source == inbox / pristine("gf2").name and gf2.date == dt.date(2019, 5, 1)
    assert gf2.id == pristine("gf2").name and gf2.crs.to_epsg() == 32650 and gf2.bands == 4
    assert gf3.is_sar and gf3.dtype == "float32" and gf3.date == dt.date(2021, 6, 16) and gf3.bands == 2
    assert s2.date == dt.date(2021, 6, 15) and s2.role is Role.C and not s2.is_sar
    assert gf2.path.parent == tmp_path / "cache" / "products"  # read into the cache
    assert gf2.footprint.area > 0.5 * (640 * 3.2) ** 2  # footprint of the orthorectified image
    reasons = {entry.path: reason for entry, reason in failures}
    assert set(reasons) == {bad_xml, no_band, not_safe, slip, inbox / "unknown.zip"}
    assert by_id["x1_A"].source is None  # GOLD-named files are read as before
    assert reasons[bad_xml].startswith(str(bad_xml)) and "malformed XML" in reasons[bad_xml]
    assert "missing band file" in reasons[no_band] and "B03" in reasons[no_band]
    assert "zip is not a Sentinel-2 SAFE product" in reasons[not_safe]
    assert "outside the extraction folder" in reasons[slip]
    assert "absolute path" in reasons[inbox / "unknown.zip"]
    assert not (tmp_path / "escaped.txt").exists()


def test_scene_list_may_name_the_sensor(pristine, tmp_path):
    renamed = shutil.copytree(pristine("gf2"), tmp_path / "site_a_2019")
    config = PrepareConfig(scenes=[SceneEntry(path=renamed, role=Role.A)], products={"cache": tmp_path / "c"})
    named = SceneEntry(path=renamed, role=Role.A, sensor="gf2", date="2019-05-02", id="site_a")
    scene = catalog_scene(named, config)
    assert (scene.sensor, scene.id, scene.date) == (Sensor.gf2, "site_a", dt.date(2019, 5, 2))  # the list wins
    # recognised from its content without the sensor too
    assert catalog_scene(SceneEntry(path=renamed, role=Role.A), config).sensor is Sensor.gf2
    with pytest.raises(InputError, match="named as a gf3 scene but looks like a gf2 product"):
        catalog_scene(SceneEntry(path=renamed, role=Role.B, sensor="gf3"), config)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="missing band file: no MSS image"):
        catalog_scene(SceneEntry(path=empty, role=Role.A, sensor="gf2"), config)  # read as named
    with pytest.raises(InputError, match="not a GF-2, GF-3 or Sentinel-2 product"):
        catalog_scene(SceneEntry(path=empty, role=Role.A), config)
    # a plain GeoTIFF named as gf2 stays a plain GeoTIFF (as the synthetic groups are)
    plain = write_raster(tmp_path / "a.tif", np.full((4, 16, 16), 300, np.uint16), nodata=0)
    assert catalog_scene(SceneEntry(path=plain, role=Role.A, sensor="gf2"), config).source is None


def test_product_moved_to_the_archive_is_not_read_again(pristine, tmp_path):
    folder = shutil.copytree(pristine("gf3"), tmp_path / "inbox" / pristine("gf3").name)
    config = PrepareConfig(inbox=tmp_path / "inbox", products={"cache": tmp_path / "cache"})
    first = catalog_scene(SceneEntry(path=folder, role=Role.B), config)
    moved = tmp_path / "archive" / folder.name
    moved.parent.mkdir()
    shutil.move(folder, moved)  # same files, same mtimes
    second = catalog_scene(SceneEntry(path=moved, role=Role.B), config)
    assert second.path == first.path and second.source == moved
