"""A full disk or a read-only folder is one OutputError naming the path; what was written before stays intact."""

from __future__ import annotations

import errno
import os
import pathlib
from collections import namedtuple

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from rasterio.errors import RasterioIOError
from rasterio.windows import Window
from shapely.geometry import box

from pipeline.detect.vectorize import write_layer
from pipeline.errors import InputError, OutputError
from pipeline.io import write_errors
from pipeline.io.atomic import write_atomic
from pipeline.io.cog import write_cog_from_blocks
from pipeline.io.write_errors import NO_SPACE, NOT_WRITABLE, QUOTA, READ_ONLY, writable_folder, write_problem
from pipeline.learn.checkpoint import save_checkpoint
from pipeline.prepare.tiling import _encode_tile, _TileFormat, _write_tile
from tests.fixtures import disks

small_disk, read_only = disks.small_disk, disks.read_only  # fixtures
Usage = namedtuple("Usage", "total used free")
PROFILE = {"width": 256, "height": 256, "count": 1, "dtype": "float32", "crs": "EPSG:32650",
           "transform": Affine(4.0, 0, 500000.0, 0, -4.0, 3500000.0), "nodata": float("nan")}
# Most problems read the same whoever runs the test: root meets a read-only mount, others a chmod.
LOCKED = {READ_ONLY, NOT_WRITABLE}


def _noise_blocks(seed: int = 0):
    return [(Window(0, 0, 256, 256), np.random.default_rng(seed).random((1, 256, 256), dtype=np.float32))]


def _files(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- what is a disk problem


def _raised_from(outer: BaseException, inner: BaseException) -> BaseException:
    try:
        try:
            raise inner
        except BaseException as exc:
            raise outer from exc
    except BaseException as exc:
        return exc


@pytest.mark.parametrize(("error", "problem"), [
    (OSError(errno.ENOSPC, "No space left on device"), NO_SPACE),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), QUOTA),
    (OSError(errno.EROFS, "Read-only file system"), READ_ONLY),
    (RasterioIOError("Write failed: 65536 requested and 5088 written"), NO_SPACE),
    (RuntimeError("[enforce fail at inline_container.cc:747] . open file failed with strerror: Read-only file "
                  "system"), READ_ONLY),
])
def test_errno_and_messages_name_the_problem_whatever_the_free_space(error, problem, tmp_path):
    assert write_problem(error, tmp_path / "x.tif") == problem


def test_a_write_failure_without_a_reason_is_a_full_disk_when_nothing_is_left(tmp_path, monkeypatch):
    error = _raised_from(RasterioIOError("Write failed. See previous exception for details."),
                         RuntimeError("TIFFAppendToStrip:Write error at scanline 256"))
    monkeypatch.setattr(write_errors.shutil, "disk_usage", lambda _: Usage(2**30, 2**30 - 4096, 4096))
    assert write_problem(error, tmp_path / "x.tif") == NO_SPACE


def test_a_write_failure_without_a_reason_says_so_with_the_free_space(tmp_path, monkeypatch):
    error = _raised_from(RasterioIOError("Write failed. See previous exception for details."),
                         RuntimeError("TIFFAppendToStrip:Write error at scanline 256"))
    monkeypatch.setattr(write_errors.shutil, "disk_usage", lambda _: Usage(2**30, 2**29, 2**29))
    assert write_problem(error, tmp_path / "x.tif") == (
        "write failed (TIFFAppendToStrip:Write error at scanline 256), 512.0 MiB free on the device")


@pytest.mark.parametrize("error", [
    ValueError("operands could not be broadcast together"),
    PermissionError(errno.EACCES, "Permission denied", "/data/input.tif"),  # an input it may not read
    InputError("/data/input.tif", "not a raster"),
    OutputError("/out/inner.tif", NO_SPACE),  # already names a more precise path
])
def test_other_errors_are_not_disk_problems(error, tmp_path):
    assert write_problem(error, tmp_path / "x.tif") is None


# --------------------------------------------------------------------------- injected at the write layer


def test_write_atomic_on_a_full_disk_keeps_the_old_file_and_leaves_no_partial(tmp_path, monkeypatch):
    target = tmp_path / "report.json"
    target.write_text('{"old": true}')

    def half_then_full(self, data):  # what a full disk does: part of the bytes, then ENOSPC
        with open(self, "wb") as handle:
            handle.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(pathlib.Path, "write_bytes", half_then_full)
    with pytest.raises(OutputError) as info:
        write_atomic(target, '{"new": true, "padding": "' + "x" * 1000 + '"}')
    assert str(info.value) == f"cannot write {target}: no space left on device"
    assert info.value.path == target
    assert _files(tmp_path) == {"report.json": b'{"old": true}'}


def test_a_cog_whose_copy_hits_a_full_disk_leaves_the_old_cog_and_no_staging(tmp_path, monkeypatch):
    target = tmp_path / "out" / "change_probability.tif"
    write_cog_from_blocks(target, PROFILE, _noise_blocks(0), staging=tmp_path / "stage" / "p.tif", categorical=False)
    before = _files(tmp_path)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(rasterio.shutil, "copy", full)
    with pytest.raises(OutputError, match=f"^cannot write {target}: no space left on device$"):
        write_cog_from_blocks(target, PROFILE, _noise_blocks(1), staging=tmp_path / "stage" / "p.tif",
                              categorical=False)
    assert _files(tmp_path) == before


