"""Label-free change detection: constructed cases per method, streamed = whole-array, config, the flow, real pairs."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from scipy import ndimage
from skimage.filters import threshold_otsu

from pipeline.config import DetectConfig, IngestConfig
from pipeline.detect.group_run import run_group
from pipeline.detect.labelfree import detect_labelfree, open_method_pair
from pipeline.detect.labelfree.calibrate import NBINS, ScoreHistogram
from pipeline.detect.labelfree.driver import score_block
from pipeline.errors import ConfigError, GroupError, InputError
from pipeline.ingest.preflight import check_ingest_config
from tests.conftest import write_raster

SQUARE = (slice(40, 80), slice(50, 90))


def make_group(root: Path, images: dict[str, np.ndarray], sensors: dict[str, str], label: np.ndarray | None = None,
               name: str = "g") -> Path:
    """A prepared group folder: grid/{role}.tif (float32, NaN nodata), label.tif and a manifest."""
    group = root / "groups" / name
    (group / "grid").mkdir(parents=True)
    for role, image in images.items():
        write_raster(group / "grid" / f"{role}.tif", image.astype(np.float32), nodata=float("nan"))
    if label is not None:
        write_raster(group / "grid" / "label.tif", label.astype(np.uint8), nodata=255)
    members = {role: {"id": f"{name}_{role}", "sensor": sensor, "date": f"20{10 + k}-01-01"}
               for k, (role, sensor) in enumerate(sensors.items())}
    (group / "manifest.json").write_text(json.dumps({"members": members}))
    return group


def landcover(rng: np.random.Generator, shape: tuple[int, int], classes: int = 4, smooth: float = 6) -> np.ndarray:
    """Piecewise-constant land cover: smoothed noise cut into ``classes`` levels."""
    field = ndimage.gaussian_filter(rng.normal(size=shape), smooth)
    return np.digitize(field, np.quantile(field, np.linspace(0, 1, classes + 1)[1:-1]))


def optical_pair(rng, shape=(128, 128), change=True, offset=0.0, noise=0.05):
    """4-band optical t1/t2 of one land cover (+ noise); the square becomes a new bright material at t2."""
    cover = landcover(rng, shape)
    spectra = rng.uniform(0.1, 0.6, size=(4, 4))
    t1 = spectra[:, cover] + rng.normal(0, noise, (4, *shape))
    t2 = spectra[:, cover] + rng.normal(0, noise, (4, *shape)) + offset
    if change:  # e.g. new roofs
        t2[:, SQUARE[0], SQUARE[1]] = 0.9 + rng.normal(0, noise, (4, 40, 40)) + offset
    return t1, t2


def sar_pair(rng, shape=(128, 128), change=True, looks=4):
    """SAR intensity t1/t2 in dB (GF-3 style): one reflectivity, gamma speckle; the square 8× brighter at t2."""
    reflectivity = np.array([0.02, 0.05, 0.1, 0.2])[landcover(rng, shape)]
    r2 = reflectivity.copy()
    if change:
        r2[SQUARE] *= 8
    t1, t2 = (r * rng.gamma(looks, 1 / looks, shape) for r in (reflectivity, r2))
    return 10 * np.log10(t1)[None], 10 * np.log10(t2)[None]


def hetero_pair(rng, shape=(128, 128), change=True):
    """Optical t1 and SAR t2 (dB) of one land cover with unrelated class responses; the square changes class."""
    cover = landcover(rng, shape, smooth=10)
    optical = np.array([[0.2, 0.7, 0.4, 0.9], [0.6, 0.3, 0.8, 0.1], [0.5, 0.5, 0.2, 0.7]])[:, cover]
    optical += rng.normal(0, 0.03, optical.shape)
    cover2 = cover.copy()
    if change:
        cover2[SQUARE] = (cover2[SQUARE] + 2) % 4
    sigma0 = np.array([0.1, 0.02, 0.3, 0.05])[cover2] * rng.gamma(8, 1 / 8, shape)  # 8 looks
    return optical, 10 * np.log10(sigma0)[None]


CASES = {
    "cva": (optical_pair, {"A": "gf2", "C": "s2"}),
    "irmad": (optical_pair, {"A": "gf2", "C": "s2"}),
    "log_ratio": (sar_pair, {"A": "gf3", "B": "gf3"}),
    "mean_ratio": (sar_pair, {"A": "gf3", "B": "gf3"}),
    "npsg": (hetero_pair, {"A": "gf2", "B": "gf3"}),
}


def detect(tmp_path: Path, method: str, t1: np.ndarray, t2: np.ndarray, *, block_size: int = 2048,
           probability_dtype: str = "uint8") -> tuple[np.ndarray, np.ndarray]:
    """Run a method on a constructed group: (probability as written, class)."""
    sensors = CASES[method][1]
    group = make_group(tmp_path, dict(zip(sensors, (t1, t2))), sensors)
    m, scene = open_method_pair(group, method)
    result = detect_labelfree(scene, m, tmp_path / "out", block_size=block_size, probability_dtype=probability_dtype)
    with rasterio.open(result.probability) as p, rasterio.open(result.classes) as c:
        return p.read(1), c.read(1)


def f1_on_square(classes: np.ndarray) -> float:
    truth = np.zeros(classes.shape, bool)
    truth[SQUARE] = True
    predicted = classes == 1
    tp = (predicted & truth).sum()
    return 2 * tp / (predicted.sum() + truth.sum())


NPSG_GRAPH = ("NPSG on the constructed optical ↔ SAR case: a target patch has ~10 patches of its own structure "
              "among the 361 candidates and K = 35, so both graphs fill with second-best patches that differ "
              "between the modalities; the score on unchanged class boundaries (90th percentile 0.035) is as "
              "large as in the changed square (median 0.026-0.030). Gaussian-blob covers (smoothing 3, 5, 10) "
              "and 12/16-px parcels were tried; none separates them")
LOG_RATIO_EDGES = ("log-ratio on two no-change 4-look acquisitions: 7.1 % false alarms, 99 % of them within 3 px "
                   "of a land-cover boundary (75 % of this scene), where the refined Lee filter, run on each "
                   "date alone, picks different edge-aligned sub-windows; the median + 3·1.4826·MAD floor "
                   "assumes a Gaussian score, not the folded |log-ratio| with this edge tail")


def cases_except(failing: dict[str, str]) -> list:
    """The methods of CASES, those in ``failing`` marked as a known strict failure with its reason."""
    return [pytest.param(m, marks=pytest.mark.xfail(strict=True, reason=failing[m])) if m in failing else m
            for m in CASES]


@pytest.mark.parametrize("method", cases_except({"npsg": NPSG_GRAPH}))
def test_changed_square_is_found(tmp_path, method):
    make, _ = CASES[method]
    t1, t2 = make(np.random.default_rng(1))
    probability, classes = detect(tmp_path, method, t1, t2)
    assert f1_on_square(classes) > 0.8
    # the probability is high inside the square and low far from it
    assert np.median(probability[SQUARE]) > 0.8 * 254
    assert np.median(probability[100:, 100:]) < 0.2 * 254


@pytest.mark.parametrize("method", cases_except({"npsg": NPSG_GRAPH, "log_ratio": LOG_RATIO_EDGES}))
def test_two_acquisitions_of_one_scene_give_little_change(tmp_path, method):
    make, _ = CASES[method]
    t1, t2 = make(np.random.default_rng(2), change=False)
    _, classes = detect(tmp_path, method, t1, t2)
    assert (classes == 1).mean() < 0.05


@pytest.mark.parametrize("method", ["cva", "irmad"])
def test_constant_offset_is_not_change(tmp_path, method):
    rng = np.random.default_rng(3)
    t1, t2 = optical_pair(rng, change=False, offset=0.4)
    _, classes = detect(tmp_path, method, t1, t2)
    assert (classes == 1).mean() < 0.05


@pytest.mark.parametrize("method", list(CASES))
def test_streamed_equals_whole_array(tmp_path, method):
    """Blocks with halos + a streamed histogram give the whole-array score, Otsu threshold and probability."""
    make, sensors = CASES[method]
    t1, t2 = make(np.random.default_rng(4), shape=(150, 130))
    t1[:, :7, :9] = np.nan  # nodata stays nodata
    streamed, _ = detect(tmp_path, method, t1, t2, block_size=66, probability_dtype="float32")
    m, scene = open_method_pair(tmp_path / "groups" / "g", method)
    m.fit(scene)
    whole = score_block(m, scene, (0, 0, 150, 130))  # one block: the whole scene
    valid = np.isfinite(whole)
    histogram = ScoreHistogram(np.nanmin(whole), np.nanmax(whole))
    histogram.add(whole)
    calibration = histogram.calibration()
    assert calibration.otsu == pytest.approx(threshold_otsu(whole[valid], nbins=NBINS), rel=1e-6)  # float32 bin centres
    expected = calibration.probability(whole)
    assert np.array_equal(np.isfinite(streamed), valid) and not valid[:7, :9].any()
    np.testing.assert_allclose(streamed[valid], expected[valid], atol=1e-6)


def test_histogram_otsu_and_logistic_on_two_classes():
    scores = np.r_[np.full(900, 1.0), np.full(100, 5.0)]
    histogram = ScoreHistogram(1.0, 5.0, nbins=4)
    histogram.add(scores)
    calibration = histogram.calibration()
    assert calibration.unchanged_mean == 1.5 and calibration.change_mean == 4.5  # bin centres
    assert 1.5 <= calibration.threshold < 4.5
    assert calibration.probability(np.array([calibration.threshold]))[0] == pytest.approx(0.5)
    assert calibration.probability(np.array([1.0]))[0] < 0.5 < 0.99 < calibration.probability(np.array([5.0]))[0]


def test_method_needs_its_roles(tmp_path):
    rng = np.random.default_rng(5)
    t1, t2 = optical_pair(rng)
    group = make_group(tmp_path, {"A": t1, "C": t2}, {"A": "gf2", "C": "s2"})
    with pytest.raises(GroupError, match="log_ratio needs two SAR images.*B"):
        open_method_pair(group, "log_ratio")
    sar = make_group(tmp_path, {"A": t1[:1], "B": t2[:1]}, {"A": "gf2", "B": "gf3"}, name="h")
    with pytest.raises(GroupError, match="A is gf2"):
        open_method_pair(sar, "mean_ratio")


def test_reader_applies_the_manifests_validity_rule(tmp_path):
    """The black value comes from the manifest's validity policy; without one, the default rule (5)."""
    image = np.full((2, 8, 8), 50, np.uint16)
    image[:, 0, 0], image[:, 0, 1] = 5, 20  # black under the default rule; black under a recorded 30
    group = tmp_path / "g"
    (group / "grid").mkdir(parents=True)
    for role in ("A", "C"):
        write_raster(group / "grid" / f"{role}.tif", image, nodata=None)
    manifest = {"members": {"A": {"sensor": "gf2"}, "C": {"sensor": "gf2"}}}
    (group / "manifest.json").write_text(json.dumps(manifest))
    default = open_method_pair(group, "cva")[1].read("A", (0, 0, 1, 2))
    assert np.isnan(default[:, 0, 0]).all() and (default[:, 0, 1] == 20).all()
    manifest["validity"] = {role: {"black_value": 30.0, "nodata": None} for role in ("A", "C")}
    (group / "manifest.json").write_text(json.dumps(manifest))
    recorded = open_method_pair(group, "cva")[1].read("A", (0, 0, 1, 2))
    assert np.isnan(recorded).all()
    manifest["validity"] = {"A": {"black_value": None, "nodata": None}}
    (group / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="no rule for input C"):
        open_method_pair(group, "cva")


