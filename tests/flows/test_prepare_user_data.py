"""What users bring, through `changeflow prepare`: pixel-space datasets, pre-registered pairs, small scenes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from affine import Affine
from scipy import ndimage
from typer.testing import CliRunner

from flows.cli import app
from flows.prepare import run_prepare
from tests.conftest import write_raster

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", autouse=True)
def prefect_backend():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def _pixel_pair(folder: Path, name: str, size: int, seed: int, shift: int = 0) -> list[dict]:
    """A pixel-space optical pair (t2 = t1 with bright squares, moved by ``shift`` px) and its 0/255 label."""
    rng = np.random.default_rng(seed)
    texture = ndimage.gaussian_filter(rng.normal(size=(size + 2 * 8, size + 2 * 8)), 3)
    t1 = texture[8 : 8 + size, 8 : 8 + size]
    t2 = texture[8 - shift : 8 - shift + size, 8 : 8 + size].copy()
    label = np.zeros((size, size), np.uint8)
    for row, col in rng.integers(0, size - 20, (4, 2)):
        t2[row : row + 16, col : col + 16] = texture.max()
        label[row : row + 16, col : col + 16] = 255
    scale = lambda image: (40 + 180 * (image - texture.min()) / np.ptp(texture)).astype(np.uint8)  # noqa: E731
    entries = []
    for role, data in (("A", scale(t1)), ("C", scale(t2)), ("label", label)):
        path = write_raster(folder / f"{name}_{role}.tif", np.stack([data] * (3 if role != "label" else 1)),
                            crs=None, transform=Affine.identity())
        entries.append({"path": str(path), "role": role, "group": name, "id": f"{name}_{role}"})
    return entries


def _config(folder: Path, scenes: list[dict], **settings) -> Path:
    config = {"georeferenced": False, "label_encoding": "binary255", "scenes": scenes, **settings}
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_five_pixel_space_pairs_keep_every_tile(tmp_path):
    # Issue 17: five unrelated crops all have the identity transform; de-duplication dropped 36 tiles.
    scenes = [entry for i in range(5) for entry in _pixel_pair(tmp_path, f"crop{i}", 128, seed=i)]
    config = _config(tmp_path, scenes, tiling={"size": 64, "stride": 64},
                     split={"train": 0.6, "val": 0.2, "test": 0.2})
    report = run_prepare(config, tmp_path / "out")
    assert report["groups"] == {f"crop{i}": "prepared" for i in range(5)}
    assert report["tiles_dropped"] == {"black": 0, "duplicate": 0, "split_isolation": 0}
    tiles = {name: split["tiles"] for name, split in report["splits"].items()}
    assert tiles == {"train": 12, "val": 4, "test": 4}  # one crop is one block: 3 / 1 / 1 crops
    assert [report["splits"][s]["share"] for s in ("train", "val", "test")] == [0.6, 0.2, 0.2]
    assert all(report["splits"][s]["change_pixels"] > 0 for s in ("train", "val", "test"))
    assert len(list((tmp_path / "out" / "tiles").glob("*/label/*.tif"))) == 20


def test_blocks_larger_than_the_scene_shrink_and_the_report_says_why(tmp_path):
    # Issue 11: one 800 x 800 pair, 256 px tiles, block_tiles 4 (default): one block, all 36 tiles in train.
    config = _config(tmp_path, _pixel_pair(tmp_path, "big", 800, seed=7),
                     tiling={"size": 256, "stride": 128}, split={"train": 0.6, "val": 0.2, "test": 0.2},
                     coregistration={"enabled": False})
    result = CliRunner().invoke(app, ["prepare", "--config", str(config), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "prepare_report.json").read_text())
    assert report["split_blocks"] == {"block_tiles": 4, "block_tiles_used": 1, "blocks": 9, "blocks_needed": 5}
    assert all(report["splits"][s]["tiles"] > 0 for s in ("train", "val", "test"))
    assert "split.block_tiles 4 gives 1 block(s), too few for the ratios" in report["notes"][0]
    assert "tiling.stride 128 is not used" in report["notes"][1]
    output = " ".join(result.output.split())  # rich wraps long lines
    assert "tiles train 20 (56%, asked 60%), val 8 (22%, asked 20%), test 8 (22%, asked 20%)" in output, output
    assert "note: split.block_tiles 4 gives 1 block(s)" in output
    assert yaml.safe_load((tmp_path / "out" / "config.yaml").read_text())["split"]["block_tiles"] == 1


def test_every_group_refused_is_one_line_error_naming_the_switch(tmp_path):
    # A real 3 px shift that no correction fits within max_rmse_px: the only group is refused.
    config = _config(tmp_path, _pixel_pair(tmp_path, "moved", 256, seed=3, shift=3),
                     tiling={"size": 64, "stride": 64}, coregistration={"max_rmse_px": 0.001, "window": 64})
    result = CliRunner().invoke(app, ["prepare", "--config", str(config), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    output = " ".join(result.output.split())  # rich wraps long lines
    assert "error: no group was prepared (moved: group 'moved': no image left after co-registration" in output
    assert "max_rmse_px 0.001" in output and "coregistration: {enabled: false}" in output
    assert "3.00 px uncorrected" in output  # the measured shift: the correction does beat no correction
    assert "Traceback" not in output


def test_pre_registered_yellow_river_pair_is_kept_uncorrected(shared_data, tmp_path):
    # Issue 17: the pair's tie points are speckle noise (RMSE 18.6 px); no correction fits them better.
    folder = shared_data / "sar-yellowriver-abcd"
    scenes = [
        {"path": str(folder / "yellow_A_1.bmp"), "role": "A", "group": "yellow", "id": "t1", "sar": True},
        {"path": str(folder / "yellow_A_2.bmp"), "role": "B", "group": "yellow", "id": "t2", "sar": True},
        {"path": str(folder / "yellow_A_gt.bmp"), "role": "label", "group": "yellow", "id": "gt"},
    ]
    config = _config(tmp_path, scenes, tiling={"size": 64, "stride": 64})
    report = run_prepare(config, tmp_path / "out")
    assert report["groups"] == {"yellow": "prepared"} and report["images_refused"] == {}
    assert report["images_uncorrected"]["t2"].startswith("kept uncorrected")
    (record,) = json.loads((tmp_path / "out" / "coregistration.json").read_text())
    assert record["accepted"] is True and record["corrected"] is False
    assert record["identity_residual_px"] <= record["residual_px"]
    assert record["rmse_px"] > 2.0  # what was refused before
    # 257 x 289 px: default blocks (4 tiles) would be one block; 12 blocks of one tile, 2 x 2 windows each.
    assert report["split_blocks"]["block_tiles_used"] == 1
    assert sum(split["tiles"] for split in report["splits"].values()) == 48
    assert all(report["splits"][s]["tiles"] > 0 for s in ("train", "val", "test"))