# --------------------------------------------------------------------------- a real full disk (tmpfs)


def test_a_checkpoint_on_a_full_disk_keeps_the_previous_one(small_disk):
    disk = small_disk(2**30)  # nothing filled yet
    last = save_checkpoint(disk / "run" / "last.pt", {"epoch": 1, "w": torch.zeros(10)})
    before = last.read_bytes()
    small_disk(16 * 1024)
    with pytest.raises(OutputError) as info:
        save_checkpoint(last, {"epoch": 2, "w": torch.randn(200_000)})  # 800 KB
    assert str(info.value) == f"cannot write {last}: no space left on device"
    assert last.read_bytes() == before
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.pt"]


def test_a_cog_staging_on_a_full_disk_names_the_staging_and_leaves_nothing(small_disk):
    disk = small_disk(2**30)
    target = disk / "out" / "change_probability.tif"
    write_cog_from_blocks(target, {**PROFILE, "width": 16, "height": 16},
                          [(Window(0, 0, 16, 16), np.ones((1, 16, 16), np.float32))],
                          staging=disk / "stage" / "p.tif", categorical=False)
    before = target.read_bytes()
    small_disk(32 * 1024)
    staging = disk / "stage" / "p.tif"
    with pytest.raises(OutputError, match=f"^cannot write {staging}: no space left on device$"):
        write_cog_from_blocks(target, PROFILE, _noise_blocks(2), staging=staging, categorical=False)
    assert target.read_bytes() == before
    assert sorted(p.name for p in target.parent.iterdir()) == ["change_probability.tif"]
    assert not staging.exists()


def test_a_geopackage_layer_on_a_full_disk_keeps_the_old_file(small_disk):
    disk = small_disk(2**30)
    gpkg = disk / "changes.gpkg"
    write_layer(gpd.GeoDataFrame({"id": [1]}, geometry=[box(0, 0, 1, 1)], crs="EPSG:32650"), gpkg, "changes")
    before = gpkg.read_bytes()
    small_disk(8 * 1024)
    frame = gpd.GeoDataFrame({"id": range(5000)}, geometry=[box(i, 0, i + 1, 1) for i in range(5000)],
                             crs="EPSG:32650")
    with pytest.raises(OutputError) as info:
        write_layer(frame, gpkg, "changes")
    assert str(info.value) == f"cannot write {gpkg}: no space left on device"
    assert gpkg.read_bytes() == before
    assert sorted(p.name for p in disk.iterdir()) == ["changes.gpkg", "filler.bin"]


def test_a_tile_on_a_full_disk_leaves_no_partial(small_disk, tmp_path):
    source_path = tmp_path / "A.tif"
    with rasterio.open(source_path, "w", driver="GTiff", **{**PROFILE, "count": 1}) as dst:
        dst.write(_noise_blocks(3)[0][1])
    disk = small_disk(16 * 1024)
    tile = disk / "tiles" / "train" / "A" / "g_x0_y0.tif"
    with rasterio.open(source_path) as source, pytest.raises(OutputError) as info:
        content = _encode_tile(_noise_blocks(4)[0][1], _TileFormat.of(source, level=6), PROFILE["transform"])
        _write_tile(tile, content)
    assert str(info.value) == f"cannot write {tile}: no space left on device"
    assert list(tile.parent.iterdir()) == []


def test_writable_folder_refuses_a_full_disk_naming_the_folder(small_disk):
    disk = small_disk(0)
    with pytest.raises(OutputError, match=f"^cannot write {disk / 'out'}: no space left on device$"):
        writable_folder(disk / "out")


# --------------------------------------------------------------------------- a read-only folder


def test_writes_into_a_read_only_folder_are_refused_and_change_nothing(tmp_path, read_only):
    out = tmp_path / "out"
    save_checkpoint(out / "last.pt", {"epoch": 1})
    write_atomic(out / "metrics.json", "{}")
    before = _files(out)
    read_only(out)
    for write in (lambda: save_checkpoint(out / "last.pt", {"epoch": 2}),
                  lambda: write_atomic(out / "metrics.json", '{"epoch": 2}'),
                  lambda: write_atomic(out / "new" / "file.txt", "x"),
                  lambda: write_cog_from_blocks(out / "c.tif", PROFILE, _noise_blocks(), staging=out / "c.staging.tif",
                                                categorical=False),
                  lambda: write_layer(gpd.GeoDataFrame({"id": [1]}, geometry=[box(0, 0, 1, 1)], crs="EPSG:32650"),
                                      out / "changes.gpkg", "changes")):
        with pytest.raises(OutputError) as info:
            write()
        assert str(info.value).startswith(f"cannot write {out}/")
        assert info.value.problem in LOCKED
    assert _files(out) == before


def test_writable_folder_refuses_a_read_only_folder_before_a_run(tmp_path, read_only):
    out = tmp_path / "out"
    out.mkdir()
    read_only(out)
    with pytest.raises(OutputError) as info:
        writable_folder(out)
    assert info.value.path == out
    assert info.value.problem in LOCKED
    assert list(out.iterdir()) == []


def test_writable_folder_creates_a_missing_folder_and_leaves_nothing_in_it(tmp_path):
    folder = writable_folder(tmp_path / "a" / "b")
    assert folder.is_dir() and list(folder.iterdir()) == []

