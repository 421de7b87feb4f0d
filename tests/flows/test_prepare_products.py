"""Provider products straight from an inbox through `changeflow prepare` (issue: reading products)."""

from __future__ import annotations

import json

import geopandas as gpd
import pytest
import rasterio

from flows.prepare import prepare_flow
from tests.fixtures.products import Scenery, write_gf2_product, write_gf3_product, write_s2_product

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def prefect_backend():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def test_gf2_gf3_s2_products_from_an_inbox_to_tiles(prefect_backend, tmp_path, monkeypatch):
    monkeypatch.setenv("CHANGEFLOW_CACHE", str(tmp_path / "cache"))  # keep the user's cache clean
    scenery = Scenery(size_m=3200.0, seed=3)
    inbox = tmp_path / "inbox"
    gf2 = write_gf2_product(inbox, scenery)  # product folder
    gf3 = write_gf3_product(inbox, scenery, archive="tar.gz")
    s2 = write_s2_product(inbox, scenery, archive="zip")
    broken = inbox / "S2A_MSIL2A_20220101T000000_N0400_R001_T50SNA_20220101T000000.SAFE.zip"
    broken.write_bytes(b"PK\x05\x06" + b"\0" * 18)  # an empty zip: not a SAFE
    config = tmp_path / "run.yaml"
    config.write_text(f"inbox: {inbox}\n")  # nothing else

    report = prepare_flow(str(config), str(tmp_path / "out"))

    assert report["scenes"] == 3
    assert list(report["scenes_refused"]) == [str(broken)]
    assert "not a Sentinel-2 SAFE product" in report["scenes_refused"][str(broken)]
    assert report["groups"] == {gf2.name: "prepared"} and not report["images_refused"]
    assert sum(split["tiles"] for split in report["splits"].values()) >= 1
    scenes = gpd.read_file(tmp_path / "out" / "catalog.gpkg", layer="scenes").set_index("scene_id")
    assert scenes.loc[gf2.name, "sensor"] == "gf2" and scenes.loc[gf2.name, "date"] == "2019-05-01"
    assert scenes.loc[gf3.name, "role"] == "B" and scenes.loc[s2.name, "role"] == "C"
    tiles = gpd.read_file(tmp_path / "out" / "catalog.gpkg", layer="tiles")
    row = tiles.iloc[0]
    expected = {"A": (4, "uint16"), "B": (2, "float32"), "C": (4, "float32")}
    for role, (count, dtype) in expected.items():
        with rasterio.open(tmp_path / "out" / "tiles" / row.split / role / f"{row.tile_id}.tif") as tile:
            assert (tile.count, tile.dtypes[0], tile.shape) == (count, dtype, (512, 512))
            assert tile.crs.to_epsg() == 32650 and tile.res == (3.2, 3.2)
    coregistration = json.loads((tmp_path / "out" / "coregistration.json").read_text())
    assert {r["role"] for r in coregistration if r["accepted"]} == {"B", "C"}