def test_config_takes_exactly_one_of_checkpoint_and_method(tmp_path):
    assert DetectConfig(prepared=tmp_path, method="cva").checkpoint is None
    for values in ({}, {"method": "cva", "checkpoint": tmp_path / "m.pt"}):
        with pytest.raises(ValueError, match="exactly one of 'checkpoint'"):
            DetectConfig(prepared=tmp_path, **values)
    with pytest.raises(ValueError, match="method"):
        DetectConfig(prepared=tmp_path, method="pca")


def test_ingest_preflight_accepts_a_method_without_checkpoint(tmp_path):
    (tmp_path / "inbox").mkdir()
    config = IngestConfig(inbox=tmp_path / "inbox", workspace=tmp_path / "ws", method="cva")
    check_ingest_config(config)
    assert config.detect_config().method == "cva"
    with pytest.raises(ConfigError, match="exactly one"):
        check_ingest_config(IngestConfig(inbox=tmp_path / "inbox", workspace=tmp_path / "ws"))


def test_run_group_with_cva_writes_detection_outputs(tmp_path):
    t1, t2 = optical_pair(np.random.default_rng(6))
    label = np.zeros(t1.shape[1:], np.uint8)
    label[SQUARE] = 1
    t1[:, :, :4] = np.nan
    group = make_group(tmp_path, {"A": t1, "B": t2[:1], "C": t2}, {"A": "gf2", "B": "gf3", "C": "s2"}, label)
    config = DetectConfig(prepared=tmp_path, method="cva", vectorize={"min_area_m2": 0})
    summary = run_group(group, config, tmp_path / "out")
    with rasterio.open(summary["probability"]) as p, rasterio.open(summary["classes"]) as c:
        assert p.dtypes[0] == "uint8" and p.nodata == 255 and (p.read(1)[:, :4] == 255).all()
        assert p.tags()["METHOD"] == "cva" and p.tags()["T2_SCENE_ID"] == "g_C" and p.crs == c.crs
        assert c.read(1)[SQUARE].mean() > 0.9
    assert summary["metrics"]["pixel"]["f1"] > 0.8
    import geopandas as gpd

    polygons = gpd.read_file(summary["polygons"])
    assert len(polygons) >= 1 and (polygons["model"] == "cva").all() and polygons["max_prob"].max() > 0.9
    assert Path(summary["report"]).exists()


