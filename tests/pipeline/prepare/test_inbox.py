"""Claiming provider products from the ingest inbox: folders and archives, settled, once."""

from __future__ import annotations

import datetime as dt
import shutil
import threading

import pytest

from pipeline.prepare import inbox as inbox_module
from pipeline.prepare.inbox import (
    Workspace,
    archive,
    claim_new_scenes,
    fingerprint,
    read_registry,
    register,
    reject,
    unregister,
)
from tests.fixtures.products import Scenery, write_gf2_product, write_gf3_product, write_s2_product


@pytest.fixture(scope="module")
def scenery():
    return Scenery(size_m=800.0, seed=1)


@pytest.fixture
def products(tmp_path, scenery):
    """An inbox with a GF-2 folder, a GF-3 .tar.gz, an S2 SAFE .zip, a GOLD file and some clutter."""
    inbox = tmp_path / "inbox"
    written = {
        "gf2": write_gf2_product(inbox, scenery, size=64),
        "gf3": write_gf3_product(inbox, scenery, size=64, archive="tar.gz"),
        "s2": write_s2_product(inbox, scenery, size_m=300.0, archive="zip"),
    }
    (inbox / "site_A.tif").write_bytes(b"gold")
    (inbox / "notes.txt").write_text("not a scene")
    (inbox / "misc").mkdir()  # a folder that is no product
    (inbox / "misc" / "readme.txt").write_text("x")
    (inbox / ".GF2_partial.tar.gz").write_bytes(b"hidden: a copy tool's temporary name")
    return inbox, written


class Clock:
    """``time.time`` of the inbox module, moved by hand."""

    def __init__(self, monkeypatch, start: float = 1_000_000.0):
        self.now = start
        monkeypatch.setattr(inbox_module.time, "time", lambda: self.now)


def test_product_folder_and_archives_are_claimed_with_gold_files(products, tmp_path):
    inbox, written = products
    workspace = Workspace(tmp_path / "ws")
    claimed = claim_new_scenes(inbox, workspace, "run1")
    names = sorted(p.name for p in claimed)
    assert names == sorted([written["gf2"].path.name, written["gf3"].path.name, written["s2"].path.name, "site_A.tif"])
    folder = workspace.claim_dir("run1") / written["gf2"].path.name
    assert folder.is_dir() and any(folder.glob("*-MSS1.tiff"))  # the folder moved as a whole
    assert sorted(p.name for p in inbox.iterdir()) == [".GF2_partial.tar.gz", "misc", "notes.txt"]


def test_a_product_still_being_copied_is_not_claimed(products, tmp_path, monkeypatch):
    inbox, written = products
    workspace = Workspace(tmp_path / "ws")
    clock = Clock(monkeypatch)
    gf2 = written["gf2"].path
    zip_path = written["s2"].path
    # First poll: products are only noted (nothing says they are complete yet); GOLD files older
    # than settle_seconds go as before.
    (inbox / "site_A.tif").touch()
    clock.now = (inbox / "site_A.tif").stat().st_mtime + 120
    first = claim_new_scenes(inbox, workspace, "run1", settle_seconds=60)
    assert [p.name for p in first] == ["site_A.tif"]
    # The copy goes on: a file grows in the folder, another appears; the zip grows.
    clock.now += 600
    with open(next(gf2.glob("*-MSS1.tiff")), "ab") as handle:
        handle.write(b"\0" * 10)
    (gf2 / "late.rpb.tmp").write_text("half")
    with open(zip_path, "ab") as handle:
        handle.write(b"\0")
    second = claim_new_scenes(inbox, workspace, "run2", settle_seconds=60)
    assert [p.name for p in second] == [written["gf3"].path.name]  # unchanged for 600 s between polls
    assert gf2.exists() and zip_path.exists()
    # Unchanged since, but not yet for settle_seconds: still waiting.
    clock.now += 30
    assert claim_new_scenes(inbox, workspace, "run3", settle_seconds=60) == []
    clock.now += 31
    third = claim_new_scenes(inbox, workspace, "run4", settle_seconds=60)
    assert sorted(p.name for p in third) == sorted([gf2.name, zip_path.name])
    assert (workspace.claim_dir("run4") / gf2.name / "late.rpb.tmp").exists()


def test_mtimes_kept_by_the_copy_do_not_make_a_partial_product_look_settled(products, tmp_path, monkeypatch):
    """A copy that keeps the source's (old) mtimes is still caught: sizes and names change."""
    inbox, written = products
    workspace = Workspace(tmp_path / "ws")
    clock = Clock(monkeypatch, start=4_000_000_000.0)  # every file looks hours old
    gf2 = written["gf2"].path
    claim_new_scenes(inbox, workspace, "run1", settle_seconds=60)  # notes the products
    clock.now += 1800
    image = next(gf2.glob("*-MSS1.tiff"))
    stat = image.stat()
    with open(image, "ab") as handle:
        handle.write(b"\0" * 10)
    inbox_module.os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    claimed = claim_new_scenes(inbox, workspace, "run2", settle_seconds=60)
    assert gf2.name not in {p.name for p in claimed} and gf2.exists()


