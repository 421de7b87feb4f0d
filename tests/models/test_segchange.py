"""SegChange-R1: shapes, the text path (text matters, the mask matters, no-text = same weights), registry."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import models
from models.segchange import SegChangeR1
from models.segchange_blocks import LinearAttention
from tests.models.conftest import images

SMALL = dict(width=0.25, dim=32, decoder_stride=4, text_dim=16)


def small(**kw: object) -> SegChangeR1:
    cfg = {**SMALL, **kw}
    return models.build("segchange_r1", **cfg).eval()  # type: ignore[return-value]


@pytest.mark.parametrize(
    ("c1", "c2", "h", "w", "stride"), [(3, 3, 64, 64, 4), (4, 2, 61, 75, 4), (1, 1, 33, 40, 1), (3, 4, 64, 64, 2)]
)
@torch.no_grad()
def test_output_shape_any_size_and_bands(c1: int, c2: int, h: int, w: int, stride: int) -> None:
    model = small(t1_channels=c1, t2_channels=c2, decoder_stride=stride)
    text = torch.randn(2, 5, 16)
    for t in (text, None):
        out = model(images(2, c1, h, w), images(2, c2, h, w), text=t)
        assert out["logits"].shape == (2, 2, h, w)
        assert torch.isfinite(out["logits"]).all()
    assert model.in_channels == (c1, c2)
    assert (model.stem_t2 is None) == (c1 == c2)


@torch.no_grad()
def test_text_changes_the_output_and_none_works() -> None:
    model = small()
    x1, x2 = images(2, 3), images(2, 3)
    a = model(x1, x2, text=torch.randn(2, 6, 16))["logits"]
    b = model(x1, x2, text=torch.randn(2, 6, 16))["logits"]
    none = model(x1, x2)["logits"]
    assert not torch.allclose(a, b, atol=1e-5)
    assert not torch.allclose(a, none, atol=1e-5)
    assert none.shape == a.shape


@torch.no_grad()
def test_masked_padding_tokens_do_not_matter() -> None:
    """Padding tokens holding garbage (huge values, NaN) give exactly the output of the short prompt."""
    model = small()
    x1, x2 = images(2, 3), images(2, 3)
    short = torch.randn(2, 3, 16)
    ref = model(x1, x2, text=short, text_mask=torch.ones(2, 3, dtype=torch.bool))["logits"]
    padded = torch.cat([short, 1e4 * torch.randn(2, 5, 16)], dim=1)
    padded[1, 5] = float("nan")
    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[:, :3] = True
    out = model(x1, x2, text=padded, text_mask=mask)["logits"]
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    # ... and 0/1 integer masks work the same way
    out_int = model(x1, x2, text=padded, text_mask=mask.long())["logits"]
    torch.testing.assert_close(out_int, ref, atol=1e-5, rtol=1e-5)
    # the mask is what hides them: unmasking the (finite) padding changes the output
    padded[1, 5] = 0.0
    unmasked = model(x1, x2, text=padded, text_mask=torch.ones(2, 8, dtype=torch.bool))["logits"]
    assert not torch.allclose(unmasked, ref, atol=1e-3)


@torch.no_grad()
def test_mask_weights_tokens_equally_not_by_padding_length() -> None:
    """The original averaged over the zero-padded length, so the same prompt padded to 8 or 16 tokens gave
    different embeddings; with the mask it gives the same output."""
    model = small()
    x1, x2 = images(2, 3), images(2, 3)
    tokens = torch.randn(2, 4, 16)
    outs = []
    for length in (8, 16):
        text = torch.zeros(2, length, 16)
        text[:, :4] = tokens
        mask = torch.zeros(2, length, dtype=torch.bool)
        mask[:, :4] = True
        outs.append(model(x1, x2, text=text, text_mask=mask)["logits"])
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_empty_prompt_is_the_visual_path_per_sample() -> None:
    model = small()
    x1, x2 = images(2, 3), images(2, 3)
    mask = torch.tensor([[True, True, False], [False, False, False]])
    out = model(x1, x2, text=torch.randn(2, 3, 16), text_mask=mask)["logits"]
    none = model(x1, x2)["logits"]
    torch.testing.assert_close(out[1], none[1], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out[0], none[0], atol=1e-5)


@torch.no_grad()
def test_without_text_is_the_same_model_minus_the_projector() -> None:
    with_text = small()
    without = small(use_text=False)
    missing = set(with_text.state_dict()) - set(without.state_dict())
    assert missing and all(k.startswith("text_projector.") for k in missing)
    assert set(without.state_dict()) <= set(with_text.state_dict())
    without.load_state_dict({k: v for k, v in with_text.state_dict().items() if k not in missing})
    x1, x2 = images(2, 3), images(2, 3)
    ref = with_text(x1, x2)["logits"]
    torch.testing.assert_close(without(x1, x2)["logits"], ref)
    # use_text=False ignores a prompt altogether
    torch.testing.assert_close(without(x1, x2, text=torch.randn(2, 4, 16))["logits"], ref)


def test_training_step_reaches_the_text_projector_and_encoder() -> None:
    model = small().train()
    out = model(images(2, 3, 32, 32), images(2, 3, 32, 32), text=torch.randn(2, 4, 16), text_mask=torch.ones(2, 4))
    loss_fn = models.build_loss(model.default_loss)
    target = torch.zeros(2, 32, 32, dtype=torch.long)
    target[:, 5:15, 5:15] = 1
    total, parts = loss_fn(out, target, epoch=0.0)
    total.backward()
    assert set(parts) >= {"loss", "bce", "dice", "focal"}
    for name in ("text_projector.proj.weight", "text_projector.gain.weight", "encoder.conv1.weight", "head.6.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_bad_inputs_are_clear_errors(tmp_path: Path) -> None:
    model = small()
    with pytest.raises(ValueError, match=r"text: expected \[N=2, L, D=16\]"):
        model(images(2, 3), images(2, 3), text=torch.randn(2, 4, 384))
    with pytest.raises(ValueError, match="text_mask"):
        model(images(2, 3), images(2, 3), text=torch.randn(2, 4, 16), text_mask=torch.ones(2, 5))
    with pytest.raises(ValueError, match=r"t2: expected a \[N, 3, H, W\]"):
        model(images(2, 3), images(2, 4))
    with pytest.raises(ValueError, match="t1 is"):
        model(images(2, 3), images(2, 3, 32, 32))
    with pytest.raises(FileNotFoundError):
        models.build("segchange_r1", **SMALL, encoder_weights=tmp_path / "missing.pth")
    for bad in (dict(dim=40), dict(decoder_stride=3), dict(dim=48, heads=5)):
        with pytest.raises(ValueError):
            models.build("segchange_r1", **{**SMALL, **bad})


def test_registry_and_contract() -> None:
    with torch.device("meta"):
        model = models.build("SegChange-R1")
    assert isinstance(model, SegChangeR1)
    assert model.text_conditioned and model.num_classes == 2
    assert model.default_loss == "segchange" and "segchange" in models.available_losses()
    assert model.text_dim == 384 and model.in_channels == (3, 3)


def test_encoder_checkpoint_loads(tmp_path: Path) -> None:
    model = small()
    path = tmp_path / "enc.pth"
    torch.save({f"module.{k}": v for k, v in model.encoder.state_dict().items()}, path)
    again = models.build("segchange_r1", **SMALL, encoder_weights=path)
    for k, v in model.encoder.state_dict().items():
        assert torch.equal(v, again.encoder.state_dict()[k])


def test_linear_attention_modes() -> None:
    """Faithful: output scale grows with the token count (no 1/N); stable: it does not, and it is residual."""
    torch.manual_seed(0)
    faithful, stable = LinearAttention(16, mode="faithful"), LinearAttention(16, mode="stable")
    stable.load_state_dict(faithful.state_dict())
    small_x, big_x = torch.randn(1, 16, 8, 8), torch.randn(1, 16, 32, 32)
    with torch.no_grad():
        ratio_f = faithful(big_x).std() / faithful(small_x).std()
        ratio_s = (stable(big_x) - big_x).std() / (stable(small_x) - small_x).std()
    assert ratio_f > 4  # 16× the tokens
    assert ratio_s < 2
    with pytest.raises(ValueError):
        LinearAttention(16, mode="geometric")  # type: ignore[arg-type]


@torch.no_grad()
def test_faithful_mode_and_se_variant_run() -> None:
    model = small(bev_mode="faithful", diff_attention="se", use_ega=False)
    out = model(images(2, 3), images(2, 3), text=torch.randn(2, 3, 16))
    assert out["logits"].shape == (2, 2, 64, 64)
    assert torch.isfinite(out["logits"]).all()


def test_complexity_per_512_tile_small_variant() -> None:
    with torch.device("meta"):
        model = models.build("segchange_r1", width=0.25, dim=64, decoder_stride=4)
    params, flops = models.complexity(model, [(1, 3, 512, 512)] * 2)
    assert 0.5e6 < params < 3e6
    assert 1e9 < flops < 40e9