# Real pairs from ../shared/data (skipped without it): measured, printed, sanity-bounded only.


def _bmp(path: Path, band: int | None = 0) -> np.ndarray:
    with rasterio.open(path) as dataset:
        data = dataset.read().astype(np.float64)
    return data if band is None else data[band:band + 1]


def _measure(tmp_path, method, images, sensors, label, name) -> dict:
    group = make_group(tmp_path, images, sensors, label, name=name)
    started = time.perf_counter()
    summary = run_group(group, DetectConfig(prepared=tmp_path, method=method), tmp_path / f"out-{method}")
    pixel = summary["metrics"]["pixel"]
    print(f"\n{name} {method}: F1 {pixel['f1']:.3f} kappa {pixel['kappa']:.3f} OA {pixel['oa']:.3f} "
          f"{time.perf_counter() - started:.1f} s")
    return pixel


@pytest.mark.parametrize("method", ["cva", "irmad"])
def test_taizhou(tmp_path, shared_data, method):
    folder = shared_data / "landsat-taizhou-nanjing" / "Taizhou"
    t1, t2 = (_bmp(folder / name, None) for name in ("2000TM", "2003TM"))
    changed, unchanged = (_bmp(folder / f"{name}.bmp")[0] > 127 for name in ("change", "unchanged"))
    label = np.where(changed, 1, np.where(unchanged, 0, 255))
    pixel = _measure(tmp_path, method, {"A": t1, "C": t2}, {"A": "generic", "C": "generic"}, label, "taizhou")
    assert pixel["f1"] > 0.5


