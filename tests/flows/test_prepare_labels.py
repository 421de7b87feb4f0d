"""Labels through `changeflow prepare` read as the user meant: RGB masks, GOLD's 0/255, odd values refused."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml
from rasterio.errors import NotGeoreferencedWarning

from flows.prepare import prepare_flow
from tests.conftest import write_raster

pytestmark = pytest.mark.integration

SIZE = 256
SETTINGS = {"tiling": {"size": 64, "stride": 64}, "split": {"block_tiles": 1}, "coregistration": {"enabled": False}}


@pytest.fixture(scope="module")
def prefect_backend():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def gold_mask() -> np.ndarray:
    """GOLD's encoding: 0 no change, 255 change (a building in each quarter, 1,024 + 3 × 576 px)."""
    label = np.zeros((SIZE, SIZE), np.uint8)
    label[20:52, 20:52] = 255
    label[150:174, 30:54] = 255
    label[40:64, 170:194] = 255
    label[180:204, 200:224] = 255
    return label


def write_group(folder: Path, name: str, label: np.ndarray) -> list[dict]:
    """An optical t1 / t2 pair and its label on one UTM grid; the scene entries of the group."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    before = rng.integers(200, 3000, (3, SIZE, SIZE), dtype=np.uint16)
    a = write_raster(folder / f"{name}_A.tif", before, nodata=0)
    c = write_raster(folder / f"{name}_C.tif", before[::-1].copy(), nodata=0)
    gt = write_raster(folder / f"{name}_label.tif", label)
    return [
        {"path": str(a), "role": "A", "group": name},
        {"path": str(c), "role": "C", "group": name},
        {"path": str(gt), "role": "label", "group": name},
    ]


def prepare(tmp_path: Path, scenes: list[dict], **settings) -> tuple[dict, Path]:
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"scenes": scenes, **SETTINGS, **settings}))
    out = tmp_path / "out"
    return prepare_flow(str(config), str(out)), out


def label_tiles(out: Path) -> dict[str, np.ndarray]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        tiles = {}
        for path in sorted(out.glob("tiles/*/label/*.tif")):
            with rasterio.open(path) as tile:
                tiles[path.stem] = tile.read(1)
        return tiles


@pytest.fixture(scope="module")
def one_band_run(prefect_backend, tmp_path_factory) -> tuple[dict, Path]:
    """A 0/255 mask as label, no label_encoding in the config."""
    root = tmp_path_factory.mktemp("one_band")
    return prepare(root, write_group(root / "scenes", "g", gold_mask()))


def test_a_0_255_mask_without_label_encoding_gives_change_pixels(one_band_run):
    report, out = one_band_run
    assert report["groups"] == {"g": "prepared"}
    stacked = np.stack(list(label_tiles(out).values()))
    assert set(np.unique(stacked)) == {0, 1}  # change, never "ignore"
    with rasterio.open(out / "groups" / "g" / "grid" / "label.tif") as grid:
        np.testing.assert_array_equal(grid.read(1), gold_mask() // 255)
    assert report["labels"]["g"]["label"] == {
        "file": str(out.parent / "scenes" / "g_label.tif"), "bands": 1, "label_encoding": "auto",
        "encoding": "binary255", "counts": {"0": SIZE * SIZE - 2752, "255": 2752}, "nodata_pixels": 0,
        "change_fraction": 2752 / SIZE**2,
    }
    assert any(split["change_fraction"] for split in report["splits"].values())  # 0.0 everywhere when read as ignore


def test_an_rgb_0_255_mask_gives_the_label_tiles_of_its_one_band_version(one_band_run, tmp_path):
    report, out = prepare(tmp_path, write_group(tmp_path / "scenes", "g", np.stack([gold_mask()] * 3)))
    assert report["groups"] == {"g": "prepared"} and report["scenes_refused"] == {}
    assert report["labels"]["g"]["label"]["bands"] == 3
    assert report["labels"]["g"]["label"]["counts"] == one_band_run[0]["labels"]["g"]["label"]["counts"]
    rgb, one_band = label_tiles(out), label_tiles(one_band_run[1])
    assert rgb.keys() == one_band.keys() and len(rgb) > 1
    for tile_id, label in one_band.items():
        np.testing.assert_array_equal(rgb[tile_id], label)


def test_labels_that_cannot_be_read_as_labels_fail_their_group_and_others_go_on(prefect_backend, tmp_path):
    odd = np.zeros((SIZE, SIZE), np.uint8)
    odd[0:10, :] = 1  # 2,560 change pixels
    odd[10:12, :] = 2
    odd[12:13, :] = 128
    colour = np.stack([gold_mask()] * 3)
    colour[2, 100:110, 100:110] = 255  # change marked in the blue band only
    good = (gold_mask() // 255).astype(np.uint8)
    scenes = (
        write_group(tmp_path / "odd", "odd", odd)
        + write_group(tmp_path / "colour", "colour", colour)
        + write_group(tmp_path / "good", "good", good)
    )
    report, out = prepare(tmp_path, scenes, label_encoding="change01")
    assert report["groups"] == {"colour": "failed", "good": "prepared", "odd": "failed"}
    assert report["groups_failed"]["odd"] == (
        f"{tmp_path / 'odd' / 'odd_label.tif'}: label values 2 (512 px), 128 (256 px) are outside label_encoding "
        "'change01' (0 no change, 1 change, 255 ignore); fix the label or set label_encoding ('auto' reads 0/255 "
        "and 0/1/255 labels)"
    )
    assert report["groups_failed"]["colour"] == (
        f"{tmp_path / 'colour' / 'colour_label.tif'}: its 3 bands differ at 100 pixels of rows 0..255; a label "
        "needs one band, or identical bands (e.g. an RGB 0/255 mask)"
    )
    assert report["labels"] == {"good": {"label": {
        "file": str(tmp_path / "good" / "good_label.tif"), "bands": 1, "label_encoding": "change01",
        "encoding": "change01", "counts": {"0": SIZE * SIZE - 2752, "1": 2752}, "nodata_pixels": 0,
        "change_fraction": 2752 / SIZE**2,
    }}}
    assert not (out / "groups" / "odd").exists() and not (out / "groups" / "colour").exists()


def test_odd_values_are_refused_without_label_encoding_too(prefect_backend, tmp_path):
    odd = np.zeros((SIZE, SIZE), np.uint8)
    odd[0:10, :] = 1
    odd[10:12, :] = 2
    odd[12:13, :] = 128
    scenes = write_group(tmp_path / "odd", "odd", odd) + write_group(tmp_path / "gold", "gold", gold_mask())
    report, _ = prepare(tmp_path, scenes)
    assert report["groups"] == {"gold": "prepared", "odd": "failed"}
    assert report["labels"]["gold"]["label"]["encoding"] == "binary255"
    assert report["groups_failed"]["odd"] == (
        f"{tmp_path / 'odd' / 'odd_label.tif'}: label values 0 (62,208 px), 1 (2,560 px), 2 (512 px), 128 (256 px) "
        "fit no label encoding (label_encoding 'auto' reads 0/255 as binary255 and 0/1/255 as change01); fix the "
        "label, or set label_encoding: binary255 to read values > 127 as change"
    )


def test_italy_rgb_ground_truth_reads_as_gold_0_255(prefect_backend, shared_data, tmp_path):
    folder = shared_data / "hcd-italy"
    scenes = [
        {"path": str(folder / "Italy_1.bmp"), "role": "A", "group": "italy"},
        {"path": str(folder / "Italy_2.bmp"), "role": "C", "group": "italy"},
        {"path": str(folder / "Italy_gt.bmp"), "role": "label", "group": "italy"},
    ]
    report, out = prepare(tmp_path, scenes, georeferenced=False)
    assert report["groups"] == {"italy": "prepared"}
    summary = report["labels"]["italy"]["label"]
    # As shipped: RGB with identical channels, 255 = change on about 6.2 % of the 412 x 300 pixels.
    assert (summary["bands"], summary["encoding"]) == (3, "binary255")
    assert summary["counts"] == {"0": 115974, "255": 7626}
    assert summary["change_fraction"] == pytest.approx(7626 / 123600)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(folder / "Italy_gt.bmp") as source, rasterio.open(out / "groups/italy/grid/label.tif") as grid:
            np.testing.assert_array_equal(grid.read(1), (source.read(1) > 127).astype(np.uint8))
    assert sum(int((tile == 1).sum()) for tile in label_tiles(out).values()) > 0


def test_a_label_the_catalog_refuses_fails_its_group(prefect_backend, tmp_path):
    scenes = write_group(tmp_path / "gone", "gone", gold_mask()) + write_group(tmp_path / "gold", "gold", gold_mask())
    missing = tmp_path / "gone" / "gone_label.tif"
    missing.unlink()
    report, out = prepare(tmp_path, scenes)
    assert report["groups"] == {"gold": "prepared", "gone": "failed"}
    assert report["groups_failed"]["gone"] == f"label refused: {missing}: file not found"
    assert report["scenes_refused"] == {str(missing): f"{missing}: file not found"}
    assert not (out / "groups" / "gone").exists()
