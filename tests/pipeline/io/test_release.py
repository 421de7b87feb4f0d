"""Outputs change in one switch: tiles, index, config and reports are always of one run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import pipeline.io.release as publish_module
from pipeline.errors import OutputError
from pipeline.io.release import release

FILES = ("catalog.gpkg", "config.yaml", "prepare_report.json", "coregistration.json")
PUBLISHED = ("tiles", *FILES)  # what prepare publishes


def _stage(folder: Path, run: str) -> None:
    """What a run writes into its release: one tile per split and role, the index, config and reports."""
    for split in ("train", "test"):
        for role in ("A", "label"):
            tile = folder / "tiles" / split / role / f"{run}_{split}.tif"
            tile.parent.mkdir(parents=True, exist_ok=True)
            tile.write_text(f"{run} {split} {role}")
    for name in FILES:
        (folder / name).write_text(f"{run} {name}")


def _outputs(out: Path) -> dict[str, str]:
    """Every published output as a reader sees it through ``OUT/{name}``."""
    seen = {name: (out / name).read_text() for name in FILES}
    for tile in sorted((out / "tiles").rglob("*.tif")):
        seen[str(tile.relative_to(out))] = tile.read_text()
    return seen


def _expected(out: Path, run: str) -> dict[str, str]:
    staged = out.parent / f"expected-{run}"
    _stage(staged, run)
    return {
        **{name: f"{run} {name}" for name in FILES},
        **{str(Path("tiles") / p.relative_to(staged / "tiles")): p.read_text() for p in sorted(staged.rglob("*.tif"))},
    }


def test_a_release_is_published_at_the_paths_users_read(tmp_path):
    out = tmp_path / "out"
    with release(out, PUBLISHED) as staged:
        _stage(staged, "run1")
        assert not (out / "catalog.gpkg").exists()  # nothing is visible before the switch
    assert _outputs(out) == _expected(tmp_path / "out", "run1")
    assert (out / "tiles" / "train" / "A" / "run1_train.tif").is_file()
    assert sorted(p.name for p in out.iterdir()) == sorted(["current", "releases", *PUBLISHED])
    assert [p.name for p in (out / "releases").iterdir()] == ["1"]  # no staging folder left


def test_a_new_release_replaces_every_output_together_and_the_old_one_is_removed(tmp_path):
    out = tmp_path / "out"
    with release(out, PUBLISHED) as staged:
        _stage(staged, "run1")
    with release(out, PUBLISHED) as staged:
        _stage(staged, "run2")
    assert _outputs(out) == _expected(out, "run2")  # no run1 tile is left among them
    assert [p.name for p in (out / "releases").iterdir()] == ["2"]


def test_a_run_that_fails_before_publishing_changes_nothing(tmp_path):
    out = tmp_path / "out"
    with release(out, PUBLISHED) as staged:
        _stage(staged, "run1")
    before = _outputs(out)
    with pytest.raises(OSError, match="No space left"), release(out, PUBLISHED) as staged:
        _stage(staged, "run2")
        raise OSError(28, "No space left on device")
    assert _outputs(out) == before
    assert [p.name for p in (out / "releases").iterdir()] == ["1"]


def test_a_crash_at_any_step_of_publishing_leaves_one_whole_run(tmp_path, monkeypatch):
    """Killed at the k-th rename, link or removal: OUT shows all of run 1 or all of run 2, and a rerun repairs it."""
    steps = _publish_steps(tmp_path / "count", monkeypatch, crash_at=None)
    assert steps >= 3  # the release rename, the pointer switch, the old release's removal
    for crash_at in range(1, steps + 1):
        out = tmp_path / f"crash{crash_at}"
        with pytest.raises(KeyboardInterrupt):
            _publish_steps(out, monkeypatch, crash_at)
        assert _outputs(out) in (_expected(out, "run1"), _expected(out, "run2")), f"crash at step {crash_at}"
        with release(out, PUBLISHED) as staged:
            _stage(staged, "run3")
        assert _outputs(out) == _expected(out, "run3")
        assert len(list((out / "releases").iterdir())) == 1


def _publish_steps(out: Path, monkeypatch, crash_at: int | None) -> int:
    """Publish run 1, then run 2 with a kill at its ``crash_at``-th file system step; the steps counted."""
    with release(out, PUBLISHED) as staged:
        _stage(staged, "run1")
    calls = [0]

    def crashing(real):
        def call(*args, **kwargs):
            calls[0] += 1
            if calls[0] == crash_at:
                raise KeyboardInterrupt  # stands for a kill: nothing after this step runs
            return real(*args, **kwargs)
        return call

    with monkeypatch.context() as patch:
        for name in ("rename", "replace", "symlink", "unlink"):
            patch.setattr(publish_module.os, name, crashing(getattr(os, name)))
        patch.setattr(publish_module.shutil, "rmtree", crashing(publish_module.shutil.rmtree))
        with release(out, PUBLISHED) as staged:
            _stage(staged, "run2")
    return calls[0]


def test_a_folder_written_before_releases_is_taken_over(tmp_path):
    """OUT of an older changeflow: a real tiles/ folder and real files at the published names."""
    out = tmp_path / "out"
    _stage(out, "old")
    (out / "notes.txt").write_text("mine")
    with release(out, PUBLISHED) as staged:
        _stage(staged, "run1")
    assert _outputs(out) == _expected(out, "run1")
    assert (out / "notes.txt").read_text() == "mine"
    assert all((out / name).is_symlink() for name in PUBLISHED)


def test_a_release_missing_an_output_is_not_published(tmp_path):
    out = tmp_path / "out"
    with release(out, PUBLISHED) as staged:
        _stage(staged, "run1")
    with pytest.raises(FileNotFoundError, match="config.yaml"), release(out, PUBLISHED) as staged:
        _stage(staged, "run2")
        (staged / "config.yaml").unlink()
    assert _outputs(out) == _expected(out, "run1")


def test_a_name_the_new_release_lacks_is_no_longer_published(tmp_path):
    """A detection rerun without a label writes no report: the last run's report must not stay beside new COGs."""
    out = tmp_path / "out"
    with release(out) as staged:
        (staged / "change_class.tif").write_text("run1")
        (staged / "report.md").write_text("run1 report")
    (out / "notes.md").write_text("mine")
    with release(out) as staged:
        (staged / "change_class.tif").write_text("run2")
    assert sorted(p.name for p in out.iterdir()) == ["change_class.tif", "current", "notes.md", "releases"]
    assert (out / "change_class.tif").read_text() == "run2"


def test_a_write_error_names_the_output_users_know_not_its_staged_copy(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(OutputError) as error, release(out) as staged:
        raise OutputError(staged / "tiles" / "train" / "A" / "t1.tif", "no space left on device")
    assert str(error.value) == f"cannot write {out / 'tiles' / 'train' / 'A' / 't1.tif'}: no space left on device"
    assert [p.name for p in (out / "releases").iterdir()] == []  # the staged copy is gone
