"""Training and detection mark the same pixels invalid: the validity policy prepare applied.

Prepare records per image role its rule (nodata, and GOLD's black value for integer imagery) in the
group manifest; training applies it to the tiles and stores it in the checkpoint; detection applies
the checkpoint's. A checkpoint without the policy keeps detection's earlier rule (black value 5).
"""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import torch
import yaml
from shapely.geometry import box

from pipeline.config import TrainConfig, load_config
from pipeline.detect.inputs import check_inputs
from pipeline.detect.reading import WindowReader
from pipeline.errors import InputError
from pipeline.io.raster import NODATA_U8
from pipeline.learn.checkpoint import load_checkpoint
from pipeline.learn.dataset import TileDataset, fit_normalization, load_index, validity_policy
from pipeline.learn.normalization import BandStats
from pipeline.learn.train import train
from pipeline.prepare.catalog import build_catalog, scene_entries
from pipeline.prepare.group_build import MANIFEST, process_group
from pipeline.prepare.overlap import build_groups
from pipeline.prepare.tile_index import write_index
from pipeline.synthetic.scenes import write_synthetic_group
from tests.conftest import write_raster

SIZE = 64  # tile side; the grid is two tiles high
STATS = {"A": BandStats("optical", (1.0,) * 3, (900.0,) * 3, False), "B": BandStats("sar", (-25.0,), (0.0,), False)}


