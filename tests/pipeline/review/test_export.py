"""Export: label pixels and georeferencing on the group grid, the GeoPackage, prepare reading the label;
click-to-grow from the probability."""

from __future__ import annotations

import json

import geopandas as gpd
import numpy as np
import rasterio
import shapely
from shapely.geometry import mapping
from typer.testing import CliRunner

from flows.cli import app as cli
from pipeline.prepare.labels import inspect_label
from pipeline.review.export import LAYER, export_review
from tests.pipeline.review.conftest import WRITE
from tests.pipeline.review.scene import CHANGES, FALSE_ALARM, pixel_box


def _candidate_at(store, square):
    target = shapely.box(*pixel_box(*square))
    return next(f for f in store.features() if shapely.from_wkb(f["geometry"]).equals(target))


def _review(client, store):
    """Accept change 0, reject the false alarm, shrink change 1 to its left half, draw the faint change 3."""
    accepted = _candidate_at(store, CHANGES[0])
    rejected = _candidate_at(store, FALSE_ALARM)
    edited = _candidate_at(store, CHANGES[1])
    row, col, side = CHANGES[1]
    left, bottom, right, top = pixel_box(row, col, side)
    half = shapely.box(left, bottom, (left + right) / 2, top)
    for feature, body in ((accepted, {"status": "accepted"}), (rejected, {"status": "rejected"}),
                          (edited, {"geometry": mapping(half)})):
        answer = client.patch(f"/api/features/{feature['uuid']}", json={"version": 1, **body}, headers=WRITE)
        assert answer.status_code == 200
    drawn = client.post("/api/features", json={"geometry": mapping(shapely.box(*pixel_box(*CHANGES[3])))},
                        headers=WRITE)
    assert drawn.status_code == 201
    return {"edited": edited["uuid"]}


