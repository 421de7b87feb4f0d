"""Case families 5 and 6: kill -9 at a random point, then a rerun; concurrent ingest passes plus a killed one.

Each command runs as `changeflow` in a subprocess; once it is at work (a file it writes appears) it is sent
SIGKILL after a seeded random delay. A rerun must give what an uninterrupted run gives: the same tiles
(bytes), rasters (pixels and georeferencing) and weights; ingest must lose, repeat and strand no scene.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from pipeline.synthetic.scenes import write_synthetic_group
from tests.conftest import write_folder_dataset
from tests.flows.test_ingest_flow import _checkpoint
from tests.reliability.conftest import copy_group
from tests.reliability.support import (
    CRASH,
    DATA_LOSS,
    HANDLED,
    changeflow,
    judge,
    kill_at_random_point,
    partial_files,
    same_rasters,
    start,
    tree,
)

pytestmark = pytest.mark.reliability
SEED = 13


def _settled(rerun, differences: list[str], killed) -> str:
    """The verdict of a kill and rerun: data loss when results differ, crash when the rerun failed."""
    if differences:
        return DATA_LOSS
    return judge(rerun, refused=False) if killed.killed else CRASH


@pytest.fixture(scope="module")
def scene_list(group_files, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("kill-scenes")
    files = copy_group(group_files, folder, "g1")
    scenes = [{"path": str(files[role]), "role": role, "group": "g1"} for role in ("A", "B", "C", "label")]
    config = folder / "run.yaml"
    config.write_text(yaml.safe_dump({"scenes": scenes, "tiling": {"size": 64, "stride": 32},
                                      "split": {"block_tiles": 1}, "coregistration": {"enabled": False}}))
    return config


@pytest.fixture(scope="module")
def reference(prefect_api, scene_list, tmp_path_factory) -> Path:
    """An uninterrupted prepare, then detection with a random checkpoint."""
    folder = tmp_path_factory.mktemp("reference")
    run = changeflow("prepare", "--config", str(scene_list), "--out", str(folder / "prepared"), prefect_api=prefect_api)
    assert run.returncode == 0, run.output
    _checkpoint(folder / "model.pt")
    detect = changeflow("detect", "--config", str(_detect_config(folder, folder / "prepared")), "--out",
                        str(folder / "detections"), prefect_api=prefect_api)
    assert detect.returncode == 0, detect.output
    return folder


def _detect_config(folder: Path, prepared: Path) -> Path:
    config = folder / "detect.yaml"
    config.write_text(yaml.safe_dump({"prepared": str(prepared), "checkpoint": str(folder / "model.pt"), "device": "cpu", "window": 64, "block_size": 64, "batch_size": 2}))
    return config


def test_prepare_killed_at_a_random_point_then_rerun_gives_the_same_tiles(prefect_api, scene_list, reference,
                                                                          tmp_path, verdict):
    out = tmp_path / "prepared"
    args = ["prepare", "--config", str(scene_list), "--out", str(out)]
    killed = kill_at_random_point(args, seed=SEED, earliest=0.0, latest=2.0, prefect_api=prefect_api,
                                  ready=out / "groups")
    rerun = changeflow(*args, prefect_api=prefect_api)

    tiles, expected = tree((out / "tiles").resolve()), tree((reference / "prepared" / "tiles").resolve())
    differences = sorted(set(tiles.items()) ^ set(expected.items()))
    verdict("kill-prepare", _settled(rerun, differences, killed))
    assert killed.killed, "prepare ended before the kill: nothing was tested"
    assert rerun.returncode == 0, rerun.output
    assert len(tiles) > 10 and differences == []  # every tile, byte for byte
    assert same_rasters(out / "groups", reference / "prepared" / "groups", "*/grid/*.tif") == []
    assert partial_files(out) == []


def test_detect_killed_at_a_random_point_then_rerun_gives_the_same_rasters(prefect_api, reference, tmp_path,
                                                                           verdict):
    out = tmp_path / "detections"
    args = ["detect", "--config", str(_detect_config(reference, reference / "prepared")), "--out", str(out)]
    killed = kill_at_random_point(args, seed=SEED, earliest=0.0, latest=1.5, prefect_api=prefect_api,
                                  ready=out / "g1")
    rerun = changeflow(*args, prefect_api=prefect_api)

    differences = same_rasters(out, reference / "detections", "g1/*.tif")
    verdict("kill-detect", _settled(rerun, differences, killed))
    assert killed.killed, "detect ended before the kill: nothing was tested"
    assert rerun.returncode == 0, rerun.output
    assert sorted(p.name for p in (out / "g1").glob("*.tif")) == ["change_class.tif", "change_probability.tif"]
    assert differences == []  # pixels, CRS, transform and nodata of both COGs
    assert partial_files(out) == []


def test_train_killed_at_a_random_point_then_resumed_gives_the_same_weights(prefect_api, tmp_path, verdict):
    data = write_folder_dataset(tmp_path / "data", tiles=6, size=32)
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({"data": str(data), "model": "fc_siam_diff", "epochs": 6, "batch_size": 2,
                                      "workers": 0, "device": "cpu", "seed": 0,
                                      "modalities": {"A": "optical", "B": "optical"}}))
    full, part = tmp_path / "full", tmp_path / "part"
    reference = changeflow("train", "--config", str(config), "--out", str(full), prefect_api=prefect_api)
    assert reference.returncode == 0, reference.output
    killed = kill_at_random_point(["train", "--config", str(config), "--out", str(part)], seed=SEED, earliest=0.0,
                                  latest=1.0, prefect_api=prefect_api, ready=part / "last.pt")
    # README Training: `--resume` continues exactly from OUT/last.pt (written every epoch).
    resumed_from = torch.load(part / "last.pt", weights_only=True)["epoch"] if (part / "last.pt").exists() else None
    resume = ["--resume"] if resumed_from is not None else []
    rerun = changeflow("train", "--config", str(config), "--out", str(part), *resume, prefect_api=prefect_api)

    a = torch.load(full / "last.pt", weights_only=True)
    b = torch.load(part / "last.pt", weights_only=True) if (part / "last.pt").exists() else {"model": {}}
    differences = [key for key, value in a["model"].items()
                   if key not in b["model"] or not torch.allclose(value.float(), b["model"][key].float(), atol=1e-5)]
    verdict("kill-train", _settled(rerun, differences, killed))
    assert killed.killed and resumed_from is not None and resumed_from < 5, "the kill missed the epochs"
    assert rerun.returncode == 0, rerun.output
    assert b.get("epoch") == a["epoch"] == 5
    assert differences == []  # the final weights of the uninterrupted run
    # The checkpoint being saved when the kill came may stay as a hidden '.best.PID.partial.pt' beside
    # the run (atomic_path's temporary name): never under a final name.
    assert [name for name in partial_files(part) if not name.startswith((".best.", ".last."))] == []


# --------------------------------------------------------------------------- ingest

LETTERS = {"A": "A", "B": "B", "C": "D"}


def _ingest_config(folder: Path, checkpoint: Path) -> Path:
    (folder / "inbox").mkdir(parents=True)
    config = folder / "ingest.yaml"
    config.write_text(yaml.safe_dump({
        "inbox": str(folder / "inbox"), "workspace": str(folder / "workspace"), "checkpoint": str(checkpoint),
        "settle_seconds": 0, "prepare": {"tiling": {"size": 64, "stride": 64}, "coregistration": {"enabled": False}},
        "detect": {"window": 64, "block_size": 128, "device": "cpu"},
    }))
    return config


def _drop(group_files: dict[str, Path], inbox: Path, bases: list[str]) -> list[str]:
    names = []
    for base in bases:
        for role, letter in LETTERS.items():
            names.append(Path(shutil.copy(group_files[role], inbox / f"{base}_{letter}.tif")).name)
    return sorted(names)


def _ingest_state(folder: Path) -> dict:
    """Where every scene is: inbox, claims, archive (how many times), rejected; the registry's names."""
    workspace = folder / "workspace"
    registry = json.loads((workspace / "ingested.json").read_text()) if (workspace / "ingested.json").exists() else {}
    archived = [p.name for p in (workspace / "archive").rglob("*.tif") if "duplicates" not in p.parts]
    return {
        "inbox": sorted(p.name for p in (folder / "inbox").iterdir()),
        "claims": sorted(p.name for p in (workspace / "claims").rglob("*.tif")) if (workspace / "claims").exists() else [],
        "archived": sorted(archived),
        "rejected": sorted(p.name for p in (workspace / "rejected").glob("*.tif")) if (workspace / "rejected").exists()
        else [],
        "registry": sorted(entry["name"] for entry in registry.values()),
    }


