"""Bad input: detections of another group, missing grid COGs, bad geometries, writes without the token."""

from __future__ import annotations

import json
import shutil

import pytest
import rasterio
import shapely
from affine import Affine
from shapely.geometry import mapping
from typer.testing import CliRunner

from flows.cli import app as cli
from pipeline.errors import ChangeflowError, InputError
from pipeline.review.app import TOKEN_HEADER
from pipeline.review.geometry import MAX_VERTICES
from pipeline.review.group import open_review_group
from tests.pipeline.review.conftest import WRITE
from tests.pipeline.review.scene import write_scene

INSIDE = shapely.box(500100, 3499500, 500200, 3499400)


def test_detection_of_another_group_is_refused(scene, tmp_path):
    other = write_scene(tmp_path / "other", group="g2")
    shutil.rmtree(scene.detection_dir)
    shutil.copytree(other.detection_dir, scene.detection_dir)
    with pytest.raises(InputError, match="detection of group 'g2', not of 'g1'") as error:
        open_review_group(scene.prepared, scene.detections, "g1")
    assert error.value.path == scene.detection_dir / "change_probability.tif"


def test_detection_on_another_grid_is_refused(scene):
    probability = scene.detection_dir / "change_probability.tif"
    with rasterio.open(probability) as dataset:
        profile, data, tags = dataset.profile, dataset.read(), dataset.tags()
    profile.update(driver="GTiff", transform=Affine(4.0, 0, 500400.0, 0, -4.0, 3500000.0))
    with rasterio.open(probability, "w", **profile) as dataset:  # same group tag, shifted 100 px east
        dataset.write(data)
        dataset.update_tags(**tags)
    with pytest.raises(InputError, match="is not on the grid of group 'g1'.*belongs to another group") as error:
        open_review_group(scene.prepared, scene.detections, "g1")
    assert error.value.path == probability


def test_grid_cog_off_the_manifest_grid_is_refused(scene):
    manifest = scene.group_dir / "manifest.json"
    manifest.write_text(manifest.read_text().replace("500000.0", "500400.0"))
    with pytest.raises(InputError, match="is not on the grid recorded in") as error:
        open_review_group(scene.prepared, scene.detections, "g1")
    assert error.value.path == scene.group_dir / "grid" / "A.tif"


def test_missing_grid_cog_is_named(scene):
    (scene.group_dir / "grid" / "C.tif").unlink()
    with pytest.raises(InputError, match="is missing") as error:
        open_review_group(scene.prepared, scene.detections, "g1")
    assert error.value.path == scene.group_dir / "grid" / "C.tif"


def test_missing_polygons_and_unknown_group_are_named(scene):
    with pytest.raises(ChangeflowError, match="is not a prepared group"):
        open_review_group(scene.prepared, scene.detections, "nope")
    with pytest.raises(ChangeflowError, match="not a safe name"):
        open_review_group(scene.prepared, scene.detections, "../g1")
    (scene.detection_dir / "changes.gpkg").unlink()
    with pytest.raises(InputError, match="changes.gpkg: is missing"):
        open_review_group(scene.prepared, scene.detections, "g1")


def test_cli_reports_bad_input_in_one_line(scene):
    (scene.group_dir / "grid" / "A.tif").unlink()
    result = CliRunner().invoke(cli, ["review", "--prepared", str(scene.prepared), "--detections",
                                      str(scene.detections)])
    assert result.exit_code == 2
    assert "error:" in result.output and "A.tif" in result.output and "is missing" in result.output


def _state(store):
    return store.features(), store.log()


@pytest.mark.parametrize(("geometry", "problem"), [
    ({"type": "Point", "coordinates": [500100, 3499500]}, "only Polygon and MultiPolygon"),
    ({"type": "Polygon", "coordinates": [[500100, 3499500]]}, "malformed"),
    ({"type": "Polygon", "coordinates": "nonsense"}, "malformed"),
    (mapping(shapely.Polygon([(500100, 3499500), (500200, 3499400), (500200, 3499500), (500100, 3499400)])),
     "invalid geometry: Self-intersection"),
    (mapping(shapely.box(499000, 3499500, 499100, 3499400)), "outside the group's extent"),
    (mapping(shapely.Point(500300, 3499300).buffer(50, quad_segs=MAX_VERTICES // 4 + 1)), "vertices"),
    ({"type": "Polygon", "coordinates": [[[500100, 3499500], [500100, 3499500], [500100, 3499500],
                                          [500100, 3499500]]]}, "Too few points"),
    ({"type": "Polygon", "coordinates": []}, "empty"),
    ({"type": "Polygon", "coordinates": [[[500100, 3499500], [500200, float("inf")], [500200, 3499500],
                                          [500100, 3499500]]]}, "not finite"),
])
def test_bad_geometry_gets_422_and_leaves_the_store_untouched(client, store, geometry, problem):
    before = _state(store)
    headers = {**WRITE, "content-type": "application/json"}  # json.dumps writes Infinity, as a browser could send
    added = client.post("/api/features", content=json.dumps({"geometry": geometry}), headers=headers)
    assert added.status_code == 422 and problem in added.json()["detail"]
    uuid = before[0][0]["uuid"]
    edited = client.patch(f"/api/features/{uuid}", content=json.dumps({"version": 1, "geometry": geometry}),
                          headers=headers)
    assert edited.status_code == 422 and problem in edited.json()["detail"]
    assert _state(store) == before


def test_write_without_the_token_is_forbidden(client, store):
    before = _state(store)
    uuid = before[0][0]["uuid"]
    for headers in ({}, {TOKEN_HEADER: "guessed"}):
        assert client.post("/api/features", json={"geometry": mapping(INSIDE)}, headers=headers).status_code == 403
        patched = client.patch(f"/api/features/{uuid}", json={"version": 1, "status": "accepted"}, headers=headers)
        assert patched.status_code == 403
    assert _state(store) == before
    assert client.get("/api/features").status_code == 200  # reads need no token


def test_other_hosts_are_not_answered(client):
    assert client.get("/api/config", headers={"host": "attacker.example"}).status_code == 400


def test_unknown_fields_and_features_are_refused(client, store):
    before = _state(store)
    assert client.post("/api/features", json={"geometry": mapping(INSIDE), "path": "/etc/passwd"},
                       headers=WRITE).status_code == 422
    assert client.patch("/api/features/no-such", json={"version": 1, "status": "accepted"},
                        headers=WRITE).status_code == 404
    assert _state(store) == before