def test_export_label_pixels_and_grid(client, store, group, tmp_path):
    ids = _review(client, store)
    assert store.feature(ids["edited"])["status"] == "edited"
    summary = export_review(group, store, tmp_path / "export")
    assert summary["features"] == {"accepted": 1, "rejected": 1, "edited": 1, "added": 1, "pending": 1}
    with rasterio.open(summary["label"]) as dataset:
        label = dataset.read(1)
        assert dataset.crs == group.grid.crs and dataset.transform == group.grid.transform
        assert (dataset.width, dataset.height, dataset.nodata, dataset.dtypes[0]) == (600, 520, 255, "uint8")
        assert dataset.overviews(1) and dataset.tags()["GROUP"] == "g1"
    expected = np.full(label.shape, 255, np.uint8)

    def square(index_or_box, value, cols=None):
        row, col, side = index_or_box
        expected[row:row + side, col:col + (cols or side)] = value

    square(CHANGES[0], 1)
    square(FALSE_ALARM, 0)
    square(CHANGES[1], 0)  # the detection's outline, reviewed: no change outside the edit
    square(CHANGES[1], 1, cols=CHANGES[1][2] // 2)
    square(CHANGES[3], 1)  # drawn; CHANGES[2] stays pending (255)
    np.testing.assert_array_equal(label, expected)
    assert summary["pixels"] == {"0": 400 + 800, "1": 900 + 800 + 400, "255": 600 * 520 - 3300}


def test_export_geopackage_has_every_feature_with_provenance(client, store, group, tmp_path):
    _review(client, store)
    export_review(group, store, tmp_path / "export")
    frame = gpd.read_file(tmp_path / "export" / "review.gpkg", layer=LAYER)
    assert len(frame) == 5 and frame.crs == group.grid.crs
    assert {"uuid", "status", "class", "reviewer", "created_utc", "updated_utc", "version", "mean_prob", "comment",
            "source", "detection_id", "detection_run_id", "group"} <= set(frame.columns)
    assert set(frame["detection_run_id"]) == {"20260101T000000Z-test"}
    assert sorted(frame["reviewer"].dropna()) == ["ann"] * 4


def test_prepare_reads_the_exported_label_as_change01(client, store, group, tmp_path):
    _review(client, store)
    summary = export_review(group, store, tmp_path / "export")
    read = inspect_label(tmp_path / "export" / "review_label.tif", "auto")
    assert read.encoding == "change01"
    assert read.counts == {0: 1200, 1: 2100} and read.nodata_pixels == summary["pixels"]["255"]


def test_cli_export(scene, tmp_path):
    from pipeline.review.candidates import open_store
    from pipeline.review.group import open_review_group

    store = open_store(open_review_group(scene.prepared, scene.detections), scene.detections / "_review" / "g1")
    uuid = store.queue(0.5)[0]
    store.update(uuid, 1, {"status": "rejected"}, "ann")
    result = CliRunner().invoke(cli, ["review", "export", "--prepared", str(scene.prepared), "--detections",
                                      str(scene.detections), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    counts = json.loads(result.output.strip().splitlines()[-1])
    assert counts["features"] == {"rejected": 1, "pending": 3} and counts["pixels"]["0"] == 400
    assert (tmp_path / "out" / "review_label.tif").is_file() and (tmp_path / "out" / "review.gpkg").is_file()


def test_grow_finds_the_connected_region_above_the_threshold(client):
    row, col, side = CHANGES[3]  # the faint change, probability 0.4
    left, bottom, right, top = pixel_box(row, col, side)
    x, y = (left + right) / 2, (top + bottom) / 2
    grown = client.get(f"/api/grow?x={x}&y={y}&threshold=0.3")
    assert grown.status_code == 200
    body = grown.json()
    assert body["n_pixels"] == side * side and not body["clipped"]
    assert abs(body["mean_prob"] - round(0.4 * 254) / 254) < 1e-6
    assert shapely.geometry.shape(body["geometry"]).equals(shapely.box(left, bottom, right, top))
    refused = client.get(f"/api/grow?x={x}&y={y}&threshold=0.5")
    assert refused.status_code == 422 and "not above the threshold" in refused.json()["detail"]
    assert client.get("/api/grow?x=0&y=0").status_code == 422


def test_reviewed_cells_are_no_change_where_nothing_else_is_said(client, store, group, tmp_path):
    assert client.get("/api/cells").json() == {"cell_px": 512, "rows": 2, "cols": 2, "reviewed": []}
    assert client.put("/api/cells/0/1", json={"reviewed": True}).status_code == 403
    assert client.put("/api/cells/2/0", json={"reviewed": True}, headers=WRITE).status_code == 422
    for row, col, reviewed in ((0, 1, True), (1, 0, True), (1, 0, False)):
        answer = client.put(f"/api/cells/{row}/{col}", json={"reviewed": reviewed}, headers=WRITE)
        assert answer.status_code == 200
    assert client.get("/api/cells").json()["reviewed"] == [[0, 1]]
    assert [op["uuid"] for op in store.log() if op["op"] == "cell"] == ["cell:0:1", "cell:1:0", "cell:1:0"]
    summary = export_review(group, store, tmp_path / "export")
    with rasterio.open(summary["label"]) as dataset:
        label = dataset.read(1)
    assert (label[:512, 512:] == 0).all()  # cell (0, 1): 512 rows x 88 columns, no candidate in it
    assert (label[:, :512] == 255).all() and (label[512:] == 255).all()
    assert summary["reviewed_cells"] == 1 and summary["pixels"]["0"] == 512 * 88


def test_cli_export_without_a_store_says_so(scene, tmp_path):
    result = CliRunner().invoke(cli, ["review", "export", "--prepared", str(scene.prepared), "--detections",
                                      str(scene.detections), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "no review store" in result.output
    assert not (tmp_path / "out").exists()
    missing = CliRunner().invoke(cli, ["review", "export", "--prepared", str(scene.prepared)])
    assert missing.exit_code == 2 and "give --prepared OUT and --detections DET" in missing.output