def test_overlapping_claims_get_disjoint_sets(tmp_path, scenery):
    inbox = tmp_path / "inbox"
    names = set()
    for day in range(1, 7):
        names.add(write_gf2_product(inbox, scenery, size=32, date=dt.date(2019, 5, day)).path.name)
        names.add(write_gf3_product(inbox, scenery, size=32, date=dt.date(2021, 6, day), archive="tar.gz").path.name)
        (inbox / f"site{day}_A.tif").write_bytes(b"a")
        names.add(f"site{day}_A.tif")
    workspace = Workspace(tmp_path / "ws")
    start = threading.Barrier(4)
    results: dict[str, list] = {}

    def run(run_id: str) -> None:
        start.wait()
        results[run_id] = claim_new_scenes(inbox, workspace, run_id)

    threads = [threading.Thread(target=run, args=(f"run{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    claimed = [p.name for paths in results.values() for p in paths]
    assert len(claimed) == len(set(claimed)) and set(claimed) == names
    for run_id, paths in results.items():
        assert all(p.parent == workspace.claim_dir(run_id) and p.exists() for p in paths)
    assert list(inbox.iterdir()) == []


def test_a_product_dropped_again_is_not_processed_twice(products, tmp_path):
    inbox, written = products
    workspace = Workspace(tmp_path / "ws")
    first = claim_new_scenes(inbox, workspace, "run1")
    kept = tmp_path / "kept"  # the provider's copy, to drop again later
    kept.mkdir()
    for path in first:
        if path.is_dir():
            shutil.copytree(path, kept / path.name)
        else:
            shutil.copy2(path, kept / path.name)
    archive(first, workspace, "run1")
    assert (workspace.archive / written["gf2"].path.name).is_dir()
    assert (workspace.archive / written["s2"].path.name).is_file()
    # Dropped again, copied with fresh mtimes: content fingerprints still match.
    for path in kept.iterdir():
        if path.is_dir():
            shutil.copytree(path, inbox / path.name, copy_function=shutil.copy)
        else:
            shutil.copy(path, inbox / path.name)
    assert fingerprint(inbox / written["gf2"].path.name) == fingerprint(workspace.archive / written["gf2"].path.name)
    assert claim_new_scenes(inbox, workspace, "run2") == []
    for product in written.values():
        assert (workspace.duplicates / product.path.name).exists()
        assert not (inbox / product.path.name).exists()
    # A third drop of the same folder lands in duplicates too (the folder already there is set aside).
    shutil.copytree(kept / written["gf2"].path.name, inbox / written["gf2"].path.name)
    assert claim_new_scenes(inbox, workspace, "run3") == []
    assert (workspace.duplicates / written["gf2"].path.name).is_dir()
    # A product with other content under the same name is new.
    changed = kept / written["gf2"].path.name
    next(changed.glob("*-MSS1.tiff")).write_bytes(b"reprocessed by the provider")
    shutil.copytree(changed, inbox / changed.name)
    assert [p.name for p in claim_new_scenes(inbox, workspace, "run4")] == [changed.name]


def test_a_refused_product_folder_goes_to_rejected_with_its_reason(products, tmp_path):
    inbox, written = products
    workspace = Workspace(tmp_path / "ws")
    claimed = {p.name: p for p in claim_new_scenes(inbox, workspace, "run1")}
    folder = claimed[written["gf2"].path.name]
    moved = reject(folder, workspace, "run1", "cannot be read as a gf2 product (broken)")
    assert moved == workspace.rejected / folder.name and moved.is_dir()
    assert "broken" in (workspace.rejected / f"{folder.name}.reason.txt").read_text()


def test_concurrent_registry_writers_lose_no_entry(tmp_path):
    """Four passes registering at once (threads here; the lock is a file lock, so processes too)."""
    workspace = Workspace(tmp_path / "ws")
    workspace.root.mkdir()
    start = threading.Barrier(4)
    errors = []

    def run(writer: int) -> None:
        start.wait()
        try:
            for i in range(40):
                register(workspace, {f"{writer}-{i}": {"name": f"s{writer}_{i}_A.tif", "run_id": f"run{writer}"}})
        except Exception as exc:  # collected: a failed write is a lost entry too
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(writer,)) for writer in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(read_registry(workspace)) == sorted(f"{w}-{i}" for w in range(4) for i in range(40))


def test_unregister_forgets_scenes_so_they_can_be_dropped_again(tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "x_A.tif").write_bytes(b"a")
    workspace = Workspace(tmp_path / "ws")
    archived = archive(claim_new_scenes(inbox, workspace, "run1"), workspace, "run1")
    shutil.copy(archived[0], inbox / "x_A.tif")
    unregister(workspace, [fingerprint(archived[0])])
    assert read_registry(workspace) == {}
    assert [p.name for p in claim_new_scenes(inbox, workspace, "run2")] == ["x_A.tif"]
