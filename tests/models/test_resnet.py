"""Deep-stem ResNet-18: feature pyramid, parameter count, local pretrained weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.resnet import DeepStemResNet18
from tests.models.conftest import images


@torch.no_grad()
def test_pyramid_strides_and_channels() -> None:
    feats = DeepStemResNet18(4).eval()(images(1, 4, 64, 96))
    assert [tuple(f.shape[1:]) for f in feats] == [(64, 16, 24), (128, 8, 12), (256, 4, 6), (512, 2, 3)]
    half = DeepStemResNet18(1, width=0.5)
    assert half.out_channels == [32, 64, 128, 256]


def test_parameter_counts_match_spec() -> None:
    # spec §3.2 / §3.3 [measured]: 11.325 M (full), 2.834 M (half width), 3 input bands.
    assert sum(p.numel() for p in DeepStemResNet18(3).parameters()) == pytest.approx(11.325e6, rel=1e-3)
    assert sum(p.numel() for p in DeepStemResNet18(3, 0.5).parameters()) == pytest.approx(2.834e6, rel=1e-3)


def test_local_weights_load_and_adapt_band_count(tmp_path: Path) -> None:
    src = DeepStemResNet18(3)
    state = {f"module.{k}": v for k, v in src.state_dict().items()}
    state["fc.weight"] = torch.zeros(10, 512)  # classifier keys of an ImageNet checkpoint are ignored
    path = tmp_path / "resnet18-imagenet.pth"
    torch.save(state, path)

    same = DeepStemResNet18(3, weights=path)
    assert torch.equal(same.layer4[1].conv2.weight, src.layer4[1].conv2.weight)

    four = DeepStemResNet18(4, weights=path)
    expected = src.conv1.weight.mean(dim=1, keepdim=True).repeat(1, 4, 1, 1) * 3 / 4
    assert torch.allclose(four.conv1.weight, expected)
    assert torch.equal(four.conv2.weight, src.conv2.weight)


def test_missing_or_wrong_weights_are_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        DeepStemResNet18(3, weights=tmp_path / "absent.pth")
    path = tmp_path / "other.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 3, 3)}, path)
    with pytest.raises(ValueError, match="missing"):
        DeepStemResNet18(3, weights=path)
    half = tmp_path / "half.pth"
    torch.save(DeepStemResNet18(3, 0.5).state_dict(), half)
    with pytest.raises(ValueError, match="shape"):
        DeepStemResNet18(3, weights=half)
