"""Synthetic GOLD-like scene groups: grids, radiometry, labels, reproducibility and the shift truth."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.warp import Resampling, reproject
from scipy import ndimage
from skimage.registration import phase_cross_correlation

from pipeline.config import PrepareConfig, Role, Sensor, load_config
from pipeline.synthetic.group import SyntheticGroup
from pipeline.synthetic.large import write_large_group
from pipeline.synthetic.sar import simulate_sar_amplitude
from pipeline.synthetic.scenes import write_synthetic_group

SIZE = 768


@pytest.fixture(scope="module")
def group(tmp_path_factory) -> SyntheticGroup:
    return write_synthetic_group(tmp_path_factory.mktemp("synthetic"), size=SIZE, seed=3)


@pytest.fixture(scope="module")
def large(tmp_path_factory) -> SyntheticGroup:
    # not a multiple of the block: partial blocks at the right and bottom edges
    return write_large_group(tmp_path_factory.mktemp("large"), size=1300, block=512, seed=1)


def _read(path: Path) -> tuple[np.ndarray, dict]:
    with rasterio.open(path) as ds:
        return ds.read(), ds.profile


def _valid(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.dataset_mask() > 0


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _on_reference(group: SyntheticGroup, role: str, band_mean: bool = True) -> np.ndarray:
    """An image warped onto A's grid (bilinear) by its own georeferencing; NaN where no data."""
    with rasterio.open(group.paths["A"]) as ref, rasterio.open(group.paths[role]) as src:
        data = src.read().astype(np.float32)
        data = data.mean(axis=0) if band_mean else data[0]
        data[src.dataset_mask() == 0] = np.nan
        out = np.full((ref.height, ref.width), np.nan, np.float32)
        reproject(data, out, src_transform=src.transform, src_crs=src.crs, dst_transform=ref.transform,
                  dst_crs=ref.crs, src_nodata=np.nan, dst_nodata=np.nan, resampling=Resampling.bilinear)
    return out


def _measured_shift(reference: np.ndarray, moving: np.ndarray) -> tuple[float, float]:
    """(dx, dy) such that moving's content sits at reference position + (dx, dy).

    Phase correlation (skimage) gives the shift that registers ``moving`` onto ``reference``,
    i.e. minus the displacement; one refinement pass on the re-shifted image removes the
    sub-pixel bias of the upsampled peak.
    """
    reference, moving = reference.astype(np.float64), moving.astype(np.float64)
    first, _, _ = phase_cross_correlation(reference, moving, upsample_factor=100)
    residual, _, _ = phase_cross_correlation(
        reference, ndimage.shift(moving, first, order=3, mode="nearest"), upsample_factor=100
    )
    dy, dx = -(first + residual)
    return float(dx), float(dy)


def _interior(array: np.ndarray, margin: int) -> np.ndarray:
    return array[margin:-margin, margin:-margin]


# --------------------------------------------------------------------------------------------------
# write_synthetic_group


def test_files_grids_and_types(group):
    assert set(group.paths) == {"A", "B", "C", "label"}
    assert all(path.parent == group.root and path.exists() for path in group.paths.values())
    with rasterio.open(group.paths["A"]) as a:
        assert a.crs == CRS.from_epsg(32650) and a.crs.is_projected
        assert "UTM" in a.crs.to_wkt()
        assert a.res == (4.0, 4.0) and a.shape == (SIZE, SIZE)
        assert a.count == 4 and a.dtypes == ("uint16",) * 4 and a.nodata == 0
        assert a.descriptions == ("blue", "green", "red", "nir")
        assert a.tags()["SENSOR"] == "gf2" and a.tags()["ACQUISITION_DATE"] == "2019-05-01"
        a_transform, a_bounds = a.transform, a.bounds
    with rasterio.open(group.paths["C"]) as c:
        assert c.crs == CRS.from_epsg(32650)
        assert c.res == (6.0, 6.0)  # coarser than A, on another grid
        assert c.count == 4 and c.dtypes == ("uint16",) * 4 and c.nodata == 0
        # origin not on A's pixel edges
        assert (c.transform.c - a_transform.c) % 4.0 != 0 and (c.transform.f - a_transform.f) % 4.0 != 0
        assert c.bounds.left <= a_bounds.left and c.bounds.top >= a_bounds.top
        assert c.bounds.right >= a_bounds.right and c.bounds.bottom <= a_bounds.bottom
    with rasterio.open(group.paths["B"]) as b:
        assert b.crs == CRS.from_epsg(4326)
        assert b.count == 1 and b.dtypes == ("float32",) and np.isnan(b.nodata)
        xres, yres = b.res
        lat = 0.5 * (b.bounds.bottom + b.bounds.top)
        assert 7.0 < yres * 111_320 < 9.0  # ~8 m
        assert 7.0 < xres * 111_320 * np.cos(np.radians(lat)) < 9.0
        assert 31 < lat < 32.5 and 117 < b.bounds.left < 117.5  # Hefei, China
    with rasterio.open(group.paths["label"]) as lab:
        assert lab.crs == CRS.from_epsg(32650) and lab.transform == a_transform
        assert lab.shape == (SIZE, SIZE) and lab.count == 1 and lab.dtypes == ("uint8",)
        assert lab.nodata == 255


