"""Tests of pipeline.learn.checkpoint: atomic save, safe load with errors naming the file, sha256."""

from __future__ import annotations

import hashlib
import pathlib
import subprocess
import sys

import pytest
import torch
from torch import nn

from pipeline.errors import InputError
from pipeline.learn.checkpoint import REQUIRED, file_sha256, load_checkpoint, save_checkpoint


def make_payload(model: nn.Module) -> dict:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.ones(1, 3, 4, 4)).sum().backward()
    optimizer.step()
    return {
        "model": model.state_dict(),
        "model_name": "fc_ef",
        "model_options": {"in_channels": 3, "classes": 2},
        "optimizer": optimizer.state_dict(),
        "epoch": 7,
        "best_iou": 0.625,
        "normalization": {"A": {"mean": [1.0, 2.0, 3.0], "std": [0.5, 0.5, 0.5]}},
        "bands": {"A": ["red", "green", "blue"]},
        "inputs": ["A", "B"],
        "config": {"model": "fc_ef", "epochs": 10, "device": "auto"},
    }


class Unsafe:
    """Unpickling this touches a file: loading a checkpoint must never run it."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_save_then_load_gives_back_the_payload(tmp_path):
    torch.manual_seed(0)
    model = nn.Conv2d(3, 2, 3, padding=1)
    payload = make_payload(model)
    path = save_checkpoint(tmp_path / "runs" / "best.pt", payload)
    assert path == tmp_path / "runs" / "best.pt"
    loaded = load_checkpoint(path)
    assert set(loaded) == set(payload)
    for key in ("model_name", "model_options", "epoch", "best_iou", "normalization", "bands", "config"):
        assert loaded[key] == payload[key]
    for name, tensor in payload["model"].items():
        assert torch.equal(loaded["model"][name], tensor)
    assert loaded["optimizer"]["state"][0]["step"] == payload["optimizer"]["state"][0]["step"]
    restored = nn.Conv2d(3, 2, 3, padding=1)
    restored.load_state_dict(loaded["model"])
    x = torch.rand(1, 3, 8, 8)
    assert torch.equal(restored(x), model(x))


def test_save_leaves_only_the_checkpoint_and_replaces_an_older_one(tmp_path):
    model = nn.Linear(2, 1)
    save_checkpoint(tmp_path / "last.pt", {**make_payload(nn.Conv2d(3, 2, 1)), "epoch": 1})
    save_checkpoint(tmp_path / "last.pt", {**make_payload(nn.Conv2d(3, 2, 1)), "epoch": 2, "model": model.state_dict()})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 2


def test_loaded_tensors_are_on_the_map_location(tmp_path):
    path = save_checkpoint(tmp_path / "best.pt", make_payload(nn.Conv2d(3, 2, 1)))
    loaded = load_checkpoint(path, map_location=torch.device("cpu"))
    assert all(t.device.type == "cpu" for t in loaded["model"].values())


def test_required_keys():
    assert set(REQUIRED) == {
        "model", "model_name", "model_options", "normalization", "epoch", "config", "inputs", "bands",
    }


def test_a_missing_checkpoint_is_an_input_error_naming_the_file(tmp_path):
    path = tmp_path / "nowhere" / "best.pt"
    with pytest.raises(InputError, match="checkpoint not found") as info:
        load_checkpoint(path)
    assert info.value.path == path
    assert str(path) in str(info.value)


@pytest.mark.parametrize("content", [b"", b"not a torch file at all", b"PK\x03\x04garbage"])
def test_a_corrupt_checkpoint_is_an_input_error_naming_the_file(tmp_path, content):
    path = tmp_path / "best.pt"
    path.write_bytes(content)
    with pytest.raises(InputError, match="not a readable changeflow checkpoint") as info:
        load_checkpoint(path)
    assert info.value.path == path
    assert str(path) in str(info.value)


def test_a_truncated_checkpoint_is_an_input_error_naming_the_file(tmp_path):
    path = save_checkpoint(tmp_path / "best.pt", make_payload(nn.Conv2d(3, 2, 1)))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(InputError, match="not a readable changeflow checkpoint") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


def test_an_incomplete_checkpoint_names_the_missing_keys(tmp_path):
    payload = make_payload(nn.Conv2d(3, 2, 1))
    del payload["normalization"], payload["config"]
    path = save_checkpoint(tmp_path / "best.pt", payload)
    with pytest.raises(InputError, match=r"missing normalization, config") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("missing", [("inputs",), ("bands",), ("inputs", "bands")])
def test_a_checkpoint_resaved_without_what_detection_reads_names_the_file_and_entries(tmp_path, missing):
    payload = make_payload(nn.Conv2d(3, 2, 1))
    for key in missing:
        del payload[key]
    path = save_checkpoint(tmp_path / "best.pt", payload)  # e.g. re-saved by hand
    with pytest.raises(InputError) as info:
        load_checkpoint(path)
    assert str(info.value) == f"{path}: not a changeflow checkpoint (missing {', '.join(missing)})"
    assert info.value.path == path


def test_a_bare_state_dict_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(nn.Conv2d(3, 2, 1).state_dict(), path)
    with pytest.raises(InputError, match="not a changeflow checkpoint .missing model, model_name") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


def test_a_file_that_is_not_a_dict_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), path)
    with pytest.raises(InputError, match="missing " + ", ".join(REQUIRED)):
        load_checkpoint(path)


def test_loading_runs_no_code_from_the_file(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({**make_payload(nn.Conv2d(3, 2, 1)), "extra": Unsafe(marker)}, path)
    with pytest.raises(InputError, match="not a readable changeflow checkpoint") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize("size", [0, 10, (1 << 20) + 17])
def test_file_sha256_matches_hashlib(tmp_path, size):
    path = tmp_path / "blob.bin"
    content = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    path.write_bytes(content)
    assert file_sha256(path) == hashlib.sha256(content).hexdigest()


def test_file_sha256_of_a_saved_checkpoint_changes_with_its_content(tmp_path):
    first = file_sha256(save_checkpoint(tmp_path / "a.pt", {**make_payload(nn.Conv2d(3, 2, 1)), "epoch": 1}))
    assert first == hashlib.sha256((tmp_path / "a.pt").read_bytes()).hexdigest()
    second = file_sha256(save_checkpoint(tmp_path / "a.pt", {**make_payload(nn.Conv2d(3, 2, 1)), "epoch": 2}))
    assert first != second


def test_save_removes_the_partial_checkpoint_of_a_killed_run(tmp_path):
    """A training killed while saving ``best.pt`` leaves a hidden partial file; the next save removes it."""
    code = ("import os, pathlib; from pipeline.io.atomic import atomic_path; "
            f"atomic_path(pathlib.Path({str(tmp_path / 'best.pt')!r})).__enter__().write_bytes(b'half'); "
            "os.kill(os.getpid(), 9)")
    subprocess.run([sys.executable, "-c", code], cwd=pathlib.Path(__file__).parents[3])
    assert len(list(tmp_path.iterdir())) == 1  # the killed run's partial checkpoint
    save_checkpoint(tmp_path / "best.pt", make_payload(nn.Conv2d(3, 2, 1)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt"]
