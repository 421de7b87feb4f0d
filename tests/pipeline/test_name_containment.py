"""The second line of defence: every join of a user-given name refuses a path outside its folder.

Names that get past the config (a scene id taken from a file stem, a product name, an inbox file
name, a Sentinel-2 metadata entry) reach :func:`pipeline.io.paths.contained` before anything is
written, renamed or removed.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from pipeline.config import IngestConfig, PrepareConfig, ProductsConfig, Role, SceneEntry, Sensor
from pipeline.io.paths import UnsafePathError, shown
from pipeline.prepare.assembly import _link_tiles
from pipeline.prepare.catalog import RefusedEntry, build_catalog, scan_inbox
from pipeline.prepare.group_build import process_group
from pipeline.prepare.inbox import Workspace, move_into
from pipeline.prepare.overlap import build_groups
from pipeline.prepare.tiling import TileRecord
from pipeline.products import Product, read_product
from pipeline.products.sentinel2 import band_file
from pipeline.synthetic.scenes import write_synthetic_group


def _tree(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
    }


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("scenes")
    write_synthetic_group(root, name="g1", size=256, seed=2)
    return {role: root / f"g1_{role}.tif" for role in ("A", "B")}


def test_a_group_named_after_a_dotdot_scene_id_cannot_replace_out(scenes, tmp_path):
    # A free A scene takes its group name from its id, the file stem: '...tif' has the stem '..'.
    shutil.copy(scenes["A"], tmp_path / "...tif")
    shutil.copy(scenes["B"], tmp_path / "b.tif")
    config = PrepareConfig(scenes=[SceneEntry(path=tmp_path / "...tif", role=Role.A),
                                   SceneEntry(path=tmp_path / "b.tif", role=Role.B, sensor=Sensor.gf3)])
    catalogued, failures = build_catalog(list(config.scenes), config)
    groups, _, crs = build_groups(catalogued, config.min_overlap)
    assert not failures and [g.name for g in groups] == [".."]
    out = tmp_path / "out"
    (out / "groups" / "g1").mkdir(parents=True)
    (out / "groups" / "g1" / "manifest.json").write_text("{}")
    (out / "notes.txt").write_text("my notes\n")
    before = _tree(tmp_path)

    with pytest.raises(UnsafePathError) as error:
        process_group(groups[0], crs, config, out)

    assert str(error.value) == f"{out / 'groups'}: refusing the name '..': not a single file or folder name"
    assert _tree(tmp_path) == before


@pytest.mark.parametrize("name", [".", "a/b", "/abs/keep"])
def test_process_group_refuses_other_unsafe_group_names(scenes, tmp_path, name):
    config = PrepareConfig(scenes=[SceneEntry(path=scenes["A"], role=Role.A, group="g1"),
                                   SceneEntry(path=scenes["B"], role=Role.B, sensor=Sensor.gf3, group="g1")])
    catalogued, _ = build_catalog(list(config.scenes), config)
    groups, _, crs = build_groups(catalogued, config.min_overlap)
    out = tmp_path / "out"
    (out / "groups").mkdir(parents=True)
    (out / "groups" / "other.txt").write_text("kept\n")
    before = _tree(tmp_path)
    with pytest.raises(UnsafePathError, match="refusing the name"):
        process_group(replace(groups[0], name=name), crs, config, out)
    assert _tree(tmp_path) == before


def _record(tile_id: str, group: str) -> TileRecord:
    return TileRecord(tile_id, group, (0, 0), 0, 0, {}, 0.0, 0, 0, (0.0, 0.0, 1.0, 1.0))


@pytest.mark.parametrize(("tile_id", "group"), [("../../../evil", "g1"), ("g1_x0_y0", "..")])
def test_assembly_refuses_a_tile_or_group_that_leaves_its_folder(tmp_path, tile_id, group):
    out = tmp_path / "out"
    (out / "groups" / "g1" / "tiles" / "A").mkdir(parents=True)
    (out / "groups" / "g1" / "tiles" / "A" / "g1_x0_y0.tif").write_bytes(b"tile")
    (out / "tiles" / "train" / "A").mkdir(parents=True)
    (out / "tiles" / "train" / "A" / "old.tif").write_bytes(b"old tile")
    before = _tree(tmp_path)
    with pytest.raises(UnsafePathError, match="refusing the name"):
        _link_tiles([_record(tile_id, group)], {tile_id: "train"}, out, out / "releases" / "next" / "tiles")
    assert _tree(tmp_path) == before


def test_a_product_name_cannot_lead_out_of_the_cache(tmp_path):
    product_dir = tmp_path / "delivery"
    product_dir.mkdir()
    (product_dir / "x.tiff").write_bytes(b"not read")
    cache = tmp_path / "work" / "cache"
    with pytest.raises(UnsafePathError) as error:
        read_product(Product(Sensor.gf2, product_dir, "../../../escaped"), ProductsConfig(), cache=cache)
    assert str(error.value).startswith(f"{cache / 'products'}: refusing the name '../../../escaped-")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["delivery"]


def test_a_sentinel2_metadata_entry_cannot_read_outside_the_safe(tmp_path):
    safe = tmp_path / "S2A_MSIL1C_20210615.SAFE"
    safe.mkdir()
    (tmp_path / "outside_B04.jp2").write_bytes(b"someone else's file")
    with pytest.raises(UnsafePathError, match=r"refusing the name '\.\.'"):
        band_file(safe, "B04", {"images": ["../outside_B04"]}, safe)
    with pytest.raises(UnsafePathError, match="refusing the name '/'"):
        band_file(safe, "B04", {"images": [str(tmp_path / "outside_B04")]}, safe)


def test_inbox_moves_refuse_names_and_links_that_leave_their_folder(tmp_path):
    workspace = Workspace(tmp_path / "ws")
    with pytest.raises(UnsafePathError, match="refusing the name '..'"):
        workspace.claim_dir("..")
    archive = tmp_path / "ws" / "archive"
    (archive / "p.SAFE").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (archive / ".superseded").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "p.SAFE").mkdir()
    before = _tree(tmp_path)
    with pytest.raises(UnsafePathError, match="outside"):
        move_into(tmp_path / "p.SAFE", archive, "run1")  # the old p.SAFE would be set aside through the link
    assert _tree(tmp_path) == before
    assert not any((tmp_path / "elsewhere").iterdir())


def test_an_inbox_base_that_is_no_safe_name_is_refused_by_the_catalog(scenes, tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    long_base = "b" * 99  # a safe base, but its scene id 'bbb…_A' is 101 characters
    names = {"g1_A.tif": "A", "g1_B.tif": "B", "city 1_A.tif": "A", "evil\nname_B.tif": "B", f"{long_base}_A.tif": "A"}
    for name, role in names.items():
        shutil.copy(scenes[role], inbox / name)
    sensors = PrepareConfig(inbox=inbox).inbox_sensors

    entries = scan_inbox(inbox, sensors)

    refused = {e.path.name: e.reason for e in entries if isinstance(e, RefusedEntry)}
    assert refused == {
        "city 1_A.tif": "inbox name 'city 1' is not a safe name: use letters, digits, '_', '.' and '-', "
                        "starting with a letter or digit, no '..'",
        "evil\nname_B.tif": "inbox name 'evil\\nname' is not a safe name: use letters, digits, '_', '.' and '-', "
                            "starting with a letter or digit, no '..'",
        f"{long_base}_A.tif": f"inbox name {shown(long_base + '_A')} is too long: 101 characters, at most 100 are allowed",
    }
    # Ingest passes the entries through its prepare config: the refusal must survive it.
    config = IngestConfig(inbox=inbox, workspace=tmp_path / "ws", checkpoint=tmp_path / "m.pt").prepare_config(entries)
    catalogued, failures = build_catalog(list(config.scenes), config)
    assert sorted(s.id for s in catalogued) == ["g1_A", "g1_B"]
    assert {entry.path.name: reason for entry, reason in failures} == {
        name: f"{inbox / name}: {reason}" for name, reason in refused.items()
    }
