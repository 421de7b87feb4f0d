"""Archives are extracted safely: nothing outside the folder, no links, bounded size and count."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from pipeline.errors import InputError
from pipeline.products.archive import Limits, archive_stem, extract, list_members
from tests.fixtures.products import write_hostile_tar, write_hostile_zip


def _good_zip(path):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("P.SAFE/MTD_MSIL2A.xml", "<x/>")
        zf.writestr("P.SAFE/GRANULE/G/IMG_DATA/a.jp2", b"1234")
    return path


def test_extracts_a_well_formed_zip_and_tar(tmp_path):
    out = extract(_good_zip(tmp_path / "p.zip"), tmp_path / "x")
    assert (out / "P.SAFE" / "GRANULE" / "G" / "IMG_DATA" / "a.jp2").read_bytes() == b"1234"
    with tarfile.open(tmp_path / "p.tar.gz", "w:gz") as tf:
        tf.add(out / "P.SAFE", arcname="P.SAFE")
    again = extract(tmp_path / "p.tar.gz", tmp_path / "y")
    assert (again / "P.SAFE" / "MTD_MSIL2A.xml").read_text() == "<x/>"
    assert sorted(list_members(tmp_path / "p.tar.gz")) == ["P.SAFE/GRANULE/G/IMG_DATA/a.jp2", "P.SAFE/MTD_MSIL2A.xml"]
    assert archive_stem(tmp_path / "S2A_X.SAFE.zip") == "S2A_X.SAFE"
    assert archive_stem(tmp_path / "GF2_X.tar.gz") == "GF2_X"


@pytest.mark.parametrize(
    ("kind", "problem"),
    [
        ("dotdot", "outside the extraction folder"),
        ("absolute", "absolute path"),
        ("symlink", "symbolic link"),
    ],
)
def test_hostile_zip_is_refused_naming_the_archive(tmp_path, kind, problem):
    archive = write_hostile_zip(tmp_path / f"{kind}.zip", kind)
    target = tmp_path / "deep" / "out"
    with pytest.raises(InputError, match=problem) as info:
        extract(archive, target)
    assert info.value.path == archive
    assert not target.exists() and not (tmp_path / "escaped.txt").exists()
    assert not list((tmp_path / "deep").glob(".*partial"))  # no staging folder left behind


@pytest.mark.parametrize(("kind", "problem"), [("dotdot", "outside the extraction folder"), ("symlink", "is a link")])
def test_hostile_tar_is_refused(tmp_path, kind, problem):
    archive = write_hostile_tar(tmp_path / f"{kind}.tar.gz", kind)
    with pytest.raises(InputError, match=problem):
        extract(archive, tmp_path / "deep" / "out")
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "deep" / "escaped.txt").exists()


def test_extraction_stops_at_the_size_cap(tmp_path):
    archive = write_hostile_zip(tmp_path / "bomb.zip", "bomb")  # 8 MiB of zeros, a few kB packed
    assert archive.stat().st_size < 100_000
    with pytest.raises(InputError, match="expands beyond 1048576 bytes"):
        extract(archive, tmp_path / "out", Limits(max_bytes=1 << 20))
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".*partial"))  # the staging folder is removed


def test_member_count_is_capped(tmp_path):
    path = tmp_path / "many.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for k in range(12):
            zf.writestr(f"f{k}.txt", "x")
    with pytest.raises(InputError, match="more than 10 members"):
        extract(path, tmp_path / "out", Limits(max_members=10))


def test_not_an_archive(tmp_path):
    path = tmp_path / "fake.zip"
    path.write_bytes(b"this is not a zip")
    with pytest.raises(InputError, match="not a readable archive"):
        extract(path, tmp_path / "out")


def test_an_archive_refused_for_its_size_leaves_nothing_in_the_cache(tmp_path, scenery):
    from pipeline.config import ProductsConfig
    from pipeline.products import read_product, recognise
    from tests.fixtures.products import write_s2_product

    zipped = write_s2_product(tmp_path / "inbox", scenery, archive="zip").path
    cache = tmp_path / "cache"
    with pytest.raises(InputError, match="expands beyond 1000 bytes") as info:
        read_product(recognise(zipped), ProductsConfig(max_archive_bytes=1000), cache=cache)
    assert info.value.path == zipped
    assert not (cache / "extracted").exists()  # not even an empty folder


def test_a_refused_extraction_keeps_an_existing_parent_and_its_other_entries(tmp_path):
    extracted = tmp_path / "extracted"
    (extracted / "other-key").mkdir(parents=True)
    with pytest.raises(InputError, match="expands beyond"):
        extract(write_hostile_zip(tmp_path / "bomb.zip", "bomb"), extracted / "bomb-key", Limits(max_bytes=1 << 20))
    assert [p.name for p in extracted.iterdir()] == ["other-key"]


def test_concurrent_extractions_of_one_archive_never_share_a_staging_folder(tmp_path, monkeypatch):
    """A second extraction of the same archive (another pass) starting mid-way does not delete the first's files."""
    import pipeline.products.archive as archive_module

    archive = _good_zip(tmp_path / "p.zip")
    destination = tmp_path / "extracted" / "p-key"
    opened = zipfile.ZipFile.open
    nested = []

    def open_and_start_another(self, info, *args, **kwargs):
        # While the first extraction writes its first member, a second one of the same archive runs whole.
        if not nested:
            nested.append(True)
            archive_module.extract(archive, tmp_path / "extracted" / "p-key")
        return opened(self, info, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "open", open_and_start_another)
    assert extract(archive, destination) == destination
    assert (destination / "P.SAFE" / "GRANULE" / "G" / "IMG_DATA" / "a.jp2").read_bytes() == b"1234"
    assert [p.name for p in destination.parent.iterdir()] == ["p-key"]  # no staging folder left


def test_a_staging_folder_of_a_killed_extraction_is_removed_by_the_next(tmp_path):
    extracted = tmp_path / "extracted"
    # What a kill -9 mid-extraction leaves: the staging folder of a process that is gone.
    subprocess.run([sys.executable, "-c", (
        "import sys; from pipeline.io.atomic import partial_folder; "
        "(partial_folder(sys.argv[1]) / 'half.jp2').write_bytes(b'12')"
    ), str(extracted / "p-key")], check=True, cwd=Path(__file__).parents[3])
    assert len(list(extracted.glob(".p-key.*.partial/half.jp2"))) == 1
    extract(_good_zip(tmp_path / "p.zip"), extracted / "p-key")
    assert [p.name for p in extracted.iterdir()] == ["p-key"]
