"""Semantic change detection metrics from accumulated confusion matrices (SECOND/Bi-SRNet and ClearSCD protocols).

Inputs per update are class maps (already argmax-ed), numpy arrays or torch tensors of one shape (any shape, e.g.
[N, H, W]): predicted and reference land-cover classes at both dates, optionally a predicted binary change map (the
change head's output, 0/1) and a reference binary change label. Reference value 255 (``ignore_index``) = unlabelled.
Confusion matrices (int64, rows = reference, columns = prediction) are summed over updates, so metrics over a test set
equal the metrics of all its pixels at once; :meth:`SemanticChangeMetrics.merge` adds another accumulator (tiles
processed in parallel, DDP ranks).

Definitions (K classes; ĉ = predicted change, the change map if given, else [ŝ1 ≠ ŝ2]):
- **Semantic** (both dates pooled, pixels whose reference class is 255 excluded per date): ``semantic_oa``,
  ``semantic_miou`` / ``semantic_mf1`` (mean over classes present in reference or prediction), ``semantic_kappa``,
  ``semantic_iou_<k>``.
- **Binary change** (reference = the change label if given, else [s1 ≠ s2]; 255 excluded): ``change_precision``,
  ``change_recall``, ``change_f1``, ``change_iou`` (IoU_c), ``change_iou_nochange``, ``change_miou`` (mean of both),
  ``change_oa``, ``change_kappa``.
- The semantic-change matrices below use the pixels labelled at both dates (and in the change label when given);
  the reference change is the class transition [s1 ≠ s2].
- **SECOND standard** (Yang et al., "Asymmetric Siamese networks for semantic change detection", TGRS 2022, and the
  evaluation code of SECOND / Bi-SRNet, Ding et al. TGRS 2022): per date a (K+1)-class map, 0 = unchanged and 1 + k =
  class k of a changed pixel; one matrix H over both dates. ``sek`` = κ̂·exp(IoU_fg − 1) where κ̂ = Cohen's κ of H
  with the unchanged/unchanged cell set to 0 and IoU_fg = changed-vs-unchanged IoU read from H; ``score`` = 0.3·mIoU
  (mean of the changed and unchanged IoUs from H) + 0.7·SeK; ``fscd`` = 2·P·R/(P + R) with SC_TP = changed pixels whose
  class is right (both dates), P = SC_TP / predicted changed, R = SC_TP / reference changed (``fscd_precision``,
  ``fscd_recall``).
- **From→to matrix Q** (ClearSCD's ``test.py``; spec §6): K² + 1 codes, K·s1 + s2 for a change and K² for "no
  change"; a predicted change with ŝ1 = ŝ2 gets a diagonal code that no reference pixel has (always wrong).
  ``oa_scd``, ``kappa_scd`` (κ of Q); ``sek_fromto`` = κ̂(Q̂)·exp(IoU_c(Q) − 1) with IoU_c read from Q;
  ``sek_clearscd`` = κ̂(Q̂)·exp(``change_iou`` − 1) — **the ClearSCD variant**, which plugs in the change-head IoU;
  ``score_clearscd`` = 0.3·``change_iou`` + 0.7·``sek_clearscd`` (ClearSCD's "Overall_Score").
  Numbers from the SECOND and the from→to conventions are not comparable.
- **Consistency metrics of ClearSCD**: ``miou_sc`` (the abstract's headline mIoU_sc) = mean IoU over the K(K−1) from→to
  change types plus "unchanged", over the codes present in the reference; ``miou_nc`` = mean IoU of "stayed class k"
  (k = 0..K−1: reference unchanged with class k; predicted unchanged with ŝ1 = ŝ2 = k) and "changed", whose IoU is
  replaced by ``change_iou`` as in ClearSCD; ``miou_bc`` = mIoU between ĉ and [ŝ1 ≠ ŝ2] (no reference; agreement of
  the change head with the semantic maps; 1 when no change map is given).

Quirks of ClearSCD's code that are *not* reproduced: its mIoU_sc maps a predicted change with ŝ1 = ŝ2 onto a real
change type (i→i collides with i→i+1) and divides by "distinct reference codes − 1"; its κ is 0 for an empty matrix
and when p_e = 1 (so a perfect prediction with one change type scored SeK = 0); it decided the reference change of
mIoU_sc / mIoU_nc by the change label rather than the class transition. Here a perfect prediction with any change has
SeK = 1, κ is 1 when observed agreement is perfect, and undefined ratios (0/0: e.g. IoU_c, SeK, Fscd when neither
reference nor prediction has any change) are NaN — accumulate over many tiles before reading them. (The binary
metrics of :mod:`pipeline.learn.metrics` follow torchmetrics and give 0 there instead.)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from pipeline.io.raster import NODATA_U8


def _array(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x).reshape(-1).astype(np.int64, copy=False)


def _confusion(reference: np.ndarray, prediction: np.ndarray, n: int) -> np.ndarray:
    return np.bincount(reference * n + prediction, minlength=n * n).reshape(n, n).astype(np.int64)


def _div(a: float, b: float) -> float:
    return float(a) / float(b) if b else math.nan


def cohen_kappa(cm: np.ndarray) -> float:
    """Cohen's κ of a confusion matrix; 1 for perfect agreement, NaN for an empty matrix.

    Args:
        cm: a square confusion matrix of counts (rows = reference, columns = prediction).

    Returns:
        κ = (p_o − p_e) / (1 − p_e); 1.0 when p_o = 1 (also when p_e = 1), NaN when ``cm`` sums to 0.
    """
    total = cm.sum()
    if total == 0:
        return math.nan
    po = np.trace(cm) / total
    if po == 1.0:
        return 1.0
    pe = float(cm.sum(1) @ cm.sum(0)) / float(total) ** 2
    return float((po - pe) / (1.0 - pe))


def class_iou(cm: np.ndarray) -> np.ndarray:
    """Per-class IoU = diag / (row + column − diag); NaN for classes in neither reference nor prediction.

    Args:
        cm: a square confusion matrix of counts (rows = reference, columns = prediction).

    Returns:
        float64 IoU per class (one per row).
    """
    diag = np.diag(cm).astype(np.float64)
    union = cm.sum(0) + cm.sum(1) - diag
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, diag / np.maximum(union, 1), np.nan)


def _nanmean(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=np.float64)
    return float(np.nanmean(x)) if np.isfinite(x).any() else math.nan


class SemanticChangeMetrics:
    """Accumulator of the semantic change metrics; see the module docstring for the definitions.

    ``update(pred_t1, pred_t2, gt_t1, gt_t2, pred_change=None, gt_change=None)`` adds a batch (any shape),
    ``compute() -> dict[str, float]``, ``merge(other)`` adds another accumulator, ``reset()`` clears.

    Args:
        num_classes: K, the number of land-cover classes (≥ 2); classes are 0..K−1.
        ignore_index: the reference value of unlabelled pixels; must not be a class index.

    Raises:
        ValueError: ``num_classes`` < 2, or ``ignore_index`` is in 0..K−1.
    """

    def __init__(self, num_classes: int, ignore_index: int = NODATA_U8) -> None:
        if num_classes < 2:
            raise ValueError(f"num_classes must be ≥ 2, got {num_classes}")
        if 0 <= ignore_index < num_classes:
            raise ValueError(f"ignore_index {ignore_index} is a valid class index (num_classes={num_classes})")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.reset()

    def reset(self) -> None:
        """Clear every accumulated count (and whether a change map was seen)."""
        k = self.num_classes
        self.semantic = np.zeros((k, k), np.int64)  # both dates pooled
        self.change = np.zeros((2, 2), np.int64)  # binary change (reference label vs change map)
        self.dates = np.zeros((k + 1, k + 1), np.int64)  # SECOND: per-date 0 = unchanged, 1 + class
        self.fromto = np.zeros((k * k + 1, k * k + 1), np.int64)  # ClearSCD's Q: K·s1 + s2, K² = no change
        self.nochange = np.zeros((k + 1, k + 1), np.int64)  # stayed class k, K = changed
        self.consistency = np.zeros((2, 2), np.int64)  # change map vs [ŝ1 ≠ ŝ2]
        self.has_change_map = False

    _STATES = ("semantic", "change", "dates", "fromto", "nochange", "consistency")

    def merge(self, other: SemanticChangeMetrics) -> SemanticChangeMetrics:
        """Add the counts of ``other`` (same classes) to this accumulator; returns self.

        Args:
            other: another accumulator, e.g. of a parallel worker or DDP rank.

        Returns:
            This accumulator, updated.

        Raises:
            ValueError: ``other`` has a different number of classes.
        """
        if other.num_classes != self.num_classes:
            raise ValueError(f"cannot merge metrics over {other.num_classes} classes into {self.num_classes}")
        for name in self._STATES:
            getattr(self, name).__iadd__(getattr(other, name))
        self.has_change_map |= other.has_change_map
        return self

    def _check(self, name: str, x: np.ndarray, allow_ignore: bool, upper: int) -> None:
        bad = (x < 0) | (x >= upper)
        if allow_ignore:
            bad &= x != self.ignore_index
        if bad.any():
            raise ValueError(f"{name}: value {int(x[bad][0])} outside 0..{upper - 1}" + (
                f" (or {self.ignore_index} = ignore)" if allow_ignore else ""))

    def update(
        self,
        pred_t1: Any,
        pred_t2: Any,
        gt_t1: Any,
        gt_t2: Any,
        pred_change: Any | None = None,
        gt_change: Any | None = None,
    ) -> None:
        """Add one batch of class maps (numpy or torch, one shape); see the module docstring.

        Args:
            pred_t1: predicted classes at t1, 0..K−1.
            pred_t2: predicted classes at t2, 0..K−1.
            gt_t1: reference classes at t1, 0..K−1 or ``ignore_index``.
            gt_t2: reference classes at t2, 0..K−1 or ``ignore_index``.
            pred_change: predicted binary change (0/1) of a change head; None uses [pred_t1 ≠ pred_t2].
            gt_change: reference binary change (0/1 or ``ignore_index``); None uses [gt_t1 ≠ gt_t2].

        Raises:
            ValueError: the maps differ in size, or a value is out of range (the message names the map).
        """
        k, ign = self.num_classes, self.ignore_index
        p1, p2, g1, g2 = (_array(a) for a in (pred_t1, pred_t2, gt_t1, gt_t2))
        arrays = {"pred_t1": p1, "pred_t2": p2, "gt_t1": g1, "gt_t2": g2}
        pc_in = None if pred_change is None else _array(pred_change)
        gc_in = None if gt_change is None else _array(gt_change)
        if pc_in is not None:
            arrays["pred_change"] = pc_in
        if gc_in is not None:
            arrays["gt_change"] = gc_in
        sizes = {name: a.size for name, a in arrays.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"class maps differ in size: {sizes}")
        self._check("pred_t1", p1, False, k)
        self._check("pred_t2", p2, False, k)
        self._check("gt_t1", g1, True, k)
        self._check("gt_t2", g2, True, k)
        if pc_in is not None:
            self._check("pred_change", pc_in, False, 2)
            self.has_change_map = True
        if gc_in is not None:
            self._check("gt_change", gc_in, True, 2)

        v1, v2 = g1 != ign, g2 != ign
        self.semantic += _confusion(g1[v1], p1[v1], k) + _confusion(g2[v2], p2[v2], k)

        pcc = p1 != p2
        pc = pcc if pc_in is None else pc_in.astype(bool)
        if gc_in is None:
            gc, vc = g1 != g2, v1 & v2
        else:
            gc, vc = gc_in == 1, gc_in != ign
        self.change += _confusion(gc[vc].astype(np.int64), pc[vc].astype(np.int64), 2)

        common = v1 & v2 & vc
        s1, s2, q1, q2, c = g1[common], g2[common], p1[common], p2[common], pc[common]
        changed = s1 != s2
        self.fromto += _confusion(np.where(changed, k * s1 + s2, k * k), np.where(c, k * q1 + q2, k * k), k * k + 1)
        self.dates += _confusion(np.where(changed, s1 + 1, 0), np.where(c, q1 + 1, 0), k + 1)
        self.dates += _confusion(np.where(changed, s2 + 1, 0), np.where(c, q2 + 1, 0), k + 1)
        self.nochange += _confusion(np.where(changed, k, s1), np.where(c | (q1 != q2), k, q1), k + 1)
        self.consistency += _confusion(c.astype(np.int64), pcc[common].astype(np.int64), 2)

    # ----------------------------------------------------------------------------------------------- results
    def compute(self) -> dict[str, float]:
        """All metrics as floats (NaN where undefined); see the module docstring.

        Returns:
            The metrics by name: ``semantic_*``, ``change_*``, ``sek``, ``score``, ``fscd*`` (SECOND
            standard), ``oa_scd``, ``kappa_scd``, ``sek_fromto``, ``sek_clearscd``, ``score_clearscd``,
            ``miou_sc``, ``miou_nc`` and ``miou_bc`` (ClearSCD).
        """
        out = self._semantic_scores()
        out.update(self._change_scores())
        out.update(self._second_scores())
        out.update(self._fromto_scores(out["change_iou"]))
        out.update(self._consistency_scores(out["change_iou"]))
        return out

    def _semantic_scores(self) -> dict[str, float]:
        """``semantic_*``: OA, mIoU, mF1, κ and per-class IoU of both dates pooled."""
        sem = self.semantic
        iou = class_iou(sem)
        diag = np.diag(sem).astype(np.float64)
        denom = sem.sum(0) + sem.sum(1)
        with np.errstate(divide="ignore", invalid="ignore"):
            f1 = np.where(denom > 0, 2 * diag / np.maximum(denom, 1), np.nan)
        out: dict[str, float] = {}
        out["semantic_oa"] = _div(np.trace(sem), sem.sum())
        out["semantic_miou"] = _nanmean(iou)
        out["semantic_mf1"] = _nanmean(f1)
        out["semantic_kappa"] = cohen_kappa(sem)
        out.update({f"semantic_iou_{c}": float(iou[c]) for c in range(self.num_classes)})
        return out

    def _change_scores(self) -> dict[str, float]:
        """``change_*``: the binary change metrics (reference label vs change map)."""
        (tn, fp), (fn, tp) = self.change
        out: dict[str, float] = {}
        out["change_precision"] = _div(tp, tp + fp)
        out["change_recall"] = _div(tp, tp + fn)
        out["change_f1"] = _div(2 * tp, 2 * tp + fp + fn)
        out["change_iou"] = _div(tp, tp + fp + fn)
        out["change_iou_nochange"] = _div(tn, tn + fp + fn)
        out["change_miou"] = _nanmean(np.array([out["change_iou"], out["change_iou_nochange"]]))
        out["change_oa"] = _div(tp + tn, self.change.sum())
        out["change_kappa"] = cohen_kappa(self.change)
        return out

    def _second_scores(self) -> dict[str, float]:
        """SECOND / Bi-SRNet standard from the per-date (K+1)-class matrix: ``sek``, ``score``, ``fscd*``."""
        h = self.dates
        total = h.sum()
        both_changed, both_unchanged = h[1:, 1:].sum(), h[0, 0]
        iou_fg = _div(both_changed, total - both_unchanged)
        iou_bg = _div(both_unchanged, total - both_changed)
        h0 = h.copy()
        h0[0, 0] = 0
        kappa_n0 = cohen_kappa(h0)
        out: dict[str, float] = {}
        out["sek"] = kappa_n0 * math.exp(iou_fg - 1.0)
        out["score"] = 0.3 * _nanmean(np.array([iou_bg, iou_fg])) + 0.7 * out["sek"]
        sc_tp = np.trace(h[1:, 1:])
        pred_changed, ref_changed = h[:, 1:].sum(), h[1:, :].sum()
        out["fscd_precision"] = _div(sc_tp, pred_changed)
        out["fscd_recall"] = _div(sc_tp, ref_changed)
        if pred_changed + ref_changed == 0:
            out["fscd"] = math.nan
        elif sc_tp == 0:
            out["fscd"] = 0.0
        else:
            p, r = out["fscd_precision"], out["fscd_recall"]
            out["fscd"] = 2 * p * r / (p + r)
        return out

    def _fromto_scores(self, change_iou: float) -> dict[str, float]:
        """ClearSCD from→to matrix Q: ``oa_scd``, ``kappa_scd``, ``sek_*``, ``score_clearscd``, ``miou_sc``.

        ``change_iou`` is the change-head IoU that ClearSCD's SeK variant plugs in.
        """
        k = self.num_classes
        q = self.fromto
        nc = k * k
        out: dict[str, float] = {}
        out["oa_scd"] = _div(np.trace(q), q.sum())
        out["kappa_scd"] = cohen_kappa(q)
        q0 = q.copy()
        q0[nc, nc] = 0
        kappa_hat = cohen_kappa(q0)
        iou_fromto = _div(q[:nc, :nc].sum(), q.sum() - q[nc, nc])
        out["sek_fromto"] = kappa_hat * math.exp(iou_fromto - 1.0)
        out["sek_clearscd"] = kappa_hat * math.exp(change_iou - 1.0)
        out["score_clearscd"] = 0.3 * change_iou + 0.7 * out["sek_clearscd"]
        types = [i * k + j for i in range(k) for j in range(k) if i != j] + [nc]
        code_iou = class_iou(q)[types]
        present = q.sum(1)[types] > 0
        out["miou_sc"] = float(code_iou[present].mean()) if present.any() else math.nan
        return out

    def _consistency_scores(self, change_iou: float) -> dict[str, float]:
        """``miou_nc`` ("changed" IoU replaced by ``change_iou``, as in ClearSCD) and ``miou_bc``."""
        nc_iou = class_iou(self.nochange)
        nc_iou[self.num_classes] = change_iou
        return {
            "miou_nc": _nanmean(nc_iou),
            "miou_bc": _nanmean(class_iou(self.consistency)) if self.has_change_map else 1.0,
        }


def semantic_change_scores(
    pred_t1: Any,
    pred_t2: Any,
    gt_t1: Any,
    gt_t2: Any,
    *,
    num_classes: int,
    pred_change: Any | None = None,
    gt_change: Any | None = None,
    ignore_index: int = NODATA_U8,
) -> dict[str, float]:
    """One-shot :class:`SemanticChangeMetrics` over the given maps.

    Args:
        pred_t1: predicted classes at t1, 0..K−1 (numpy or torch, any shape).
        pred_t2: predicted classes at t2, same shape.
        gt_t1: reference classes at t1, 0..K−1 or ``ignore_index``.
        gt_t2: reference classes at t2, 0..K−1 or ``ignore_index``.
        num_classes: K, the number of land-cover classes (≥ 2).
        pred_change: predicted binary change (0/1); None uses [pred_t1 ≠ pred_t2].
        gt_change: reference binary change (0/1 or ``ignore_index``); None uses [gt_t1 ≠ gt_t2].
        ignore_index: the reference value of unlabelled pixels.

    Returns:
        The metrics of :meth:`SemanticChangeMetrics.compute`.

    Raises:
        ValueError: bad ``num_classes`` / ``ignore_index``, maps of different sizes, or values out of range.
    """
    metrics = SemanticChangeMetrics(num_classes, ignore_index)
    metrics.update(pred_t1, pred_t2, gt_t1, gt_t2, pred_change, gt_change)
    return metrics.compute()
