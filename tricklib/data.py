"""Data that needs no network: procedural shapes, 2-D toy sets, bundled digits.

Everything here is generated from a seed (or ships inside an installed
package), so every chapter runs offline and every number is reproducible.
The shapes are drawn from continuous parameters, so the *same* scene can be
rendered at any resolution (the FixRes chapter needs that), with exact boxes
and masks for the detection and segmentation chapters.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from collections.abc import Sequence

import numpy as np
import torch

from ._checks import check_choice, check_int, check_range, check_tensor

SHAPE_CLASSES = ("circle", "square", "triangle")
TOY_SETS = ("moons", "spirals", "gaussians", "ring")


def _generator(seed: int | torch.Generator) -> torch.Generator:
    return seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(seed)


@dataclass
class Shapes:
    """A batch of procedural shape images with everything a task may need.

    Attributes:
        images: ``Tensor[N, C, size, size]`` float in [0, 1].
        labels: ``Tensor[N]`` int64 index into ``SHAPE_CLASSES``.
        boxes: ``Tensor[N, 4]`` float, ``(x1, y1, x2, y2)`` in pixels of this resolution.
        masks: ``Tensor[N, size, size]`` bool, pixel centres inside the shape.
        params: ``Tensor[N, 4]`` ``(cx, cy, r, angle)`` in [0, 1] image units:
            render them at another size with :func:`render_shapes`.
    """

    images: torch.Tensor
    labels: torch.Tensor
    boxes: torch.Tensor
    masks: torch.Tensor
    params: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


def _polygon_vertices(params: torch.Tensor, n_sides: int) -> torch.Tensor:
    """Vertices ``[N, n_sides, 2]`` of regular polygons inscribed in circles (cx, cy, r), rotated by angle."""
    cx, cy, r, angle = params.unbind(-1)
    k = torch.arange(n_sides, dtype=params.dtype)
    theta = angle[:, None] + 2 * math.pi * k / n_sides
    return torch.stack([cx[:, None] + r[:, None] * torch.cos(theta),
                        cy[:, None] + r[:, None] * torch.sin(theta)], dim=-1)


def _inside_polygon(xy: torch.Tensor, vertices: torch.Tensor) -> torch.Tensor:
    """Whether points ``xy [H, W, 2]`` lie inside convex polygons ``[N, V, 2]`` (counter-clockwise)."""
    a = vertices[:, None, None]                    # [N, 1, 1, V, 2]
    b = vertices.roll(-1, dims=1)[:, None, None]
    p = xy[None, :, :, None]                       # [1, H, W, 1, 2]
    # cross((b - a), (p - a)) >= 0 for every edge of a counter-clockwise polygon
    cross = (b[..., 0] - a[..., 0]) * (p[..., 1] - a[..., 1]) - (b[..., 1] - a[..., 1]) * (p[..., 0] - a[..., 0])
    return (cross >= 0).all(dim=-1)


def render_shapes(params: torch.Tensor, labels: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rasterise shapes given by continuous parameters at ``size × size`` pixels.

    Args:
        params: ``Tensor[N, 4]`` of ``(cx, cy, r, angle)``, centre and circumradius in
            [0, 1] image units, rotation in radians.
        labels: ``Tensor[N]`` int64 index into ``SHAPE_CLASSES``.
        size: output resolution in pixels.

    Returns:
        ``(masks, boxes)``: ``Tensor[N, size, size]`` bool (pixel centres inside),
        ``Tensor[N, 4]`` exact ``(x1, y1, x2, y2)`` boxes in pixels, clipped to the image.
    """
    check_tensor("params", params, ndim=2, last_dim=4, floating=True)
    check_tensor("labels", labels, ndim=1)
    if len(params) != len(labels):
        raise ValueError(f"params and labels must have the same length, got {len(params)} and {len(labels)}")
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    centres = (torch.arange(size, dtype=params.dtype) + 0.5) / size
    yy, xx = torch.meshgrid(centres, centres, indexing="ij")
    xy = torch.stack([xx, yy], dim=-1)
    cx, cy, r, _ = params.unbind(-1)
    masks = torch.zeros(len(params), size, size, dtype=torch.bool)
    boxes = torch.stack([cx - r, cy - r, cx + r, cy + r], dim=-1)
    circle = labels == 0
    masks[circle] = (xx - cx[circle, None, None]) ** 2 + (yy - cy[circle, None, None]) ** 2 <= r[circle, None, None] ** 2
    for label, sides in ((1, 4), (2, 3)):
        sel = labels == label
        if sel.any():
            vertices = _polygon_vertices(params[sel], sides)
            masks[sel] = _inside_polygon(xy, vertices)
            boxes[sel] = torch.cat([vertices.amin(dim=1), vertices.amax(dim=1)], dim=-1)
    return masks, (boxes.clamp(0, 1) * size)


