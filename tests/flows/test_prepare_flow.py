"""The prepare flow end to end on synthetic scene groups: reproducible, resumable, robust."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS

from flows.prepare import prepare_flow, run_prepare
from pipeline.config import load_config
from pipeline.prepare.catalog import build_catalog, scene_entries
from pipeline.prepare.group_build import process_group
from pipeline.prepare.overlap import build_groups
from pipeline.synthetic.scenes import write_synthetic_group
from tests.conftest import write_raster

pytestmark = pytest.mark.integration

SETTINGS = "tiling: {size: 256, stride: 128}\nsplit: {block_tiles: 1}\n"


@pytest.fixture(scope="module")
def prefect_backend():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module")
def group_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("scenes")
    write_synthetic_group(root / "g1", name="g1", size=1024, seed=1)
    return root


def _config(tmp_path: Path, scenes_yaml: Path, extra: str = "") -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(f"scene_list: {scenes_yaml}\n{SETTINGS}{extra}")
    return path


def _tile_digests(out: Path) -> dict[str, str]:
    return {
        str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted((out / "tiles").rglob("*.tif"))
    }


def _partials(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if "partial" in p.name or "staging" in p.name]


def test_prepare_is_reproducible_and_skips_finished_groups(prefect_backend, group_dir, tmp_path):
    config = _config(tmp_path, group_dir / "g1" / "g1_scenes.yaml")
    first = prepare_flow(str(config), str(tmp_path / "out1"))
    second = prepare_flow(str(config), str(tmp_path / "out2"))
    digests = _tile_digests(tmp_path / "out1")
    assert digests and digests == _tile_digests(tmp_path / "out2")
    assert first["splits"] == second["splits"]
    assert all(first["splits"][s]["tiles"] > 0 for s in ("train", "val", "test"))

    tiles = gpd.read_file(tmp_path / "out1" / "catalog.gpkg", layer="tiles")
    assert tiles.crs == CRS.from_epsg(32650)
    # No tile of one split overlaps or touches a tile of another.
    for split in ("train", "val", "test"):
        mine = tiles[tiles.split == split].union_all()
        others = tiles[tiles.split != split].union_all()
        assert not mine.intersects(others)
    # Every tile is a georeferenced GeoTIFF in its split folder, on the group grid.
    row = tiles.iloc[0]
    with rasterio.open(tmp_path / "out1" / "tiles" / row.split / "B" / f"{row.tile_id}.tif") as tile:
        assert tile.crs == CRS.from_epsg(32650) and tile.shape == (256, 256)
        assert tile.bounds.left == pytest.approx(row.geometry.bounds[0])

    stamp = {p: p.stat().st_mtime_ns for p in (tmp_path / "out1" / "groups").rglob("*.tif")}
    rerun = prepare_flow(str(config), str(tmp_path / "out1"))
    assert rerun["groups"] == {"g1": "skipped"}
    assert {p: p.stat().st_mtime_ns for p in stamp} == stamp
    assert _tile_digests(tmp_path / "out1") == digests


def test_coregistration_report_recovers_the_known_shifts(prefect_backend, group_dir, tmp_path):
    config = _config(tmp_path, group_dir / "g1" / "g1_scenes.yaml")
    out = tmp_path / "out"
    prepare_flow(str(config), str(out))
    records = {r["role"]: r for r in json.loads((out / "coregistration.json").read_text())}
    assert records["C"]["method"] == "intensity" and records["B"]["method"] == "structure"
    assert np.allclose(records["C"]["shift_px"], (0.35, -0.45), atol=0.1)
    assert np.allclose(records["B"]["shift_px"], (2.6, -3.4), atol=1.0)
    assert records["C"]["shift_m"][0] == pytest.approx(records["C"]["shift_px"][0] * 4.0)
    points = gpd.read_file(out / "catalog.gpkg", layer="tiepoints")
    assert len(points) == records["B"]["tiepoints"] + records["C"]["tiepoints"]
    assert points.crs == CRS.from_epsg(32650)


def test_interrupted_run_resumes_without_partial_files(group_dir, tmp_path):
    config = load_config(_config(tmp_path, group_dir / "g1" / "g1_scenes.yaml"))
    scenes, _ = build_catalog(scene_entries(config), config)
    groups, _, crs = build_groups(scenes, config.min_overlap)
    out = tmp_path / "out"

    class Killed(BaseException):
        pass

    def kill_after_three(_: int, seen=[0]) -> None:
        seen[0] += 1
        if seen[0] == 3:
            raise Killed

    with pytest.raises(Killed):
        process_group(groups[0], crs, config, out, progress=kill_after_three)
    assert not (out / "groups" / "g1").exists()
    # What a hard kill leaves behind: a half-written group folder.
    (out / "groups" / ".g1.partial" / "tiles").mkdir(parents=True)
    (out / "groups" / ".g1.partial" / "tiles" / "junk.tif").write_bytes(b"II*\0")
    outcome = process_group(groups[0], crs, config, out)
    assert outcome.status == "prepared" and outcome.tiles
    assert _partials(out) == []
    assert process_group(groups[0], crs, config, out).status == "skipped"


def test_bad_inputs_are_reported_and_other_groups_go_on(prefect_backend, group_dir, tmp_path):
    good = group_dir / "g1"
    bad = tmp_path / "bad"
    bad.mkdir()
    truncated = bad / "trunc_A.tif"
    truncated.write_bytes((good / "g1_A.tif").read_bytes()[:20000])
    nocrs = write_raster(bad / "nocrs_A.tif", np.full((4, 64, 64), 300, np.uint16), crs=None)
    black = write_raster(bad / "black_C.tif", np.zeros((4, 64, 64), np.uint16))
    three_bands = write_raster(bad / "rgb_A.tif", np.full((3, 64, 64), 300, np.uint16))
    far = write_raster(bad / "far_B.tif", np.ones((1, 64, 64), np.float32),
                       transform=rasterio.Affine(8.0, 0, 100000.0, 0, -8.0, 1000000.0))
    scene_list = bad / "scenes.yaml"
    lines = (good / "g1_scenes.yaml").read_text().replace("path: ", f"path: {good}/")
    scene_list.write_text(lines + "\n".join([
        f"- {{path: {truncated}, role: A, group: trunc}}",
        f"- {{path: {nocrs}, role: A, group: nocrs}}",
        f"- {{path: {black}, role: C, group: g1b}}",
        f"- {{path: {three_bands}, role: A, group: rgb}}",
        f"- {{path: {far}, role: B, sensor: gf3}}",
    ]) + "\n")
    config = _config(tmp_path, scene_list, "expected_bands: {A: 4}\n")
    report = prepare_flow(str(config), str(tmp_path / "out"))
    assert report["groups"] == {"g1": "prepared"}
    refused = report["scenes_refused"]
    assert "truncated or corrupt" in refused[str(truncated)] or "not a readable raster" in refused[str(truncated)]
    assert "has no CRS" in refused[str(nocrs)]
    assert "has no valid data" in refused[str(black)]
    assert "has 3 bands, expected 4" in refused[str(three_bands)]
    assert "pairs with no A image" in report["scenes_not_grouped"]["far_B"]
    assert report["splits"]["train"]["tiles"] > 0


def test_dask_cluster_gives_the_same_tiles(prefect_backend, group_dir, tmp_path):
    from distributed import LocalCluster

    config = _config(tmp_path, group_dir / "g1" / "g1_scenes.yaml")
    threads = run_prepare(config, tmp_path / "threads")
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=True, dashboard_address=None) as cluster:
        dask = run_prepare(config, tmp_path / "dask", dask_address=cluster.scheduler_address)
    assert dask["splits"] == threads["splits"]
    assert _tile_digests(tmp_path / "dask") == _tile_digests(tmp_path / "threads")
