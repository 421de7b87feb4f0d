"""Sliding-window detection: seams, nodata, COG outputs and provenance, resume, weighting, bad input."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.shutil
import torch
from affine import Affine
from torch import nn

import models
from models import registry
from models.fc import FCSiamDiff
from pipeline.detect.output import CLASS_FILE, PROBABILITY_FILE
from pipeline.detect.sliding import DetectSettings, detect_group
from pipeline.detect.staging import PARTIAL_DIR
from pipeline.detect.windows import importance_map, window_starts
from pipeline.errors import GroupError, InputError
from pipeline.learn.checkpoint import file_sha256, save_checkpoint
from pipeline.learn.normalization import BandStats
from tests.conftest import write_raster

HEIGHT, WIDTH, WINDOW = 160, 200, 64
CRS = "EPSG:32650"
TRANSFORM = Affine(4.0, 0, 500000.0, 0, -4.0, 3500000.0)


# --------------------------------------------------------------------------- test models


class ConstantModel(nn.Module):
    """Same logits everywhere: any seam in the stitched output comes from the blending."""

    calls = 0

    def __init__(self, t1_channels: int, t2_channels: int) -> None:
        super().__init__()
        self.logit = nn.Parameter(torch.tensor(0.8))

    def forward(self, t1, t2):
        type(self).calls += 1
        n, _, h, w = t1.shape
        change = self.logit.expand(n, 1, h, w)
        return {"logits": torch.cat([torch.zeros_like(change), change], dim=1)}


class BorderModel(ConstantModel):
    """Confident at the window centre, wrong towards its borders (a model short of context there)."""

    def forward(self, t1, t2):
        n, _, h, w = t1.shape
        y = torch.linspace(-1, 1, h).view(h, 1)
        x = torch.linspace(-1, 1, w).view(1, w)
        border = torch.maximum(y.abs(), x.abs())  # 0 at the centre, 1 on the border
        change = (3.0 - 6.0 * border).expand(n, 1, h, w)
        return {"logits": torch.cat([torch.zeros_like(change), change], dim=1)}


class CountingFCSiamDiff(FCSiamDiff):
    """The real FC-Siam-diff, counting forward calls."""

    calls = 0

    def forward(self, t1, t2):
        type(self).calls += 1
        return super().forward(t1, t2)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny convolutions run faster on one thread, and CI's two cores are shared with the readers."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def test_models(monkeypatch):
    for name, cls in {"test_constant": ConstantModel, "test_border": BorderModel,
                      "test_counting_fc_siam_diff": CountingFCSiamDiff}.items():
        monkeypatch.setitem(registry._REGISTRY, name, cls)
        cls.calls = 0


# --------------------------------------------------------------------------- fixtures


def _cog(path: Path, data: np.ndarray, nodata: float) -> Path:
    staging = write_raster(path.with_suffix(".staging.tif"), data, crs=CRS, transform=TRANSFORM, nodata=nodata)
    rasterio.shutil.copy(staging, path, driver="COG", compress="deflate")
    staging.unlink()
    return path


def _texture(rng: np.random.Generator, bands: int) -> np.ndarray:
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    base = 120 + 60 * np.sin(xx / 9.0) * np.cos(yy / 13.0)
    return np.stack([base + rng.normal(0, 10, base.shape) for _ in range(bands)])


@pytest.fixture
def group(tmp_path) -> Path:
    """A prepared group: A 3-band uint8 (nodata 0), B 1-band SAR dB float32 (NaN), label."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "out" / "groups" / "city1"
    (folder / "grid").mkdir(parents=True)
    a = np.clip(_texture(rng, 3), 10, 250).astype(np.uint8)
    a[:, :, :7] = 0  # a nodata collar on the left
    b = (-12 + 4 * rng.standard_normal((1, HEIGHT, WIDTH))).astype(np.float32)
    b[:, 100:120, 150:180] = np.nan  # a SAR nodata hole
    label = np.zeros((1, HEIGHT, WIDTH), np.uint8)
    label[:, 40:60, 50:90] = 1
    _cog(folder / "grid" / "A.tif", a, 0)
    _cog(folder / "grid" / "B.tif", b, float("nan"))
    _cog(folder / "grid" / "label.tif", label, 255)
    manifest = {"coregistration": [
        {"group": "city1", "image": "GF3_20210616", "role": "B", "reference": "GF2_20190501",
         "accepted": True, "reason": None},
    ]}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def _expected_valid(group: Path) -> np.ndarray:
    with rasterio.open(group / "grid" / "A.tif") as a, rasterio.open(group / "grid" / "B.tif") as b:
        return (a.read() > 5).any(axis=0) & np.isfinite(b.read(1))


