"""STIKDNet (SEIFNet + self-distillation): shapes, eval vs training outputs, init modes, encoder weights, BN option,
parameter count, and one tiny epoch through the training loop."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import models
from models.stikdnet import ResNet18Encoder, STIKDNet
from tests.models.conftest import images


def unit(n: int, c: int, h: int = 32, w: int = 32) -> torch.Tensor:
    """Inputs as the training loop gives them: normalised to [0, 1]."""
    return torch.rand(n, c, h, w)


@pytest.mark.parametrize(("c1", "c2", "h", "w"), [(3, 3, 70, 90), (4, 2, 64, 64), (1, 1, 33, 47)])
@torch.no_grad()
def test_output_shape(c1: int, c2: int, h: int, w: int) -> None:
    model = models.build("stikdnet", t1_channels=c1, t2_channels=c2).eval()
    out = model(unit(2, c1, h, w), unit(2, c2, h, w))
    assert set(out) == {"logits"}
    assert out["logits"].shape == (2, 2, h, w)
    assert torch.isfinite(out["logits"]).all()
    assert model.encoder.separate_stem == (c1 != c2)


def test_eval_returns_only_logits_and_is_deterministic() -> None:
    model = STIKDNet().eval()
    x1, x2 = unit(1, 3), unit(1, 3)
    with torch.no_grad():
        a = model(x1, x2)
        b = model(x1, x2)
    assert set(a) == {"logits"}
    assert torch.equal(a["logits"], b["logits"])


def test_training_runs_a_perturbed_second_pass() -> None:
    model = STIKDNet(feature_distillation=True).train()
    x1, x2 = unit(2, 3, 40, 70), unit(2, 3, 40, 70)
    out = model(x1, x2)
    assert set(out) == {"logits", "student_logits", "features", "student_features"}
    assert out["student_logits"].shape == out["logits"].shape == (2, 2, 40, 70)
    assert (out["student_logits"] - out["logits"]).detach().abs().mean() > 1e-4
    for f, s, (c, stride) in zip(out["features"], out["student_features"], zip((64, 128, 256, 512), (4, 8, 16, 32))):
        assert f.shape == s.shape == (2, c, math.ceil(40 / stride), math.ceil(70 / stride))
    # Gradients of a loss on the student pass reach the shared weights.
    loss, _ = models.build_loss("stikd")(out, (torch.rand(2, 40, 70) > 0.8).long())
    loss.backward()
    assert model.encoder.conv1.weight.grad.abs().sum() > 0
    # Without self-distillation a training forward is plain SEIFNet.
    plain = STIKDNet(self_distillation=False).train()
    assert set(plain(x1, x2)) == {"logits"}


def test_training_forward_is_reproducible_under_the_global_seed() -> None:
    model = STIKDNet().train()
    x1, x2 = unit(2, 3), unit(2, 3)
    torch.manual_seed(7)
    a = model(x1, x2)["student_logits"]
    torch.manual_seed(7)
    b = model(x1, x2)["student_logits"]
    assert torch.allclose(a, b, atol=1e-5)


def test_reference_perturbation_option_reaches_the_model() -> None:
    model = STIKDNet(perturbation={"mode": "reference", "blur_kernel": 1})
    assert model.perturbation.mode == "reference" and model.perturbation.blur_kernel == 1
    with pytest.raises(ValueError, match="unknown perturbation option"):
        STIKDNet(perturbation={"strength": 1})


def _running_means(model: torch.nn.Module) -> list[torch.Tensor]:
    return [m.running_mean.clone() for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]


def test_student_bn_update_false_keeps_running_statistics_clean() -> None:
    x1, x2 = unit(2, 3), unit(2, 3)
    states = {}
    for name, options in {
        "clean_only": dict(self_distillation=False),
        "frozen": dict(student_bn_update=False),
        "updated": dict(),
    }.items():
        torch.manual_seed(0)
        model = STIKDNet(**options).train()
        with torch.no_grad():
            model(x1, x2)
        states[name] = _running_means(model)
    assert all(torch.allclose(a, b) for a, b in zip(states["clean_only"], states["frozen"]))
    assert not all(torch.allclose(a, b) for a, b in zip(states["clean_only"], states["updated"]))
    # Momentum is restored after the perturbed pass.
    model = STIKDNet(student_bn_update=False).train()
    model(x1, x2)
    assert all(m.momentum == 0.1 for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_init_modes() -> None:
    ref = STIKDNet(init="reference")
    conv = ref.stdem[3].conv3.weight
    assert conv.std().item() == pytest.approx(0.02, rel=0.05)
    assert ref.encoder.layer4[0].conv1.weight.std().item() == pytest.approx(0.02, rel=0.05)
    bn = ref.encoder.bn1.weight
    assert bn.mean().item() == pytest.approx(1.0, abs=0.01) and 0.01 < bn.std().item() < 0.03
    assert float(ref.stdem[0].conv3.bias.detach().abs().max()) == 0.0
    default = STIKDNet()
    assert torch.equal(default.encoder.bn1.weight, torch.ones(64))
    fan_out = 512 * 9
    assert default.encoder.layer4[0].conv2.weight.std().item() == pytest.approx(math.sqrt(2 / fan_out), rel=0.05)
    with pytest.raises(ValueError, match="init"):
        STIKDNet(init="imagenet")


def test_encoder_weights_from_a_local_torchvision_layout_file(tmp_path: Path) -> None:
    source = ResNet18Encoder(3, 3)
    state = {**source.state_dict(), "fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)}
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    model = STIKDNet(t1_channels=4, t2_channels=2, encoder_weights=path)
    assert torch.equal(model.encoder.layer3[1].conv2.weight, source.layer3[1].conv2.weight)
    assert torch.equal(model.encoder.bn1_t2.weight, source.bn1.weight)
    rgb = source.conv1.weight
    assert torch.allclose(model.encoder.conv1.weight, rgb.mean(1, keepdim=True).repeat(1, 4, 1, 1) * 0.75)
    assert torch.allclose(model.encoder.conv1_t2.weight, rgb.mean(1, keepdim=True).repeat(1, 2, 1, 1) * 1.5)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        STIKDNet(encoder_weights=tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="discard"):
        STIKDNet(init="reference", encoder_weights=path)
    torch.save({"conv1.weight": rgb}, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="not a ResNet-18 checkpoint"):
        STIKDNet(encoder_weights=tmp_path / "partial.pth")


def test_parameter_count_matches_the_spec_estimate() -> None:
    """Spec §2.4 hand estimate: ResNet-18 ≈ 11.2 M, ST-DEMs ≈ 13.3 M, SAMs ≈ 3.2 M, rest < 0.3 M → ≈ 28 M."""
    model = STIKDNet()
    total = models.count_parameters(model)
    assert 27.5e6 < total < 28.5e6
    assert models.count_parameters(model.encoder) == pytest.approx(11.18e6, rel=0.01)  # ResNet-18 minus fc
    assert models.count_parameters(model.stdem) == pytest.approx(13.3e6, rel=0.01)
    assert models.count_parameters(model.refine) == pytest.approx(3.2e6, rel=0.02)
    hetero = STIKDNet(t1_channels=4, t2_channels=2)
    assert models.count_parameters(hetero) - total == 64 * 7 * 7 * 3 + 128  # 4-band conv1 ≠ 3-band; + t2 stem


def test_wrong_band_count_or_size_is_a_clear_error() -> None:
    model = STIKDNet(t1_channels=4, t2_channels=2)
    with pytest.raises(ValueError, match=r"t2: expected a \[N, 2, H, W\]"):
        model(images(1, 4, 32, 32), images(1, 3, 32, 32))
    with pytest.raises(ValueError, match="t1 is"):
        model(images(1, 4, 32, 32), images(1, 2, 32, 64))


def test_one_epoch_through_the_training_loop(tmp_path: Path) -> None:
    from pipeline.config import TrainConfig
    from pipeline.learn.checkpoint import load_checkpoint
    from pipeline.learn.train import train
    from tests.conftest import write_folder_dataset

    folder = write_folder_dataset(tmp_path / "data", tiles=4, size=32)
    config = TrainConfig(
        data=folder, model="stikdnet", modalities={"A": "optical", "B": "optical"}, epochs=1, batch_size=2,
        lr=1e-3, workers=0, device="cpu", model_options={"perturbation": {"mode": "reference"}},
    )
    result = train(config, tmp_path / "run")
    assert result["model"] == "stikdnet" and 0.0 <= result["test"]["oa"] <= 1.0
    header = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train_teacher", "train_student", "train_kd", "train_kd_change", "train_total"} <= set(header)
    checkpoint = load_checkpoint(tmp_path / "run" / "best.pt")
    rebuilt = models.build("stikdnet", **checkpoint["model_options"])
    rebuilt.load_state_dict(checkpoint["model"])
    assert rebuilt.perturbation.mode == "reference"
