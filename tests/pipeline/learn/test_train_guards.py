"""Training refuses what it cannot learn from, says why in one line, and stores what detection needs.

A split without change pixels, a damaged tile index, the training tile size in the checkpoint, and
the DDP barrier after rank 0's validation.
"""

from __future__ import annotations

import logging
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import torch.distributed as dist
from shapely.geometry import box

from pipeline.config import TrainConfig
from pipeline.detect.windows import DEFAULT_WINDOW, default_window
from pipeline.errors import InputError
from pipeline.learn import dataset as dataset_module
from pipeline.learn import train as train_module
from pipeline.learn.checkpoint import load_checkpoint
from pipeline.learn.dataset import load_index, split_change_counts, split_has_change
from pipeline.learn.train import train
from pipeline.prepare.tile_index import read_tiles, write_index
from tests.conftest import write_folder_dataset, write_raster

SIZE = 64  # tile side of write_folder_dataset


def _config(data: Path, **overrides) -> TrainConfig:
    settings = dict(
        data=data, model="fc_siam_diff", modalities={"A": "optical", "B": "optical"}, epochs=1,
        batch_size=2, lr=1e-3, workers=0, device="cpu",
    )
    return TrainConfig(**{**settings, **overrides})


def _erase_change(folder: Path, split: str) -> int:
    """Set every label of a LEVIR-style split to 0 (no change); returns the split's pixel count."""
    pixels = 0
    for path in sorted((folder / split / "label").iterdir()):
        write_raster(path, np.zeros((SIZE, SIZE), np.uint8))
        pixels += SIZE * SIZE
    return pixels


def _prepared(root: Path, labels: dict[str, list[np.ndarray]]) -> Path:
    """A prepare output folder: catalog.gpkg (tiles layer) and tiles/{split}/{A,B,label}/{id}.tif."""
    rng = np.random.default_rng(0)
    rows = []
    for split, masks in labels.items():
        for i, mask in enumerate(masks):
            tile_id = f"g_{split}_{i}"
            for role in ("A", "B"):
                (root / "tiles" / split / role).mkdir(parents=True, exist_ok=True)
                write_raster(root / "tiles" / split / role / f"{tile_id}.tif",
                             rng.integers(100, 900, (3, SIZE, SIZE)).astype(np.uint16))
            (root / "tiles" / split / "label").mkdir(parents=True, exist_ok=True)
            write_raster(root / "tiles" / split / "label" / f"{tile_id}.tif", mask)
            labelled = mask != 255
            rows.append({"tile_id": tile_id, "group_name": "g", "split": split,
                         "change_fraction": float((mask == 1).sum() / max(labelled.sum(), 1)),
                         "geometry": box(i * SIZE, 0, (i + 1) * SIZE, SIZE)})
    write_index(root / "catalog.gpkg", {"tiles": gpd.GeoDataFrame(rows, geometry="geometry", crs="EPSG:32650")})
    return root


def _mask(change: int = 0, ignored: int = 0) -> np.ndarray:
    """A 0/1/255 label: ``change`` pixels 1 on the first row(s), ``ignored`` pixels 255 at the end."""
    mask = np.zeros(SIZE * SIZE, np.uint8)
    mask[:change] = 1
    if ignored:
        mask[-ignored:] = 255
    return mask.reshape(SIZE, SIZE)


def test_no_change_in_train_is_refused_with_the_counts_before_training(tmp_path):
    folder = write_folder_dataset(tmp_path / "data")
    pixels = _erase_change(folder, "train")
    out = tmp_path / "run"
    with pytest.raises(InputError) as info:
        train(_config(folder), out)
    message = str(info.value)
    assert message.startswith(f"{folder}: the train split has no change pixels")
    assert f"(train: 0 change of {pixels} labelled pixels in 6 tiles; val: " in message
    assert "allow_no_change: true" in message
    assert "\n" not in message
    assert not out.exists()


def test_no_change_in_val_is_refused_naming_val(tmp_path):
    folder = write_folder_dataset(tmp_path / "data")
    pixels = _erase_change(folder, "val")
    with pytest.raises(InputError, match=rf"the val split has no change pixels \(train: \d+ change .*; val: 0 change of {pixels} labelled"):
        train(_config(folder), tmp_path / "run")


def test_no_change_anywhere_names_both_splits(tmp_path):
    folder = write_folder_dataset(tmp_path / "data")
    _erase_change(folder, "train")
    _erase_change(folder, "val")
    with pytest.raises(InputError, match="the train and val splits have no change pixels"):
        train(_config(folder), tmp_path / "run")


def test_allow_no_change_only_warns_and_trains(tmp_path, caplog):
    folder = write_folder_dataset(tmp_path / "data")
    pixels = _erase_change(folder, "train")
    with caplog.at_level(logging.WARNING, logger="pipeline.learn.train"):
        result = train(_config(folder, allow_no_change=True), tmp_path / "run")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert f"the train split has no change pixels (train: 0 change of {pixels} labelled" in warnings[0]
    assert result["best_epoch"] == 0
    assert (tmp_path / "run" / "best.pt").exists()


def test_allow_no_change_defaults_to_false():
    assert TrainConfig(data=Path("x")).allow_no_change is False


