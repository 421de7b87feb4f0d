"""STIKDNet, SegChange-R1 (with text) and ClearSCD (semantic change) train and detect through the pipeline.

Tiny data on CPU: a LEVIR-style tile folder for training (with per-date class tiles), and a prepared
group (grid rasters) for detection.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from pipeline.config import TrainConfig
from pipeline.detect.evaluate import semantic_metrics
from pipeline.detect.sliding import DetectSettings, detect_group
from pipeline.detect.vectorize import vectorize
from pipeline.learn.checkpoint import load_checkpoint
from pipeline.learn.train import train
from tests.conftest import write_raster

SIZE = 64
CLASSES = 4  # 0 background, 1 field, 2 forest, 3 building


def _scene(rng: np.random.Generator, size: int) -> dict[str, np.ndarray]:
    """Optical t1/t2, per-date classes and the change label: fields and forest, buildings appear at t2."""
    t1 = np.zeros((size, size), np.uint8)
    t1[: size // 2] = 1
    t1[size // 2 :, : size // 2] = 2
    t2 = t1.copy()
    for _ in range(2):
        row, col = rng.integers(0, size - 14, 2)
        t2[row : row + 12, col : col + 12] = 3
    palette = np.array([[300, 300, 300], [900, 1400, 500], [300, 800, 300], [2500, 2400, 2300]], np.uint16)
    noise = lambda: rng.integers(0, 60, (3, size, size)).astype(np.uint16)  # noqa: E731
    return {
        "A": palette[t1].transpose(2, 0, 1) + noise(),
        "B": palette[t2].transpose(2, 0, 1) + noise(),
        "label": (t1 != t2).astype(np.uint8),
        "semantic_t1": t1,
        "semantic_t2": t2,
    }


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    """(tile folder, prepared group) sharing the same look."""
    root = tmp_path_factory.mktemp("method-models")
    rng = np.random.default_rng(0)
    folder = root / "tiles"
    for split, count in (("train", 4), ("val", 2), ("test", 2)):
        for index in range(count):
            for role, array in _scene(rng, SIZE).items():
                (folder / split / role).mkdir(parents=True, exist_ok=True)
                nodata = 255 if role in ("label", "semantic_t1", "semantic_t2") else None
                write_raster(folder / split / role / f"t{index}.tif", array, nodata=nodata)
    group = root / "prepared" / "groups" / "g"
    (group / "grid").mkdir(parents=True)
    for role, array in _scene(rng, 96).items():
        write_raster(group / "grid" / f"{role}.tif", array, nodata=255 if role not in ("A", "B") else 0)
    (group / "manifest.json").write_text(json.dumps({"coregistration": []}))
    return folder, group


def _train(folder: Path, out: Path, model: str, **overrides) -> Path:
    config = TrainConfig(
        data=folder, model=model, folder_labels="change01", modalities={"A": "optical", "B": "optical"},
        epochs=1, batch_size=2, workers=0, device="cpu", amp=False, **overrides,
    )
    torch.manual_seed(0)
    result = train(config, out)
    assert (out / "best.pt").exists() and "test" in result
    return out / "best.pt"


def _detect(group: Path, checkpoint: Path, out: Path, **options):
    settings = DetectSettings(window=SIZE, batch_size=2, device="cpu", block_size=64, **options)
    return detect_group(group, checkpoint, out, settings)


def test_stikdnet_trains_with_its_self_distillation_loss_and_detects(data, tmp_path):
    folder, group = data
    checkpoint = _train(folder, tmp_path / "run", "stikdnet", model_options={"feature_distillation": True},
                        loss_options={"feature_weight": 0.1})
    with open(tmp_path / "run" / "metrics.csv") as handle:
        header = handle.readline()
    assert "train_kd" in header and "train_student" in header and "train_feature" in header
    result = _detect(group, checkpoint, tmp_path / "detect")
    with rasterio.open(result.probability) as probability:
        assert probability.shape == (96, 96) and (probability.read(1) < 255).all()


def test_segchange_uses_the_prompt_in_training_and_detection(data, tmp_path):
    folder, group = data
    text = {"source": "hash", "prompt": "new buildings"}
    checkpoint = _train(folder, tmp_path / "run", "segchange_r1", text=text,
                        model_options={"width": 0.25, "dim": 32, "heads": 4, "decoder_stride": 4})
    assert load_checkpoint(checkpoint)["config"]["text"]["prompt"] == "new buildings"
    first = _detect(group, checkpoint, tmp_path / "a")
    other = _detect(group, checkpoint, tmp_path / "b", prompt="demolished forest")
    assert (first.prompt, other.prompt) == ("new buildings", "demolished forest")
    with rasterio.open(first.probability) as a, rasterio.open(other.probability) as b:
        assert json.loads(a.tags()["DETECT_SETTINGS"])["prompt"] == "new buildings"
        assert not np.array_equal(a.read(1), b.read(1))  # the prompt conditions the prediction


def test_clearscd_semantic_change_from_tiles_to_from_to_polygons(data, tmp_path):
    folder, group = data
    checkpoint = _train(folder, tmp_path / "run", "clearscd",
                        model_options={"semantic_classes": CLASSES, "queue_len": 16})
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert {"scd_sek", "scd_fscd", "scd_semantic_miou"} <= set(metrics["test"])
    result = _detect(group, checkpoint, tmp_path / "detect")
    assert result.semantic is not None
    rerun = _detect(group, checkpoint, tmp_path / "detect")  # finished outputs are reused
    assert rerun.blocks_done == 0 and rerun.semantic == result.semantic
    with rasterio.open(result.semantic["semantic_t1"]) as t1, rasterio.open(result.semantic["transitions"]) as codes:
        from_class, transitions = t1.read(1), codes.read(1)
        assert t1.crs == codes.crs and t1.transform == codes.transform
    with rasterio.open(result.semantic["semantic_t2"]) as t2, rasterio.open(result.classes) as change:
        to_class, changed = t2.read(1), change.read(1) == 1
    assert from_class.max() < CLASSES and to_class.max() < CLASSES
    # The trained model finds change here; there the code is 1 + K·from + to, elsewhere 0.
    assert changed.any()
    assert np.array_equal(transitions[changed], 1 + CLASSES * from_class[changed].astype(int) + to_class[changed])
    assert (transitions[~changed] == 0).all()
    count = vectorize(result.semantic["transitions"], result.probability, tmp_path / "changes.gpkg",
                      sieve_px=0, min_area_m2=0, transition_classes=CLASSES)
    assert count > 0
    import geopandas as gpd

    polygons = gpd.read_file(tmp_path / "changes.gpkg", layer="changes")
    assert len(polygons) == count and {"from_class", "to_class"} <= set(polygons.columns)
    # Unsieved and unfiltered, the polygons hold every changed pixel and exactly its from→to pairs.
    assert polygons["n_pixels"].sum() == changed.sum()
    pairs = {divmod(int(code) - 1, CLASSES) for code in np.unique(transitions[changed])}
    assert set(zip(polygons["from_class"], polygons["to_class"])) == pairs
    truth = {name: group / "grid" / f"{name}.tif" for name in ("semantic_t1", "semantic_t2", "label")}
    scores = semantic_metrics({**result.semantic, "classes": result.classes}, truth, CLASSES)
    assert "sek" in scores and "fscd" in scores
    with rasterio.open(truth["semantic_t1"]) as t1, rasterio.open(truth["semantic_t2"]) as t2, \
            rasterio.open(truth["label"]) as label:
        agree = (from_class == t1.read(1)).sum() + (to_class == t2.read(1)).sum()
        assert scores["semantic_oa"] == pytest.approx(agree / (2 * from_class.size))  # both dates pooled
        assert scores["change_oa"] == pytest.approx((changed == (label.read(1) == 1)).mean())
