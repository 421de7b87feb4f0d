"""Difference-map, channel- and spatial-attention transfer."""

from __future__ import annotations

import torch

from models.losses import DifferenceAttentionLoss, channel_attention, difference_map, spatial_attention
from tests.models.conftest import change_label


def features() -> dict[str, torch.Tensor]:
    return {
        "feat_a": torch.randn(2, 8, 8, 8),
        "feat_c": torch.randn(2, 8, 8, 8),
        "teacher_feat": torch.relu(torch.randn(2, 16, 8, 8)),
    }


def test_difference_map_is_normalised_and_larger_where_features_differ() -> None:
    f1 = torch.randn(1, 8, 8, 8)
    f2 = f1.clone()
    f2[..., 2:4, 2:4] += 3.0
    d = difference_map(f1, f2)
    assert d.shape == (1, 1, 8, 8)
    assert float(d.max()) <= 1.0 and float(d.min()) >= 0.0
    assert d[..., 2:4, 2:4].min() > d[..., 5:, 5:].max()


def test_attentions_shapes() -> None:
    f = torch.relu(torch.randn(2, 16, 8, 8))
    assert channel_attention(f).shape == (2, 16)
    assert spatial_attention(f).shape == (2, 1, 8, 8)


def test_zero_when_student_matches_teacher_and_larger_otherwise() -> None:
    f = features()
    y = change_label(2, 32, 32)
    loss = DifferenceAttentionLoss()
    perfect = loss(f["feat_a"], f["feat_c"].clone(), f["feat_c"], f["teacher_feat"].clone(), f["teacher_feat"], y)
    assert all(float(v) < 1e-10 for v in perfect)
    wrong = loss(
        f["feat_a"], torch.randn(2, 8, 8, 8), f["feat_c"], torch.relu(torch.randn(2, 16, 8, 8)), f["teacher_feat"], y
    )
    assert all(float(w) > float(p) for w, p in zip(wrong, perfect))


def test_ignored_positions_have_no_effect() -> None:
    f = features()
    y = change_label(2, 32, 32, ignore_rows=8)  # feature rows 0:2 ignored
    fb, s = torch.randn(2, 8, 8, 8), torch.relu(torch.randn(2, 16, 8, 8))
    fb2, s2 = fb.clone(), s.clone()
    fb2[..., :2, :] = 50.0
    s2[..., :2, :] = 50.0
    loss = DifferenceAttentionLoss()
    a = loss(f["feat_a"], fb, f["feat_c"], s, f["teacher_feat"], y)
    b = loss(f["feat_a"], fb2, f["feat_c"], s2, f["teacher_feat"], y)
    for x, z in zip(a, b):
        assert torch.allclose(x, z)