def test_counts_of_a_prepared_index_leave_out_ignored_pixels(tmp_path):
    root = _prepared(tmp_path / "prepared", {
        "train": [_mask(ignored=100), _mask(ignored=4)],
        "val": [_mask(change=7, ignored=3)],
        "test": [_mask(change=1)],
    })
    index = load_index(root)
    assert split_change_counts(index, "train") == (0, 2 * SIZE * SIZE - 104)
    assert split_change_counts(index, "val") == (7, SIZE * SIZE - 3)
    with pytest.raises(InputError, match=rf"train: 0 change of {2 * SIZE * SIZE - 104} labelled pixels in 2 tiles; "
                                         rf"val: 7 change of {SIZE * SIZE - 3} labelled pixels in 1 tile\)"):
        train(_config(root), tmp_path / "run")


def test_counts_of_a_levir_folder_read_0_255_masks(tmp_path):
    folder = write_folder_dataset(tmp_path / "data")
    index = load_index(folder)
    expected = sum(
        int((np.asarray(_read_band(path)) == 255).sum()) for path in sorted((folder / "val" / "label").iterdir())
    )
    assert expected > 0
    assert split_change_counts(index, "val") == (expected, 2 * SIZE * SIZE)


def test_finding_change_reads_no_tile_of_a_prepared_index_and_stops_at_the_first_in_a_folder(tmp_path, monkeypatch):
    reads = []
    real_read = dataset_module._read
    monkeypatch.setattr(dataset_module, "_read", lambda path: reads.append(path) or real_read(path))
    root = _prepared(tmp_path / "prepared", {"train": [_mask(change=3), _mask(change=3)], "val": [_mask()]})
    assert split_has_change(load_index(root), "train") is True
    assert reads == []  # answered by the index's change_fraction
    assert split_has_change(load_index(root), "val") is False
    assert len(reads) == 1  # no positive fraction: the label is read
    reads.clear()
    assert split_has_change(load_index(write_folder_dataset(tmp_path / "data")), "train") is True
    assert len(reads) == 1  # a LEVIR folder has no fractions: read until the first change pixel


def _read_band(path: Path) -> np.ndarray:
    with rasterio.open(path) as dataset:
        return dataset.read(1)


@pytest.mark.parametrize("content", [b"", b"not a geopackage", None])
def test_a_damaged_catalog_is_one_line_naming_the_file(tmp_path, content):
    root = _prepared(tmp_path / "prepared", {"train": [_mask(change=5)], "val": [_mask(change=5)]})
    catalog = root / "catalog.gpkg"
    data = catalog.read_bytes()
    catalog.write_bytes(data[: len(data) // 2] if content is None else content)  # None: truncated
    with pytest.raises(InputError) as info:
        train(_config(root), tmp_path / "run")
    assert info.value.path == catalog
    assert str(info.value).startswith(f"{catalog}: damaged or not a GeoPackage")
    assert "\n" not in str(info.value)


def test_a_catalog_without_a_tiles_layer_says_so(tmp_path):
    catalog = tmp_path / "catalog.gpkg"
    write_index(catalog, {"scenes": gpd.GeoDataFrame({"scene_id": ["s"]}, geometry=[box(0, 0, 1, 1)], crs=None)})
    with pytest.raises(InputError, match=r"catalog.gpkg: has no 'tiles' layer"):
        read_tiles(catalog)


@pytest.mark.parametrize(("overrides", "expected"), [
    ({}, SIZE),  # crop: null → the tile size
    ({"crop": 32}, 32),
    ({"crop": 128}, SIZE),  # a crop larger than the tiles is not applied
    ({"crop": 32, "augment": False}, SIZE),  # crops come with augmentation only
])
def test_the_checkpoint_stores_the_tile_size_trained_on(tmp_path, overrides, expected):
    folder = write_folder_dataset(tmp_path / "data")
    train(_config(folder, **overrides), tmp_path / "run")
    for name in ("best.pt", "last.pt"):
        checkpoint = load_checkpoint(tmp_path / "run" / name)
        assert checkpoint["tile_size"] == expected
        assert default_window(checkpoint) == expected


def test_default_window_of_old_checkpoints_is_unchanged():
    assert default_window({"config": {"crop": None}}) == DEFAULT_WINDOW == 512
    assert default_window({"config": {"crop": 256}}) == 256
    assert default_window({"config": {"crop": 256}, "tile_size": 64}) == 64


def test_ranks_wait_for_rank_0_after_each_validation(tmp_path, monkeypatch):
    folder = write_folder_dataset(tmp_path / "data")
    out = tmp_path / "run"
    saved_epochs = []  # the epoch of last.pt when each barrier is reached

    def barrier(*args, **kwargs):
        saved_epochs.append(load_checkpoint(out / "last.pt")["epoch"])

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        monkeypatch.setattr(train_module.dist, "barrier", barrier)
        train(_config(folder, epochs=2), out)
    finally:
        dist.destroy_process_group()
    assert saved_epochs == [0, 1]


def test_no_barrier_without_a_process_group(tmp_path, monkeypatch):
    folder = write_folder_dataset(tmp_path / "data")
    calls = []
    monkeypatch.setattr(train_module.dist, "barrier", lambda *a, **k: calls.append(1))
    train(_config(folder), tmp_path / "run")
    assert calls == []
