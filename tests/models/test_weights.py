"""Tests of models.weights: read_state_dict unwraps checkpoints and DataParallel prefixes."""

from __future__ import annotations

import pathlib

import pytest
import torch
from torch import nn

from models.weights import read_state_dict


def small_model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))


def assert_same_state(actual: dict, expected: dict) -> None:
    assert list(actual) == list(expected)
    for name, tensor in expected.items():
        assert torch.equal(actual[name], tensor), name


def test_a_raw_state_dict_is_read_as_is(tmp_path):
    state = small_model().state_dict()
    torch.save(state, tmp_path / "w.pt")
    assert_same_state(read_state_dict(tmp_path / "w.pt"), state)


def test_a_changeflow_checkpoint_is_unwrapped_to_its_model(tmp_path):
    state = small_model().state_dict()
    torch.save({"model": state, "model_name": "fc_ef", "epoch": 3, "config": {"epochs": 4}}, tmp_path / "best.pt")
    assert_same_state(read_state_dict(str(tmp_path / "best.pt")), state)


def test_a_lightning_style_file_is_unwrapped_to_its_state_dict(tmp_path):
    state = small_model().state_dict()
    torch.save({"state_dict": state, "epoch": 9, "global_step": 100}, tmp_path / "last.ckpt")
    assert_same_state(read_state_dict(tmp_path / "last.ckpt"), state)


def test_the_data_parallel_prefix_is_stripped(tmp_path):
    model = small_model()
    torch.save(nn.DataParallel(model).state_dict(), tmp_path / "ddp.pt")
    state = read_state_dict(tmp_path / "ddp.pt")
    assert_same_state(state, model.state_dict())
    small_model().load_state_dict(state)  # strict: every key matches


def test_a_wrapped_and_prefixed_file_is_unwrapped_and_stripped(tmp_path):
    weight = torch.arange(6.0).reshape(2, 3)
    torch.save({"state_dict": {"module.head.weight": weight}}, tmp_path / "w.pt")
    state = read_state_dict(tmp_path / "w.pt")
    assert list(state) == ["head.weight"]
    assert torch.equal(state["head.weight"], weight)


def test_only_a_leading_module_prefix_is_stripped(tmp_path):
    weight = torch.ones(2)
    torch.save({"module.encoder.module.bias": weight, "encoder.module.weight": weight}, tmp_path / "w.pt")
    assert list(read_state_dict(tmp_path / "w.pt")) == ["encoder.module.bias", "encoder.module.weight"]


def test_a_tensor_named_model_is_not_taken_for_a_wrapper(tmp_path):
    state = {"model": torch.ones(3), "head.bias": torch.zeros(2)}
    torch.save(state, tmp_path / "w.pt")
    assert_same_state(read_state_dict(tmp_path / "w.pt"), state)


def test_a_missing_file_is_named_with_its_label(tmp_path):
    path = tmp_path / "resnet18.pth"
    with pytest.raises(FileNotFoundError, match="encoder weights file .*resnet18.pth does not exist") as info:
        read_state_dict(path, what="encoder weights")
    assert str(path) in str(info.value)


def test_a_folder_is_not_a_weights_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"^weights file {tmp_path} does not exist"):
        read_state_dict(tmp_path)


@pytest.mark.parametrize(("content", "kind"), [(torch.zeros(3), "Tensor"), ([torch.zeros(3)], "list")])
def test_a_file_without_a_state_dict_is_a_value_error(tmp_path, content, kind):
    path = tmp_path / "w.pt"
    torch.save(content, path)
    with pytest.raises(ValueError, match=f"expected a state dict, got {kind}") as info:
        read_state_dict(path)
    assert str(path) in str(info.value)


class Unsafe:
    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_reading_runs_no_code_from_the_file(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"weight": torch.ones(1), "extra": Unsafe(marker)}, tmp_path / "evil.pt")
    with pytest.raises(Exception, match="[Ww]eights only load failed"):
        read_state_dict(tmp_path / "evil.pt")
    assert not marker.exists()
