r"""Boxes for detection (the detection chapters of the book): IoU and the GIoU/DIoU/CIoU losses, Soft-NMS,
a COCO-style evaluator and crowded scenes.

Every box is ``(x1, y1, x2, y2)`` in pixels with ``x2 >= x1`` and ``y2 >= y1``; there is
no "+1 pixel" convention (a box from 0 to 10 is 10 wide, as in torchvision).

Soft-NMS runs on CPU or CUDA in plain PyTorch. When the optional package ``numba`` is
installed, CPU inputs go through a small compiled kernel instead: same arithmetic, same
results, hundreds of times faster on crowded scenes of 500 to 10,000 boxes, and within 2x
of ``torchvision.ops.nms`` on an AVX-512 CPU (``benchmarks/README.md``).
``tests/test_boxes.py`` runs both paths.
"""
from __future__ import annotations

import decimal
import math
from collections.abc import Sequence

import numpy as np
import torch

from ._checks import check_choice, check_finite, check_int, check_range, check_same_device, check_tensor

try:
    import numba
except ImportError:  # optional accelerator; without it the pure-torch path runs
    numba = None

SOFT_NMS_METHODS = ("linear", "gaussian", "hard")


def _check_box_values(name: str, boxes: torch.Tensor) -> None:
    check_finite(name, boxes)
    if boxes.numel() and (boxes[:, 2:] < boxes[:, :2]).any():
        raise ValueError(f"{name} must be (x1, y1, x2, y2) with x2 >= x1 and y2 >= y1")


def _check_boxes(name: str, boxes: object) -> None:
    check_tensor(name, boxes, ndim=2, last_dim=4, floating=True)
    _check_box_values(name, boxes)


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    r"""Pairwise intersection over union of two sets of boxes.

    .. math:: \mathrm{IoU}(A, B) = \frac{|A \cap B|}{|A| + |B| - |A \cap B|}

    Args:
        boxes1: ``Tensor[N, 4]`` float, ``(x1, y1, x2, y2)``.
        boxes2: ``Tensor[M, 4]`` float, same convention and device.

    Returns:
        ``Tensor[N, M]``, the IoU of every pair, computed and returned in the inputs'
        (promoted) dtype, float32 for float16/bfloat16 boxes: like torchvision, half
        inputs are computed in float32 (float16 areas overflow above 256 x 256 pixels,
        bfloat16 ones keep 3 digits). Two zero-area boxes give ``0 / 0 = nan``, as in
        torchvision. Equal to ``torchvision.ops.box_iou`` (``tests/test_boxes.py``; for half
        inputs to float16's rounding, since torchvision subtracts the corners before converting).
    """
    check_tensor("boxes1", boxes1, ndim=2, last_dim=4, floating=True)
    check_tensor("boxes2", boxes2, ndim=2, last_dim=4, floating=True)
    check_same_device(boxes1=boxes1, boxes2=boxes2)
    _check_box_values("boxes1", boxes1)
    _check_box_values("boxes2", boxes2)
    dtype = torch.promote_types(boxes1.dtype, boxes2.dtype)
    dtype = torch.float32 if dtype.itemsize < 4 else dtype  # (a no-op for float32 or float64 boxes)
    boxes1, boxes2 = boxes1.to(dtype), boxes2.to(dtype)
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    top_left = torch.max(boxes1[:, None, :2], boxes2[:, :2])
    bottom_right = torch.min(boxes1[:, None, 2:], boxes2[:, 2:])
    wh = (bottom_right - top_left).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area1[:, None] + area2 - inter)


def generalized_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    r"""Pairwise generalized IoU (Rezatofighi et al. 2019) of two sets of boxes.

    .. math:: \mathrm{GIoU}(A, B) = \mathrm{IoU}(A, B) - \frac{|C \setminus (A \cup B)|}{|C|}

    with :math:`C` the smallest box enclosing both. In :math:`(-1, 1]`: unlike IoU, which is
    0 for every pair that does not overlap, it still says how far apart they are.

    Args:
        boxes1: ``Tensor[N, 4]`` float, ``(x1, y1, x2, y2)``.
        boxes2: ``Tensor[M, 4]`` float, same convention and device.

    Returns:
        ``Tensor[N, M]``, in the dtype :func:`box_iou` uses (float32 for half inputs). Two
        zero-area boxes give NaN, as in torchvision. Equal to
        ``torchvision.ops.generalized_box_iou`` (``tests/test_boxes.py``).
    """
    iou = box_iou(boxes1, boxes2)
    boxes1, boxes2 = boxes1.to(iou.dtype), boxes2.to(iou.dtype)
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    wh = (torch.min(boxes1[:, None, 2:], boxes2[:, 2:]) - torch.max(boxes1[:, None, :2], boxes2[:, :2])).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1[:, None] + area2 - inter
    cwh = torch.max(boxes1[:, None, 2:], boxes2[:, 2:]) - torch.min(boxes1[:, None, :2], boxes2[:, :2])
    enclosing = cwh[..., 0] * cwh[..., 1]
    return iou - (enclosing - union) / enclosing


def _loss_inputs(boxes1: object, boxes2: object) -> tuple[torch.Tensor, torch.Tensor, torch.dtype]:
    """Check a box-regression loss's inputs: the boxes to compute with (half precision in
    float32) and the dtype to return the loss in."""
    check_tensor("boxes1", boxes1, last_dim=4, floating=True)
    check_tensor("boxes2", boxes2, last_dim=4, floating=True)
    check_same_device(boxes1=boxes1, boxes2=boxes2)
    if boxes1.shape != boxes2.shape:
        raise ValueError(f"boxes1 and boxes2 must have the same shape [..., 4] (box i against box i), "
                         f"got {tuple(boxes1.shape)} and {tuple(boxes2.shape)}")
    check_finite("boxes1", boxes1)
    check_finite("boxes2", boxes2)
    out = torch.promote_types(boxes1.dtype, boxes2.dtype)
    compute = torch.float32 if out.itemsize < 4 else out
    return boxes1.to(compute), boxes2.to(compute), out


