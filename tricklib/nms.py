r"""Soft-NMS (Bodla et al. 2017): :func:`soft_nms` and the class-aware :func:`batched_soft_nms`.

Soft-NMS runs on CPU or CUDA in plain PyTorch: selection rounds over the overlapping pairs
(``_soft_nms_rounds`` and its helpers, here). When the optional package ``numba`` is
installed, CPU inputs go through a small compiled kernel instead (the private module
``tricklib/_soft_nms_kernel.py``): same arithmetic, same results, hundreds of times faster
on crowded scenes of 500 to 10,000 boxes, and within 2x of ``torchvision.ops.nms`` on an
AVX-512 CPU (``benchmarks/README.md``). ``tests/test_nms.py`` runs both paths.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ._checks import check_choice, check_finite, check_range, check_same_device, check_tensor
from ._soft_nms_kernel import _exp_negative_torch, numba  # numba is None when it is not installed
from .boxes import _check_box_values, _pair_iou

if numba is not None:
    from ._soft_nms_kernel import _soft_nms_kernel

SOFT_NMS_METHODS = ("linear", "gaussian", "hard")


def soft_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float = 0.3,
             sigma: float = 0.5, score_threshold: float = 0.001,
             method: str = "linear") -> tuple[torch.Tensor, torch.Tensor]:
    r"""Soft non-maximum suppression (Bodla et al. 2017, "Soft-NMS -- Improving Object
    Detection With One Line of Code").

    Repeatedly select the box :math:`M` with the highest *current* score (ties: the lower
    index first), then decay the score :math:`s_i` of every remaining box :math:`b_i`:

    .. math::
        \text{linear:}\quad & s_i \leftarrow s_i\,(1 - \mathrm{IoU}(M, b_i))
            \quad\text{if } \mathrm{IoU}(M, b_i) > N_t \text{ (else unchanged)} \\
        \text{gaussian:}\quad & s_i \leftarrow s_i\, e^{-\mathrm{IoU}(M, b_i)^2 / \sigma} \\
        \text{hard:}\quad & \text{remove } b_i \quad\text{if } \mathrm{IoU}(M, b_i) > N_t

    A box whose score falls below ``score_threshold`` is dropped. Equivalently: run the
    process to the end and keep the boxes selected with a score ``>= score_threshold``
    (selection scores never increase). So boxes that *start* below the threshold are
    never kept, also with ``method="hard"``, which with ``score_threshold=0`` (and
    non-negative scores) is exactly ``torchvision.ops.nms``. Boxes whose intersection is
    empty never interact (zero-area boxes interact with nothing).

    The result is the sequential algorithm's (same boxes, same order, same floating-point
    products) without its cost: the dense ``N x N`` IoU matrix is never formed. On CPU with
    ``numba`` installed, a compiled loop runs the sequential algorithm itself: boxes sit in
    a grid of cells by their top-left corner, stored cell after cell, so a selected box is
    compared only with the boxes of one run of cells per strip (those within one box size
    of it), each run one vectorised loop that computes the IoUs, applies the decays and
    drops boxes. Pairs of boxes that are both dropped before being selected are never
    looked at, and dropped boxes are moved out of a strip once they fill most of it. The
    current best box comes from a two-level table of block maxima. Otherwise (CUDA, or no
    numba) torch runs it in rounds over the overlapping pairs (found by a sweep in ``x1``
    order): a box whose current score beats every remaining box within two overlap steps is
    selected by the sequential algorithm before all of them, with that score, so all such
    boxes are selected in one round and their decays applied together. When the pairs of
    all boxes would not fit in a fixed budget (2^21 candidates, a few hundred MiB: 20,000
    proposals on one object make 2 x 10^8), they are formed for a block of the best-ranked
    boxes at a time, with the same results. The Gaussian weight
    :math:`e^{\mathrm{IoU}^2 \cdot (-1/\sigma)}` is evaluated in float64 and rounded once to
    the compute dtype, by the same ``exp`` in both paths (a table and a polynomial, within 1
    float64 ulp of libm's, so that the compiled loop vectorises; in torch the same float64
    operations, one by one), so both paths give the same bits, in float32 and in float64.
    ``benchmarks/soft_nms.py`` times both against ``torchvision.ops.nms``.

    Args:
        boxes: ``Tensor[N, 4]`` float (fp16/bf16/fp32/fp64), ``(x1, y1, x2, y2)``.
        scores: ``Tensor[N]`` float, same device; half types are computed in float32.
        iou_threshold: :math:`N_t` in [0, 1] for ``"linear"`` and ``"hard"``
            (unused by ``"gaussian"``), default 0.3 as in the paper.
        sigma: :math:`\sigma > 0` of the Gaussian decay, default 0.5.
        score_threshold: ``>= 0``; boxes scoring below it are dropped, default 0.001.
        method: ``"linear"`` (default), ``"gaussian"`` or ``"hard"``.

    Returns:
        ``(keep, kept_scores)``: ``Tensor[K]`` int64 indices into ``boxes`` in selection
        order (scores descending, ties by index) and ``Tensor[K]`` their scores when
        selected, in the dtype of ``scores``. Checked in ``tests/test_nms.py`` against a
        plain sequential loop (same order, same scores) and, for ``"hard"``, against
        ``torchvision.ops.nms``.
    """
    return _soft_nms(boxes, scores, None, iou_threshold, sigma, score_threshold, method)


def batched_soft_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor,
                     iou_threshold: float = 0.3, sigma: float = 0.5,
                     score_threshold: float = 0.001,
                     method: str = "linear") -> tuple[torch.Tensor, torch.Tensor]:
    r"""Class-aware :func:`soft_nms`: boxes with different ``idxs`` never interact.

    With :math:`c_i` the class of box :math:`b_i` and :math:`f` the decay of ``method``,
    selecting :math:`M` updates only its own class:

    .. math:: s_i \leftarrow s_i\, f(\mathrm{IoU}(M, b_i)) \quad\text{if } c_i = c_M

    Like ``torchvision.ops.batched_nms``, but without the coordinate-offset trick (which
    changes IoUs by rounding): pairs of different classes are simply never formed.

    Args:
        boxes, scores, iou_threshold, sigma, score_threshold, method: as in :func:`soft_nms`.
        idxs: ``Tensor[N]`` integer class (or image) of each box, same device.

    Returns:
        ``(keep, kept_scores)`` as in :func:`soft_nms`, over all classes together, sorted by
        kept score descending (ties: lower index first). Per class, the kept boxes and
        scores are those of :func:`soft_nms` on that class alone. ``method="hard"`` equals
        ``torchvision.ops.batched_nms`` (``tests/test_nms.py``).
    """
    check_tensor("idxs", idxs, ndim=1)
    if idxs.is_floating_point() or idxs.is_complex() or idxs.dtype == torch.bool:
        raise TypeError(f"idxs must be an integer tensor, got dtype {idxs.dtype}")
    return _soft_nms(boxes, scores, idxs, iou_threshold, sigma, score_threshold, method)


def _soft_nms(boxes, scores, idxs, iou_threshold, sigma, score_threshold, method):
    check_tensor("boxes", boxes, ndim=2, last_dim=4, floating=True)
    check_tensor("scores", scores, ndim=1, floating=True)
    if scores.shape[0] != boxes.shape[0]:
        raise ValueError(f"boxes and scores must have the same N, got {boxes.shape[0]} and {scores.shape[0]}")
    if idxs is None:
        check_same_device(boxes=boxes, scores=scores)
    else:
        if idxs.shape[0] != boxes.shape[0]:
            raise ValueError(f"boxes and idxs must have the same N, got {boxes.shape[0]} and {idxs.shape[0]}")
        check_same_device(boxes=boxes, scores=scores, idxs=idxs)
    check_range("iou_threshold", iou_threshold, 0.0, 1.0)
    check_range("sigma", sigma, 0.0, low_open=True)
    check_range("score_threshold", score_threshold, 0.0)
    check_choice("method", method, SOFT_NMS_METHODS)
    if numba is not None and boxes.is_cpu:
        return _soft_nms_numba(boxes, scores, idxs, iou_threshold, sigma, score_threshold, method)

    _check_box_values("boxes", boxes)
    check_finite("scores", scores)
    dtype = torch.float64 if torch.float64 in (boxes.dtype, scores.dtype) else torch.float32
    # Comparisons with the Python-float thresholds are done in float64, exactly as
    # torchvision's kernel compares its float IoU with a double threshold.
    candidates = torch.nonzero(scores.double() >= score_threshold).flatten()
    boxes = boxes[candidates].to(dtype)
    current = scores[candidates].to(dtype)
    if idxs is not None:
        idxs = idxs[candidates]
    if candidates.numel() == 0:
        return candidates, scores[candidates]

    order, lo, hi = _sweep_order(boxes, idxs)
    selected, kept_scores = _soft_nms_rounds(boxes, current, idxs, order, lo, hi, iou_threshold,
                                             sigma, score_threshold, method)
    return candidates[selected], kept_scores.to(scores.dtype)


def _sweep_order(boxes: torch.Tensor, idxs: torch.Tensor | None):
    """Sort key for the overlap sweep: ``x1``, with classes moved apart along x.

    Returns the order and, in that order, each box's interval ``[lo, hi]`` on the key
    axis; two boxes can only overlap when one's ``lo`` lies in the other's interval
    (the offsets are added in float64, which rounds monotonically, so no overlapping
    pair is missed; pairs of different classes are rejected exactly later).
    """
    lo, hi = boxes[:, 0].double(), boxes[:, 2].double()
    if idxs is not None:
        classes = torch.unique(idxs, return_inverse=True)[1]
        offset = classes * (hi.max() - lo.min() + 1)
        lo, hi = lo + offset, hi + offset
    lo, order = lo.sort()
    return order, lo, hi[order]


#: Candidate pairs (boxes whose x-ranges overlap) that the pure-torch Soft-NMS forms at once.
#: Each costs about 150 bytes at the peak (indices, gathered boxes, IoU), so a block of boxes
#: whose pairs fit in this needs a few hundred MiB however crowded the scene.
_PAIR_BUDGET = 1 << 21


def _soft_nms_rounds(boxes, scores, idxs, order, lo, hi, iou_threshold, sigma, score_threshold, method):
    """Soft-NMS in pure torch (any device): selection rounds over the overlapping pairs, by blocks.

    The pairs of all boxes can outgrow memory (20,000 proposals on one object make 2 x 10^8),
    so they are formed for a block at a time: the best-ranked remaining boxes whose candidate
    pairs fit in ``_PAIR_BUDGET`` (at least one box; all of them when they fit, as in most
    scenes), paired with every remaining box. Rounds then select within the block
    (:func:`_select_rounds`) until the best remaining box lies outside it, and the next block
    is formed from the boxes still remaining.
    """
    min_iou = 0.0 if method == "gaussian" else iou_threshold
    n = scores.numel()
    device = scores.device
    score = scores.clone()
    active = torch.ones(n, dtype=torch.bool, device=device)
    chosen_nodes: list[torch.Tensor] = []
    chosen_scores: list[torch.Tensor] = []
    while True:
        live = active[order]
        sweep = order[live]                   # the remaining boxes in sweep order
        if sweep.numel() == 0:
            break
        # candidates of sweep position p: positions p+1 .. ends[p]-1 (their lo lies in p's range)
        ends = torch.searchsorted(lo[live], hi[live], right=True)
        block = _block(score, active, sweep, ends)
        pair_i, pair_j = _block_pairs(sweep, ends, block)
        iou = _pair_iou(boxes[pair_i], boxes[pair_j])
        keep = iou.double() > min_iou
        if idxs is not None:
            keep &= idxs[pair_i] == idxs[pair_j]
        pair_i, pair_j, iou = pair_i[keep], pair_j[keep], iou[keep]
        if method == "linear":
            factor = 1 - iou
        elif method == "gaussian":
            # the weight is evaluated in float64 (iou * iou is exact there) with the compiled
            # kernel's exp, written out in torch ops, and rounded once: the same bits in both paths
            iou = iou.double()
            factor = _exp_negative_torch((iou * iou) * (-1.0 / sigma)).to(boxes.dtype)
        else:
            factor = None
        del iou, keep
        _select_rounds(score, active, block, pair_i, pair_j, factor, score_threshold, chosen_nodes, chosen_scores)
    selected, kept = torch.cat(chosen_nodes), torch.cat(chosen_scores)
    # The sequential loop selects in order of score (descending), ties by index.
    selected, by_index = selected.sort()
    kept, by_score = kept[by_index].sort(descending=True, stable=True)
    return selected[by_score], kept


def _ranked(score: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """Box indices by current score, descending, ties by lower index; the remaining boxes first."""
    return torch.sort(score.masked_fill(~active, -math.inf), descending=True, stable=True).indices


def _block(score, active, sweep, ends):
    """The best-ranked remaining boxes whose candidate pairs (with any remaining box) fit in the budget."""
    m = sweep.numel()
    device = sweep.device
    after = torch.arange(1, m + 1, device=device)
    later = ends - after  # a position's later candidates: positions p+1 .. ends[p]-1
    if int(later.sum()) <= _PAIR_BUDGET:
        return active.clone()  # all pairs fit (most scenes): one block, the rounds of old
    # and the earlier positions q whose range covers it (q + 1 <= p < ends[q]), counted by a
    # difference array; a prefix of the ranking whose counts sum to the budget has at most
    # that many pairs (a pair inside the block is counted twice)
    cover = torch.zeros(m + 1, dtype=torch.int64, device=device)
    cover.index_add_(0, after, torch.ones_like(after)).index_add_(0, ends, -torch.ones_like(ends))
    degree = torch.zeros_like(score, dtype=torch.int64)
    degree[sweep] = later + torch.cumsum(cover, 0)[:m]
    ranked = _ranked(score, active)[:m]
    size = max(1, int(torch.searchsorted(torch.cumsum(degree[ranked], 0), _PAIR_BUDGET, right=True)))
    block = torch.zeros_like(active)
    block[ranked[:size]] = True
    return block


def _ranges(owners: torch.Tensor, begins: torch.Tensor, counts: torch.Tensor):
    """``owners[k]`` repeated ``counts[k]`` times, beside ``begins[k], begins[k] + 1, ...``."""
    which = torch.repeat_interleave(torch.arange(owners.numel(), device=owners.device), counts)
    offsets = torch.cumsum(counts, 0) - counts
    return owners[which], torch.arange(which.numel(), device=owners.device) - offsets[which] + begins[which]


def _block_pairs(sweep, ends, block):
    """The candidate pairs ``(i, j)`` (box indices) with ``i`` or ``j`` in ``block``."""
    m = sweep.numel()
    after = torch.arange(1, m + 1, device=sweep.device)
    member = block[sweep]
    members = torch.nonzero(member).flatten()       # sweep positions of the block, ascending
    others = torch.nonzero(~member).flatten()
    # a block box pairs with all its later candidates ...
    first, second = _ranges(members, after[members], ends[members] - after[members])
    # ... a box outside the block with those that are block members: a slice of `members`
    begin = torch.searchsorted(members, after[others])
    outside, at = _ranges(others, begin, torch.searchsorted(members, ends[others]) - begin)
    return sweep[torch.cat([first, outside])], sweep[torch.cat([second, members[at]])]


def _neighbourhood_min(value: torch.Tensor, pair_i: torch.Tensor, pair_j: torch.Tensor) -> torch.Tensor:
    """``min`` of ``value`` over each node and its neighbours in the pair graph."""
    out = value.clone()
    out.scatter_reduce_(0, pair_i, value[pair_j], "amin")
    out.scatter_reduce_(0, pair_j, value[pair_i], "amin")
    return out


def _select_rounds(score, active, block, pair_i, pair_j, factor, score_threshold, chosen_nodes, chosen_scores):
    """Soft-NMS selection in parallel rounds (pure torch, any device), within one block.

    A round selects every box that beats all remaining boxes within two steps of the
    overlap graph (by current score, ties by lower index). Such a box is selected by the
    sequential algorithm before any of them with its current score, and no box gets two
    decays in one round, nor a decay before one that the sequential loop applies
    earlier, so the scores are the sequential loop's bit for bit. Selecting only some of
    these boxes in a round keeps that true, so a round selects those in ``block`` that
    also rank above every remaining box outside it: a better-ranked box within two steps
    of such a box is then in the block, and every pair (edge) that can matter has an end
    in the block, as the given pairs do. ``factor=None`` is hard NMS: overlapping boxes are
    removed. Updates ``score`` and ``active`` in place, appends to the two lists, and
    returns when no box of the block can be selected.
    """
    n = score.numel()
    position = torch.arange(n, device=score.device)
    rank = torch.empty_like(position)
    outside = active & ~block
    while True:
        rank[_ranked(score, active)] = position
        # the best rank outside the block: only block boxes ranked above it may be selected
        limit = rank.masked_fill(~outside, n).min()
        best = _neighbourhood_min(_neighbourhood_min(rank, pair_i, pair_j), pair_i, pair_j)
        chosen = active & block & (best == rank) & (rank < limit)
        if not chosen.any():
            return
        chosen_nodes.append(position[chosen])
        chosen_scores.append(score[chosen])
        from_i, from_j = chosen[pair_i], chosen[pair_j]
        target = torch.cat([pair_j[from_i], pair_i[from_j]])
        if factor is None:
            active[target] = False
        else:
            score[target] *= torch.cat([factor[from_i], factor[from_j]])
            active[target[score[target].double() < score_threshold]] = False
        active[chosen] = False
        outside &= active
        live = active[pair_i] & active[pair_j]
        pair_i, pair_j = pair_i[live], pair_j[live]
        factor = None if factor is None else factor[live]


def _soft_nms_numba(boxes, scores, idxs, iou_threshold, sigma, score_threshold, method):
    """Soft-NMS on CPU through the compiled kernel: the sequential algorithm itself, with the
    checks of the torch path. ``boxes`` and ``scores`` are CPU tensors, ``idxs`` or ``None``."""
    dtype = torch.float64 if torch.float64 in (boxes.dtype, scores.dtype) else torch.float32
    # (the conversion to the compute dtype keeps every value: it only widens)
    labels = _NO_LABELS if idxs is None else _as_array(idxs, torch.int64)
    problem, keep, kept = _soft_nms_kernel(_as_array(boxes, dtype), _as_array(scores, dtype), labels,
                                           SOFT_NMS_METHODS.index(method), float(iou_threshold),
                                           -1.0 / sigma, float(score_threshold), _KEY_LIKE[dtype])
    if problem:
        raise ValueError(("boxes must be finite (no NaN or inf)",
                          "boxes must be (x1, y1, x2, y2) with x2 >= x1 and y2 >= y1",
                          "scores must be finite (no NaN or inf)")[problem - 1])
    kept = torch.from_numpy(kept)
    return torch.from_numpy(keep), kept if kept.dtype == scores.dtype else kept.to(scores.dtype)


def _as_array(x: torch.Tensor, dtype: torch.dtype) -> np.ndarray:
    """``x`` as a C-contiguous numpy array of ``dtype``, without a copy where none is needed."""
    if x.requires_grad:
        x = x.detach()
    if x.dtype != dtype:
        x = x.to(dtype)
    return (x if x.is_contiguous() else x.contiguous()).numpy()


_NO_LABELS = np.empty(0, np.int64)
# the integer type of the kernel's score keys, by compute dtype
_KEY_LIKE = {torch.float32: np.empty(0, np.int32), torch.float64: np.empty(0, np.int64)}