def shapes(n: int, size: int = 32, *, seed: int | torch.Generator = 0, channels: int = 1,
           radius: tuple[float, float] = (0.15, 0.4), noise: float = 0.05,
           classes: Sequence[str] = SHAPE_CLASSES) -> Shapes:
    """Images of circles, squares and triangles at random positions, sizes and rotations.

    The same ``seed`` gives the same scenes at every ``size``: parameters are
    drawn in resolution-free units and then rasterised.

    Args:
        n: number of images.
        size: side of each image in pixels.
        seed: int or ``torch.Generator``.
        channels: 1 (grey) or 3 (random colour per shape).
        radius: range of circumradius, as a fraction of the image side.
        noise: standard deviation of Gaussian pixel noise.
        classes: which classes to draw from (subset of ``SHAPE_CLASSES``).

    Returns:
        A :class:`Shapes` batch.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    check_choice("channels", channels, (1, 3))
    if not 0 < radius[0] <= radius[1] <= 0.5:
        raise ValueError(f"radius must satisfy 0 < low <= high <= 0.5, got {radius}")
    check_range("noise", noise, 0.0)
    for c in classes:
        check_choice("classes", c, SHAPE_CLASSES)
    g = _generator(seed)
    allowed = torch.tensor([SHAPE_CLASSES.index(c) for c in classes])
    labels = allowed[torch.randint(len(allowed), (n,), generator=g)]
    r = radius[0] + (radius[1] - radius[0]) * torch.rand(n, generator=g)
    centre = r[:, None] + (1 - 2 * r[:, None]) * torch.rand(n, 2, generator=g)
    angle = 2 * math.pi * torch.rand(n, generator=g)
    params = torch.stack([centre[:, 0], centre[:, 1], r, angle], dim=-1)
    masks, boxes = render_shapes(params, labels, size)
    background = 0.2 * torch.rand(n, channels, 1, 1, generator=g)
    colour = 0.6 + 0.4 * torch.rand(n, channels, 1, 1, generator=g)
    images = torch.where(masks[:, None], colour, background)
    images = (images + noise * torch.randn(images.shape, generator=g)).clamp(0, 1)
    return Shapes(images=images, labels=labels, boxes=boxes, masks=masks, params=params)


def toy_2d(name: str, n: int = 1000, *, noise: float = 0.1, classes: int = 2,
           seed: int | torch.Generator = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Small 2-D classification sets for decision-boundary pictures.

    ``"moons"``: two interleaved half circles. ``"spirals"``: ``classes`` interleaved
    spiral arms. ``"gaussians"``: ``classes`` Gaussian blobs on a circle.
    ``"ring"``: 8 Gaussians on a circle (the GAN benchmark), label = component.

    Args:
        name: ``"moons"`` | ``"spirals"`` | ``"gaussians"`` | ``"ring"``.
        n: number of points, ``>= 1``; the classes take turns, so their sizes differ by at most one.
        noise: standard deviation of the Gaussian noise added to each coordinate, ``>= 0``,
            in the units of the points (which lie within about ``[-2, 2]``).
        classes: number of classes for ``"spirals"`` and ``"gaussians"``, ``>= 2``; ignored
            by ``"moons"`` (always 2) and ``"ring"`` (always 8).
        seed: int or ``torch.Generator``; the same seed gives the same points.

    Returns:
        ``(X, y)``: ``Tensor[n, 2]`` float32, ``Tensor[n]`` int64; classes balanced.
    """
    check_choice("name", name, TOY_SETS)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    check_range("noise", noise, 0.0)
    g = _generator(seed)
    if name == "moons":
        classes = 2
    elif name == "ring":
        classes = 8
    if classes < 2:
        raise ValueError(f"classes must be >= 2, got {classes}")
    y = torch.arange(n) % classes
    t = torch.rand(n, generator=g)
    if name == "moons":
        angle = math.pi * t
        upper = torch.stack([torch.cos(angle), torch.sin(angle)], dim=-1)
        lower = torch.stack([1 - torch.cos(angle), 0.5 - torch.sin(angle)], dim=-1)
        X = torch.where((y == 0)[:, None], upper, lower)
    elif name == "spirals":
        radius = 0.1 + 0.9 * t
        angle = 3 * math.pi * t + 2 * math.pi * y / classes
        X = radius[:, None] * torch.stack([torch.cos(angle), torch.sin(angle)], dim=-1)
    else:
        angle = 2 * math.pi * y / classes
        X = 2 * torch.stack([torch.cos(angle), torch.sin(angle)], dim=-1)
    X = X + noise * torch.randn(n, 2, generator=g)
    perm = torch.randperm(n, generator=g)
    return X[perm].float(), y[perm]


