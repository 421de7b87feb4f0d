"""Feature distillation (masked MSE + global cosine) and logit distillation (KL, T = 2)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models.losses import FeatureDistillationLoss, LogitDistillationLoss
from tests.models.conftest import change_label


def test_feature_loss_zero_for_identical_and_larger_for_different() -> None:
    y = change_label(2, 32, 32)
    t = torch.rand(2, 8, 8, 8)
    loss = FeatureDistillationLoss()
    same = loss(t.clone(), t, y)[0]
    diff = loss(t + 0.5 * torch.randn_like(t), t, y)[0]
    assert same < 1e-6 < diff


def test_feature_loss_weights_change_pixels_more() -> None:
    y = change_label(1, 32, 32)  # change in rows/cols 8:16 → feature cells 2:4 at stride 4
    t = torch.rand(1, 8, 8, 8)
    on_change, on_static = t.clone(), t.clone()
    on_change[..., 2, 2] += 1.0
    on_static[..., 6, 6] += 1.0
    loss = FeatureDistillationLoss()
    mse_change, mse_static = loss(on_change, t, y)[1], loss(on_static, t, y)[1]
    assert mse_change / mse_static == pytest.approx((4.0 / 0.5) ** 2, rel=1e-4)  # (M⊙S − M⊙T)²


def test_feature_loss_ignores_label_255() -> None:
    y = change_label(2, 32, 32, ignore_rows=8)  # feature rows 0:2 ignored
    s, t = torch.rand(2, 8, 8, 8), torch.rand(2, 8, 8, 8)
    other = s.clone()
    other[..., :2, :] = torch.randn(2, 8, 2, 8) * 10
    loss = FeatureDistillationLoss()
    for a, b in zip(loss(s, t, y), loss(other, t, y)):
        assert torch.allclose(a, b)


def test_kl_zero_for_identical_logits_and_larger_for_different() -> None:
    t = torch.randn(2, 2, 16, 16)
    kl = LogitDistillationLoss()
    assert kl(t.clone(), t) < 1e-7
    assert kl(-t, t) > kl(t + 0.1 * torch.randn_like(t), t) > 0


def test_kl_is_per_pixel_batchmean_times_t_squared() -> None:
    s, t = torch.randn(2, 2, 8, 8), torch.randn(2, 2, 8, 8)
    kl = LogitDistillationLoss(temperature=2.0)(s, t)
    flat_s = (s / 2).permute(0, 2, 3, 1).reshape(-1, 2)
    flat_t = (t / 2).permute(0, 2, 3, 1).reshape(-1, 2)
    ref = F.kl_div(F.log_softmax(flat_s, 1), F.softmax(flat_t, 1), reduction="batchmean") * 4
    assert torch.allclose(kl, ref, atol=1e-6)
    # Original reduction='mean' on [N, 2, H, W] is exactly half of it for 2 classes.
    orig = F.kl_div(F.log_softmax(s / 2, 1), F.softmax(t / 2, 1), reduction="none").mean() * 4
    assert torch.allclose(orig * 2, kl, atol=1e-6)
    # Independent of the tile size: the same pixels tiled 2×2 give the same value.
    assert torch.allclose(LogitDistillationLoss()(s.repeat(1, 1, 2, 2), t.repeat(1, 1, 2, 2)), kl, atol=1e-6)


def test_kl_ignores_label_255() -> None:
    y = change_label(2, 16, 16, ignore_rows=5)
    s, t = torch.randn(2, 2, 16, 16), torch.randn(2, 2, 16, 16)
    other = s.clone()
    other[..., :5, :] = 20.0
    kl = LogitDistillationLoss()
    assert torch.allclose(kl(s, t, y), kl(other, t, y))
    with pytest.raises(ValueError, match="temperature"):
        LogitDistillationLoss(temperature=0)