def test_radiometry_is_realistic(group):
    a, _ = _read(group.paths["A"])
    valid = (a > 0).all(axis=0)
    assert ((a > 0).any(axis=0) == valid).all()  # nodata is 0 in every band together
    medians = np.median(a[:, valid], axis=1)
    assert (100 < medians[:3]).all() and (medians[:3] < 1000).all()  # GF-2 DN
    blue, green, red, nir = a.astype(np.float32)
    vegetation = valid & ((nir - red) > 0.4 * np.maximum(nir + red, 1))
    assert 0.05 < vegetation[valid].mean() < 0.9
    assert np.median(nir[vegetation]) > 2 * np.median(red[vegetation])
    c, _ = _read(group.paths["C"])
    c_valid = (c > 0).all(axis=0)
    assert 200 < np.median(c[2][c_valid]) < 2500 and c.max() < 10000  # reflectance x 10000
    b, _ = _read(group.paths["B"])
    sigma0 = b[0][np.isfinite(b[0])]
    assert -25 < np.median(sigma0) < -5  # sigma0 in dB
    assert sigma0.std() > 1.5  # speckled


def test_collars_are_ragged_and_own_to_each_image(group):
    for role in ("A", "C", "B"):
        valid = _valid(group.paths[role])
        height, width = valid.shape
        assert 0.6 < valid.mean() < 0.95
        assert not valid[0].any() and not valid[-1].any()
        assert not valid[:, 0].any() and not valid[:, -1].any()
        # irregular: the first valid column changes from row to row
        rows = np.flatnonzero(valid.any(axis=1))
        first = valid[rows].argmax(axis=1)
        assert np.unique(first).size > 5 and np.std(first) > 1.0
        assert valid[height // 2, width // 2]


def test_label_values_and_change_fraction(group):
    label = _read(group.paths["label"])[0][0]
    assert set(np.unique(label)) <= {0, 1, 255}
    labelled = label != 255
    fraction = (label == 1).sum() / labelled.sum()
    assert fraction == pytest.approx(group.change_fraction)
    assert 0.01 <= group.change_fraction <= 0.08
    # ignore where A has no data; the common valid area is inside every image's footprint
    assert not labelled[~_valid(group.paths["A"])].any()
    for role in ("B", "C"):
        assert np.isfinite(_on_reference(group, role))[labelled].mean() > 0.99
    # changes are building-sized blobs
    blobs, count = ndimage.label(label == 1)
    sizes = np.bincount(blobs.ravel())[1:]
    assert count >= 10 and np.median(sizes) > 50


def test_scene_list_is_a_prepare_config(group):
    config = load_config(group.scene_list)
    assert isinstance(config, PrepareConfig)
    scenes = {scene.role: scene for scene in config.scenes}
    assert set(scenes) == {Role.A, Role.B, Role.C, Role.label}
    assert {role: scenes[role].sensor for role in scenes} == {
        Role.A: Sensor.gf2, Role.B: Sensor.gf3, Role.C: Sensor.s2, Role.label: Sensor.generic
    }
    assert [str(scenes[r].date) for r in (Role.A, Role.C, Role.B, Role.label)] == [
        "2019-05-01", "2021-06-15", "2021-06-16", "2021-06-16"
    ]
    assert {scene.group for scene in config.scenes} == {"demo"}
    for role, scene in scenes.items():
        assert scene.path == group.paths[role.value]  # relative in the file, resolved on load
        assert scene.scene_id == f"demo_{role.value}"
    assert scenes[Role.B].is_sar and not scenes[Role.C].is_sar
    assert group.true_shift_px == {"A": (0.0, 0.0), "B": (2.6, -3.4), "C": (0.35, -0.45), "label": (0.0, 0.0)}


def test_same_seed_gives_identical_files(tmp_path):
    kwargs = dict(name="g", size=320, collar=20)
    first = write_synthetic_group(tmp_path / "1", seed=5, **kwargs)
    second = write_synthetic_group(tmp_path / "2", seed=5, **kwargs)
    other = write_synthetic_group(tmp_path / "3", seed=6, **kwargs)
    for role in first.paths:
        assert _digest(first.paths[role]) == _digest(second.paths[role]), role
        assert _digest(first.paths[role]) != _digest(other.paths[role]), role
    assert first.scene_list.read_text() == second.scene_list.read_text()
    assert first.change_fraction == second.change_fraction
    assert not list(tmp_path.rglob("*.partial*"))  # written atomically


def test_optical_t2_shift_sign_and_size(group):
    """C warped onto A's grid by its georeferencing shows its content at A + shift_c."""
    reference = _read(group.paths["A"])[0].astype(np.float32).mean(axis=0)
    moving = _on_reference(group, "C")
    margin = 100
    reference, moving = _interior(reference, margin), _interior(moving, margin)
    assert np.isfinite(moving).all() and (reference > 0).all()
    dx, dy = _measured_shift(reference, moving)
    true_dx, true_dy = group.true_shift_px["C"]
    assert abs(dx - true_dx) < 0.15 and abs(dy - true_dy) < 0.15, (dx, dy)


def test_sar_shift_sign(group):
    """B warped onto A's grid shows its content near A + shift_b (SAR vs optical: a looser check).

    SAR and optical only share structure, and double bounce and shadows of buildings displace it
    a little, so the SAR is compared by normalised cross-correlation with a SAR simulated from A.
    """
    optical = _read(group.paths["A"])[0].astype(np.float32)
    amplitude = simulate_sar_amplitude(optical, looks=10_000, rng=np.random.default_rng(0))
    simulated = 10 * np.log10(amplitude**2)
    sar = _on_reference(group, "B", band_mean=False)
    margin = 120
    reference = ndimage.gaussian_filter(simulated, 1.0)[margin:-margin, margin:-margin]
    moving = ndimage.gaussian_filter(np.nan_to_num(sar), 1.0)[margin:-margin, margin:-margin]
    assert np.isfinite(_interior(sar, margin)).all()
    scores = {}
    inner = (slice(8, -8), slice(8, -8))
    for dy in range(-6, 7):
        for dx in range(-6, 7):
            back = np.roll(moving, (-dy, -dx), axis=(0, 1))  # back[q] = moving[q + d]
            scores[dx, dy] = np.corrcoef(reference[inner].ravel(), back[inner].ravel())[0, 1]
    dx, dy = max(scores, key=scores.get)
    true_dx, true_dy = group.true_shift_px["B"]
    assert abs(dx - true_dx) <= 1 and abs(dy - true_dy) <= 1, (dx, dy)
    assert scores[dx, dy] > scores[0, 0] + 0.05


# --------------------------------------------------------------------------------------------------
# write_large_group


def test_large_group_files(large):
    shapes = {}
    for role, path in large.paths.items():
        with rasterio.open(path) as ds:
            assert ds.crs == CRS.from_epsg(32650) and ds.res == (4.0, 4.0)
            assert ds.shape == (1300, 1300) and ds.profile["tiled"] and ds.block_shapes[0] == (512, 512)
            assert ds.compression is not None and ds.compression.name == "deflate"
            shapes[role] = (ds.transform, ds.count, ds.dtypes[0], ds.nodata)
    assert len({transform for transform, *_ in shapes.values()}) == 1  # one grid
    assert shapes["A"][1:] == (4, "uint16", 0) and shapes["C"][1:] == (4, "uint16", 0)
    assert shapes["B"][1:3] == (1, "float32") and np.isnan(shapes["B"][3])
    assert shapes["label"][1:] == (1, "uint8", 255)
    config = load_config(large.scene_list)
    assert {scene.role.value for scene in config.scenes} == {"A", "B", "C", "label"}


def test_large_group_label_and_shift(large):
    a = _read(large.paths["A"])[0]
    label = _read(large.paths["label"])[0][0]
    assert set(np.unique(label)) <= {0, 1, 255}
    labelled = label != 255
    assert (label == 1).sum() / labelled.sum() == pytest.approx(large.change_fraction)
    assert 0.01 <= large.change_fraction <= 0.08
    assert not labelled[(a == 0).all(axis=0)].any()
    assert 0.6 < labelled.mean() < 0.95
    # C on the same grid: its content sits at A + shift_c
    c = _read(large.paths["C"])[0]
    margin = 150
    dx, dy = _measured_shift(_interior(a.astype(np.float32).mean(axis=0), margin),
                             _interior(c.astype(np.float32).mean(axis=0), margin))
    assert abs(dx - large.true_shift_px["C"][0]) < 0.15 and abs(dy - large.true_shift_px["C"][1]) < 0.15
    # no seams at block (512) or strip edges: neighbouring rows differ as much there as elsewhere
    mean = a.astype(np.float32).mean(axis=0)
    rows = np.abs(np.diff(mean, axis=0))[400:1100, 300:1000].mean(axis=1)  # rows[k]: row 400+k+1 - row 400+k
    assert rows[511 - 400] < 2 * np.median(rows) and rows[1023 - 400] < 2 * np.median(rows)
    sar = _read(large.paths["B"])[0][0]
    levels = [np.nanmedian(sar[r0 : r0 + 200, 400:900]) for r0 in (312, 512, 712)]
    assert np.ptp(levels) < 1.0  # one SAR calibration across blocks


def test_large_group_is_reproducible_whatever_the_workers(tmp_path):
    one = write_large_group(tmp_path / "1", size=600, block=256, seed=2, workers=1)
    two = write_large_group(tmp_path / "2", size=600, block=256, seed=2, workers=2)
    for role in one.paths:
        assert _digest(one.paths[role]) == _digest(two.paths[role]), role
    assert one.change_fraction == two.change_fraction
