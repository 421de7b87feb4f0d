"""Prepare's outputs stay consistent: a failed or crashed rerun leaves OUT as the last good run left it."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import geopandas as gpd
import pytest
import yaml
from typer.testing import CliRunner

import flows.prepare as prepare_module
import pipeline.prepare.tiling as tiling
from flows.cli import app
from flows.prepare import prepare_flow
from pipeline.learn.dataset import load_index
from pipeline.synthetic.scenes import write_synthetic_group

pytestmark = pytest.mark.integration

OUTPUTS = ("config.yaml", "catalog.gpkg", "prepare_report.json", "coregistration.json")


@pytest.fixture(scope="module")
def prefect_backend():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("scenes")
    return write_synthetic_group(root / "g1", name="g1", size=640, seed=2).scene_list


def _config(folder: Path, scenes: Path, stride: int, seed: int = 0) -> Path:
    path = folder / f"run-{stride}-{seed}.yaml"
    path.write_text(
        f"scene_list: {scenes}\ntiling: {{size: 128, stride: {stride}}}\n"
        f"split: {{block_tiles: 2, seed: {seed}}}\n"
    )
    return path


def _snapshot(out: Path) -> dict[str, str]:
    """SHA-256 of the config, index, reports and every tile, as read through OUT's paths."""
    files = [out / name for name in OUTPUTS] + sorted((out / "tiles").rglob("*.tif"))
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def _index_matches_tiles(out: Path) -> None:
    """Every tile the index lists is in its split folder, and no other tile is there."""
    indexed = {(t.split, t.tile_id) for t in gpd.read_file(out / "catalog.gpkg", layer="tiles").itertuples()}
    on_disk = {(p.parent.parent.name, p.stem) for p in (out / "tiles").glob("*/A/*.tif")}
    assert indexed == on_disk


def test_a_rerun_failing_on_a_full_disk_leaves_the_last_run_whole(prefect_backend, scenes, tmp_path, monkeypatch):
    out = tmp_path / "out"
    first = prepare_flow(str(_config(tmp_path, scenes, stride=128)), str(out))
    assert first["splits"]["train"]["tiles"] > 0
    before = _snapshot(out)
    written = [0]
    real_write = tiling._write_tile

    def full_after_two(path, *args):
        written[0] += 1
        if written[0] > 2:  # midway: some tiles of the new run are written, then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real_write(path, *args)

    monkeypatch.setattr(tiling, "_write_tile", full_after_two)
    with pytest.raises(Exception, match="(?i)no space left on device"):
        prepare_flow(str(_config(tmp_path, scenes, stride=64)), str(out))
    assert written[0] == 3
    assert _snapshot(out) == before  # config.yaml still says stride 128, the stride of these tiles
    assert yaml.safe_load((out / "config.yaml").read_text())["tiling"]["stride"] == 128
    _index_matches_tiles(out)


def test_a_crash_between_tiles_and_index_cannot_mix_two_runs(prefect_backend, scenes, tmp_path, monkeypatch):
    out = tmp_path / "out"
    prepare_flow(str(_config(tmp_path, scenes, stride=128)), str(out))
    before = _snapshot(out)

    def killed(*args, **kwargs):
        raise OSError(errno.EIO, "killed while writing the index")

    # Another split seed moves tiles between splits: new tile folders with the old index would disagree.
    monkeypatch.setattr(prepare_module, "write_index", killed)
    with pytest.raises(OSError, match="killed while writing the index"):
        prepare_flow(str(_config(tmp_path, scenes, stride=128, seed=7)), str(out))
    assert _snapshot(out) == before
    _index_matches_tiles(out)
    monkeypatch.undo()

    rerun = prepare_flow(str(_config(tmp_path, scenes, stride=128, seed=7)), str(out))
    assert rerun["groups"] == {"g1": "skipped"}
    _index_matches_tiles(out)
    assert yaml.safe_load((out / "config.yaml").read_text())["split"]["seed"] == 7
    # Training reads the published tiles through OUT/catalog.gpkg and OUT/tiles.
    index = load_index(out)
    assert len(index) == sum(info["tiles"] for info in rerun["splits"].values())
    assert all(Path(path).is_file() for role in ("A", "B", "C", "label") for path in index[role])


@pytest.mark.parametrize("command", ["prepare", "detect", "train", "run"])
@pytest.mark.parametrize("below", [False, True])
def test_out_naming_a_file_is_one_line_with_exit_code_2(tmp_path, command, below):
    existing = tmp_path / "results.txt"
    existing.write_text("the user's file")
    out = existing / "sub" if below else existing
    result = CliRunner().invoke(app, [command, "--config", str(tmp_path / "any.yaml"), "--out", str(out)])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [f"error: {existing}: " + (
        f"is not a folder, so --out {out} cannot be created" if below else "is not a folder; --out must name a folder"
    )]
    assert existing.read_text() == "the user's file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.txt"]


def test_prepare_with_a_valid_config_and_out_naming_a_file_writes_nothing(scenes, tmp_path):
    existing = tmp_path / "out"
    existing.write_text("the user's file")
    config = _config(tmp_path, scenes, stride=128)
    result = CliRunner().invoke(app, ["prepare", "--config", str(config), "--out", str(existing)])
    assert (result.exit_code, result.output.strip()) == (2, f"error: {existing}: is not a folder; --out must name a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", config.name]
    assert existing.read_text() == "the user's file"
