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


def point_sample(input: torch.Tensor, points: torch.Tensor, align_corners: bool = False) -> torch.Tensor:
    r"""Bilinearly interpolate ``input`` at ``points`` given in ``[0, 1] × [0, 1]`` image coordinates.

    .. math:: \text{out}[n, c, p] = \text{bilinear}\bigl(\text{input}[n, c],\ (x_{np} W - \tfrac12,\ y_{np} H - \tfrac12)\bigr)

    ``F.grid_sample`` on ``2 · points − 1``: with ``align_corners=False`` the point
    ``((j + 0.5)/W, (i + 0.5)/H)`` is exactly the centre of pixel ``(i, j)``, so maps of
    different resolutions are read at the same places. Differentiable in ``input`` and
    ``points``.

    Args:
        input: ``Tensor[N, C, H, W]`` float, e.g. coarse mask logits or fine features.
        points: ``Tensor[N, P, 2]`` float, ``(x, y)`` in ``[0, 1]`` (outside: zero padding).
        align_corners: as ``F.grid_sample`` (False: 0 and 1 are the outer edges of the
            border pixels, True: their centres).

    Returns:
        ``Tensor[N, C, P]``.
    """
    check_tensor("input", input, ndim=4, floating=True)
    check_tensor("points", points, ndim=3, last_dim=2, floating=True)
    if points.shape[0] != input.shape[0]:
        raise ValueError(f"points must have one set per image: {points.shape[0]} sets for {input.shape[0]} images")
    grid = (2.0 * points - 1.0).unsqueeze(2).to(input.dtype)
    return F.grid_sample(input, grid, mode="bilinear", padding_mode="zeros",
                         align_corners=align_corners).squeeze(3)


def uncertain_points(coarse_logits: torch.Tensor, num_points: int, oversample_ratio: float = 3.0,
                     importance_ratio: float = 0.75, generator: torch.Generator | None = None) -> torch.Tensor:
    r"""PointRend's training points: mostly where the coarse mask is unsure, the rest uniform.

    Draw :math:`kN` uniform points (:math:`k` = ``oversample_ratio``), keep the
    :math:`\beta N` (:math:`\beta` = ``importance_ratio``) whose coarse logit is closest to
    0 (uncertainty :math:`-|\ell|`, the boundary of a binary mask), and add
    :math:`(1-\beta) N` fresh uniform points so that confident regions are still trained
    (paper: :math:`k = 3`, :math:`\beta = 0.75`).

    Args:
        coarse_logits: ``Tensor[N, 1, H, W]`` float, the coarse mask's logits.
        num_points: :math:`N \ge 1`, points per image.
        oversample_ratio: :math:`k \ge 1`.
        importance_ratio: :math:`\beta \in [0, 1]`.
        generator: a ``torch.Generator`` for reproducible draws (on the logits' device).

    Returns:
        ``Tensor[N_images, num_points, 2]``, ``(x, y)`` in ``[0, 1]``, for :func:`point_sample`;
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
    uncertainty = -point_sample(coarse_logits, candidates)[:, 0].abs()
    important = int(importance_ratio * num_points)
    chosen = uncertainty.topk(important, dim=1).indices
    points = candidates.gather(1, chosen[..., None].expand(-1, -1, 2))
    uniform = torch.rand(n, num_points - important, 2, generator=generator, device=coarse_logits.device,
                         dtype=coarse_logits.dtype)
    return torch.cat([points, uniform], dim=1)