@pytest.mark.parametrize("method", ["log_ratio", pytest.param("mean_ratio", marks=pytest.mark.xfail(
    strict=True, reason="mean-ratio on refined-Lee σ⁰ with the Otsu / MAD threshold: F1 0.166 (κ 0.140) on "
    "Yellow River A, under the 0.3 bar; not yet diagnosed"))])
def test_yellow_river(tmp_path, shared_data, method):
    folder = shared_data / "sar-yellowriver-abcd"
    t1, t2, gt = (_bmp(folder / f"yellow_A_{name}.bmp") for name in ("1", "2", "gt"))
    pixel = _measure(tmp_path, method, {"A": t1, "B": t2}, {"A": "generic", "B": "generic"},
                     (gt[0] > 127).astype(np.uint8), "yellow_A")
    assert pixel["f1"] > 0.3


@pytest.mark.parametrize("scene", ["shuguang", "italy"])
def test_npsg_heterogeneous(tmp_path, shared_data, scene):
    folder = shared_data / f"hcd-{scene}"
    stem = "Italy" if scene == "italy" else "shuguang"
    t1 = _bmp(folder / f"{stem}_1.bmp")
    t2 = _bmp(folder / f"{stem}_2.bmp", None)
    gt = _bmp(folder / f"{stem}_gt.bmp")[0] > 127
    if scene == "shuguang":  # SAR t1: in dB as GF-3 grid rasters hold it (the paper's log transform)
        t1, sensors = 10 * np.log10(t1 + 1), {"A": "gf3", "B": "generic"}
    else:
        sensors = {"A": "generic", "B": "generic"}
    pixel = _measure(tmp_path, "npsg", {"A": t1, "B": t2}, sensors, gt.astype(np.uint8), scene)
    assert pixel["kappa"] > 0.2
