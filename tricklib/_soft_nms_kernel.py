"""Private: Soft-NMS's compiled CPU kernel (numba) and its vectorisable ``exp``.

:func:`tricklib.nms.soft_nms` calls ``_soft_nms_kernel`` on CPU inputs when the optional
package ``numba`` is installed (the sequential algorithm over a grid of cells; see
``soft_nms``'s docstring). ``_exp_negative`` is the kernel's ``exp`` for ``x <= 0`` (a table
and a polynomial, so that a loop calling it vectorises), also used by the focal-loss
kernel of :mod:`tricklib.losses`; ``_exp_negative_torch`` is the same float64 operations in
torch, for the pure-torch path, so that both paths give the same bits. Without numba only
the constants and ``_exp_negative_torch`` are defined (and ``numba`` is ``None``).

The compiled functions are cached on disk (``cache=True``); numba's cache notices changes
to this file only, so a function compiled elsewhere that inlines ``_exp_negative`` must not
be cached (see ``tricklib/losses.py``).
"""
from __future__ import annotations

import decimal
import math

import numpy as np
import torch

try:
    import numba
except ImportError:  # optional accelerator; without it the pure-torch path runs
    numba = None


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
    Gaussian weights (``tests/test_nms.py`` checks 10^6 arguments).
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
        # argument in 10^8 (tests/test_nms.py). _exp_negative_torch is the same in torch ops.
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
