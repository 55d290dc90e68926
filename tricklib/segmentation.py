r"""PointRend's point sampling (the segmentation chapter of the book): refine a coarse mask where it is unsure.

:func:`point_sample` reads a feature map at real-valued points; :func:`uncertain_points`
chooses where to look: the points whose coarse logit is closest to 0 (the boundary),
plus some uniform ones (Kirillov et al. 2020, "PointRend: Image Segmentation as
Rendering"). ``tests/test_segmentation.py`` checks them against indexing at pixel centres.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._checks import check_int, check_range, check_tensor


def point_sample(input: torch.Tensor, points: torch.Tensor, align_corners: bool = False,
                 padding_mode: str = "zeros") -> torch.Tensor:
    r"""Bilinearly interpolate ``input`` at ``points`` given in ``[0, 1] × [0, 1]`` image coordinates.

    .. math:: \text{out}[n, c, p] = \text{bilinear}\bigl(\text{input}[n, c],\ (x_{np} W - \tfrac12,\ y_{np} H - \tfrac12)\bigr)

    ``F.grid_sample`` on ``2 · points − 1``: with ``align_corners=False`` the point
    ``((j + 0.5)/W, (i + 0.5)/H)`` is exactly the centre of pixel ``(i, j)``, so maps of
    different resolutions are read at the same places. Differentiable in ``input`` and
    ``points``.

    Args:
        input: ``Tensor[N, C, H, W]`` float, e.g. coarse mask logits or fine features.
        points: ``Tensor[N, P, 2]`` float, ``(x, y)`` in ``[0, 1]``.
        align_corners: as ``F.grid_sample`` (False: 0 and 1 are the outer edges of the
            border pixels, True: their centres).
        padding_mode: as ``F.grid_sample``: ``"zeros"`` (detectron2's choice: within half a
            pixel of the edge the value is blended with 0) or ``"border"`` (the edge pixel's value).

    Returns:
        ``Tensor[N, C, P]``.
    """
    check_tensor("input", input, ndim=4, floating=True)
    check_tensor("points", points, ndim=3, last_dim=2, floating=True)
    if points.shape[0] != input.shape[0]:
        raise ValueError(f"points must have one set per image: {points.shape[0]} sets for {input.shape[0]} images")
    if padding_mode not in ("zeros", "border"):
        raise ValueError(f"padding_mode must be 'zeros' or 'border', got {padding_mode!r}")
    grid = (2.0 * points - 1.0).unsqueeze(2).to(input.dtype)
    return F.grid_sample(input, grid, mode="bilinear", padding_mode=padding_mode,
                         align_corners=align_corners).squeeze(3)


def uncertain_points(coarse_logits: torch.Tensor, num_points: int, oversample_ratio: float = 3.0,
                     importance_ratio: float = 0.75, generator: torch.Generator | None = None) -> torch.Tensor:
    r"""PointRend's training points: mostly where the coarse mask is unsure, the rest uniform.

    Draw :math:`kN` uniform points (:math:`k` = ``oversample_ratio``), keep the
    :math:`\beta N` (:math:`\beta` = ``importance_ratio``) whose coarse logit is closest to
    0 (uncertainty :math:`-|\ell|`, the boundary of a binary mask), and add
    :math:`(1-\beta) N` fresh uniform points so that confident regions are still trained
    (paper: :math:`k = 3`, :math:`\beta = 0.75`). The logits are read with border padding:
    with zero padding (detectron2's ``point_sample`` default) every point within half a
    coarse cell of the image edge would look uncertain, its logit blended with 0.

    Args:
        coarse_logits: ``Tensor[N, 1, H, W]`` float, the coarse mask's logits.
        num_points: :math:`N \ge 1`, points per image.
        oversample_ratio: :math:`k \ge 1`.
        importance_ratio: :math:`\beta \in [0, 1]`.
        generator: a ``torch.Generator`` for reproducible draws (on the logits' device).

    Returns:
        ``Tensor[N, num_points, 2]``, ``(x, y)`` in ``[0, 1]``, for :func:`point_sample`;
        the uncertain points first.
    """
    check_tensor("coarse_logits", coarse_logits, ndim=4, floating=True)
    if coarse_logits.shape[1] != 1:
        raise ValueError(f"coarse_logits must have one channel (a binary mask's logits), got {coarse_logits.shape[1]}")
    num_points = check_int("num_points", num_points, 1)
    check_range("oversample_ratio", oversample_ratio, 1.0)
    check_range("importance_ratio", importance_ratio, 0.0, 1.0)
    n = coarse_logits.shape[0]
    sampled = max(num_points, int(oversample_ratio * num_points))
    candidates = torch.rand(n, sampled, 2, generator=generator, device=coarse_logits.device,
                            dtype=coarse_logits.dtype)
    uncertainty = -point_sample(coarse_logits, candidates, padding_mode="border")[:, 0].abs()
    important = int(importance_ratio * num_points)
    chosen = uncertainty.topk(important, dim=1).indices
    points = candidates.gather(1, chosen[..., None].expand(-1, -1, 2))
    uniform = torch.rand(n, num_points - important, 2, generator=generator, device=coarse_logits.device,
                         dtype=coarse_logits.dtype)
    return torch.cat([points, uniform], dim=1)


def uncertain_grid_points(logits: torch.Tensor, num_points: int) -> tuple[torch.Tensor, torch.Tensor]:
    r"""PointRend's inference points: the ``num_points`` pixels of a logit map closest to the boundary.

    At each step of the adaptive subdivision (Kirillov et al. 2020) the current mask logits
    are upsampled ×2 and only the :math:`N` pixels with the largest uncertainty
    :math:`-|\ell_{ij}|` (logit closest to 0) are re-predicted by the point head; the rest
    keep their interpolated value. Returns the flat indices (for ``scatter_``) and the pixel
    centres :math:`\bigl((j + \tfrac12)/W, (i + \tfrac12)/H\bigr)`, so that
    ``point_sample(logits, points)`` equals ``logits.flatten(2).gather(2, index)``
    (``tests/test_segmentation.py`` checks this and the choice against a sort).

    Args:
        logits: ``Tensor[N, 1, H, W]`` float, a binary mask's logits.
        num_points: points per image, clipped to ``H · W``.

    Returns:
        The pair ``(index, points)``, most uncertain first, ``index`` a ``Tensor[N, P]``
        of int64 flat indices into ``H · W`` and ``points`` a ``Tensor[N, P, 2]`` of
        ``(x, y)`` in ``[0, 1]``.
    """
    check_tensor("logits", logits, ndim=4, floating=True)
    if logits.shape[1] != 1:
        raise ValueError(f"logits must have one channel (a binary mask's logits), got {logits.shape[1]}")
    num_points = check_int("num_points", num_points, 1)
    h, w = logits.shape[-2:]
    num_points = min(num_points, h * w)
    index = (-logits.flatten(1).abs()).topk(num_points, dim=1).indices
    x = ((index % w).to(logits.dtype) + 0.5) / w
    y = (torch.div(index, w, rounding_mode="floor").to(logits.dtype) + 0.5) / h
    return index, torch.stack([x, y], dim=-1)


def _as_masks(name: str, mask: torch.Tensor) -> torch.Tensor:
    check_tensor(name, mask)
    if mask.dim() < 2:
        raise ValueError(f"{name} must have at least 2 dimensions (..., H, W), got shape {tuple(mask.shape)}")
    if mask.dtype != torch.bool:
        raise TypeError(f"{name} must be a bool mask, got dtype {mask.dtype}")
    return mask


def _ratio(intersection: torch.Tensor, union: torch.Tensor) -> torch.Tensor:
    # two empty sets agree perfectly: IoU 1
    return torch.where(union > 0, intersection / union.clamp(min=1), torch.ones_like(intersection))


def mask_iou(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    r"""Intersection over union of binary masks, mask :math:`i` against mask :math:`i`.

    .. math:: \mathrm{IoU}(P, G) = \frac{|P \cap G|}{|P \cup G|}, \quad \text{1 when both are empty.}

    Args:
        pred, target: ``Tensor[..., H, W]`` bool, same shape.

    Returns:
        ``Tensor[...]`` float32 (``tests/test_segmentation.py`` checks it against NumPy set counts).
    """
    pred, target = _as_masks("pred", pred), _as_masks("target", target)
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}")
    inter = (pred & target).flatten(-2).sum(-1).float()
    union = (pred | target).flatten(-2).sum(-1).float()
    return _ratio(inter, union)


def mask_boundary(mask: torch.Tensor, dilation: int) -> torch.Tensor:
    r"""The pixels of a mask within ``dilation`` pixels of its contour: :math:`G_d = G \setminus (G \ominus B_d)`.

    :math:`G \ominus B_d` is the erosion by a :math:`(2d+1) \times (2d+1)` square (``d``
    erosions by a 3 × 3 square, as the reference code's ``cv2.erode``), with everything
    outside the image counted as background, so a mask touching the border has a boundary
    there (Cheng et al. 2021). ``tests/test_segmentation.py`` checks it against
    ``scipy.ndimage.binary_erosion``.

    Args:
        mask: ``Tensor[..., H, W]`` bool.
        dilation: :math:`d \ge 1`, the boundary's width in pixels.

    Returns:
        ``Tensor[..., H, W]`` bool.
    """
    mask = _as_masks("mask", mask)
    dilation = check_int("dilation", dilation, 1)
    *lead, h, w = mask.shape
    d = dilation
    padded = mask.new_zeros(*lead, h + 2 * d, w + 2 * d)   # outside the image: background
    padded[..., d:d + h, d:d + w] = mask
    # the square erosion is separable: a pixel survives if its 2d + 1 neighbours along the
    # row survive, then along the column (2 (2d + 1) bool ANDs instead of (2d + 1)^2)
    rows = padded[..., :, 0:w].clone()
    for b in range(1, 2 * d + 1):
        rows &= padded[..., :, b:b + w]
    eroded = rows[..., 0:h, :].clone()
    for a in range(1, 2 * d + 1):
        eroded &= rows[..., a:a + h, :]
    return mask & ~eroded


def boundary_iou(pred: torch.Tensor, target: torch.Tensor, dilation: int = 2) -> torch.Tensor:
    r"""Boundary IoU (Cheng et al. 2021): the IoU of the two masks' boundary bands.

    .. math:: \mathrm{BIoU}(P, G) = \frac{|(G_d \cap G) \cap (P_d \cap P)|}{|(G_d \cap G) \cup (P_d \cap P)|}

    with :math:`G_d` the pixels of :math:`G` within :math:`d` pixels of its contour
    (:func:`mask_boundary`); 1 when both bands are empty. Unlike the mask IoU, which large
    objects' interiors dominate, it scores only the contour, so thin parts and boundary
    quality count. The paper takes :math:`d` as 2 % of the image diagonal (2 pixels at
    64 × 64). ``tests/test_segmentation.py`` checks it against a NumPy/SciPy reference.

    Args:
        pred, target: ``Tensor[..., H, W]`` bool, same shape.
        dilation: :math:`d \ge 1` in pixels.

    Returns:
        ``Tensor[...]`` float32.
    """
    pred, target = _as_masks("pred", pred), _as_masks("target", target)
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}")
    return mask_iou(mask_boundary(pred, dilation), mask_boundary(target, dilation))
