"""xBD → semantic-change tile folders: labels, change definition, georeferencing, splits, reruns, real Joplin pairs."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.errors import NotGeoreferencedWarning

from pipeline.errors import InputError
from pipeline.learn.dataset import load_index
from pipeline.learn.xbd import XBD_CLASSES, XBD_T2_CODES, convert_xbd, fit_geotransform

# pixel → lon/lat of the synthetic scenes (≈ 0.5 m pixels near Joplin)
GEO = Affine(5e-6, 0.0, -94.5, 0.0, -4e-6, 37.06)


def _square(x0: float, y0: float, size: float) -> list[tuple[float, float]]:
    return [(x0, y0), (x0 + size, y0), (x0 + size, y0 + size), (x0, y0 + size), (x0, y0)]


def _wkt(points: list[tuple[float, float]]) -> str:
    return "POLYGON ((" + ", ".join(f"{x} {y}" for x, y in points) + "))"


def _feature_lists(buildings: list[tuple[list[tuple[float, float]], str | None]]) -> dict:
    xy, lnglat = [], []
    for uid, (points, subtype) in enumerate(buildings):
        props = {"feature_type": "building", "uid": str(uid)}
        if subtype is not None:
            props["subtype"] = subtype
        xy.append({"properties": props, "wkt": _wkt(points)})
        lnglat.append({"properties": props, "wkt": _wkt([GEO @ p for p in points])})
    return {"features": {"xy": xy, "lng_lat": lnglat}, "metadata": {"width": 64, "height": 64}}


def _write_png(path: Path, value: int, size: int = 64) -> None:
    data = np.full((3, size, size), value, np.uint8)
    data[0] = np.arange(size, dtype=np.uint8)[None, :]  # column index in band 1, to check tile positions
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", driver="PNG", width=size, height=size, count=3, dtype="uint8") as dst:
            dst.write(data)


def _xbd_folder(root: Path, pairs: int = 2) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i in range(pairs):
        name = f"test-storm_{i:08d}"
        _write_png(root / "images" / f"{name}_pre_disaster.png", 10)
        _write_png(root / "images" / f"{name}_post_disaster.png", 200)
        buildings = [
            (_square(4, 4, 8), "no-damage"),  # rows/cols 4..11
            (_square(20, 4, 8), "minor-damage"),
            (_square(36, 4, 8), "major-damage"),
            (_square(4, 36, 8), "destroyed"),  # rows 36..43
            (_square(36, 36, 8), "un-classified"),
        ]
        pre = [(points, None) for points, _ in buildings]
        pre[0] = (_square(4, 4, 9), None)  # the pre footprint is one pixel larger: row/col 12 disagree
        (root / "labels" / f"{name}_pre_disaster.json").write_text(json.dumps(_feature_lists(pre)))
        (root / "labels" / f"{name}_post_disaster.json").write_text(json.dumps(_feature_lists(buildings)))
    return root


def _read(path: Path) -> tuple[np.ndarray, rasterio.profiles.Profile]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as src:
            return src.read(), src.profile


def test_labels_change_definition_and_tiles(tmp_path: Path) -> None:
    root = _xbd_folder(tmp_path / "xbd")
    out = tmp_path / "out"
    summary = convert_xbd(root, out, tile=32)
    assert summary["tiles"] == {"train": 2, "val": 2, "test": 4} and not summary["failed"]
    assert json.loads((out / "xbd_summary.json").read_text())["tiles"] == summary["tiles"]
    pair0 = summary["pairs"]["test-storm_00000000"]
    assert pair0["split_tiles"] == {"train": 2, "val": 2}  # top tile row train, bottom row val
    assert pair0["footprint_disagreement_pixels"] == 9 + 8  # row 12 (cols 4..12) and col 12 (rows 4..11)
    assert pair0["t2_pixels"]["destroyed"] == 64 and pair0["t2_pixels"]["building (no damage)"] == 64
    assert pair0["changed_pixels"] == 3 * 64 and pair0["georeferenced"]

    a, profile = _read(out / "train" / "A" / "test-storm_00000000_0000_0032.tif")
    assert a.shape == (3, 32, 32) and a.dtype == np.uint8 and a[0, 0, 0] == 32  # the right window
    assert profile["crs"] == "EPSG:4326"
    assert profile["transform"].almost_equals(GEO @ Affine.translation(32, 0), precision=1e-12)

    t1, t2, change = (_read(out / "train" / role / "test-storm_00000000_0000_0000.tif")[0][0]
                      for role in ("semantic_t1", "semantic_t2", "label"))
    assert t1[4, 4] == 1 and t2[4, 4] == 1 and change[4, 4] == 0  # intact building: no change
    assert t1[4, 20] == 1 and t2[4, 20] == 2 and change[4, 20] == 1  # minor damage counts as change
    assert t1[12, 4] == t2[12, 4] == change[12, 4] == 255  # footprints disagree → ignored
    assert t1[0, 0] == t2[0, 0] == change[0, 0] == 0
    _, label_profile = _read(out / "train" / "label" / "test-storm_00000000_0000_0000.tif")
    assert label_profile["nodata"] == 255
    t1, t2, change = (_read(out / "val" / role / "test-storm_00000000_0032_0032.tif")[0][0]
                      for role in ("semantic_t1", "semantic_t2", "label"))
    assert t1[4, 4] == 1 and t2[4, 4] == 255 and change[4, 4] == 255  # un-classified: existing, damage unknown
    labelled = change != 255
    assert np.array_equal(change[labelled] == 1, t1[labelled] != t2[labelled])

    index = load_index(out, "change01")
    assert set(index.columns) >= {"A", "B", "label", "semantic_t1", "semantic_t2"}
    assert index.groupby("split").size().to_dict() == {"test": 4, "train": 2, "val": 2}
    assert set(index[index.split == "test"].tile_id.str[:19]) == {"test-storm_00000001"}


def test_options_reruns_and_failures(tmp_path: Path) -> None:
    root = _xbd_folder(tmp_path / "xbd", pairs=3)
    out = tmp_path / "out"
    summary = convert_xbd(root, out, tile=32, test_pairs=[0], val_fraction=0, georeference=False)
    assert summary["tiles"] == {"train": 8, "val": 0, "test": 4}
    _, profile = _read(out / "test" / "A" / "test-storm_00000000_0000_0000.tif")
    assert profile["crs"] is None
    again = convert_xbd(root, out, tile=32, test_pairs=[0], val_fraction=0, georeference=False)
    assert all(p["tiles_skipped"] == 4 and p["tiles_written"] == 0 for p in again["pairs"].values())

    (root / "labels" / "test-storm_00000001_post_disaster.json").write_text("{not json")
    bad = json.loads((root / "labels" / "test-storm_00000002_post_disaster.json").read_text())
    bad["features"]["xy"][0]["properties"]["subtype"] = "flooded"
    (root / "labels" / "test-storm_00000002_post_disaster.json").write_text(json.dumps(bad))
    summary = convert_xbd(root, tmp_path / "out2", tile=32)
    assert set(summary["failed"]) == {"test-storm_00000001", "test-storm_00000002"}
    assert "test-storm_00000001_post_disaster.json" in summary["failed"]["test-storm_00000001"]
    assert "flooded" in summary["failed"]["test-storm_00000002"]
    assert list(summary["pairs"]) == ["test-storm_00000000"]
    with pytest.raises(InputError, match="not an xBD folder"):
        convert_xbd(tmp_path / "out2", tmp_path / "out3")
    (tmp_path / "empty" / "images").mkdir(parents=True)
    with pytest.raises(InputError, match="no xBD pair"):
        convert_xbd(tmp_path / "empty", tmp_path / "out3")
    with pytest.raises(InputError, match="not found"):
        convert_xbd(root, tmp_path / "out4", test_pairs=["nope"])


def test_geotransform_fit_rejects_bad_correspondences() -> None:
    from shapely.geometry import Polygon

    good = [(Polygon(_square(0, 0, 10)), Polygon([GEO @ p for p in _square(0, 0, 10)]))]
    transform, residual = fit_geotransform(good)
    assert transform is not None and residual < 1e-6
    ring = [(0, 0), (10, 0), (13, 7), (6, 12), (2, 9), (0, 0)]
    rolled = ring[2:-1] + ring[:2] + [ring[2]]  # same polygon, vertices paired with the wrong ones
    shuffled = [(Polygon(ring), Polygon([GEO @ p for p in rolled]))]
    assert fit_geotransform(shuffled)[0] is None


def test_real_joplin_pairs(shared_data: Path, tmp_path: Path) -> None:
    root = shared_data / "xbd-joplin" / "tier3"
    if not root.is_dir():
        pytest.skip(f"{root} is missing")
    summary = convert_xbd(root, tmp_path / "joplin", tile=256)
    assert not summary["failed"]
    assert summary["tiles"] == {"train": 12, "val": 4, "test": 16}  # pair 0 → train/val, pair 1 → test
    for name, pair in summary["pairs"].items():
        assert pair["building_pixels_t1"] > 50_000, name
        assert all(pair["t2_pixels"][c] > 0 for c in XBD_CLASSES), name  # every class present after the disaster
        assert pair["georeferenced"] and pair["georeference_residual_px"] < 0.1
        assert pair["ignored_pixels"] < 0.01 * 1024 * 1024
    index = load_index(tmp_path / "joplin", "change01")
    by_split = {s: set(g.tile_id) for s, g in index.groupby("split")}
    assert not (by_split["train"] & by_split["val"]) and not (by_split["train"] & by_split["test"])
    assert all(t.startswith("joplin-tornado_00000001") for t in by_split["test"])
    assert all(t.startswith("joplin-tornado_00000000") for t in by_split["train"] | by_split["val"])
    train_rows = {int(t.split("_")[-2]) for t in by_split["train"]}
    val_rows = {int(t.split("_")[-2]) for t in by_split["val"]}
    assert max(train_rows) < min(val_rows)  # spatially blocked
    t2_values = set()
    for row in index.itertuples():
        a, profile = _read(Path(row.A))
        assert a.shape == (3, 256, 256) and profile["crs"] == "EPSG:4326"
        t1, t2, change = (_read(Path(getattr(row, r)))[0][0] for r in ("semantic_t1", "semantic_t2", "label"))
        assert t1.shape == t2.shape == change.shape == (256, 256)
        labelled = change != 255
        assert np.array_equal(change[labelled] == 1, t1[labelled] != t2[labelled])
        t2_values |= set(np.unique(t2).tolist())
    assert t2_values == {0, 1, 2, 3, 4, 255}
    assert set(XBD_T2_CODES.values()) <= t2_values