def digits(images: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's bundled 8×8 handwritten digits (1,797 images, 10 classes).

    Args:
        images: return ``Tensor[N, 1, 8, 8]`` instead of flat ``Tensor[N, 64]``.

    Returns:
        ``(X, y)``, pixels scaled to [0, 1] (the raw values are 0..16).
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    X = torch.from_numpy(bunch.data.astype(np.float32) / 16.0)
    y = torch.from_numpy(bunch.target.astype(np.int64))
    return (X.view(-1, 1, 8, 8) if images else X), y


def make_imbalanced(X: torch.Tensor, y: torch.Tensor, ratio: float, *, minority: int = 1,
                    seed: int | torch.Generator = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Subsample class ``minority`` so that it has ``ratio`` times as many examples as the rest.

    Example: ``ratio=0.01`` turns balanced binary data into 1:100. Only subsamples: a
    ratio that needs more examples of ``minority`` than ``y`` holds raises (at least one
    is always kept).

    Args:
        X: ``Tensor[N, ...]`` examples.
        y: ``Tensor[N]`` class labels.
        ratio: wanted size of class ``minority`` relative to all other classes together,
            finite and ``> 0``.
        minority: the label of the class to subsample (it must occur in ``y``).
        seed: int or ``torch.Generator`` for which examples are kept and the shuffle.

    Returns:
        ``(X, y)`` with ``max(1, round(ratio * n_rest))`` examples of ``minority``, shuffled.
    """
    check_tensor("y", y, ndim=1)
    if len(X) != len(y):
        raise ValueError(f"X and y must have the same length, got {len(X)} and {len(y)}")
    check_range("ratio", ratio, 0.0, low_open=True)
    if not math.isfinite(ratio):
        raise ValueError(f"ratio must be finite, got {ratio}")
    is_min = y == minority
    if not is_min.any():
        raise ValueError(f"class {minority} does not occur in y")
    g = _generator(seed)
    n_min, n_rest = int(is_min.sum()), int((~is_min).sum())
    n_keep = max(1, round(ratio * n_rest))
    if n_keep > n_min:
        raise ValueError(f"ratio={ratio} needs {n_keep} examples of class {minority} ({ratio} x the {n_rest} of the "
                         f"other classes), but y holds {n_min}: make_imbalanced only subsamples")
    min_idx = is_min.nonzero().squeeze(1)
    keep_min = min_idx[torch.randperm(len(min_idx), generator=g)[:n_keep]]
    idx = torch.cat([(~is_min).nonzero().squeeze(1), keep_min])
    idx = idx[torch.randperm(len(idx), generator=g)]
    return X[idx], y[idx]


def split(X: torch.Tensor, y: torch.Tensor, fractions: Sequence[float] = (0.7, 0.2, 0.1), *,
          seed: int | torch.Generator = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Shuffle and split ``(X, y)`` into parts of the given fractions (e.g. train/val/test).

    Args:
        X: ``Tensor[N, ...]`` examples.
        y: ``Tensor[N]`` labels (or targets), the same length as ``X``.
        fractions: the parts' shares of ``N``, each in (0, 1], summing to 1; default
            ``(0.7, 0.2, 0.1)`` for train/val/test.
        seed: int or ``torch.Generator`` for the shuffle.

    Returns:
        One ``(X_part, y_part)`` pair per fraction; sizes are rounded down except
        the last part, which takes the remainder.
    """
    if len(X) != len(y):
        raise ValueError(f"X and y must have the same length, got {len(X)} and {len(y)}")
    if not len(fractions):
        raise ValueError("fractions must hold at least one fraction")
    for i, f in enumerate(fractions):
        check_range(f"fractions[{i}]", f, 0.0, 1.0, low_open=True)   # (NaN fails too)
    if not abs(sum(fractions) - 1) <= 1e-6:
        raise ValueError(f"fractions must be positive and sum to 1, got {tuple(fractions)}")
    perm = torch.randperm(len(y), generator=_generator(seed))
    sizes = [int(f * len(y)) for f in fractions[:-1]]
    bounds = np.cumsum([0, *sizes, len(y) - sum(sizes)])
    return [(X[perm[a:b]], y[perm[a:b]]) for a, b in zip(bounds[:-1], bounds[1:])]


def thin_shapes(n: int, size: int = 64, *, seed: int | torch.Generator = 0, width: tuple[float, float] = (0.025, 0.06),
                bars: tuple[int, int] = (1, 3), noise: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Grey images of one object with thin parts: an ellipse with 1–3 thin bars (spokes) from its centre.

    A segmentation task whose masks have parts thinner than a coarse mask's cell (the
    PointRend chapter): at 64 × 64 pixels the default bars are 1.6–3.8 pixels wide. All
    shape parameters are drawn in resolution-free units (fractions of the image side)
    before any pixel, so the same ``seed`` gives the same scene at every ``size``: render
    at a larger size for a high-resolution truth (``tests/test_segmentation.py`` checks it).

    Args:
        n: number of images, ``>= 0``.
        size: side of each image in pixels, ``>= 1``.
        seed: int or ``torch.Generator``.
        width: range of the bars' widths, as fractions of the image side, ``0 < low <= high <= 0.5``.
        bars: least and most bars per object, ``0 <= low <= high <= 3``.
        noise: standard deviation of the Gaussian pixel noise, ``>= 0``.

    Returns:
        The pair ``(images, masks)``, ``images`` a ``Tensor[n, 1, size, size]`` float in
        [0, 1] (object brighter than the background, with a gentle illumination gradient,
        plus noise) and ``masks`` a ``Tensor[n, size, size]`` bool (pixel centres inside
        the object).
    """
    n, size = check_int("n", n, 0), check_int("size", size, 1)
    if not (isinstance(width, (tuple, list)) and len(width) == 2 and 0 < width[0] <= width[1] <= 0.5):
        raise ValueError(f"width must be (low, high) with 0 < low <= high <= 0.5, got {width!r}")
    if not (isinstance(bars, (tuple, list)) and len(bars) == 2 and 0 <= bars[0] <= bars[1] <= 3):
        raise ValueError(f"bars must be (low, high) with 0 <= low <= high <= 3, got {bars!r}")
    check_range("noise", noise, 0.0)
    g = _generator(seed)
    centre = 0.35 + 0.3 * torch.rand(n, 2, generator=g)
    radii = 0.1 + 0.1 * torch.rand(n, 2, generator=g)
    tilt = math.pi * torch.rand(n, generator=g)
    count = torch.randint(bars[0], bars[1] + 1, (n,), generator=g)
    # bars spread around the circle: a random start, then roughly equal turns
    turn = 2 * math.pi * torch.rand(n, 1, generator=g) + (2 * math.pi / 3) * torch.arange(3) \
        + 0.6 * (torch.rand(n, 3, generator=g) - 0.5)
    length = 0.28 + 0.14 * torch.rand(n, 3, generator=g)
    bar_width = width[0] + (width[1] - width[0]) * torch.rand(n, 3, generator=g)
    background = 0.1 + 0.25 * torch.rand(n, generator=g)
    contrast = 0.35 + 0.25 * torch.rand(n, generator=g)
    gradient = 0.15 * (torch.rand(n, 2, generator=g) - 0.5)
    # rasterise at pixel centres
    c = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    dx, dy = xx - centre[:, 0, None, None], yy - centre[:, 1, None, None]
    cos, sin = tilt.cos()[:, None, None], tilt.sin()[:, None, None]
    u, v = dx * cos + dy * sin, dy * cos - dx * sin
    masks = (u / radii[:, 0, None, None]) ** 2 + (v / radii[:, 1, None, None]) ** 2 <= 1
    r2 = dx * dx + dy * dy
    for k in range(3):
        # squared distance to the segment from the centre to length * (cos turn, sin turn)
        proj = dx * turn[:, k].cos()[:, None, None] + dy * turn[:, k].sin()[:, None, None]
        along = proj.clamp(min=0).minimum(length[:, k, None, None])
        dist2 = r2 + along * (along - 2 * proj)
        masks |= (dist2 <= (bar_width[:, k, None, None] / 2) ** 2) & (k < count)[:, None, None]
    light = background[:, None, None] + gradient[:, 0, None, None] * (xx - 0.5) + gradient[:, 1, None, None] * (yy - 0.5)
    images = light + contrast[:, None, None] * masks
    images = (images[:, None] + noise * torch.randn(n, 1, size, size, generator=g)).clamp(0, 1)
    return images, masks
