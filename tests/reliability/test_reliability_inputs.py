"""Case family 2: bad rasters and labels, all in one batch beside a good group.

Each bad group gets one clear line naming its bad file (in the command's output and in
``prepare_report.json``), and the batch goes on: the good group is prepared.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml
from affine import Affine

from tests.conftest import write_raster
from tests.reliability.conftest import copy_group
from tests.reliability.support import CLEAR_ERROR, CRASH, DATA_LOSS, HANDLED, changeflow, judge

pytestmark = pytest.mark.reliability


def _read(path: Path) -> tuple[np.ndarray, dict]:
    with rasterio.open(path) as src:
        return src.read(), src.profile


def _rewrite(path: Path, data: np.ndarray, **changes) -> None:
    _, profile = _read(path)
    profile = {**profile, **changes}
    write_raster(path, data.astype(profile["dtype"]), crs=profile["crs"], transform=profile["transform"],
                 nodata=profile["nodata"])


def _truncated(files):
    data = files["A"].read_bytes()
    files["A"].write_bytes(data[: len(data) * 2 // 5])
    return "A"


def _corrupt_header(files):
    data = bytearray(files["A"].read_bytes())
    data[:16] = b"NOT A TIFF AT AL"
    files["A"].write_bytes(bytes(data))
    return "A"


def _no_crs(files):
    data, _ = _read(files["A"])
    _rewrite(files["A"], data, crs=None)
    return "A"


def _all_black(files):
    data, _ = _read(files["A"])
    _rewrite(files["A"], np.zeros_like(data), nodata=None)
    return "A"


def _nan_only(files):
    data, _ = _read(files["A"])
    _rewrite(files["A"], np.full(data.shape, np.nan, np.float32), dtype="float32", nodata=None)
    return "A"


def _wrong_bands(files):
    data, _ = _read(files["A"])
    _rewrite(files["A"], data[:3])  # the scene list says 4 bands
    return "A"


def _no_overlap(files):
    data, profile = _read(files["C"])
    t = profile["transform"]
    _rewrite(files["C"], data, transform=Affine(t.a, t.b, t.c + 200_000, t.d, t.e, t.f))  # 200 km east
    return "C"


def _label_values(files):
    data, _ = _read(files["label"])
    changed = np.flatnonzero(data == 1)
    data.flat[changed[::3]] = 2
    data.flat[changed[1::3]] = 128  # 2/3 of the change pixels outside the 0/1/255 encoding
    _rewrite(files["label"], data)
    return "label"


def _label_rgb_differ(files):
    data, _ = _read(files["label"])
    bands = np.concatenate([data, data, data])
    bands[1][bands[1] == 1] = 0  # the green band disagrees
    _rewrite(files["label"], bands)
    return "label"


BAD = {
    "input-truncated": _truncated,
    "input-corrupt-header": _corrupt_header,
    "input-no-crs": _no_crs,
    "input-all-black": _all_black,
    "input-nan-only": _nan_only,
    "input-wrong-bands": _wrong_bands,
    "input-no-overlap": _no_overlap,
    "input-label-values": _label_values,
    "input-label-rgb-differ": _label_rgb_differ,
}


def _group_name(case: str) -> str:
    return case.removeprefix("input-").replace("-", "_")


@pytest.fixture(scope="module")
def batch(prefect_api, group_files, tmp_path_factory) -> dict:
    """One `changeflow prepare` over a good group and every bad group; what it printed and reported."""
    root = tmp_path_factory.mktemp("bad-inputs")
    scenes, bad_files = [], {}
    for case, spoil in {"input-good": None, **BAD}.items():
        name = _group_name(case)
        files = copy_group(group_files, root / "scenes", name)
        if spoil is not None:
            bad_files[case] = files[spoil(files)]
        for role in ("A", "B", "C", "label"):
            entry = {"path": str(files[role]), "role": role, "group": name}
            if role == "A":
                entry["bands"] = 4
            scenes.append(entry)
    config = root / "run.yaml"
    config.write_text(yaml.safe_dump({"scenes": scenes, "tiling": {"size": 64, "stride": 64},
                                      "split": {"block_tiles": 1}, "coregistration": {"enabled": False}}))
    out = root / "out"
    run = changeflow("prepare", "--config", str(config), "--out", str(out), prefect_api=prefect_api)
    report_file = out / "prepare_report.json"
    report = json.loads(report_file.read_text()) if report_file.exists() else None
    return {"run": run, "report": report, "bad_files": bad_files, "out": out}


def _report_entries(report: dict | None, needle: str) -> list[str]:
    """Every problem in the report (failed groups, refused and ungrouped scenes, refused images) naming ``needle``."""
    if report is None:
        return []
    sections = ("groups_failed", "scenes_refused", "scenes_not_grouped", "images_refused")
    return [f"{key}: {problem}" for section in sections for key, problem in report.get(section, {}).items()
            if needle in key or needle in str(problem)]


def _user_lines(output: str) -> list[str]:
    """The command's own lines (warnings, errors, notes), not Prefect's log lines."""
    return [line for line in output.splitlines() if re.match(r"(warning|error|note): ", line)]


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_raster_or_label_is_one_line_naming_the_file(batch, verdict, case):
    run, report, bad = batch["run"], batch["report"], batch["bad_files"][case]
    # A scene that overlaps nothing is named by its id (the file's stem), and its group goes on without it.
    needle = bad.stem if case == "input-no-overlap" else bad.name
    named = [line for line in _user_lines(run.output) if needle in line]
    group_prepared = report is not None and report["groups"].get(_group_name(case)) == "prepared"
    taken = group_prepared and (case != "input-no-overlap" or bad.stem not in report["scenes_not_grouped"])
    observed = judge(run, refused=False)
    if observed == HANDLED:  # the batch went on: was this file's problem said, on one line?
        observed = DATA_LOSS if taken else (CLEAR_ERROR if len(named) == 1 else CRASH)
    verdict(case, observed)
    assert run.returncode == 0, run.output
    assert "Traceback" not in run.output
    assert len(named) == 1, _user_lines(run.output)  # one line in the output, naming the file
    assert named[0].startswith("warning: ")
    assert not taken
    assert _report_entries(report, needle)  # and the report says it too


def test_the_batch_goes_on_with_the_good_group(batch, verdict):
    run, report, out = batch["run"], batch["report"], batch["out"]
    good_tiles = sorted(out.glob("tiles/*/A/good_*.tif"))
    verdict("input-good-group-goes-on", judge(run, refused=False) if good_tiles else CRASH)
    assert run.returncode == 0, run.output
    assert report["groups"]["good"] == "prepared"
    assert good_tiles
    failed = {_group_name(case) for case in BAD} - {"no_overlap"}
    assert not [tile for tile in out.glob("tiles/*/*/*.tif") if tile.name.split("_x")[0] in failed]
    for tile in good_tiles[:2]:
        with rasterio.open(tile) as src:
            assert src.crs is not None and src.shape == (64, 64)