@pytest.fixture(scope="module")
def ingest_reference(prefect_api, group_files, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ingest-reference")
    config = _ingest_config(folder, _checkpoint(folder / "model.pt"))
    _drop(group_files, folder / "inbox", ["g1"])
    run = changeflow("ingest", "--config", str(config), prefect_api=prefect_api)
    assert run.returncode == 0, run.output
    return folder


def test_ingest_killed_at_a_random_point_then_rerun_gives_the_same_rasters(prefect_api, group_files,
                                                                           ingest_reference, tmp_path, verdict):
    config = _ingest_config(tmp_path, _checkpoint(tmp_path / "model.pt"))
    names = _drop(group_files, tmp_path / "inbox", ["g1"])
    killed = kill_at_random_point(["ingest", "--config", str(config)], seed=SEED, earliest=0.0, latest=2.0,
                                  prefect_api=prefect_api, ready=tmp_path / "workspace" / "claims")
    rerun = changeflow("ingest", "--config", str(config), prefect_api=prefect_api)

    state = _ingest_state(tmp_path)
    differences = same_rasters(tmp_path / "workspace" / "detections", ingest_reference / "workspace" / "detections",
                               "g1/*.tif")
    lost = state["archived"] != names or differences
    verdict("kill-ingest", _settled(rerun, differences, killed) if not lost else DATA_LOSS)
    assert killed.killed, "the pass ended before the kill: nothing was tested"
    assert rerun.returncode == 0, rerun.output
    assert state == {"inbox": [], "claims": [], "archived": names, "rejected": [], "registry": names}
    assert sorted(p.name for p in (tmp_path / "workspace" / "detections" / "g1").glob("*.tif")) == [
        "change_class.tif", "change_probability.tif"]
    assert differences == []


def test_two_concurrent_ingest_passes_and_a_killed_one_lose_repeat_and_strand_no_scene(prefect_api, group_files,
                                                                                     tmp_path, verdict):
    config = _ingest_config(tmp_path, _checkpoint(tmp_path / "model.pt"))
    other = write_synthetic_group(tmp_path / "other", name="o", size=256, seed=2).paths  # other content
    names = sorted(_drop(group_files, tmp_path / "inbox", ["g1"]) + _drop(other, tmp_path / "inbox", ["g2"]))
    args = ["ingest", "--config", str(config)]
    passes = [start(*args, prefect_api=prefect_api) for _ in range(2)]
    kill_at_random_point(args, seed=SEED, earliest=0.0, latest=2.0, prefect_api=prefect_api,
                         ready=tmp_path / "workspace" / "claims")
    outputs = []
    for process in passes:
        try:
            outputs.append(process.communicate(timeout=300)[0])
        except subprocess.TimeoutExpired:
            process.kill()
            outputs.append(process.communicate()[0] + "\n(timed out)")
    final = changeflow(*args, prefect_api=prefect_api)  # returns the killed pass's claims, if any

    state = _ingest_state(tmp_path)
    lost = state["archived"] != names or state["registry"] != names or state["claims"] or state["inbox"]
    crashed = any(p.returncode not in (0, 1) or "Traceback" in out for p, out in zip(passes, outputs))
    verdict("ingest-concurrent-and-killed", DATA_LOSS if lost else CRASH if crashed or final.returncode
            else HANDLED)
    assert state == {"inbox": [], "claims": [], "archived": names, "rejected": [], "registry": names}
    assert final.returncode == 0, final.output
    for group in ("g1", "g2"):
        assert (tmp_path / "workspace" / "detections" / group / "change_class.tif").exists()
    assert [p.returncode for p in passes] == [0, 0], [line for out in outputs for line in out.splitlines()
                                                      if line.startswith("error")]
