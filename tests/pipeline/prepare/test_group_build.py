"""Building one group: a manifest with a fingerprint makes a rerun skip it; a failure leaves nothing."""

from __future__ import annotations

import os

import numpy as np
import pytest
import rasterio
import yaml

from pipeline.config import load_config
from pipeline.errors import GroupError
from pipeline.prepare.catalog import build_catalog, scene_entries
from pipeline.prepare.group_build import MANIFEST, group_fingerprint, process_group
from pipeline.prepare.overlap import build_groups
from pipeline.synthetic.scenes import write_synthetic_group


@pytest.fixture(scope="module")
def scene_list(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    write_synthetic_group(root / "g1", name="g1", size=512, seed=1)
    return root / "g1" / "g1_scenes.yaml"


def _group(scene_list, tmp_path, **settings):
    settings = {"tiling": {"size": 128, "stride": 128}, "split": {"block_tiles": 1}, **settings}
    path = tmp_path / f"run{len(list(tmp_path.glob('run*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump({"scene_list": str(scene_list), **settings}))
    config = load_config(path)
    scenes, _ = build_catalog(scene_entries(config), config)
    groups, _, crs = build_groups(scenes, config.min_overlap)
    return groups[0], crs, config


def test_a_built_group_is_skipped_while_its_fingerprint_holds(scene_list, tmp_path):
    group, crs, config = _group(scene_list, tmp_path)
    built = process_group(group, crs, config, tmp_path / "out")
    assert built.status == "prepared" and built.tiles
    assert (tmp_path / "out" / "groups" / "g1" / MANIFEST).exists()
    assert [p.name for p in (tmp_path / "out" / "groups").iterdir()] == ["g1"]
    skipped = process_group(group, crs, config, tmp_path / "out")
    assert skipped.status == "skipped"
    assert (skipped.tiles, skipped.grid, skipped.coregistration) == (built.tiles, built.grid, built.coregistration)


def test_the_fingerprint_follows_inputs_and_tile_settings(scene_list, tmp_path):
    group, _, config = _group(scene_list, tmp_path)
    fingerprint = group_fingerprint(group, config)
    assert group_fingerprint(group, config) == fingerprint
    _, _, other_seed = _group(scene_list, tmp_path, split={"block_tiles": 1, "seed": 7})
    assert group_fingerprint(group, other_seed) == fingerprint  # the split is assigned later
    _, _, other_size = _group(scene_list, tmp_path, tiling={"size": 64, "stride": 64})
    assert group_fingerprint(group, other_size) != fingerprint
    image = group.reference.path
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 1_000_000_000))
    assert group_fingerprint(group, config) != fingerprint


def test_a_group_with_every_image_refused_fails_and_leaves_nothing(scene_list, tmp_path):
    group, crs, config = _group(
        scene_list, tmp_path, coregistration={"max_rmse_px": 1e-9}
    )
    with pytest.raises(GroupError, match="no image left after co-registration"):
        process_group(group, crs, config, tmp_path / "out")
    assert list((tmp_path / "out" / "groups").iterdir()) == []


def test_threads_change_neither_the_grid_images_nor_the_records_nor_the_tiles(scene_list, tmp_path):
    group, crs, one_thread = _group(scene_list, tmp_path, threads=1)
    _, _, three_threads = _group(scene_list, tmp_path, threads=3)
    assert group_fingerprint(group, three_threads) == group_fingerprint(group, one_thread)
    built = {n: process_group(group, crs, config, tmp_path / n) for n, config in (("1", one_thread), ("3", three_threads))}
    assert built["1"].coregistration and built["1"].tiles
    assert (built["3"].coregistration, built["3"].tiles) == (built["1"].coregistration, built["1"].tiles)
    folders = {n: tmp_path / n / "groups" / "g1" for n in built}
    grids = sorted(p.name for p in (folders["1"] / "grid").iterdir())
    assert grids == sorted(p.name for p in (folders["3"] / "grid").iterdir()) and "A.tif" in grids
    for name in grids:
        with rasterio.open(folders["1"] / "grid" / name) as a, rasterio.open(folders["3"] / "grid" / name) as b:
            assert (a.crs, a.transform, repr(a.nodata)) == (b.crs, b.transform, repr(b.nodata))
            assert np.array_equal(a.read(), b.read(), equal_nan=True)
    tiles = {n: {p.relative_to(f): p.read_bytes() for p in sorted((f / "tiles").rglob("*.tif"))} for n, f in folders.items()}
    assert len(tiles["1"]) == len(built["1"].tiles) * len(grids) and tiles["3"] == tiles["1"]