def _iou_parts(boxes1: torch.Tensor, boxes2: torch.Tensor, eps: float):
    """IoU of box i with box i, and both boxes' corners (for the penalty terms)."""
    x1, y1, x2, y2 = boxes1.unbind(dim=-1)
    x1g, y1g, x2g, y2g = boxes2.unbind(dim=-1)
    iw = torch.min(x2, x2g) - torch.max(x1, x1g)
    ih = torch.min(y2, y2g) - torch.max(y1, y1g)
    # zero (and a zero gradient) unless both overlaps are positive, as torchvision's mask
    inter = torch.where((iw > 0) & (ih > 0), iw * ih, 0.0)
    union = (x2 - x1) * (y2 - y1) + (x2g - x1g) * (y2g - y1g) - inter
    return inter / (union + eps), union, (x1, y1, x2, y2), (x1g, y1g, x2g, y2g)


def _reduced(loss: torch.Tensor, reduction: str, dtype: torch.dtype) -> torch.Tensor:
    from .losses import reduce_loss
    return reduce_loss(loss, reduction).to(dtype)


def giou_loss(boxes1: torch.Tensor, boxes2: torch.Tensor, reduction: str = "none",
              eps: float = 1e-7) -> torch.Tensor:
    r"""Generalized-IoU loss (Rezatofighi et al. 2019) between box i of ``boxes1`` and box i of ``boxes2``.

    .. math:: \mathcal L_{\mathrm{GIoU}} = 1 - \mathrm{IoU} + \frac{|C| - |A \cup B|}{|C|}

    In :math:`[0, 2)`. The IoU loss :math:`1 - \mathrm{IoU}` is flat at 1 (zero gradient)
    whenever prediction and target do not overlap; the enclosing-box term :math:`C` still
    pulls them together. Paper: +2.2 AP (YOLOv3, PASCAL VOC) over MSE.

    Args:
        boxes1: ``Tensor[..., 4]`` float, predicted ``(x1, y1, x2, y2)``.
        boxes2: ``Tensor[..., 4]`` float, targets, same shape and device.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"`` (the mean of no boxes is 0).
        eps: :math:`\epsilon` added to denominators (torchvision's default).

    Returns:
        The loss per box (``Tensor[...]``) or reduced, in the inputs' dtype (half inputs are
        computed in float32). Equal to ``torchvision.ops.generalized_box_iou_loss``, values
        and gradients (``tests/test_boxes.py``).
    """
    boxes1, boxes2, dtype = _loss_inputs(boxes1, boxes2)
    iou, union, (x1, y1, x2, y2), (x1g, y1g, x2g, y2g) = _iou_parts(boxes1, boxes2, eps)
    enclosing = (torch.max(x2, x2g) - torch.min(x1, x1g)) * (torch.max(y2, y2g) - torch.min(y1, y1g))
    loss = 1 - iou + (enclosing - union) / (enclosing + eps)
    return _reduced(loss, reduction, dtype)


def _diou(boxes1: torch.Tensor, boxes2: torch.Tensor, eps: float):
    iou, _, (x1, y1, x2, y2), (x1g, y1g, x2g, y2g) = _iou_parts(boxes1, boxes2, eps)
    diagonal2 = (torch.max(x2, x2g) - torch.min(x1, x1g)) ** 2 + (torch.max(y2, y2g) - torch.min(y1, y1g)) ** 2 + eps
    centres2 = ((x1 + x2 - x1g - x2g) / 2) ** 2 + ((y1 + y2 - y1g - y2g) / 2) ** 2
    return 1 - iou + centres2 / diagonal2, iou


def diou_loss(boxes1: torch.Tensor, boxes2: torch.Tensor, reduction: str = "none",
              eps: float = 1e-7) -> torch.Tensor:
    r"""Distance-IoU loss (Zheng et al. 2020) between box i of ``boxes1`` and box i of ``boxes2``.

    .. math:: \mathcal L_{\mathrm{DIoU}} = 1 - \mathrm{IoU} + \frac{\rho^2(b, b^{gt})}{c^2}

    with :math:`\rho` the distance between the two centres and :math:`c` the diagonal of the
    enclosing box: it pulls the centres together directly, so it converges faster than
    GIoU, which first grows the predicted box until it overlaps.

    Args:
        boxes1: ``Tensor[..., 4]`` float, predicted ``(x1, y1, x2, y2)``.
        boxes2: ``Tensor[..., 4]`` float, targets, same shape and device.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"`` (the mean of no boxes is 0).
        eps: :math:`\epsilon` added to denominators (torchvision's default).

    Returns:
        As :func:`giou_loss`. Equal to ``torchvision.ops.distance_box_iou_loss``.
    """
    boxes1, boxes2, dtype = _loss_inputs(boxes1, boxes2)
    return _reduced(_diou(boxes1, boxes2, eps)[0], reduction, dtype)


