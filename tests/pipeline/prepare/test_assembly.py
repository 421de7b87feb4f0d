"""Assembly of built groups: de-duplication, hard-linked split folders, index rows and summaries."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest
from rasterio.crs import CRS
from shapely.geometry import box

from pipeline.config import PrepareConfig, Role
from pipeline.prepare.assembly import assemble, assigned_tiles, spaces, split_summary, stride_note, tiepoint_rows
from pipeline.prepare.group_build import GroupOutcome
from pipeline.prepare.overlap import Group
from pipeline.prepare.tiling import TileRecord

UTM = CRS.from_epsg(32650)


def _tile(group: str, x: int, change: int = 0, labelled: int = 100) -> TileRecord:
    return TileRecord(
        tile_id=f"{group}_x{x}", group=group, block=(x, 0), col_off=x * 10, row_off=0,
        black_fraction={"A": 0.0}, change_fraction=change / labelled if labelled else float("nan"), change_pixels=change,
        labelled_pixels=labelled, bounds=(x * 100.0, 0.0, x * 100.0 + 90.0, 90.0),
    )


def _outcome(out, name: str, tiles: list[TileRecord], crs: CRS | None = UTM, **extra) -> GroupOutcome:
    for t in tiles:
        for role in ("A", "C"):
            path = out / "groups" / name / "tiles" / role / f"{t.tile_id}.tif"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(f"{role} {t.tile_id}".encode())
    grid = {"crs": crs.to_wkt() if crs else None, "transform": [4.0, 0, 1000.0, 0, -4.0, 2000.0], "width": 10, "height": 10}
    return GroupOutcome(name, "prepared", grid=grid, tiles=tiles, **extra)


def _group(name: str, a: str = "a.tif", c: str = "c.tif") -> Group:
    # Only the members' roles and paths matter to assembly.
    members = {Role.A: SimpleNamespace(path=Path(a)), Role.C: SimpleNamespace(path=Path(c))}
    return Group(name=name, members=members, ratios={}, common_area=box(0, 0, 1, 1))


def test_duplicates_are_dropped_and_the_rest_is_linked_into_split_folders(tmp_path):
    g1 = _outcome(tmp_path, "g1", [_tile("g1", x) for x in range(6)])
    g2 = _outcome(tmp_path, "g2", [_tile("g2", 0)])  # the same ground as g1_x0
    config = PrepareConfig(scenes=[{"path": "a.tif", "role": "A"}])
    splits, dropped, grid_crs = assemble([g2, g1], [_group("g1"), _group("g2")], UTM, config, tmp_path, tmp_path / "tiles")
    assert dropped == {"duplicate": 1, "split_isolation": 0}
    assert set(splits) == {f"g1_x{x}" for x in range(6)}  # the first group by name wins
    assert grid_crs == {"g1": UTM, "g2": UTM}
    for tile_id, split in splits.items():
        for role in ("A", "C"):
            linked = tmp_path / "tiles" / split / role / f"{tile_id}.tif"
            source = tmp_path / "groups" / "g1" / "tiles" / role / f"{tile_id}.tif"
            assert os.path.samefile(linked, source)
    again, _, _ = assemble([g1, g2], [_group("g1"), _group("g2")], UTM, config, tmp_path, tmp_path / "again")
    assert again == splits
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again", "groups", "tiles"]  # only the tile folders asked for


def test_split_summary_and_assigned_tiles(tmp_path):
    tiles = [_tile("g1", 0, change=10), _tile("g1", 1, change=30), _tile("g1", 2, labelled=0)]
    failed = GroupOutcome("g0", "failed", error="bad", tiles=[_tile("g0", 0)])
    splits = {"g1_x0": "train", "g1_x1": "train", "g1_x2": "test", "g0_x0": "val"}
    kept = assigned_tiles([failed, GroupOutcome("g1", "prepared", tiles=tiles)], splits)
    assert [t.tile_id for t in kept] == ["g1_x0", "g1_x1", "g1_x2"]
    summary = split_summary(kept, splits, {"train": 0.6, "val": 0.2, "test": 0.2})
    assert summary["train"] == {
        "tiles": 2, "share": 0.667, "requested": 0.6, "change_pixels": 40, "change_fraction": pytest.approx(0.2)
    }
    assert summary["val"] == {"tiles": 0, "share": 0.0, "requested": 0.2, "change_pixels": 0, "change_fraction": None}
    assert summary["test"] == {"tiles": 1, "share": 0.333, "requested": 0.2, "change_pixels": 0, "change_fraction": None}


def test_pixel_space_groups_of_different_files_are_never_duplicates(tmp_path):
    # Issue 17: every pixel-space image has the identity transform, so unrelated pairs overlapped.
    names = [f"p{i}" for i in range(5)]
    outcomes = [_outcome(tmp_path, n, [_tile(n, x) for x in range(2)], crs=None) for n in names]
    groups = [_group(n, f"{n}_a.png", f"{n}_c.png") for n in names]
    # Groups of the same files as p0 (listed twice), or with p1's t1 image, are the same place, as on a map.
    for name, a, c in (("p5", "p0_a.png", "p0_c.png"), ("p6", "p1_a.png", "other_c.png")):
        outcomes.append(_outcome(tmp_path, name, [_tile(name, x) for x in range(2)], crs=None))
        groups.append(_group(name, a, c))
    config = PrepareConfig(scenes=[{"path": "a.tif", "role": "A"}], split={"block_tiles": 1})
    splits, dropped, grid_crs = assemble(outcomes, groups, None, config, tmp_path, tmp_path / "tiles")
    assert dropped == {"duplicate": 4, "split_isolation": 0}
    assert set(splits) == {f"{n}_x{x}" for n in names for x in range(2)}
    assert set(grid_crs.values()) == {None}


def test_stride_note_says_why_the_stride_is_not_used():
    config = PrepareConfig(
        scenes=[{"path": "a.tif", "role": "A"}], tiling={"size": 256, "stride": 128}, split={"block_tiles": 1}
    )
    assert "tiling.stride 128 is not used" in stride_note(config)
    assert "split.block_tiles >= 2" in stride_note(config)
    assert stride_note(config.model_copy(update={"split": config.split.model_copy(update={"block_tiles": 2})})) is None


def test_tiepoints_are_placed_through_their_group_grid(tmp_path):
    point = {"x": 10.0, "y": 5.0, "dx": 0.5, "dy": -0.5, "reliability": 80.0, "inlier": True}
    record = {"group": "g1", "image": "C1", "points": [point]}
    outcome = _outcome(tmp_path, "g1", [], coregistration=[record])
    (row,) = tiepoint_rows([outcome, GroupOutcome("g0", "failed")], {"g1": UTM})
    assert (row["map_x"], row["map_y"]) == (1040.0, 1980.0)
    assert row["group_name"] == "g1" and row["image"] == "C1" and row["grid_crs"] == UTM


def test_pixel_space_groups_sharing_an_image_share_a_space():
    groups = [_group("a", "1.png", "2.png"), _group("b", "3.png", "4.png"), _group("c", "4.png", "1.png"),
              _group("d", "5.png", "6.png")]
    # c shares 1.png with a and 4.png with b: the three are one place; d is its own.
    assert spaces(groups, None) == {"a": "a", "b": "a", "c": "a", "d": "d"}
    assert set(spaces(groups, UTM).values()) == {""}
