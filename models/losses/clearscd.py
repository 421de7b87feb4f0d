"""ClearSCD's training objective: BCD (BCE + Dice) + per-date CE + SACL (local + global) + BSCC.

Paper: K. Tang et al., "The ClearSCD model", ISPRS J. Photogramm. Remote Sens. 211 (2024) 299–317; code
tangkai-RS/ClearSCD (``loss/losses.py`` and the model's contrastive parts; spec ``clearscd.md`` §3).

``L = L_BCD + L_t1 + L_t2 + w_local·L_local + w_global·L_global + w_bscc·L_BSCC`` with

- **L_BCD** = BCEWithLogits(z, y) (mean over pixels with change label ≠ 255) + smp's binary Dice (sigmoid, smooth 0,
  eps 1e-7, pooled over the batch, 0 when the batch has no changed pixel), weights 1:1, on the full-res change logit
  z = logits[:, 1] − logits[:, 0] (the ClearSCD model returns logits = cat(0, z));
- **L_t1, L_t2** = cross-entropy of the full-res semantic logits, label 255 ignored (the original's ignore code is 9);
- **SACL local** (:func:`local_contrast`, weight 0.1, τ = 0.1, ≤ 1024 samples per class and date): labels resized
  to the 1/4-res feature grid (nearest). Per class c present at either date, the anchor a_c = L2norm(mean of the
  sampled queries Z of c from *both* dates; raw projections, normalised after averaging as in the code); positives = the sampled keys of c (both dates),
  negatives = the sampled keys of every other class; InfoNCE per positive, averaged over positives, summed over
  classes, divided by the number of classes present. No stop-gradient;
- **SACL global** (:func:`global_contrast`, weight 1, from ``epoch ≥ warmup_epochs`` = 1, i.e. the second epoch):
  per date t and class c present, the query q = L2norm(Σ w_i z_i / Σ w_i) over the class's pixels, w_i = 1 − p_i(c)
  (softmax of the detached 1/4-res semantic logits; ``hard_sampling=False`` → w = 1); with the memory bank's
  same-class columns of both dates as positives and the other classes' columns of both dates as negatives,
  L_{t,c} = ½[mean(1 − q·pos) + mean(1 + q·neg)] ∈ [0, 2]; L_global = Σ_t Σ_c L_{t,c} / (2·n_t);
  then (also during warm-up) :func:`enqueue` writes ``enqueue_len`` = 64 random keys per class with at least that
  many pixels into the bank, FIFO (the newest columns are the last ones);
- **BSCC** (:func:`bscc_loss`, weight 0.1, margin 2): D = |F_A − F_B| (1/4 res), p = sigmoid(1/4-res change logit),
  ŷ = [p > 0.5] (or the change label), u = 1 − p:
  L = (1/C)·{½ Σ u[ŷ=0]·D² / (Σ u[ŷ=0] + 1e-4) + ½ Σ p[ŷ=1]·max(0, m − D)² / (Σ p[ŷ=1] + 1e-4)}.

``forward(outputs, target, epoch) -> (total, components)``; ``target = {"change", "t1", "t2"}`` int64 [N, H, W], 255 =
ignore. With eval-mode outputs (no ``features_t1`` etc.) only the supervised terms are computed. Components are the
unweighted terms: ``loss, bcd_bce, bcd_dice, seg_t1, seg_t2, sacl_local, sacl_global, bscc``.

Deliberate differences from the original code (spec §11), each with an option that restores the reference:
- ``key_space="projection"`` (default): the local keys and the memory-bank keys are the projected features Z, i.e.
  the same space as the queries. The code used the unprojected decoder features F as keys while the queries are Z
  (``key_space="feature"``; needs ``proj_dim`` == decoder channels, as the original's reshapes did);
- ``queue_negatives="written"`` (default): memory-bank columns never written (the random initial vectors of a class
  absent so far) are left out of positives and negatives; a class with no written positive column is skipped. The
  original used all 512 columns, random ones included (``"all"``);
- label 255 is ignored everywhere, BSCC included: the original's BSCC used every pixel; here pixels with change
  label 255 (nodata, rotation fill) are left out of both sums;
- ``bscc_target="label"`` supervises BSCC with the change label instead of the model's own rounded prediction
  (the confirmation bias of §11; the original's ``bscc_with_label``), ``bscc_detach=True`` stops the BSCC
  gradient into the change head (the original does not detach). Defaults keep the reference behaviour;
- sampling uses the global torch RNG (seeded by the training loop).
- the memory bank lives in the model (buffers ``memory_queue``, ``memory_count``, returned in the training outputs) and
  is updated in place here, after the loss terms are computed on a snapshot (so autograd never sees the write).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._masks import check_target, label_at

KeySpace = Literal["projection", "feature"]
QueueNegatives = Literal["written", "all"]
BsccTarget = Literal["pseudo", "label"]

IGNORE = 255


def _zero(like: Tensor) -> Tensor:
    return like.sum() * 0.0


def _pixels(x: Tensor) -> Tensor:
    """[N, D, h, w] → [N·h·w, D] (pixel order n, y, x — the order of a flattened label [N, h, w])."""
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])


def _sample(index: Tensor, limit: int) -> Tensor:
    if index.numel() <= limit:
        return index
    return index[torch.randperm(index.numel(), device=index.device)[:limit]]


# ------------------------------------------------------------------------------------------------- supervised
def bcd_loss(z: Tensor, change: Tensor, ignore_index: int = IGNORE, eps: float = 1e-7) -> tuple[Tensor, Tensor]:
    """``(bce, dice)`` of the change logit ``z`` [N, H, W] against ``change`` (0/1, ``ignore_index`` ignored).

    Dice = smp ``DiceLoss(mode="binary", from_logits=True, smooth=0, eps=1e-7, ignore_index)``: pooled over the
    batch, ``1 − 2·Σpy / max(Σp + Σy, eps)``, and 0 when the batch has no changed pixel.
    """
    valid = change != ignore_index
    if not valid.any():
        return _zero(z), _zero(z)
    y = (change == 1).to(z.dtype)
    bce = F.binary_cross_entropy_with_logits(z[valid], y[valid])
    p = torch.sigmoid(z) * valid
    y = y * valid
    dice = 1.0 - 2.0 * (p * y).sum() / (p.sum() + y.sum()).clamp_min(eps)
    if y.sum() == 0:
        dice = dice * 0.0
    return bce, dice


def semantic_ce(logits: Tensor, target: Tensor, ignore_index: int = IGNORE) -> Tensor:
    """Cross-entropy over the pixels whose label is not ``ignore_index`` (0 if there are none)."""
    if not (target != ignore_index).any():
        return _zero(logits)
    return F.cross_entropy(logits, target, ignore_index=ignore_index)


# ------------------------------------------------------------------------------------------------- SACL
def local_contrast(
    queries: tuple[Tensor, Tensor],
    keys: tuple[Tensor, Tensor],
    labels: tuple[Tensor, Tensor],
    *,
    temperature: float = 0.1,
    sample_num: int = 1024,
    ignore_index: int = IGNORE,
) -> Tensor:
    """Cross-temporal local InfoNCE (unweighted): Σ_c mean_{k⁺} ℓ(a_c, k⁺) / #classes present.

    ``queries``/``keys``: per date [N, D, h, w] (keys normalised per pixel, anchors after averaging); ``labels``: per
    date [N, h, w] at that grid.
    ℓ = −log(exp(a·k⁺/τ) / (exp(a·k⁺/τ) + Σ_{k⁻} exp(a·k⁻/τ))).
    """
    q_pix = [_pixels(q) for q in queries]  # raw projections: the anchor is normalised after averaging
    k_pix = [F.normalize(_pixels(k), dim=1) for k in keys]
    y_pix = [y.reshape(-1) for y in labels]
    classes = sorted(set().union(*(set(y[y != ignore_index].unique().tolist()) for y in y_pix)))
    if not classes:
        return _zero(q_pix[0])
    anchors, key_list, key_class = [], [], []
    for c in classes:
        sampled = [q[_sample((y == c).nonzero()[:, 0], sample_num)] for q, y in zip(q_pix, y_pix)]
        anchors.append(F.normalize(torch.cat(sampled).mean(0), dim=0))
        for k, y in zip(k_pix, y_pix):
            chosen = k[_sample((y == c).nonzero()[:, 0], sample_num)]
            key_list.append(chosen)
            key_class.append(torch.full((chosen.shape[0],), c, device=chosen.device))
    all_keys, all_class = torch.cat(key_list), torch.cat(key_class)
    logits = torch.stack(anchors) @ all_keys.T / temperature  # [classes, keys]
    total = _zero(logits)
    for i, c in enumerate(classes):
        is_pos = all_class == c
        pos, neg = logits[i, is_pos], logits[i, ~is_pos]
        if neg.numel():
            denominator = torch.logaddexp(pos, torch.logsumexp(neg, dim=0))
        else:
            denominator = pos  # nothing to contrast with: the loss is log(1) = 0
        total = total + (denominator - pos).mean()
    return total / len(classes)


def _written(count: Tensor, length: int) -> Tensor:
    """Bool [..., L]: which bank columns have been written (FIFO: the last ``count`` columns)."""
    columns = torch.arange(length, device=count.device)
    return columns >= (length - count.round().long().clamp(0, length))[..., None]


def global_contrast(
    projections: tuple[Tensor, Tensor],
    semantic_low: tuple[Tensor, Tensor],
    labels: tuple[Tensor, Tensor],
    queue: Tensor,
    count: Tensor | None = None,
    *,
    hard_sampling: bool = True,
    queue_negatives: QueueNegatives = "written",
    ignore_index: int = IGNORE,
) -> Tensor:
    """Memory-bank similarity loss (unweighted) = Σ_t Σ_c L_{t,c} / (2·n_t), each L_{t,c} ∈ [0, 2].

    ``queue``: [2, K, D, L] (columns unit length; not modified here); ``count``: [2, K] written columns, used when
    ``queue_negatives="written"`` (``None`` = all written).
    """
    dates, classes_k, _, length = queue.shape
    bank = queue.detach()
    if queue_negatives == "written" and count is not None:
        written = _written(count.detach(), length)  # [2, K, L]
    else:
        written = torch.ones(dates, classes_k, length, dtype=torch.bool, device=queue.device)
    total = _zero(projections[0])
    for t in range(2):
        z = _pixels(projections[t])
        prob = _pixels(semantic_low[t].detach().float().softmax(1))
        y = labels[t].reshape(-1)
        terms = []
        for c in sorted(y[y != ignore_index].unique().tolist()):
            mask = y == c
            w = (1.0 - prob[mask, c]) if hard_sampling else torch.ones_like(prob[mask, c])
            q = F.normalize((w[:, None] * z[mask]).sum(0) / w.sum().clamp_min(1e-12), dim=0)
            pos = torch.cat([bank[d, c][:, written[d, c]] for d in range(dates)], dim=1)
            if pos.shape[1] == 0:
                continue  # never-written class: no positive to pull toward
            others = [bank[d, o][:, written[d, o]] for d in range(dates) for o in range(classes_k) if o != c]
            neg = torch.cat(others, dim=1) if others else pos[:, :0]
            term = 0.5 * (1.0 - q @ pos).mean()
            if neg.shape[1]:
                term = term + 0.5 * (1.0 + q @ neg).mean()
            terms.append(term)
        if terms:
            total = total + torch.stack(terms).sum() / (2 * len(terms))
    return total


@torch.no_grad()
def enqueue(
    queue: Tensor,
    count: Tensor,
    keys: tuple[Tensor, Tensor],
    labels: tuple[Tensor, Tensor],
    *,
    enqueue_len: int = 64,
    ignore_index: int = IGNORE,
) -> None:
    """FIFO-write ``enqueue_len`` random L2-normalised keys per class and date (classes with ≥ that many pixels).

    ``queue`` [2, K, D, L] and ``count`` [2, K] are modified in place: the oldest columns are dropped from the front,
    the new ones appended at the end.
    """
    length = queue.shape[-1]
    n = min(enqueue_len, length)
    for t in range(2):
        k = F.normalize(_pixels(keys[t].detach().float()), dim=1)
        y = labels[t].reshape(-1)
        for c in sorted(y[y != ignore_index].unique().tolist()):
            if c >= queue.shape[1]:
                continue
            index = (y == c).nonzero()[:, 0]
            if index.numel() < enqueue_len:
                continue
            new = k[_sample(index, n)].T.to(queue.dtype)  # [D, n]
            queue[t, c] = torch.cat([queue[t, c, :, n:], new], dim=1)
            count[t, c] = (count[t, c] + n).clamp(max=length)


# ------------------------------------------------------------------------------------------------- BSCC
def bscc_loss(
    features: tuple[Tensor, Tensor],
    change_low: Tensor,
    *,
    margin: float = 2.0,
    target: Tensor | None = None,
    valid: Tensor | None = None,
    detach: bool = False,
) -> Tensor:
    """Bi-temporal semantic-change consistency (unweighted), see the module docstring.

    ``features``: F_A, F_B [N, C, h, w]; ``change_low``: [N, 1, h, w] logit; ``target``: optional 0/1 [N, h, w]
    replacing the pseudo-label round(p); ``valid``: optional bool [N, h, w] of pixels to use.
    """
    d = (features[0] - features[1]).abs()
    p = torch.sigmoid(change_low[:, 0])
    if detach:
        p = p.detach()
    y = (p.detach() > 0.5) if target is None else (target == 1)
    v = torch.ones_like(y) if valid is None else valid
    unchanged = ((1.0 - p) * (~y & v))[:, None]
    changed = (p * (y & v))[:, None]
    pull = (unchanged * d.pow(2)).sum() / (unchanged.sum() + 1e-4)
    push = (changed * (margin - d).clamp_min(0.0).pow(2)).sum() / (changed.sum() + 1e-4)
    return 0.5 * (pull + push) / d.shape[1]


# ------------------------------------------------------------------------------------------------- total
class ClearSCDLoss(nn.Module):
    """ClearSCD objective; ``forward(outputs, target, epoch) -> (total, components)``. See the module docstring.

    Args:
        bce_weight, dice_weight: L_BCD terms (1, 1). seg_weight: each date's CE (1).
        local_weight, temperature, sample_num: SACL local (0.1, 0.1, 1024); ``local_weight=0`` turns it off.
        global_weight, warmup_epochs, enqueue_len, hard_sampling: SACL global (1, 1, 64, True).
        key_space: "projection" (fixed) or "feature" (reference) keys for the local term and the memory bank.
        queue_negatives: "written" (fixed) or "all" (reference) memory-bank columns.
        bscc_weight, bscc_margin, bscc_target, bscc_detach: BSCC (0.1, 2.0, "pseudo", False).
        ignore_index: 255.
    """

    def __init__(
        self,
        bce_weight: float = 1.0,
        dice_weight: float = 1.0,
        seg_weight: float = 1.0,
        local_weight: float = 0.1,
        temperature: float = 0.1,
        sample_num: int = 1024,
        global_weight: float = 1.0,
        warmup_epochs: float = 1.0,
        enqueue_len: int = 64,
        hard_sampling: bool = True,
        key_space: KeySpace = "projection",
        queue_negatives: QueueNegatives = "written",
        bscc_weight: float = 0.1,
        bscc_margin: float = 2.0,
        bscc_target: BsccTarget = "pseudo",
        bscc_detach: bool = False,
        ignore_index: int = IGNORE,
    ) -> None:
        super().__init__()
        if key_space not in ("projection", "feature"):
            raise ValueError(f"key_space must be 'projection' or 'feature', got {key_space!r}")
        if queue_negatives not in ("written", "all"):
            raise ValueError(f"queue_negatives must be 'written' or 'all', got {queue_negatives!r}")
        if bscc_target not in ("pseudo", "label"):
            raise ValueError(f"bscc_target must be 'pseudo' or 'label', got {bscc_target!r}")
        if temperature <= 0 or sample_num < 1 or enqueue_len < 1:
            raise ValueError("temperature must be > 0, sample_num and enqueue_len ≥ 1")
        self.bce_weight, self.dice_weight, self.seg_weight = bce_weight, dice_weight, seg_weight
        self.local_weight, self.temperature, self.sample_num = local_weight, temperature, sample_num
        self.global_weight, self.warmup_epochs = global_weight, warmup_epochs
        self.enqueue_len, self.hard_sampling = enqueue_len, hard_sampling
        self.key_space, self.queue_negatives = key_space, queue_negatives
        self.bscc_weight, self.bscc_margin = bscc_weight, bscc_margin
        self.bscc_target, self.bscc_detach = bscc_target, bscc_detach
        self.ignore_index = ignore_index

    def _targets(self, target: dict[str, Tensor] | Tensor, size: torch.Size) -> tuple[Tensor, Tensor, Tensor]:
        if not isinstance(target, dict) or not {"change", "t1", "t2"} <= set(target):
            raise ValueError(
                "ClearSCDLoss: target must be a dict with 'change', 't1' and 't2' label maps [N, H, W] (255 = ignore); "
                f"got {type(target).__name__}{' with keys ' + str(sorted(target)) if isinstance(target, dict) else ''}"
            )
        return tuple(check_target(target[k], size, f"ClearSCDLoss target[{k!r}]") for k in ("change", "t1", "t2"))

    def forward(
        self, outputs: dict[str, Tensor], target: dict[str, Tensor], epoch: float | None = None
    ) -> tuple[Tensor, dict[str, float]]:
        logits = outputs["logits"].float()
        change, y1, y2 = self._targets(target, logits.shape[-2:])
        z = logits[:, 1] - logits[:, 0]
        bce, dice = bcd_loss(z, change, self.ignore_index)
        seg1 = semantic_ce(outputs["semantic_t1"].float(), y1, self.ignore_index)
        seg2 = semantic_ce(outputs["semantic_t2"].float(), y2, self.ignore_index)
        local = global_ = bscc = _zero(z)
        if "features_t1" in outputs:
            local, global_, bscc = self._auxiliary(outputs, change, y1, y2, epoch)
        total = (
            self.bce_weight * bce
            + self.dice_weight * dice
            + self.seg_weight * (seg1 + seg2)
            + self.local_weight * local
            + self.global_weight * global_
            + self.bscc_weight * bscc
        )
        names = ("loss", "bcd_bce", "bcd_dice", "seg_t1", "seg_t2", "sacl_local", "sacl_global", "bscc")
        values = torch.stack([t.detach().float() for t in (total, bce, dice, seg1, seg2, local, global_, bscc)])
        return total, dict(zip(names, values.tolist()))

    def _auxiliary(
        self, outputs: dict[str, Tensor], change: Tensor, y1: Tensor, y2: Tensor, epoch: float | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        feats = (outputs["features_t1"], outputs["features_t2"])
        projs = (outputs["projections_t1"], outputs["projections_t2"])
        keys = projs if self.key_space == "projection" else feats
        size = feats[0].shape[-2:]
        low = (label_at(y1, size), label_at(y2, size))
        queue, count = outputs["memory_queue"], outputs["memory_count"]
        if keys[0].shape[1] != queue.shape[2]:
            raise ValueError(
                f"ClearSCDLoss: {self.key_space} keys have {keys[0].shape[1]} channels but the memory bank has "
                f"{queue.shape[2]} (key_space='feature' needs proj_dim == decoder channels)"
            )
        local = global_ = _zero(feats[0])
        if self.local_weight:
            local = local_contrast(
                projs, keys, low, temperature=self.temperature, sample_num=self.sample_num, ignore_index=self.ignore_index
            )
        if self.global_weight:
            if epoch is None or epoch >= self.warmup_epochs:
                global_ = global_contrast(
                    projs,
                    (outputs["semantic_low_t1"], outputs["semantic_low_t2"]),
                    low,
                    queue,
                    count,
                    hard_sampling=self.hard_sampling,
                    queue_negatives=self.queue_negatives,
                    ignore_index=self.ignore_index,
                )
            enqueue(queue, count, keys, low, enqueue_len=self.enqueue_len, ignore_index=self.ignore_index)
        bscc = _zero(feats[0])
        if self.bscc_weight:
            change_low = label_at(change, size)
            bscc = bscc_loss(
                feats,
                outputs["change_low"].float(),
                margin=self.bscc_margin,
                target=change_low if self.bscc_target == "label" else None,
                valid=change_low != self.ignore_index,
                detach=self.bscc_detach,
            )
        return local, global_, bscc