def ciou_loss(boxes1: torch.Tensor, boxes2: torch.Tensor, reduction: str = "none",
              eps: float = 1e-7) -> torch.Tensor:
    r"""Complete-IoU loss (Zheng et al. 2020): DIoU plus an aspect-ratio term.

    .. math:: \mathcal L_{\mathrm{CIoU}} = \mathcal L_{\mathrm{DIoU}} + \alpha v,\quad
        v = \frac{4}{\pi^2}\Bigl(\arctan\frac{w^{gt}}{h^{gt}} - \arctan\frac{w}{h}\Bigr)^2,\quad
        \alpha = \frac{v}{1 - \mathrm{IoU} + v}

    :math:`\alpha` is treated as a constant (no gradient), as in the paper's code and
    torchvision. The angle of a zero-size box (:math:`w = h = 0`) is taken as 0, so its
    loss and gradient stay finite (torchvision gives NaN there).

    Args:
        boxes1: ``Tensor[..., 4]`` float, predicted ``(x1, y1, x2, y2)``.
        boxes2: ``Tensor[..., 4]`` float, targets, same shape and device.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"`` (the mean of no boxes is 0).
        eps: :math:`\epsilon` added to denominators (torchvision's default).

    Returns:
        As :func:`giou_loss`. Equal to ``torchvision.ops.complete_box_iou_loss``.
    """
    boxes1, boxes2, dtype = _loss_inputs(boxes1, boxes2)
    diou, iou = _diou(boxes1, boxes2, eps)

    def angle(boxes: torch.Tensor) -> torch.Tensor:
        w, h = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
        point = (w == 0) & (h == 0)
        return torch.atan2(w, torch.where(point, 1.0, h))  # = atan(w / h) for h > 0

    v = (4 / math.pi ** 2) * (angle(boxes2) - angle(boxes1)) ** 2
    with torch.no_grad():
        alpha = v / (1 - iou + v + eps)
    return _reduced(diou + alpha * v, reduction, dtype)


# --------------------------------------------------------------------------- Soft-NMS


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
        selected, in the dtype of ``scores``. Checked in ``tests/test_boxes.py`` against a
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
        ``torchvision.ops.batched_nms`` (``tests/test_boxes.py``).
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


