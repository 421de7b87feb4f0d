"""ClearSCD network: registry, output contract, odd sizes, CVAPS variants, change logits, weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import models
from models.clearscd import ClearSCD
from tests.models.conftest import images

TRAIN_KEYS = {
    "features_t1", "features_t2", "projections_t1", "projections_t2", "semantic_low_t1", "semantic_low_t2",
    "change_low", "memory_queue", "memory_count",
}


def test_registry_and_contract_attributes() -> None:
    model = models.build("ClearSCD", semantic_classes=5)
    assert isinstance(model, ClearSCD)
    assert model.default_loss == "clearscd"
    assert model.semantic_classes == 5 and ClearSCD.semantic_classes == 9
    assert model.in_channels == (3, 3) and not model.has_teacher
    assert "clearscd" in models.available()
    with pytest.raises(ValueError, match="cvaps"):
        ClearSCD(cvaps="posterior")
    with pytest.raises(ValueError, match="unknown option"):
        models.build("clearscd", pretrained=True)


def test_parameter_counts_match_spec_estimate() -> None:
    model = ClearSCD()
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    # spec §2.7: encoder ≈ 4.0 M with smp's dead head conv (0.41 M; not built here), FPN ≈ 1.75 M, heads < 0.03 M
    assert count(model.encoder) == pytest.approx(4.0e6 - 0.41e6, rel=0.01)
    assert count(model.decoder) == pytest.approx(1.75e6, rel=0.005)
    assert count(model.semantic_head) + count(model.change_head) + count(model.projection) < 0.03e6


@pytest.mark.parametrize("backbone", ["efficientnet_b0", "resnet18"])
@pytest.mark.parametrize("size", [(64, 64), (45, 70)])
def test_output_shapes_train_and_eval(backbone: str, size: tuple[int, int]) -> None:
    h, w = size
    model = ClearSCD(semantic_classes=4, backbone=backbone, queue_len=16, proj_dim=32)
    out = model.train()(images(2, 3, h, w), images(2, 3, h, w))
    assert set(out) == {"logits", "semantic_t1", "semantic_t2"} | TRAIN_KEYS
    assert out["logits"].shape == (2, 2, h, w)
    assert out["semantic_t1"].shape == out["semantic_t2"].shape == (2, 4, h, w)
    low = out["features_t1"].shape[-2:]
    assert out["features_t1"].shape[1] == 128 and out["projections_t2"].shape[:2] == (2, 32)
    assert out["semantic_low_t1"].shape == (2, 4, *low) and out["change_low"].shape == (2, 1, *low)
    assert low == ((h + 3) // 4, (w + 3) // 4)
    assert out["memory_queue"].shape == (2, 4, 32, 16) and out["memory_count"].shape == (2, 4)
    with torch.no_grad():
        ev = model.eval()(images(1, 3, h, w), images(1, 3, h, w))
    assert set(ev) == {"logits", "semantic_t1", "semantic_t2"}  # no training extras at inference
    assert ev["logits"].shape == (1, 2, h, w)


def test_change_logits_softmax_equals_sigmoid_of_bcd_logit() -> None:
    model = ClearSCD(semantic_classes=3, queue_len=8)
    out = model.train()(images(2, 3), images(2, 3))
    logits = out["logits"]
    assert torch.equal(logits[:, 0], torch.zeros_like(logits[:, 0]))
    z = torch.nn.functional.interpolate(out["change_low"], size=(64, 64), mode="bilinear", align_corners=True)[:, 0]
    assert torch.allclose(logits[:, 1], z)
    assert torch.allclose(logits.softmax(1)[:, 1], torch.sigmoid(z), atol=1e-6)


@pytest.mark.parametrize("cvaps", ["probability", "logit"])
def test_cvaps_input_is_the_class_map_difference(cvaps: str) -> None:
    model = ClearSCD(semantic_classes=3, cvaps=cvaps, queue_len=8).train()
    seen: list[torch.Tensor] = []
    model.change_head.register_forward_hook(lambda mod, inp, out: seen.append(inp[0]))
    out = model(images(2, 3), images(2, 3))
    s1, s2 = out["semantic_low_t1"], out["semantic_low_t2"]
    expected = (s1.softmax(1) - s2.softmax(1)).abs() if cvaps == "probability" else (s1 - s2).abs()
    assert torch.allclose(seen[0], expected, atol=1e-6)
    if cvaps == "probability":
        assert seen[0].max() <= 1.0


def test_concat_fusion_and_gradients_reach_the_encoder() -> None:
    model = ClearSCD(semantic_classes=3, fusion="concat", queue_len=8).train()
    assert model.change_head.net[0].in_channels == 6
    out = model(images(2, 3), images(2, 3))
    out["logits"][:, 1].mean().backward()  # the change loss flows back through S_A, S_B into the whole net
    assert model.encoder._conv_stem.weight.grad is not None
    assert model.encoder._conv_stem.weight.grad.abs().sum() > 0


@torch.no_grad()
def test_eval_outputs_do_not_depend_on_the_other_samples() -> None:
    model = ClearSCD(semantic_classes=3, queue_len=8).eval()
    a, b, c = images(1, 3), images(1, 3), images(1, 3)
    one = model(a, b)
    two = model(a, c)
    assert torch.allclose(one["semantic_t1"], two["semantic_t1"], atol=1e-5)
    assert not torch.allclose(one["logits"], two["logits"])


def test_pseudo_siamese_for_different_band_counts() -> None:
    model = ClearSCD(t1_channels=4, t2_channels=2, semantic_classes=3, queue_len=8)
    assert model.encoder_t2 is not None and model.in_channels == (4, 2)
    out = model.eval()(images(1, 4), images(1, 2))
    assert out["logits"].shape == (1, 2, 64, 64)
    with pytest.raises(ValueError, match="expected a \\[N, 4"):
        model(images(1, 3), images(1, 2))


def test_memory_bank_buffers_and_weights(tmp_path: Path) -> None:
    model = ClearSCD(semantic_classes=3, queue_len=8, proj_dim=16)
    norms = model.memory_queue.norm(dim=2)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
    assert model.memory_count.sum() == 0
    assert "memory_queue" in model.state_dict()
    with pytest.raises(FileNotFoundError):
        ClearSCD(encoder_weights=tmp_path / "absent.pth")
    path = tmp_path / "model.pt"
    torch.save(model.state_dict(), path)
    again = models.build("clearscd", weights=path, semantic_classes=3, queue_len=8, proj_dim=16)
    assert torch.equal(again.memory_queue, model.memory_queue)
    encoder = tmp_path / "encoder.pth"
    torch.save(model.encoder.state_dict(), encoder)
    loaded = ClearSCD(semantic_classes=3, encoder_weights=encoder, queue_len=8)
    assert torch.equal(loaded.encoder._blocks[3]._project_conv.weight, model.encoder._blocks[3]._project_conv.weight)
