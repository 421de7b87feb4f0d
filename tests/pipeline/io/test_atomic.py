"""Tests of pipeline.io.atomic: rename on success, nothing left over on failure."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys

import numpy as np
import pytest
import rasterio

from pipeline.io.atomic import atomic_path, remove_abandoned_partials, write_atomic
from tests.conftest import write_raster


def test_success_renames_the_temporary_file_onto_the_destination(tmp_path):
    destination = tmp_path / "report.json"
    with atomic_path(destination) as partial:
        partial.write_text('{"f1": 0.7}')
        assert not destination.exists()  # a reader never sees half a file
    assert destination.read_text() == '{"f1": 0.7}'
    assert not partial.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_temporary_path_is_hidden_beside_the_destination_and_keeps_the_suffix(tmp_path):
    destination = tmp_path / "maps" / "change.tif"
    with atomic_path(destination) as partial:
        assert partial.parent == destination.parent
        assert partial.suffix == ".tif"
        assert partial.name.startswith(".")
        assert partial != destination
        assert str(os.getpid()) in partial.name
        partial.write_bytes(b"x")


def test_temporary_path_is_usable_by_gdal(tmp_path):
    destination = tmp_path / "label.tif"
    data = np.arange(12, dtype=np.uint8).reshape(3, 4)
    with atomic_path(destination) as partial:
        write_raster(partial, data)  # GDAL picks the GTiff driver by the suffix
    with rasterio.open(destination) as src:
        np.testing.assert_array_equal(src.read(1), data)


def test_an_exception_leaves_the_existing_destination_unchanged_and_removes_the_temporary_files(tmp_path):
    destination = tmp_path / "change.tif"
    destination.write_bytes(b"old content")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_path(destination) as partial:
            partial.write_bytes(b"half")
            partial.with_name(partial.name + ".aux.xml").write_text("<PAMDataset/>")
            raise RuntimeError("disk full")
    assert destination.read_bytes() == b"old content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["change.tif"]


def test_an_exception_before_anything_is_written_creates_no_destination(tmp_path):
    destination = tmp_path / "new.txt"
    with pytest.raises(ValueError):
        with atomic_path(destination):
            raise ValueError("bad input")
    assert list(tmp_path.iterdir()) == []


def test_parent_folders_are_created(tmp_path):
    destination = tmp_path / "a" / "b" / "c" / "out.txt"
    with atomic_path(destination) as partial:
        assert partial.parent.is_dir()
        partial.write_text("done")
    assert destination.read_text() == "done"


def test_write_atomic_writes_text_as_utf8(tmp_path):
    destination = tmp_path / "sub" / "note.txt"
    assert write_atomic(destination, "变化检测 ok") == destination
    assert destination.read_bytes() == "变化检测 ok".encode()
    assert sorted(p.name for p in destination.parent.iterdir()) == ["note.txt"]


def test_write_atomic_writes_bytes_and_replaces_an_existing_file(tmp_path):
    destination = tmp_path / "blob.bin"
    destination.write_bytes(b"old")
    assert write_atomic(str(destination), b"\x00\xffnew") == destination
    assert destination.read_bytes() == b"\x00\xffnew"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blob.bin"]


def _killed_while_writing(destination, folder: bool = False) -> None:
    """A process killed (SIGKILL) inside :func:`atomic_path` or after :func:`partial_folder`: its partial stays."""
    make = "partial_folder(d)" if folder else "atomic_path(d).__enter__().write_bytes(b'half')"
    code = (f"import os, pathlib; from pipeline.io.atomic import atomic_path, partial_folder; "
            f"d = pathlib.Path({str(destination)!r}); {make}; os.kill(os.getpid(), 9)")
    run = subprocess.run([sys.executable, "-c", code], cwd=pathlib.Path(__file__).parents[3])
    assert run.returncode == -signal.SIGKILL


def test_partials_of_killed_writers_are_removed_and_those_of_live_ones_kept(tmp_path):
    destination = tmp_path / "best.pt"
    _killed_while_writing(destination)
    _killed_while_writing(tmp_path / "release", folder=True)
    [killed_file] = [p.name for p in tmp_path.iterdir() if p.name.startswith(".best.")]
    assert killed_file.endswith(".partial.pt")
    with atomic_path(destination) as live:  # this process's own write, under way
        live.write_bytes(b"writing")
        (tmp_path / ".best.notes").write_text("not a partial")
        remove_abandoned_partials(destination)
        remove_abandoned_partials(tmp_path / "release")
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, ".best.notes"])
    assert destination.read_bytes() == b"writing"