def _checkpoint(path: Path, name: str = "fc_siam_diff", a_bands: int = 3) -> Path:
    torch.manual_seed(0)
    options = {"t1_channels": a_bands, "t2_channels": 1}
    model = models.build(name, **options)
    save_checkpoint(path, {
        "model": model.state_dict(),
        "model_name": name,
        "model_options": options,
        "normalization": {
            "A": BandStats("optical", (10.0,) * a_bands, (250.0,) * a_bands, False).to_dict(),
            "B": BandStats("sar", (-25.0,), (0.0,), False).to_dict(),
        },
        "bands": {"A": a_bands, "B": 1, "label": 1},
        "inputs": ["A", "B"],
        "config": {"model": name, "crop": WINDOW},
        "epoch": 3,
    })
    return path


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as dataset:
        return dataset.read(1)


FAST = DetectSettings(device="cpu", batch_size=4, block_size=64)


# --------------------------------------------------------------------------- windows and weights


def test_windows_are_spread_evenly_with_the_last_flush_with_the_edge():
    starts = window_starts(200, 64, 0.5)
    assert starts[0] == 0 and starts[-1] == 200 - 64
    assert max(np.diff(starts)) <= 32  # at least the requested overlap
    assert window_starts(50, 64, 0.5) == [0]
    assert window_starts(128, 64, 0.0) == [0, 64]


def test_gaussian_importance_map_has_a_floor_and_is_flip_symmetric():
    gauss = importance_map(64, 48)
    assert gauss.max() == pytest.approx(1.0, abs=1e-3) and gauss.min() > 0
    assert np.array_equal(gauss, gauss[::-1]) and np.array_equal(gauss, gauss[:, ::-1])
    # σ = size / 8: one σ from the centre the weight is exp(-1/2) of the peak.
    profile = importance_map(1, 801)[0]
    sigma = 801 / 8
    assert profile[400 + 100] / profile[400] == pytest.approx(np.exp(-0.5 * (100 / sigma) ** 2), rel=1e-5)
    assert np.all(importance_map(8, 8, "uniform") == 1)


# --------------------------------------------------------------------------- blending


def test_constant_model_gives_exactly_constant_probability(group, tmp_path, test_models):
    checkpoint = _checkpoint(tmp_path / "constant.pt", "test_constant")
    valid = _expected_valid(group)
    result = detect_group(group, checkpoint, tmp_path / "u8", FAST)
    probability = _read(result.probability)
    expected = np.floor(torch.sigmoid(torch.tensor(0.8)).item() * 254 + 0.5)
    assert np.all(probability[valid] == expected)  # exactly, across window and block seams
    assert np.all(_read(result.classes)[valid] == 1)
    assert result.blocks_total == 12 and result.blocks_done == 12

    floats = detect_group(group, checkpoint, tmp_path / "f32", replace(FAST, probability_dtype="float32", tta=True))
    values = _read(floats.probability)[valid]
    assert values.max() - values.min() < 1e-6
    assert values[0] == pytest.approx(torch.sigmoid(torch.tensor(0.8)).item(), abs=1e-6)


def test_nodata_in_any_input_is_nodata_in_both_outputs(group, tmp_path, test_models):
    checkpoint = _checkpoint(tmp_path / "fc.pt")
    valid = _expected_valid(group)
    assert 0 < (~valid).sum() < valid.size / 4
    result = detect_group(group, checkpoint, tmp_path / "det", FAST)
    probability, classes = _read(result.probability), _read(result.classes)
    assert np.all(probability[~valid] == 255) and np.all(classes[~valid] == 255)
    assert np.all(probability[valid] <= 254) and set(np.unique(classes[valid])) <= {0, 1}
    constant = _checkpoint(tmp_path / "constant.pt", "test_constant")
    floats = detect_group(group, constant, tmp_path / "f32", replace(FAST, probability_dtype="float32"))
    assert np.array_equal(np.isnan(_read(floats.probability)), ~valid)


# --------------------------------------------------------------------------- outputs


