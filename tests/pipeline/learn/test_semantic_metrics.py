"""Semantic change metrics: hand-computed confusion matrices, SECOND SeK/Fscd, ClearSCD variants, accumulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.learn.semantic_metrics import SemanticChangeMetrics, cohen_kappa, semantic_change_scores

# Hand case, K = 3. Columns: gt_t1, gt_t2, gt_change | pred_t1, pred_t2, pred_change
CASE = np.array([
    [0, 0, 0, 0, 0, 0],  # 0 unchanged, right
    [1, 1, 0, 1, 1, 0],  # 1 unchanged, right
    [0, 1, 1, 0, 1, 1],  # 2 change 0→1, right
    [0, 2, 1, 0, 1, 1],  # 3 change 0→2 detected as 0→1
    [1, 2, 1, 1, 2, 0],  # 4 change 1→2 missed by the change map
    [2, 2, 0, 2, 1, 1],  # 5 false change 2→1
    [2, 0, 1, 2, 0, 1],  # 6 change 2→0, right
    [255, 1, 1, 0, 1, 1],  # 7 t1 unlabelled: counts for date-2 semantics and the binary change only
])


def _case_metrics() -> SemanticChangeMetrics:
    m = SemanticChangeMetrics(3)
    g1, g2, gc, p1, p2, pc = CASE.T
    m.update(p1, p2, g1, g2, pred_change=pc, gt_change=gc)
    return m


def test_hand_computed_confusion_matrices() -> None:
    m = _case_metrics()
    assert m.semantic.tolist() == [[5, 0, 0], [0, 5, 0], [0, 2, 3]]
    assert m.change.tolist() == [[2, 1], [1, 4]]  # rows reference (no change, change), columns prediction
    assert m.dates.tolist() == [[4, 0, 1, 1], [0, 3, 0, 0], [1, 0, 1, 0], [1, 0, 1, 1]]
    expected_q = np.zeros((10, 10), np.int64)
    for ref, pred in [(9, 9), (9, 9), (1, 1), (2, 1), (5, 9), (9, 7), (6, 6)]:
        expected_q[ref, pred] += 1
    assert np.array_equal(m.fromto, expected_q)
    assert m.nochange.tolist() == [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1], [0, 0, 0, 4]]
    assert m.consistency.tolist() == [[2, 1], [0, 4]]


def test_hand_computed_scores() -> None:
    r = _case_metrics().compute()
    # semantic: IoU 1, 5/7, 3/5; kappa: po = 13/15, pe = 1/3
    assert r["semantic_miou"] == pytest.approx((1 + 5 / 7 + 3 / 5) / 3)
    assert r["semantic_oa"] == pytest.approx(13 / 15)
    assert r["semantic_kappa"] == pytest.approx(0.8)
    assert r["semantic_mf1"] == pytest.approx((1 + 10 / 12 + 6 / 8) / 3)
    # binary: TP 4, FP 1, FN 1, TN 2
    assert r["change_iou"] == pytest.approx(2 / 3)
    assert r["change_f1"] == pytest.approx(0.8)
    assert r["change_precision"] == r["change_recall"] == pytest.approx(0.8)
    assert r["change_oa"] == pytest.approx(0.75)
    assert r["change_kappa"] == pytest.approx(7 / 15)
    assert r["change_miou"] == pytest.approx((2 / 3 + 0.5) / 2)
    # SECOND: H0 → po 0.5, pe 0.25, κ̂ = 1/3; IoU_fg = 6/10, IoU_bg = 4/8
    assert r["sek"] == pytest.approx(math.exp(0.6 - 1) / 3)
    assert r["score"] == pytest.approx(0.3 * 0.55 + 0.7 * math.exp(-0.4) / 3)
    assert r["fscd_precision"] == r["fscd_recall"] == r["fscd"] == pytest.approx(5 / 8)
    # from→to: OA 4/7, κ 16/37; Q̂ → κ̂ = 2/7; IoU_c(Q) = 3/5; ClearSCD plugs in the change-head IoU 2/3
    assert r["oa_scd"] == pytest.approx(4 / 7)
    assert r["kappa_scd"] == pytest.approx(16 / 37)
    assert r["sek_fromto"] == pytest.approx(2 / 7 * math.exp(3 / 5 - 1))
    assert r["sek_clearscd"] == pytest.approx(2 / 7 * math.exp(2 / 3 - 1))
    assert r["score_clearscd"] == pytest.approx(0.3 * 2 / 3 + 0.7 * 2 / 7 * math.exp(-1 / 3))
    # mIoU_sc over reference codes 0→1, 0→2, 1→2, 2→0, unchanged: (1/2 + 0 + 0 + 1 + 1/2) / 5
    assert r["miou_sc"] == pytest.approx(0.4)
    # mIoU_nc: stayed 0, 1, 2 = 1, 1, 0; changed replaced by IoU_c = 2/3
    assert r["miou_nc"] == pytest.approx((2 + 2 / 3) / 4)
    assert r["miou_bc"] == pytest.approx((2 / 3 + 4 / 5) / 2)


def test_perfect_prediction_scores_one() -> None:
    rng = np.random.default_rng(0)
    g1 = rng.integers(0, 4, (2, 16, 16))
    g2 = np.where(rng.random((2, 16, 16)) < 0.3, rng.integers(0, 4, (2, 16, 16)), g1)
    g1[0, :2] = 255
    r = semantic_change_scores(g1.clip(0, 3), g2, g1, g2, num_classes=4, pred_change=(g1 != g2).astype(int))
    for key in ("semantic_miou", "semantic_kappa", "change_iou", "sek", "score", "fscd", "oa_scd", "kappa_scd",
                "sek_fromto", "sek_clearscd", "score_clearscd", "miou_sc", "miou_nc", "miou_bc"):
        assert r[key] == pytest.approx(1.0), key
    # a single change type predicted perfectly: p_e = 1 in Q̂; ClearSCD's cal_kappa gave 0 here, we give 1
    g1, g2 = np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1])
    r = semantic_change_scores(g1, g2, g1, g2, num_classes=2)
    assert r["sek_fromto"] == r["sek_clearscd"] == r["sek"] == pytest.approx(1.0)


def test_no_change_at_all() -> None:
    g = np.array([[0, 1], [2, 2]])
    r = semantic_change_scores(g, g, g, g, num_classes=3)
    assert r["semantic_miou"] == 1.0 and r["oa_scd"] == 1.0
    for key in ("change_iou", "sek", "fscd", "sek_clearscd", "sek_fromto"):
        assert math.isnan(r[key]), key  # 0/0: nothing changed in reference or prediction
    assert r["change_iou_nochange"] == 1.0
    # unchanged reference, a false change predicted: every change score is 0
    p2 = np.array([[0, 1], [2, 0]])
    r = semantic_change_scores(g, p2, g, g, num_classes=3)
    assert r["change_iou"] == 0.0 and r["sek"] == 0.0 and r["fscd"] == 0.0 and r["sek_clearscd"] == 0.0
    assert r["fscd_precision"] == 0.0 and math.isnan(r["fscd_recall"])


def test_accumulation_equals_one_shot_and_merge() -> None:
    rng = np.random.default_rng(1)
    shape = (6, 12, 12)
    g1, p1, p2 = (rng.integers(0, 5, shape) for _ in range(3))
    g2 = np.where(rng.random(shape) < 0.4, rng.integers(0, 5, shape), g1)
    g1[rng.random(shape) < 0.05] = 255
    gc = np.where(g1 == 255, 255, (g1 != g2).astype(int))
    pc = rng.integers(0, 2, shape)
    one = semantic_change_scores(p1, p2, g1, g2, num_classes=5, pred_change=pc, gt_change=gc)
    acc, left, right = SemanticChangeMetrics(5), SemanticChangeMetrics(5), SemanticChangeMetrics(5)
    for i in range(shape[0]):
        args = (p1[i], p2[i], g1[i], g2[i], pc[i], gc[i])
        acc.update(*args)
        (left if i < 3 else right).update(*args)
    np.testing.assert_allclose(list(acc.compute().values()), list(one.values()), rtol=1e-12)
    np.testing.assert_allclose(list(left.merge(right).compute().values()), list(one.values()), rtol=1e-12)
    # torch tensors give the same numbers
    torch_args = [torch.from_numpy(a) for a in (p1, p2, g1, g2)]
    t = semantic_change_scores(*torch_args, num_classes=5, pred_change=torch.from_numpy(pc), gt_change=torch.from_numpy(gc))
    assert t == pytest.approx(one, nan_ok=True)


def test_semantic_part_agrees_with_torchmetrics() -> None:
    from torchmetrics.classification import MulticlassCohenKappa, MulticlassJaccardIndex

    rng = np.random.default_rng(2)
    g1, g2 = rng.integers(0, 4, (2, 32, 32)), rng.integers(0, 4, (2, 32, 32))
    p1, p2 = np.where(rng.random(g1.shape) < 0.7, g1, rng.integers(0, 4, g1.shape)), rng.integers(0, 4, g1.shape)
    g1[:, :3] = 255
    r = semantic_change_scores(p1, p2, g1, g2, num_classes=4)
    pred = torch.from_numpy(np.concatenate([p1, p2]))
    ref = torch.from_numpy(np.concatenate([g1, g2]))
    jaccard = MulticlassJaccardIndex(4, average="macro", ignore_index=255)(pred, ref)
    kappa = MulticlassCohenKappa(4, ignore_index=255)(pred, ref)
    assert r["semantic_miou"] == pytest.approx(float(jaccard), rel=1e-5)
    assert r["semantic_kappa"] == pytest.approx(float(kappa), rel=1e-5)


def test_bad_inputs_are_errors() -> None:
    m = SemanticChangeMetrics(3)
    ok = np.zeros((2, 2), int)
    with pytest.raises(ValueError, match="pred_t1"):
        m.update(ok + 3, ok, ok, ok)
    with pytest.raises(ValueError, match="gt_t2"):
        m.update(ok, ok, ok, ok - 1)
    with pytest.raises(ValueError, match="differ in size"):
        m.update(ok, ok, ok, np.zeros(3, int))
    with pytest.raises(ValueError, match="ignore_index"):
        SemanticChangeMetrics(3, ignore_index=2)
    assert math.isnan(cohen_kappa(np.zeros((2, 2))))