def _images(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A grid of two tiles: uint16 A (nodata 0), float32 SAR B (NaN), a 0/1 label.

    In the lower tile A has a nodata block (0), a black block (every band 3), a dark but valid block
    (one band 9, the others 2) and a block every band of which is 12: black under a black value of
    20, valid under 5. B has a NaN hole.
    """
    a = rng.integers(100, 900, (3, 2 * SIZE, SIZE)).astype(np.uint16)
    low = a[:, SIZE:]  # a view: the lower tile
    low[:, 0:10, 0:20] = 0
    low[:, 20:30, 0:20] = 3
    low[0, 40:50, 0:20], low[1:, 40:50, 0:20] = 9, 2
    low[:, 40:50, 30:50] = 12
    b = rng.normal(-12, 3, (1, 2 * SIZE, SIZE)).astype(np.float32)
    b[:, SIZE + 5 : SIZE + 15, 40:60] = np.nan
    label = np.zeros((1, 2 * SIZE, SIZE), np.uint8)
    label[:, 20:40, 20:60] = label[:, SIZE + 20 : SIZE + 40, 20:60] = 1
    return a, b, label


def _prepared(root: Path, black_value: float) -> Path:
    """A prepare output: group ``g1`` (grid rasters, manifest with its validity), its two tiles, catalog.gpkg."""
    a, b, label = _images(np.random.default_rng(0))
    group = root / "groups" / "g1"
    (group / "grid").mkdir(parents=True)
    nodata = {"A": 0, "B": float("nan"), "label": NODATA_U8}
    for role, data in (("A", a), ("B", b), ("label", label)):
        write_raster(group / "grid" / f"{role}.tif", data, nodata=nodata[role])
    validity = {"A": {"black_value": black_value, "nodata": 0.0}, "B": {"black_value": None, "nodata": None}}
    (group / MANIFEST).write_text(json.dumps({"coregistration": [], "validity": validity}))
    rows = []
    for i, split in enumerate(("val", "train")):  # the lower tile, with the invalid blocks, is train
        tile_id = f"g1_{i}"
        for role, data in (("A", a), ("B", b), ("label", label)):
            (root / "tiles" / split / role).mkdir(parents=True, exist_ok=True)
            window = data[:, i * SIZE : (i + 1) * SIZE]
            write_raster(root / "tiles" / split / role / f"{tile_id}.tif", window, nodata=nodata[role])
        rows.append({"tile_id": tile_id, "group_name": "g1", "split": split, "change_fraction": 0.2,
                     "geometry": box(0, -(i + 1) * SIZE, SIZE, -i * SIZE)})
    write_index(root / "catalog.gpkg", {"tiles": gpd.GeoDataFrame(rows, geometry="geometry", crs="EPSG:32650")})
    return root


def _payload(validity: dict | None) -> dict:
    """An inference-ready checkpoint payload (what check_inputs reads), with or without a policy."""
    payload = {"inputs": ["A", "B"], "bands": {"A": 3, "B": 1, "label": 1},
               "normalization": {role: stats.to_dict() for role, stats in STATS.items()}}
    return payload if validity is None else {**payload, "validity": validity}


def _detection_read(group: Path, payload: dict) -> tuple[list[torch.Tensor], np.ndarray]:
    """Detection's read of the lower tile's window: the normalised inputs and the joint valid mask."""
    inputs = check_inputs(group, group / "model.pt", payload)
    reader = WindowReader(inputs, STATS, (SIZE, SIZE), pin=False)
    try:
        tensors, mask = reader.read([(SIZE, 0)])
    finally:
        reader.close()
    return [t[0] for t in tensors], mask[0].numpy()


def test_the_dataset_and_detection_mark_the_same_pixels_invalid(tmp_path):
    root = _prepared(tmp_path / "out", black_value=5.0)
    index = load_index(root)
    policy = validity_policy(root, index, ["A", "B"])
    assert policy == {"A": {"black_value": 5.0, "nodata": 0.0}, "B": {"black_value": None, "nodata": None}}
    sample = TileDataset(index, "train", STATS, validity=policy)[0]
    tensors, valid = _detection_read(root / "groups" / "g1", _payload(policy))

    expected = np.ones((SIZE, SIZE), bool)
    expected[0:10, 0:20] = expected[20:30, 0:20] = False  # nodata, black
    expected[5:15, 40:60] = False  # SAR NaN
    assert np.array_equal(valid, expected)  # the dark block (one band 9) and the 12 block stay valid
    assert np.array_equal(sample["label"].numpy() == NODATA_U8, ~expected)
    assert sample["label"][25, 30] == 1 and sample["label"][45, 5] == 0
    # Inputs are normalised and zeroed on each role's invalid pixels exactly as detection's.
    assert torch.equal(sample["A"], tensors[0]) and torch.equal(sample["B"], tensors[1])
    assert sample["A"][:, 20:30, 0:20].abs().sum() == 0 and sample["A"][:, 40:50, 0:20].abs().sum() > 0


def test_normalisation_is_fitted_on_the_policys_valid_pixels(tmp_path):
    root = _prepared(tmp_path / "out", black_value=20.0)
    index = load_index(root)
    lowest = fit_normalization(index, {"A": "optical"}, validity=validity_policy(root, index, ["A"]))["A"].low
    assert min(lowest) > 20  # the black blocks are not data
    assert min(fit_normalization(index, {"A": "optical"})["A"].low) == 2  # they are, under no rule


def test_a_black_value_set_at_prepare_reaches_detection_through_the_checkpoint(tmp_path):
    root = _prepared(tmp_path / "out", black_value=20.0)
    config = TrainConfig(data=root, model="fc_siam_diff", modalities={"A": "optical", "B": "sar"}, epochs=1,
                         batch_size=1, lr=1e-3, workers=0, device="cpu", augment=False)
    train(config, tmp_path / "run")
    checkpoint = load_checkpoint(tmp_path / "run" / "best.pt")
    assert checkpoint["validity"] == {"A": {"black_value": 20.0, "nodata": 0.0},
                                      "B": {"black_value": None, "nodata": None}}
    group = root / "groups" / "g1"
    assert check_inputs(group, tmp_path / "run" / "best.pt", checkpoint).black_values == {"A": 20.0, "B": None}
    _, valid = _detection_read(group, _payload(checkpoint["validity"]))
    black = np.zeros((SIZE, SIZE), bool)
    black[0:10, 0:20] = black[5:15, 40:60] = black[20:30, 0:20] = True  # nodata, SAR NaN, 3s
    black[40:50, 0:20] = black[40:50, 30:50] = True  # every band <= 20 (9 and 2s; 12s): black, as prepare decided
    assert np.array_equal(valid, ~black)
    stats = {role: BandStats.from_dict(d) for role, d in checkpoint["normalization"].items()}
    sample = TileDataset(load_index(root), "train", stats, validity=checkpoint["validity"])[0]
    assert np.array_equal(sample["label"].numpy() == NODATA_U8, ~valid)


def test_an_old_checkpoint_keeps_detections_earlier_rule_while_a_new_one_uses_its_own(tmp_path):
    root = _prepared(tmp_path / "out", black_value=20.0)
    group = root / "groups" / "g1"
    old = check_inputs(group, group / "old.pt", _payload(None))
    assert old.black_values == {"A": 5, "B": None}  # integer imagery: black value 5, as before
    _, old_valid = _detection_read(group, _payload(None))
    _, new_valid = _detection_read(group, _payload(validity_policy(root, load_index(root), ["A", "B"])))
    only_old = np.zeros((SIZE, SIZE), bool)
    only_old[40:50, 0:20] = only_old[40:50, 30:50] = True  # the (9, 2, 2) and the 12 blocks
    assert np.array_equal(old_valid & ~new_valid, only_old)
    assert np.array_equal(new_valid & ~old_valid, np.zeros_like(only_old))
    assert not old_valid[20:30, 0:20].any()  # the 3s are black under both


def test_a_checkpoint_policy_without_an_input_role_is_refused(tmp_path):
    root = _prepared(tmp_path / "out", black_value=5.0)
    payload = _payload({"A": {"black_value": 5.0, "nodata": 0.0}})
    with pytest.raises(InputError, match=r"model\.pt: its validity policy has no rule for input B"):
        check_inputs(root / "groups" / "g1", root / "groups" / "g1" / "model.pt", payload)


def test_groups_prepared_with_different_rules_are_refused_and_a_folder_gets_the_default(tmp_path):
    root = _prepared(tmp_path / "out", black_value=20.0)
    index = load_index(root)
    index.loc[index.split == "val", "group"] = "g2"  # a second group, whose manifest predates the policy
    with pytest.raises(InputError, match=r"groups were prepared with different validity rules \(g1: .*'black_value': 20\.0"):
        validity_policy(root, index, ["A", "B"])
    folder = tmp_path / "levir"
    for split in ("train", "val"):
        for role, data in (("A", np.full((3, 8, 8), 50, np.uint8)), ("B", np.zeros((1, 8, 8), np.float32))):
            (folder / split / role).mkdir(parents=True)
            write_raster(folder / split / role / "t0.tif", data)
    assert validity_policy(folder, load_index(folder), ["A", "B"]) == {
        "A": {"black_value": 5.0, "nodata": None}, "B": {"black_value": None, "nodata": None}}


def test_prepare_records_the_rule_it_applied_in_the_group_manifest(tmp_path):
    write_synthetic_group(tmp_path / "scenes", name="g1", size=256, seed=1, collar=10)
    settings = {"scene_list": str(tmp_path / "scenes" / "g1_scenes.yaml"), "coregistration": {"enabled": False},
                "tiling": {"size": 128, "stride": 128, "black_value": 20}, "split": {"block_tiles": 1}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(settings))
    config = load_config(tmp_path / "run.yaml")
    scenes, _ = build_catalog(scene_entries(config), config)
    groups, _, crs = build_groups(scenes, config.min_overlap)
    process_group(groups[0], crs, config, tmp_path / "out")
    path = tmp_path / "out" / "groups" / "g1" / MANIFEST
    expected = {"A": {"black_value": 20.0, "nodata": 0.0}, "B": {"black_value": None, "nodata": None},
                "C": {"black_value": 20.0, "nodata": 0.0}}
    assert json.loads(path.read_text())["validity"] == expected
    # A manifest written before the policy gets it on the next (skipping) run.
    manifest = json.loads(path.read_text())
    del manifest["validity"]
    path.write_text(json.dumps(manifest))
    assert process_group(groups[0], crs, config, tmp_path / "out").status == "skipped"
    assert json.loads(path.read_text())["validity"] == expected
