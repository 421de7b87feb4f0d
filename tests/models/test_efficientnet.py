"""EfficientNet-B0 encoder: smp's 6 feature maps, parameter count, BN settings, drop-connect, local weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.efficientnet import EfficientNetB0Encoder, MBConvBlock, drop_connect
from tests.models.conftest import images


@torch.no_grad()
def test_six_feature_maps_strides_and_channels() -> None:
    enc = EfficientNetB0Encoder(3).eval()
    assert enc.out_channels == [3, 32, 24, 40, 112, 320]
    feats = enc(images(2, 3, 64, 64))
    assert [tuple(f.shape[1:]) for f in feats] == [
        (3, 64, 64), (32, 32, 32), (24, 16, 16), (40, 8, 8), (112, 4, 4), (320, 2, 2)
    ]
    # odd sizes: TF "same" padding gives ceil(H / 2) at every stride-2 step
    feats = enc(images(1, 3, 65, 70))
    assert [tuple(f.shape[-2:]) for f in feats] == [(65, 70), (33, 35), (17, 18), (9, 9), (5, 5), (3, 3)]


def test_parameter_count_and_block_layout() -> None:
    enc = EfficientNetB0Encoder(3)
    # EfficientNet-B0 has 5,288,548 parameters; minus the FC (1,281,000) and the unused head conv+BN (412,160).
    assert sum(p.numel() for p in enc.parameters()) == 5_288_548 - 1_281_000 - 412_160
    assert len(enc._blocks) == 16
    assert [b._depthwise_conv.kernel_size[0] for b in enc._blocks] == [3, 3, 3, 5, 5, 3, 3, 3, 5, 5, 5, 5, 5, 5, 5, 3]
    bns = [m for m in enc.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(m.momentum == 0.01 and m.eps == 1e-3 for m in bns)
    # SE squeezes to a quarter of the block *input* channels (efficientnet_pytorch), not of the expanded ones
    assert enc._blocks[1]._se_reduce.out_channels == 4  # input 16
    assert enc._blocks[15]._se_reduce.out_channels == 48  # input 192


def test_drop_connect_schedule_and_behaviour(monkeypatch: pytest.MonkeyPatch) -> None:
    enc = EfficientNetB0Encoder(3).train()
    rates: list[float] = []
    original = MBConvBlock.forward

    def spy(self: MBConvBlock, x: torch.Tensor, rate: float = 0.0) -> torch.Tensor:
        rates.append(rate)
        return original(self, x, rate)

    monkeypatch.setattr(MBConvBlock, "forward", spy)
    enc(images(2, 3, 32, 32))
    assert rates == pytest.approx([0.2 * i / 16 for i in range(16)])

    x = torch.ones(1000, 1, 1, 1)
    torch.manual_seed(0)
    kept = drop_connect(x, 0.2, training=True)
    assert set(kept.flatten().tolist()) <= {0.0, 1.25}
    assert (kept > 0).float().mean().item() == pytest.approx(0.8, abs=0.05)
    assert torch.equal(drop_connect(x, 0.2, training=False), x)


@torch.no_grad()
def test_eval_is_deterministic() -> None:
    enc = EfficientNetB0Encoder(3).eval()
    x = images(1, 3, 32, 32)
    assert torch.equal(enc(x)[-1], enc(x)[-1])


def test_local_weights_lukemelas_smp_and_torchvision_layouts(tmp_path: Path) -> None:
    src = EfficientNetB0Encoder(3)
    with torch.no_grad():
        for p in src.parameters():
            p.normal_()
    # smp layout: "encoder." prefix, plus the dead head and FC keys, which are ignored
    state = {f"encoder.{k}": v for k, v in src.state_dict().items()}
    state["encoder._conv_head.weight"] = torch.zeros(1280, 320, 1, 1)
    state["encoder._fc.weight"] = torch.zeros(1000, 1280)
    torch.save(state, tmp_path / "smp.pth")
    loaded = EfficientNetB0Encoder(3, weights=tmp_path / "smp.pth")
    assert torch.equal(loaded._blocks[7]._se_expand.weight, src._blocks[7]._se_expand.weight)

    names = src._torchvision_names()
    tv = {}
    for key, value in src.state_dict().items():
        prefix, leaf = key.rsplit(".", 1)
        tv[f"{names[prefix]}.{leaf}"] = value
    tv["features.8.0.weight"] = torch.zeros(1280, 320, 1, 1)
    tv["classifier.1.weight"] = torch.zeros(1000, 1280)
    torch.save(tv, tmp_path / "tv.pth")
    loaded = EfficientNetB0Encoder(3, weights=tmp_path / "tv.pth")
    for (k, a), b in zip(src.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k
    # torchvision's stage 1 (expand ratio 1) has no expand conv: block.0 is the depthwise conv
    assert names["_blocks.0._depthwise_conv"] == "features.1.0.block.0.0"
    assert names["_blocks.1._depthwise_conv"] == "features.2.0.block.1.0"

    four = EfficientNetB0Encoder(4, weights=tmp_path / "smp.pth")
    expected = src._conv_stem.weight.mean(dim=1, keepdim=True).repeat(1, 4, 1, 1) * 3 / 4
    assert torch.allclose(four._conv_stem.weight, expected)


def test_missing_or_wrong_weights_are_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        EfficientNetB0Encoder(3, weights=tmp_path / "absent.pth")
    torch.save({"conv1.weight": torch.zeros(64, 3, 3, 3)}, tmp_path / "resnet.pth")
    with pytest.raises(ValueError, match="missing"):
        EfficientNetB0Encoder(3, weights=tmp_path / "resnet.pth")
