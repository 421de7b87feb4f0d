"""t2 perturbation of STIKDNet: range, per-sample draws, the reference clamping (B2), blur, hue, config."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models.perturbation import (
    PerturbationConfig,
    active_ops,
    draw_params,
    gaussian_blur,
    gaussian_kernels,
    perturb,
)

REFERENCE = PerturbationConfig(mode="reference")


@pytest.mark.parametrize("bands", [1, 3, 4])
@pytest.mark.parametrize("mode", ["correct", "reference"])
def test_values_stay_in_unit_range(bands: int, mode: str) -> None:
    x = torch.rand(4, bands, 32, 32)
    x[:, :, :4] = 0.0
    x[:, :, 4:8] = 1.0
    y = perturb(x, PerturbationConfig(brightness=0.9, contrast=0.9, saturation=0.9, hue=0.5, mode=mode))
    assert y.shape == x.shape and y.dtype == x.dtype
    assert torch.isfinite(y).all()
    assert y.min() >= 0.0 and y.max() <= 1.0


def test_input_is_not_modified_and_output_changes() -> None:
    x = torch.rand(2, 3, 16, 16)
    before = x.clone()
    y = perturb(x)
    assert torch.equal(x, before)
    assert (y - x).abs().mean() > 1e-3


def test_draws_are_per_sample_in_correct_mode_and_per_batch_in_reference_mode() -> None:
    x = torch.rand(1, 3, 16, 16).repeat(4, 1, 1, 1)  # four identical images
    y = perturb(x)
    assert all(not torch.allclose(y[0], y[i]) for i in range(1, 4))
    params = draw_params(4, 3, PerturbationConfig())
    assert params.factors["brightness"].unique().numel() == 4
    assert params.sigma.unique().numel() == 4
    y_ref = perturb(x, REFERENCE)
    assert all(torch.equal(y_ref[0], y_ref[i]) for i in range(1, 4))
    ref = draw_params(4, 3, REFERENCE)
    assert ref.factors["brightness"].unique().numel() == 1 and ref.order.unique(dim=0).shape[0] == 1


def test_seeded_global_rng_makes_it_reproducible() -> None:
    x = torch.rand(2, 3, 16, 16)
    torch.manual_seed(5)
    a = perturb(x)
    torch.manual_seed(5)
    b = perturb(x)
    assert torch.equal(a, b)
    assert not torch.equal(a, perturb(x))


def test_reference_mode_erases_the_dark_half_of_the_range() -> None:
    """B2: in [−1, 1] space every blend clamps to [0, 1], so every intensity below 0.5 ends at the original's 0,
    which is 0.5 back in the model's [0, 1] input space; the correct mode keeps the dark tones apart."""
    dark = torch.tensor([0.05, 0.3, 0.45]).view(3, 1, 1, 1).expand(3, 3, 16, 16).contiguous()
    for seed in range(5):
        torch.manual_seed(seed)
        ref = perturb(dark, REFERENCE)
        assert torch.allclose(ref, torch.full_like(ref, 0.5), atol=1e-6)  # all three collapse to one value
        torch.manual_seed(seed)
        ok = perturb(dark)
        means = ok.mean(dim=(1, 2, 3))
        assert (means > 0.0).all()
        assert means.unique().numel() == 3  # the three dark tones stay distinct
    # A constant 0.3 image: brightness factor ∈ [0.6, 1.4] → [0.18, 0.42]; contrast/saturation/hue keep grey.
    grey = torch.full((8, 3, 16, 16), 0.3)
    ok = perturb(grey)
    assert ok.min() >= 0.18 - 1e-5 and ok.max() <= 0.42 + 1e-5
    # On a uniform image about half of the pixels lose all information in reference mode; in correct mode only
    # the darkest tones clip (contrast factors up to 1.4).
    x = torch.rand(2, 3, 64, 64)
    no_blur = dict(blur_kernel=1, saturation=0.0, hue=0.0)
    ref = perturb(x, PerturbationConfig(mode="reference", **no_blur))
    collapsed = (ref == 0.5).float().mean()
    assert 0.3 < collapsed < 0.7
    assert (perturb(x, PerturbationConfig(**no_blur)) == 0.0).float().mean() < 0.1  # only contrast clipping