def _pair_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of ``a[k]`` and ``b[k]``, with the operations of ``box_iou`` (bit for bit)."""
    w = (torch.min(a[:, 2], b[:, 2]) - torch.max(a[:, 0], b[:, 0])).clamp(min=0)
    h = (torch.min(a[:, 3], b[:, 3]) - torch.max(a[:, 1], b[:, 1])).clamp(min=0)
    inter = w * h
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / (area_a + area_b - inter)


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


def _exp_constants(steps: int) -> tuple[float, float, float, np.ndarray]:
    """For exp(x) = 2^(k / steps) e^r: ``steps / ln 2``; ``ln 2 / steps`` split into a 28-bit
    high part (k times it is exact) and the rest; and the table of 2^(j / steps), each
    correctly rounded (from 40-digit decimals)."""
    with decimal.localcontext() as context:
        context.prec = 40
        ln2 = decimal.Decimal(2).ln()
        mantissa, exponent = math.frexp(float(ln2 / steps))
        high = math.ldexp(math.floor(math.ldexp(mantissa, 28)), exponent - 28)
        table = [float(decimal.Decimal(2) ** (decimal.Decimal(j) / steps)) for j in range(steps)]
        return float(steps / ln2), high, float(ln2 / steps - decimal.Decimal(high)), np.array(table)


_EXP_SCALE, _EXP_LN2_HIGH, _EXP_LN2_LOW, _EXP_TABLE = _exp_constants(64)
# exp(x) = 0 below this (the result would be subnormal); above it 2^(k >> 6) is a normal float64
_EXP_LOWEST = -708.0
_EXP_SHIFT = 6755399441055744.0  # 1.5 * 2^52: adding it rounds to an integer, kept in the low bits
_EXP_SHIFT_BITS = 4843621399236968448  # the bits of _EXP_SHIFT as an int64
# e^r - 1 = r (1 + r (1/2 + r (1/6 + r (1/24 + r (1/120 + r / 720))))), the Horner steps' constants
_EXP_HORNER = (1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0)


def _exp_negative_torch(x: torch.Tensor) -> torch.Tensor:
    """``exp(x)`` for float64 ``x <= 0``, operation for operation the compiled ``_exp_negative``.

    Every step is one IEEE float64 operation (no fused multiply-add) on any device, so the
    result has the same bits as the compiled kernel's: both Soft-NMS paths decay by the same
    Gaussian weights (``tests/test_boxes.py`` checks 10^6 arguments).
    """
    clamped = x.clamp(min=_EXP_LOWEST)
    shifted = clamped * _EXP_SCALE + _EXP_SHIFT
    k = shifted - _EXP_SHIFT
    r = (clamped - k * _EXP_LN2_HIGH) - k * _EXP_LN2_LOW
    p = torch.full_like(r, _EXP_HORNER[0])
    for c in _EXP_HORNER[1:]:
        p = p * r + c
    p = p * r
    k_int = shifted.view(torch.int64) - _EXP_SHIFT_BITS
    t = torch.as_tensor(_EXP_TABLE, device=x.device)[k_int & 63]
    scale = (((k_int >> 6) + 1023) << 52).view(torch.float64)
    return ((t + t * p) * scale).masked_fill(x < _EXP_LOWEST, 0.0)

if numba is not None:

    @numba.njit(cache=True)
    def _input_problem(boxes, scores):
        # 0 if valid, else the first failing check: 1 boxes not finite, 2 a box with
        # x2 < x1 or y2 < y1, 3 scores not finite
        finite, ordered = True, True
        for b in range(boxes.shape[0]):
            finite &= np.isfinite(boxes[b, 0]) & np.isfinite(boxes[b, 1])
            finite &= np.isfinite(boxes[b, 2]) & np.isfinite(boxes[b, 3])
            ordered &= (boxes[b, 2] >= boxes[b, 0]) & (boxes[b, 3] >= boxes[b, 1])
        if not finite:
            return 1
        if not ordered:
            return 2
        for b in range(scores.shape[0]):
            finite &= np.isfinite(scores[b])
        return 0 if finite else 3

    @numba.njit(cache=True, inline="always")
    def _exp_negative(x):
        # exp(x) for x <= 0 in float64, within 1 ulp of libm's, branch-free so that a loop
        # calling it vectorises (libm's exp does not): exp(x) = 2^(k / 64) e^r with k the integer
        # nearest 64 x / ln 2 (found by adding 1.5 * 2^52, whose last bits then hold k), so
        # |r| <= ln 2 / 128; 2^(k / 64) = 2^(k >> 6) times a table entry, and e^r its Taylor
        # polynomial of degree 5 (truncation error < 4e-17); 0 below -708 (where exp is
        # subnormal). Rounded to float32 it gives libm's float32 value but for about one
        # argument in 10^8 (tests/test_boxes.py). _exp_negative_torch is the same in torch ops.
        clamped = max(x, _EXP_LOWEST)
        shifted = clamped * _EXP_SCALE + _EXP_SHIFT
        k = shifted - _EXP_SHIFT
        r = (clamped - k * _EXP_LN2_HIGH) - k * _EXP_LN2_LOW
        p = 1.0 / 720.0  # e^r - 1 by Horner's rule (the constants of _EXP_HORNER)
        p = p * r + 1.0 / 120.0
        p = p * r + 1.0 / 24.0
        p = p * r + 1.0 / 6.0
        p = p * r + 0.5
        p = p * r + 1.0
        p = p * r
        k_int = np.int64(np.float64(shifted).view(np.int64) - _EXP_SHIFT_BITS)  # k
        t = _EXP_TABLE[k_int & 63]
        value = (t + t * p) * np.int64(((k_int >> 6) + 1023) << 52).view(np.float64)
        return 0.0 if x < _EXP_LOWEST else value

    @numba.njit(cache=True, inline="always")
    def _largest(values):
        best = values[0]
        for u in range(1, values.shape[0]):
            best = max(best, values[u])
        return best

    @numba.njit(cache=True, inline="always")
    def _overlap(px1, py1, px2, py2, area, x1, y1, x2, y2, other_area, zero):
        # IoU with the operations of _pair_iou (bit for bit); 0 / 0 = nan for zero-area boxes
        w = max(min(px2, x2) - max(px1, x1), zero)
        h = max(min(py2, y2) - max(py1, y1), zero)
        inter = w * h
        return inter / (area + other_area - inter)

    @numba.njit(cache=True, inline="always")
    def _settle(score, x2, v, new_score, score_threshold):
        # score[v] = new_score, branch-free; a box that falls below the threshold is done: its
        # score becomes -inf and its x2 -inf, so that it overlaps nothing. Returns whether it is done.
        done = new_score < score_threshold
        score[v] = -np.inf if done else new_score
        x2[v] = -np.inf if done else x2[v]
        return done

    @numba.njit(cache=True)
    def _compact(row, columns, begins, slot_of, sx1, sy1, sx2, sy2, sarea, score, snode, slabel):
        # Moves the live boxes of one strip (cell starts begins[row:row + columns + 1]) to its
        # front, cell by cell and in order; the slots left behind become done. Returns the
        # slots that changed.
        low, high = begins[row], begins[row + columns]
        write = low
        for column in range(columns):
            first, last = begins[row + column], begins[row + column + 1]
            begins[row + column] = write
            for v in range(first, last):
                if score[v] != -np.inf:
                    sx1[write], sy1[write], sx2[write], sy2[write] = sx1[v], sy1[v], sx2[v], sy2[v]
                    sarea[write], score[write], slabel[write] = sarea[v], score[v], slabel[v]
                    snode[write] = snode[v]
                    slot_of[snode[v]] = write
                    write += 1
        begins[row + columns] = write
        score[write:high] = -np.inf
        sx2[write:high] = -np.inf
        return low, high

    @numba.njit(cache=True, error_model="numpy")
    def _soft_nms_kernel(boxes, all_scores, all_labels, method, iou_threshold, gaussian_scale,
                         score_threshold, key_like):
        # Returns (problem, keep, kept): problem is _input_problem's code, 0 if the input is valid.
        # all_labels: one class per box, or empty for one class. gaussian_scale = -1 / sigma.
        # key_like: an empty integer array as wide as the boxes' float type.
        problem = _input_problem(boxes, all_scores)
        candidates = np.flatnonzero(all_scores.astype(np.float64) >= score_threshold)
        n = candidates.shape[0]
        scores = all_scores[candidates]
        if problem or n == 0:
            return problem, candidates, scores
        dtype = boxes.dtype.type
        zero, one = dtype(0), dtype(1)
        several = all_labels.shape[0] > 0
        labels = all_labels[candidates] if several else np.zeros(n, np.int64)
        several = several and labels.min() != labels.max()

        # A grid in float64: strips by y1, columns by x1, and every box in the cell of its
        # top-left corner. Classes are moved apart along x, so that a cell holds one class.
        # The boxes that may overlap a box lie in one run of cells per strip (those whose
        # corner can be within one box size of it): only they are ever compared with it.
        shift = np.zeros(n)
        if several:
            by_label = np.argsort(labels)
            span = float(boxes[:, 2].max()) - float(boxes[:, 0].min()) + 1.0
            rank = 0
            for r in range(1, n):
                rank += labels[by_label[r]] != labels[by_label[r - 1]]
                shift[by_label[r]] = rank * span
        x_low, x_high, y_low, y_high = np.inf, -np.inf, np.inf, -np.inf
        widths, heights, tallest = 0.0, 0.0, 0.0
        for c in range(n):
            b = candidates[c]
            x, y = float(boxes[b, 0]) + shift[c], float(boxes[b, 1])
            x_low, x_high, y_low, y_high = min(x_low, x), max(x_high, x), min(y_low, y), max(y_high, y)
            width = float(boxes[b, 2]) - float(boxes[b, 0])
            height = float(boxes[b, 3]) - float(boxes[b, 1])
            widths, heights, tallest = widths + width, heights + height, max(tallest, height)
        # strips about one box high; narrow columns (a run of them is as cheap as one cell),
        # at most 2 sqrt(n) + 1 strips and 4 n cells in all
        cell_height = max(heights / n, (y_high - y_low) / (2 * math.sqrt(n)), 1e-300)
        strips = int((y_high - y_low) / cell_height) + 1
        cell_width = max(widths / n / 4, (x_high - x_low) * strips / (4 * n), 1e-300)
        columns = int((x_high - x_low) / cell_width) + 1
        # (cells are found by multiplying with the inverse: monotone, like the division)
        per_height, per_width = 1.0 / cell_height, 1.0 / cell_width
        cell_of = np.empty(n, np.int64)
        start = np.zeros(strips * columns + 1, np.int64)
        reach = np.zeros(strips)  # the widest box of each strip
        bottom = np.full(strips, -np.inf)  # and the largest y2
        for c in range(n):
            b = candidates[c]
            column = min(int((float(boxes[b, 0]) + shift[c] - x_low) * per_width), columns - 1)
            strip = min(int((float(boxes[b, 1]) - y_low) * per_height), strips - 1)
            cell_of[c] = strip * columns + column
            start[cell_of[c] + 1] += 1
            reach[strip] = max(reach[strip], float(boxes[b, 2]) - float(boxes[b, 0]))
            bottom[strip] = max(bottom[strip], float(boxes[b, 3]))
        for cell in range(strips * columns):
            start[cell + 1] += start[cell]
        # Per strip, where each of its cells starts and (last) where its boxes end: the
        # strip's done boxes can be moved out of that range (_compact).
        row = columns + 1
        begins = np.empty(strips * row, np.int64)
        for strip in range(strips):
            begins[strip * row:strip * row + row] = start[strip * columns:strip * columns + row]

        # The boxes cell by cell (in index order within a cell) in slots: a run of cells is
        # a range of slots. The current scores are split into blocks of slots, each block's
        # largest score cached. The slot arrays are padded (with done boxes) to whole blocks
        # and one more vector.
        bits = max(3, int(round(math.log2(math.sqrt(n)) + 0.5)))  # blocks of about 1.4 sqrt(n)
        size = 1 << bits
        blocks = (n + size - 1) // size
        slots = blocks * size + 8
        fill = start[:-1]
        slot_of = np.empty(n, np.int64)
        sx1, sy1 = np.zeros(slots, boxes.dtype), np.zeros(slots, boxes.dtype)
        sx2, sy2 = np.full(slots, -np.inf, boxes.dtype), np.full(slots, -np.inf, boxes.dtype)
        sarea = np.full(slots, np.inf, boxes.dtype)
        score = np.full(slots, -np.inf, boxes.dtype)
        snode = np.full(slots, n, np.int64)
        slabel = np.zeros(slots, np.int64)
        for c in range(n):
            b = candidates[c]
            slot = fill[cell_of[c]]
            fill[cell_of[c]] += 1
            slot_of[c], snode[slot], slabel[slot] = slot, c, labels[c]
            sx1[slot], sy1[slot] = boxes[b, 0], boxes[b, 1]
            sx2[slot], sy2[slot] = boxes[b, 2], boxes[b, 3]
            sarea[slot] = (boxes[b, 2] - boxes[b, 0]) * (boxes[b, 3] - boxes[b, 1])
            score[slot] = scores[c] + zero  # (-0.0 becomes 0.0)
        # Scores are >= 0 or -inf (done), so as integers their bits sort like them: the
        # maxima are taken on integers, which vectorise better.
        key = score.view(key_like.dtype)
        block_best = np.empty(blocks, key_like.dtype)
        for block in range(blocks):
            block_best[block] = _largest(key[block * size:block * size + size])

        min_iou = 0.0 if method == 1 else iou_threshold
        selected = np.empty(n, np.int64)
        kept = np.empty(n, boxes.dtype)
        k = 0
        while True:
            # the best box: highest score, ties the lowest index (as argmax); almost always
            # one block holds the highest score
            top = _largest(block_best)
            first_block, count = blocks, 0
            for block in range(blocks):
                first_block = min(first_block, block if block_best[block] == top else blocks)
                count += block_best[block] == top
            i = n
            for block in range(first_block, blocks if count > 1 else first_block + 1):
                offset = block * size
                keys, nodes = key[offset:offset + size], snode[offset:offset + size]
                for u in range(size):
                    i = min(i, nodes[u] if keys[u] == top else i)
            best = score[slot_of[i]]
            if best < score_threshold:
                break
            selected[k], kept[k] = i, best
            k += 1
            p = slot_of[i]
            px1, py1, px2, py2, area, label = sx1[p], sy1[p], sx2[p], sy2[p], sarea[p], slabel[p]
            score[p], sx2[p] = -np.inf, -np.inf  # a done box overlaps nothing
            block = p >> bits
            block_best[block] = _largest(key[block * size:block * size + size])
            # the runs of cells whose boxes can overlap box i (bounds loosened against rounding)
            x, y = float(px1) + shift[i], float(py1)
            slack = 1e-9 * (abs(x) + abs(y) + tallest + cell_width + cell_height)
            first = int(min(max((y - tallest - slack - y_low) * per_height, 0.0), strips - 1))
            last = int(min(max((float(py2) + slack - y_low) * per_height, 0.0), strips - 1))
            right = int(min(max((x + (float(px2) - float(px1)) + slack - x_low) * per_width, 0.0),
                                columns - 1))
            for strip in range(first, last + 1):
                if bottom[strip] <= float(py1):  # no box of the strip reaches down to box i
                    continue
                left = int(min(max((x - reach[strip] - slack - x_low) * per_width, 0.0), columns - 1))
                begin, end = begins[strip * row + left], begins[strip * row + right + 1]
                if begin == end:
                    continue
                # Every box of the run, branch-free, in whole vectors of 8 (lanes past the
                # end change nothing); unsigned indices (never wrapped around) let these
                # loops vectorise. A box interacts with i if their IoU > min_iou (same class).
                # One loop per decay, written out: with a branch on the method inside the
                # loop it stays scalar, and a shared helper taking box i as a tuple made the
                # loops 2x slower.
                low, high = np.uint64(begin), np.uint64(end)
                stop = np.uint64(begin + ((end - begin + 7) & -8))
                hits, done = 0, 0
                if method == 0:  # linear
                    for v in range(low, stop):
                        overlap = _overlap(px1, py1, px2, py2, area, sx1[v], sy1[v], sx2[v], sy2[v],
                                           sarea[v], zero)
                        hit = (overlap > min_iou) & (slabel[v] == label) & (v < high)
                        hits += hit
                        decayed = score[v] * (one - overlap) if hit else score[v]
                        done += _settle(score, sx2, v, decayed, score_threshold) & (v < high)
                elif method == 2:  # hard
                    for v in range(low, stop):
                        overlap = _overlap(px1, py1, px2, py2, area, sx1[v], sy1[v], sx2[v], sy2[v],
                                           sarea[v], zero)
                        hit = (overlap > min_iou) & (slabel[v] == label) & (v < high)
                        hits += hit
                        removed = -np.inf if hit else score[v]
                        done += _settle(score, sx2, v, removed, score_threshold) & (v < high)
                else:  # gaussian: the weight in float64, rounded as in _soft_nms_rounds
                    for v in range(low, stop):
                        overlap = _overlap(px1, py1, px2, py2, area, sx1[v], sy1[v], sx2[v], sy2[v],
                                           sarea[v], zero)
                        hit = (overlap > min_iou) & (slabel[v] == label) & (v < high)
                        hits += hit
                        wide = np.float64(overlap)
                        weight = dtype(_exp_negative((wide * wide) * gaussian_scale))
                        decayed = score[v] * weight if hit else score[v]
                        done += _settle(score, sx2, v, decayed, score_threshold) & (v < high)
                if hits == 0:
                    continue
                if 2 * done > end - begin and end - begin >= 16:  # mostly done: move them out
                    begin, end = _compact(strip * row, columns, begins, slot_of, sx1, sy1, sx2, sy2,
                                          sarea, score, snode, slabel)
                for block in range(begin >> bits, ((end - 1) >> bits) + 1):
                    block_best[block] = _largest(key[block * size:block * size + size])
        return 0, candidates[selected[:k]], kept[:k]


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


# --------------------------------------------------------------------------- evaluation


def detection_metrics(pred_boxes: Sequence[torch.Tensor], pred_scores: Sequence[torch.Tensor],
                      gt_boxes: Sequence[torch.Tensor], *, iou_thresholds: Sequence[float] = (0.5,),
                      max_detections: int = 100) -> dict[str, torch.Tensor]:
    r"""COCO-style average precision and recall of one class over a list of images.

    Per image, the ``max_detections`` highest-scoring predictions are matched greedily in
    score order: each takes the still unmatched ground-truth box of highest IoU, if that
    IoU is :math:`\ge t`; each ground truth is matched at most once. Over all images,
    predictions sorted by score give precision :math:`P` and recall :math:`R`; precision
    is made monotone and read at the 101 recall levels :math:`r \in \{0, 0.01, ..., 1\}`:

    .. math:: \mathrm{AP}_t = \frac{1}{101} \sum_{r} \max_{R_k \ge r} P_k

    (0 where recall :math:`r` is never reached). This is ``COCOeval`` (pycocotools) with one
    category, one area range ("all"), no crowd boxes and ``maxDets=[max_detections]``
    (Lin et al. 2014, "Microsoft COCO: Common Objects in Context").

    Args:
        pred_boxes: per image, ``Tensor[D_i, 4]`` float ``(x1, y1, x2, y2)``.
        pred_scores: per image, ``Tensor[D_i]`` float.
        gt_boxes: per image, ``Tensor[G_i, 4]`` float ``(x1, y1, x2, y2)``.
        iou_thresholds: the IoU thresholds :math:`t` in [0, 1], default ``(0.5,)``
            (COCO's mAP uses ``0.5, 0.55, ..., 0.95``).
        max_detections: predictions kept per image, default 100 (COCO's).

    Returns:
        ``{"ap": Tensor[T], "recall": Tensor[T]}`` float64, one value per threshold;
        ``nan`` when there is no ground truth at all (COCO reports -1). Equal to
        pycocotools' ``COCOeval`` to 1e-6 on random scenes (``tests/test_boxes.py``).
    """
    for name, value in (("pred_boxes", pred_boxes), ("pred_scores", pred_scores), ("gt_boxes", gt_boxes)):
        if not isinstance(value, Sequence):
            raise TypeError(f"{name} must be a list of tensors (one per image), got {type(value).__name__}")
    if not len(pred_boxes) == len(pred_scores) == len(gt_boxes):
        raise ValueError("pred_boxes, pred_scores and gt_boxes must have one entry per image, got "
                         f"{len(pred_boxes)}, {len(pred_scores)} and {len(gt_boxes)}")
    if not len(iou_thresholds):
        raise ValueError("iou_thresholds must hold at least one threshold")
    for t in iou_thresholds:
        check_range("iou_thresholds", t, 0.0, 1.0)
    max_detections = check_int("max_detections", max_detections, 1)
    # COCO's matching threshold is min(t, 1 - 1e-10)
    thresholds = torch.tensor([min(t, 1 - 1e-10) for t in iou_thresholds], dtype=torch.float64)

    all_scores, all_matched, num_gt = [], [], 0
    for image, (boxes, scores, gts) in enumerate(zip(pred_boxes, pred_scores, gt_boxes)):
        _check_boxes(f"pred_boxes[{image}]", boxes)
        _check_boxes(f"gt_boxes[{image}]", gts)
        check_tensor(f"pred_scores[{image}]", scores, ndim=1, floating=True)
        check_finite(f"pred_scores[{image}]", scores)
        if scores.shape[0] != boxes.shape[0]:
            raise ValueError(f"pred_boxes[{image}] and pred_scores[{image}] must have the same length, "
                             f"got {boxes.shape[0]} and {scores.shape[0]}")
        scores = scores.detach().cpu().double()
        order = torch.sort(scores, descending=True, stable=True).indices[:max_detections]
        iou = box_iou(boxes.detach().cpu().double()[order], gts.detach().cpu().double())
        all_scores.append(scores[order])
        all_matched.append(_greedy_match(iou.nan_to_num(0.0), thresholds))
        num_gt += gts.shape[0]

    num_thresholds = len(thresholds)
    if num_gt == 0:
        nan = torch.full((num_thresholds,), math.nan, dtype=torch.float64)
        return {"ap": nan, "recall": nan.clone()}
    scores = torch.cat(all_scores)
    if scores.numel() == 0:
        zero = torch.zeros(num_thresholds, dtype=torch.float64)
        return {"ap": zero, "recall": zero.clone()}
    matched = torch.cat(all_matched, 1)[:, torch.sort(scores, descending=True, stable=True).indices]
    tp = matched.cumsum(1).double()
    fp = (~matched).cumsum(1).double()
    recall = tp / num_gt
    precision = tp / (fp + tp + np.spacing(1))
    precision = precision.flip(1).cummax(1).values.flip(1)  # monotone: max over higher recall
    recall_levels = torch.from_numpy(np.linspace(0.0, 1.0, 101))  # bit for bit COCO's recThrs
    at = torch.searchsorted(recall, recall_levels.expand(num_thresholds, -1).contiguous())
    reached = at < recall.shape[1]
    interpolated = torch.where(reached, precision.gather(1, at.clamp(max=recall.shape[1] - 1)), 0.0)
    return {"ap": interpolated.mean(1), "recall": recall[:, -1]}


def _greedy_match(iou: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """``Tensor[T, D]`` bool: is detection ``d`` (in score order) matched at threshold ``t``."""
    num_det, num_gt = iou.shape
    rows = torch.arange(len(thresholds))
    taken = torch.zeros(len(thresholds), num_gt, dtype=torch.bool)
    matched = torch.zeros(len(thresholds), num_det, dtype=torch.bool)
    if num_gt == 0:
        return matched
    for d in range(num_det):  # sequential: each match removes a ground truth for later ones
        allowed = (iou[d] >= thresholds[:, None]) & ~taken
        # the best IoU; among equal ones the last ground truth, as COCOeval's loop does
        best = num_gt - 1 - torch.where(allowed, iou[d], -1.0).flip(1).argmax(1)
        hit = allowed[rows, best]
        taken[rows[hit], best[hit]] = True
        matched[:, d] = hit
    return matched


def average_precision(pred_boxes: Sequence[torch.Tensor], pred_scores: Sequence[torch.Tensor],
                      gt_boxes: Sequence[torch.Tensor], iou_threshold: float = 0.5,
                      max_detections: int = 100) -> float:
    r"""COCO-style average precision of one class at one IoU threshold :math:`t`.

    .. math:: \mathrm{AP}_t = \frac{1}{101} \sum_{r \in \{0, 0.01, ..., 1\}} \max_{R_k \ge r} P_k

    Boxes are ``(x1, y1, x2, y2)``, per image ``Tensor[D_i, 4]`` predictions with
    ``Tensor[D_i]`` scores and ``Tensor[G_i, 4]`` ground truth. Shorthand for
    ``detection_metrics(..., iou_thresholds=(iou_threshold,))["ap"]`` (see there; checked
    against pycocotools in ``tests/test_boxes.py``).

    Args:
        pred_boxes: per image, ``Tensor[D_i, 4]`` float ``(x1, y1, x2, y2)``.
        pred_scores: per image, ``Tensor[D_i]`` float.
        gt_boxes: per image, ``Tensor[G_i, 4]`` float ``(x1, y1, x2, y2)``.
        iou_threshold: the IoU threshold :math:`t` in [0, 1] a prediction needs to match
            a ground-truth box, default 0.5 (PASCAL VOC's, COCO's ``AP50``).
        max_detections: highest-scoring predictions kept per image, default 100 (COCO's).

    Returns:
        The AP as a float; ``nan`` when there is no ground truth at all.
    """
    metrics = detection_metrics(pred_boxes, pred_scores, gt_boxes, iou_thresholds=(iou_threshold,),
                                max_detections=max_detections)
    return metrics["ap"].item()


# --------------------------------------------------------------------------- synthetic scenes


def crowded_scene(n_objects: int, image_size: int = 512, overlap: tuple[float, float] = (0.3, 0.7), *,
                  group_size: int = 3, object_size: tuple[float, float] = (0.04, 0.12),
                  generator: torch.Generator | None = None) -> torch.Tensor:
    r"""Ground-truth boxes of a crowd: groups of objects standing side by side.

    Objects come in groups of ``group_size`` (people in a queue): one width
    :math:`w` (a fraction ``object_size`` of ``image_size``), height :math:`1.5w` to
    :math:`2.5w`, and each neighbour shifted sideways by
    :math:`d = w\,\frac{1 - u}{1 + u}`, so that neighbours overlap with exactly
    :math:`\mathrm{IoU} = u`, drawn uniformly from ``overlap``. Groups are placed
    uniformly in the image (and may overlap each other).

    Args:
        n_objects: number of boxes :math:`K \ge 0`.
        image_size: side of the square image in pixels.
        overlap: ``(low, high)`` range of the IoU between neighbours, in (0, 1).
        group_size: objects per group (the last group may be smaller), ``>= 1``.
        object_size: ``(low, high)`` range of box widths as fractions of ``image_size``.
        generator: ``torch.Generator`` for a reproducible scene.

    Returns:
        ``Tensor[K, 4]`` float32 ``(x1, y1, x2, y2)``, inside the image.
    """
    n_objects = check_int("n_objects", n_objects, 0)
    group_size = check_int("group_size", group_size, 1)
    check_range("image_size", image_size, 0.0, low_open=True)
    _check_interval("overlap", overlap, 0.0, 1.0)
    _check_interval("object_size", object_size, 0.0, 1.0 / 2.5)

    def uniform(low, high, *shape):
        return low + (high - low) * torch.rand(*shape, generator=generator, dtype=torch.float64)

    groups = -(-n_objects // group_size)
    width = image_size * uniform(*object_size, groups)
    height = width * uniform(1.5, 2.5, groups)
    iou = uniform(*overlap, groups, group_size - 1)
    shift = width[:, None] * (1 - iou) / (1 + iou)
    left = torch.cat([torch.zeros(groups, 1, dtype=torch.float64), shift.cumsum(1)], 1)
    x0 = uniform(0.0, 1.0, groups) * (image_size - width - left[:, -1]).clamp(min=0)
    y0 = uniform(0.0, 1.0, groups) * (image_size - height)
    x1 = x0[:, None] + left
    y1 = y0[:, None].expand_as(x1)
    boxes = torch.stack([x1, y1, x1 + width[:, None], y1 + height[:, None]], -1)
    return boxes.reshape(-1, 4)[:n_objects].clamp(max=image_size).float()


def simulate_detections(gt_boxes: torch.Tensor, *, per_object: int = 20, jitter: float = 0.1,
                        false_positives: float = 0.2,
                        generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Scored proposals around ground-truth boxes, as a detector outputs them before NMS.

    Each ground-truth box of size :math:`(w, h)` gets ``per_object`` proposals with centre
    moved by :math:`\mathrm{jitter}\cdot(w, h)\cdot\mathcal{N}(0, 1)` and size scaled by
    :math:`e^{\mathrm{jitter}\cdot\mathcal{N}(0, 1)}`; its score is its IoU with the
    ground truth times :math:`U(0.5, 1)` (better boxes score higher, noisily).
    ``false_positives`` per object (rounded) are added: boxes of ground-truth sizes placed
    uniformly over the scene, scored :math:`U(0, 0.5)`. All are shuffled.

    Args:
        gt_boxes: ``Tensor[K, 4]`` float ``(x1, y1, x2, y2)``, e.g. from :func:`crowded_scene`.
        per_object: proposals per ground-truth box, ``>= 1``.
        jitter: relative noise of position and size, ``>= 0``.
        false_positives: expected false positives per ground-truth box, ``>= 0``.
        generator: ``torch.Generator`` for reproducible detections.

    Returns:
        ``(boxes, scores)``: ``Tensor[M, 4]`` and ``Tensor[M]`` float32, on CPU, with
        ``M = K * per_object + round(false_positives * K)``.
    """
    _check_boxes("gt_boxes", gt_boxes)
    per_object = check_int("per_object", per_object, 1)
    check_range("jitter", jitter, 0.0)
    check_range("false_positives", false_positives, 0.0)
    gt = gt_boxes.detach().cpu().double()
    num_gt = gt.shape[0]
    size = (gt[:, 2:] - gt[:, :2]).repeat_interleave(per_object, 0)
    centre = ((gt[:, 2:] + gt[:, :2]) / 2).repeat_interleave(per_object, 0)
    centre = centre + jitter * size * torch.randn(size.shape, generator=generator, dtype=torch.float64)
    size = size * torch.exp(jitter * torch.randn(size.shape, generator=generator, dtype=torch.float64))
    proposals = torch.cat([centre - size / 2, centre + size / 2], 1)
    quality = _pair_iou(proposals, gt.repeat_interleave(per_object, 0)).nan_to_num(0.0)
    scores = quality * (0.5 + 0.5 * torch.rand(len(quality), generator=generator, dtype=torch.float64))

    num_false = round(false_positives * num_gt)
    if num_false:
        low, high = gt[:, :2].min(0).values, gt[:, 2:].max(0).values
        size = (gt[:, 2:] - gt[:, :2])[torch.randint(num_gt, (num_false,), generator=generator)]
        corner = low + (high - low - size).clamp(min=0) * torch.rand(num_false, 2, generator=generator,
                                                                      dtype=torch.float64)
        proposals = torch.cat([proposals, torch.cat([corner, corner + size], 1)])
        scores = torch.cat([scores, 0.5 * torch.rand(num_false, generator=generator, dtype=torch.float64)])
    shuffle = torch.randperm(len(scores), generator=generator)
    return proposals[shuffle].float(), scores[shuffle].float()


def crowded_detections(n_boxes: int, *, per_object: int = 20,
                       generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """About ``n_boxes`` proposals at a fixed crowd density, for timing NMS at any size.

    :func:`crowded_scene` with ``n_boxes // per_object`` objects (at least one) at 25
    objects per 512 x 512 pixels (the image grows with the number of objects, from 512 x
    512 for 25 or fewer; object sizes 4-12% of a 512-pixel side), then :func:`simulate_detections` with ``per_object``
    proposals each. Used by ``benchmarks/soft_nms.py`` and the Soft-NMS chapter.

    Args:
        n_boxes: about how many proposals to make, ``>= 1``: ``max(1, n_boxes // per_object)``
            objects get ``per_object`` proposals each, plus 0.2 false positives per object.
        per_object: proposals per ground-truth object, ``>= 1``.
        generator: ``torch.Generator`` for a reproducible scene and detections.

    Returns:
        ``(boxes, scores)`` as :func:`simulate_detections` returns them.
    """
    n_boxes, per_object = check_int("n_boxes", n_boxes, 1), check_int("per_object", per_object, 1)
    objects = max(1, n_boxes // per_object)
    grow = math.sqrt(max(objects, 25) / 25)
    gt = crowded_scene(objects, round(512 * grow), object_size=(0.04 / grow, 0.12 / grow), generator=generator)
    return simulate_detections(gt, per_object=per_object, generator=generator)


def _check_interval(name: str, value: object, low: float, high: float) -> None:
    """Check a ``(low, high)`` pair inside the open interval ``(low, high)``."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"{name} must be a (low, high) pair, got {value!r}")
    check_range(f"{name}[0]", value[0], low, high, low_open=True, high_open=True)
    check_range(f"{name}[1]", value[1], value[0], high, high_open=True)