def test_outputs_are_georeferenced_cogs_with_provenance(group, tmp_path):
    checkpoint = _checkpoint(tmp_path / "fc.pt")
    provenance = {"t1_scene_id": "GF2_20190501", "t1_date": "2019-05-01",
                  "t2_scene_id": "GF3_20210616", "t2_date": "2021-06-16"}
    result = detect_group(group, checkpoint, tmp_path / "det", DetectSettings(device="cpu", block_size=128),
                          run_id="run-42", provenance=provenance)
    assert result.megapixels == pytest.approx(HEIGHT * WIDTH / 1e6)
    for path, resampling_nodata in ((result.probability, 255), (result.classes, 255)):
        with rasterio.open(path) as dataset:
            assert dataset.crs == rasterio.crs.CRS.from_string(CRS)
            assert dataset.transform == TRANSFORM
            assert (dataset.height, dataset.width) == (HEIGHT, WIDTH)
            assert dataset.dtypes[0] == "uint8" and dataset.nodata == resampling_nodata
            assert dataset.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
            assert dataset.profile["tiled"] and dataset.overviews(1)
            tags = dataset.tags()
        assert tags["CHECKPOINT_SHA256"] == file_sha256(checkpoint)
        assert tags["MODEL"] == "fc_siam_diff" and tags["RUN_ID"] == "run-42" and tags["GROUP"] == "city1"
        assert {k: tags[k] for k in provenance} == provenance
        settings = json.loads(tags["DETECT_SETTINGS"])
        assert settings["window"] == [WINDOW, WINDOW] and settings["overlap"] == 0.5  # window from the checkpoint
    assert not (tmp_path / "det" / PARTIAL_DIR).exists()
    assert sorted(p.name for p in (tmp_path / "det").iterdir()) == [CLASS_FILE, PROBABILITY_FILE]


def test_scene_ids_come_from_the_group_manifest_and_reruns_skip(group, tmp_path):
    checkpoint = _checkpoint(tmp_path / "fc.pt")
    first = detect_group(group, checkpoint, tmp_path / "det", FAST)
    with rasterio.open(first.classes) as dataset:
        assert dataset.tags()["A_scene_id"] == "GF2_20190501"
        assert dataset.tags()["B_scene_id"] == "GF3_20210616"
    again = detect_group(group, checkpoint, tmp_path / "det", FAST)
    assert again.blocks_done == 0 and again.blocks_resumed == again.blocks_total
    assert again.run_id == first.run_id
    renamed = detect_group(group, checkpoint, tmp_path / "det", FAST, run_id="another")
    assert renamed.blocks_done == renamed.blocks_total  # another run id (or provenance) is a new run


# --------------------------------------------------------------------------- resume


class Killed(Exception):
    pass


def test_killed_run_resumes_to_identical_rasters_without_recomputing(group, tmp_path, test_models):
    checkpoint = _checkpoint(tmp_path / "counting.pt", "test_counting_fc_siam_diff")
    full = detect_group(group, checkpoint, tmp_path / "full", FAST, run_id="r1")
    calls_full, CountingFCSiamDiff.calls = CountingFCSiamDiff.calls, 0

    def kill_after_five(description: str, done: int, total: int) -> None:
        if done == 5:
            raise Killed

    with pytest.raises(Killed):
        detect_group(group, checkpoint, tmp_path / "part", FAST, run_id="r1", progress=kill_after_five)
    calls_killed, CountingFCSiamDiff.calls = CountingFCSiamDiff.calls, 0
    partial = tmp_path / "part" / PARTIAL_DIR
    assert len(json.loads((partial / "journal.json").read_text())["done"]) == 5
    assert not (tmp_path / "part" / PROBABILITY_FILE).exists()

    resumed = detect_group(group, checkpoint, tmp_path / "part", FAST)  # run id taken from the journal
    assert (resumed.blocks_done, resumed.blocks_resumed) == (full.blocks_total - 5, 5)
    assert 0 < calls_killed < calls_full
    assert calls_killed + CountingFCSiamDiff.calls == calls_full  # finished blocks were not recomputed
    assert resumed.run_id == "r1" and not partial.exists()
    for name in (PROBABILITY_FILE, CLASS_FILE):
        assert (tmp_path / "part" / name).read_bytes() == (tmp_path / "full" / name).read_bytes()