def test_blur_with_tiny_sigma_is_identity_and_large_sigma_smooths() -> None:
    x = torch.rand(2, 3, 16, 16)
    only_blur = dict(brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0)
    same = perturb(x, PerturbationConfig(blur_sigma=(1e-3, 1e-3), **only_blur))
    assert torch.allclose(same, x, atol=1e-6)
    smooth = perturb(x, PerturbationConfig(blur_sigma=(2.0, 2.0), **only_blur))
    assert smooth.std() < 0.8 * x.std()
    assert torch.allclose(smooth.mean(), x.mean(), atol=0.02)


def test_blur_matches_a_direct_2d_convolution_with_reflect_padding() -> None:
    x = torch.rand(2, 3, 12, 10)
    sigma = torch.tensor([0.5, 1.7])
    y = gaussian_blur(x, sigma, 3)
    k1 = gaussian_kernels(sigma, 3).float()
    assert torch.allclose(k1.sum(dim=1), torch.ones(2))
    for i in range(2):
        k2 = torch.outer(k1[i], k1[i]).expand(3, 1, 3, 3)
        ref = F.conv2d(F.pad(x[i : i + 1], (1, 1, 1, 1), mode="reflect"), k2, groups=3)
        assert torch.allclose(y[i : i + 1], ref, atol=1e-6)


def test_hue_rotates_in_hsv() -> None:
    red = torch.zeros(1, 3, 4, 4)
    red[:, 0] = 1.0
    third = PerturbationConfig(brightness=0.0, contrast=0.0, saturation=0.0, hue=0.5, blur_kernel=1)
    params = draw_params(1, 3, third)
    params.factors["hue"].fill_(1.0 / 3.0)
    from models.perturbation import apply_params

    green = apply_params(red, params, third)
    assert torch.allclose(green[0, :, 0, 0], torch.tensor([0.0, 1.0, 0.0]), atol=1e-5)
    params.factors["hue"].fill_(0.0)
    x = torch.rand(1, 3, 8, 8)
    assert torch.allclose(apply_params(x, params, third), x, atol=1e-5)


def test_saturation_and_hue_only_for_rgb() -> None:
    config = PerturbationConfig()
    assert active_ops(config, 3) == ["brightness", "contrast", "saturation", "hue"]
    assert active_ops(config, 4) == ["brightness", "contrast"]
    assert active_ops(config, 1) == ["brightness", "contrast"]
    # Brightness alone: each sample scaled by its own factor in [0.6, 1.4] (values small enough not to clip).
    x = torch.rand(3, 4, 8, 8) * 0.5 + 0.1
    y = perturb(x, PerturbationConfig(contrast=0.0, blur_kernel=1))
    ratio = (y / x).flatten(1)
    assert torch.allclose(ratio, ratio[:, :1].expand_as(ratio), atol=1e-5)
    assert ((ratio[:, 0] >= 0.6 - 1e-6) & (ratio[:, 0] <= 1.4 + 1e-6)).all()


def test_config_from_presets_dicts_and_errors() -> None:
    assert PerturbationConfig.from_any(None) == PerturbationConfig()
    assert PerturbationConfig.from_any("weak").brightness == 0.1
    c = PerturbationConfig.from_any({"preset": "weak", "mode": "reference", "blur_sigma": [0.2, 0.4]})
    assert c.mode == "reference" and c.blur_sigma == (0.2, 0.4) and c.hue == 0.05
    with pytest.raises(ValueError, match="unknown perturbation option.*brightnes"):
        PerturbationConfig.from_any({"brightnes": 0.2})
    with pytest.raises(ValueError, match="unknown perturbation preset"):
        PerturbationConfig.from_any("medium")
    with pytest.raises(ValueError, match="hue"):
        PerturbationConfig(hue=0.7)
    with pytest.raises(ValueError, match="blur_kernel"):
        PerturbationConfig(blur_kernel=4)
    with pytest.raises(ValueError, match="mode"):
        PerturbationConfig(mode="clamp")
