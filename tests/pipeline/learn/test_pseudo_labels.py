"""Pseudo-labels: the confident pixels of a label-free map label the tiles; real labels win; test is untouched."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
from affine import Affine
from shapely.geometry import box

from pipeline.config import TrainConfig
from pipeline.errors import InputError
from pipeline.io.raster import NODATA_U8
from pipeline.learn.dataset import load_index, read_label
from pipeline.learn.pseudo_labels import build_pseudo_labels, confident_labels, with_pseudo_labels
from pipeline.learn.train import train
from pipeline.prepare.tile_index import write_index
from tests.conftest import write_folder_dataset, write_raster

TILE = 32
SPLITS = {(0, 0): "train", (1, 0): "train", (0, 1): "val", (1, 1): "test"}  # (tile column, tile row)
ORIGIN = Affine(4.0, 0, 500000.0, 0, -4.0, 3500000.0)


def _prepared(root: Path, *, labels: bool) -> Path:
    """A prepare output: one 64² optical A/B group with a bright square at t2 in every tile, four 32² tiles."""
    rng = np.random.default_rng(0)
    cover = np.kron(rng.uniform(0.1, 0.6, (3, 8, 8)), np.ones((8, 8)))  # 8 px patches of land cover
    t1 = (cover + rng.normal(0, 0.02, cover.shape)).astype(np.float32)
    t2 = (cover + rng.normal(0, 0.02, cover.shape)).astype(np.float32)
    truth = np.zeros((2 * TILE, 2 * TILE), np.uint8)
    for r, c in ((4, 4), (4, TILE + 16), (TILE + 10, 6), (TILE + 14, TILE + 14)):  # one per tile, placed apart
        truth[r : r + 12, c : c + 12] = 1
    t2[:, truth == 1] += 0.5
    label = truth.copy()
    label[:, :4] = NODATA_U8  # an unlabelled strip along the left edge of the grid
    group = root / "groups" / "g"
    (group / "grid").mkdir(parents=True)
    for role, data in (("A", t1), ("B", t2)):
        write_raster(group / "grid" / f"{role}.tif", data, nodata=float("nan"), transform=ORIGIN)
    members = {"A": {"sensor": "generic"}, "B": {"sensor": "generic"}}
    (group / "manifest.json").write_text(json.dumps({"members": members}))
    rows = []
    for (col, row), split in SPLITS.items():
        tile_id, window = f"g_x{col}_y{row}", (slice(row * TILE, (row + 1) * TILE), slice(col * TILE, (col + 1) * TILE))
        transform = ORIGIN @ Affine.translation(col * TILE, row * TILE)
        for role, data in (("A", t1), ("B", t2)) + ((("label", label[None]),) if labels else ()):
            (root / "tiles" / split / role).mkdir(parents=True, exist_ok=True)
            write_raster(root / "tiles" / split / role / f"{tile_id}.tif", data[:, window[0], window[1]],
                         transform=transform)
        rows.append({"tile_id": tile_id, "group_name": "g", "split": split, "col_off": col * TILE,
                     "row_off": row * TILE, "change_fraction": 0.14 if labels else np.nan,
                     "geometry": box(col, -row - 1, col + 1, -row)})
    write_index(root / "catalog.gpkg", {"tiles": gpd.GeoDataFrame(rows, geometry="geometry", crs="EPSG:32650")})
    return root


def _config(data: Path, **pseudo) -> TrainConfig:
    return TrainConfig(data=data, model="fc_siam_diff", modalities={"A": "optical", "B": "optical"},
                       pseudo_labels={"method": "cva", **pseudo}, batch_size=2, workers=0, device="cpu")


def test_confident_pixels_only():
    probability = np.array([0.0, 0.19, 0.2, 0.5, 0.79, 0.8, 1.0, np.nan])
    assert confident_labels(probability, 0.3).tolist() == [0, 0, 0, 255, 255, 1, 1, 255]


def test_pseudo_labels_find_the_change_fill_unlabelled_pixels_and_leave_real_test_labels(tmp_path):
    data = _prepared(tmp_path / "prepared", labels=True)
    index = load_index(data)
    summary = build_pseudo_labels(index, _config(data, keep_labels=False), tmp_path / "pure")
    pure = with_pseudo_labels(index, tmp_path / "pure").set_index("tile_id")
    assert set(summary["tiles"]) == {"g_x0_y0", "g_x1_y0", "g_x0_y1"}  # the test tile keeps its real label
    assert pure.loc["g_x1_y1", "label"] == index.set_index("tile_id").loc["g_x1_y1", "label"]
    labels = read_label(Path(pure.loc["g_x1_y0", "label"]), "change01")
    # The tile's own window of the map: its square (grid columns 48-60) found, the rest not.
    assert (labels[4:16, 16:28] == 1).mean() > 0.9 and (labels[18:, :14] == 0).mean() > 0.9
    assert summary["splits"]["train"]["change"] > 0 and summary["splits"]["test"]["change"] == 0

    build_pseudo_labels(index, _config(data, keep_labels=True), tmp_path / "kept")
    kept = read_label(Path(with_pseudo_labels(index, tmp_path / "kept").set_index("tile_id").loc["g_x0_y0", "label"]),
                      "change01")
    real = read_label(Path(index.set_index("tile_id").loc["g_x0_y0", "label"]), "change01")
    pseudo = read_label(Path(pure.loc["g_x0_y0", "label"]), "change01")
    assert np.array_equal(kept[:, 4:], real[:, 4:])  # real labels win where they are 0 or 1
    assert np.array_equal(kept[:, :4], pseudo[:, :4])  # pseudo-labels fill the unlabelled strip


def test_a_scene_without_labels_trains_on_pseudo_labels(tmp_path):
    data = _prepared(tmp_path / "prepared", labels=False)
    result = train(_config(data).model_copy(update={"max_steps": 4, "epochs": 2}), tmp_path / "run")
    assert result["steps"] == 4 and (tmp_path / "run" / "best.pt").exists()
    assert set(result["test"]) >= {"f1", "iou"}  # test tiles without labels are scored on pseudo-labels
    assert (tmp_path / "run" / "pseudo_labels" / "cva" / "g" / "change_probability.tif").exists()


def test_self_training_relabels_with_the_first_rounds_model_then_trains_again(tmp_path):
    data = _prepared(tmp_path / "prepared", labels=True)
    config = _config(data, self_training=True).model_copy(update={"max_steps": 2, "epochs": 1})
    result = train(config, tmp_path / "run")
    first = json.loads((tmp_path / "run" / "round1" / "pseudo_labels" / "pseudo_labels.json").read_text())
    second = json.loads((tmp_path / "run" / "pseudo_labels" / "pseudo_labels.json").read_text())
    assert (first["source"], second["source"]) == ("cva", "self-training on round1/best.pt")
    assert set(second["tiles"]) == set(first["tiles"]) == {"g_x0_y0", "g_x1_y0", "g_x0_y1"}
    index = load_index(data)
    real = read_label(Path(index.set_index("tile_id").loc["g_x0_y0", "label"]), "change01")
    relabelled, method = (read_label(Path(with_pseudo_labels(index, run).set_index("tile_id").loc["g_x0_y0", "label"]),
                                     "change01") for run in (tmp_path / "run", tmp_path / "run" / "round1"))
    assert np.array_equal(relabelled[:, 4:], real[:, 4:])  # real labels still win
    # The unlabelled strip: the method's confident pixels in round 1, the two-step model's (hardly any) in round 2.
    assert (method[:, :4] != NODATA_U8).mean() > 0.9 and not np.array_equal(relabelled[:, :4], method[:, :4])
    assert result["steps"] == 2 and (tmp_path / "run" / "round1" / "best.pt").exists()


def test_a_levir_style_folder_has_no_grids_for_pseudo_labels(tmp_path):
    folder = write_folder_dataset(tmp_path / "data", tiles=2, size=32)
    with pytest.raises(InputError, match="pseudo_labels need a changeflow prepare output"):
        train(_config(folder), tmp_path / "run")