def test_changed_settings_restart_instead_of_mixing(group, tmp_path, test_models):
    checkpoint = _checkpoint(tmp_path / "counting.pt", "test_counting_fc_siam_diff")

    def kill_after_two(description: str, done: int, total: int) -> None:
        if done == 2:
            raise Killed

    with pytest.raises(Killed):
        detect_group(group, checkpoint, tmp_path / "det", FAST, progress=kill_after_two)
    result = detect_group(group, checkpoint, tmp_path / "det", replace(FAST, threshold=0.3))
    assert result.blocks_resumed == 0 and result.blocks_done == result.blocks_total


# --------------------------------------------------------------------------- weighting


def _border_disagreement(probability: np.ndarray) -> float:
    """Mean |step| of the probability across window-border lines over the mean |step| elsewhere."""
    ratios = []
    for axis, size in ((1, WIDTH), (0, HEIGHT)):
        starts = window_starts(size, WINDOW, 0.5)
        lines = sorted({s for s in starts if s > 0} | {s + WINDOW for s in starts if s + WINDOW < size})
        steps = np.abs(np.diff(probability, axis=axis))  # step k lies between pixels k and k + 1
        at = np.zeros(size - 1, bool)
        at[[line - 1 for line in lines]] = True
        on = steps[:, at] if axis == 1 else steps[at, :]
        off = steps[:, ~at] if axis == 1 else steps[~at, :]
        ratios.append(on.mean() / off.mean())
    return float(np.mean(ratios))


def test_gaussian_weights_hide_window_borders_better_than_uniform(tmp_path, test_models):
    group = tmp_path / "groups" / "plain"
    (group / "grid").mkdir(parents=True)
    rng = np.random.default_rng(1)
    _cog(group / "grid" / "A.tif", np.clip(_texture(rng, 3), 10, 250).astype(np.uint8), 0)
    _cog(group / "grid" / "B.tif", np.full((1, HEIGHT, WIDTH), -10, np.float32), float("nan"))
    checkpoint = _checkpoint(tmp_path / "border.pt", "test_border")
    measured = {}
    for weighting in ("gaussian", "uniform"):
        result = detect_group(group, checkpoint, tmp_path / weighting,
                              replace(FAST, weighting=weighting, probability_dtype="float32"))
        probability = _read(result.probability)
        assert np.isfinite(probability).all()
        measured[weighting] = _border_disagreement(probability)
    # Uniform averaging jumps where a window's weak border starts or ends; the Gaussian fades it in.
    assert measured["uniform"] > 3.0
    assert measured["gaussian"] < 1.0  # no more disagreement across borders than anywhere else


# --------------------------------------------------------------------------- bad input


def test_checkpoint_for_another_band_layout_is_refused(group, tmp_path):
    checkpoint = _checkpoint(tmp_path / "fc4.pt", a_bands=4)
    with pytest.raises(InputError, match=r"A\.tif: has 3 band\(s\) but checkpoint fc4\.pt was trained on 4-band A"):
        detect_group(group, checkpoint, tmp_path / "det", DetectSettings(device="cpu"))
    assert not (tmp_path / "det").exists()


def test_corrupt_checkpoint_is_refused(group, tmp_path):
    checkpoint = _checkpoint(tmp_path / "fc.pt")
    broken = tmp_path / "broken.pt"
    broken.write_bytes(checkpoint.read_bytes()[:2000])
    with pytest.raises(InputError, match=r"broken\.pt: not a readable changeflow checkpoint"):
        detect_group(group, broken, tmp_path / "det", DetectSettings(device="cpu"))
    assert not (tmp_path / "det").exists()


def test_group_whose_b_failed_coregistration_is_refused(group, tmp_path):
    checkpoint = _checkpoint(tmp_path / "fc.pt")
    (group / "grid" / "B.tif").unlink()
    manifest = {"coregistration": [{"image": "GF3_20210616", "role": "B", "reference": "GF2_20190501",
                                    "accepted": False, "reason": "tie-point RMSE 3.10 px > max_rmse_px 2.0"}]}
    (group / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(GroupError, match=r"group 'city1': has no B image \(it failed co-registration: GF3_20210616: tie-point RMSE"):
        detect_group(group, checkpoint, tmp_path / "det", DetectSettings(device="cpu"))
    shutil.rmtree(group / "grid")
    (group / "manifest.json").unlink()
    with pytest.raises(GroupError, match=r"group 'city1': has no A image"):
        detect_group(group, checkpoint, tmp_path / "det", DetectSettings(device="cpu"))
    assert not (tmp_path / "det").exists()
