"""Tests for tricklib.nms: Soft-NMS against a plain sequential loop and torchvision's nms,
through both paths (the compiled numba kernel of tricklib._soft_nms_kernel and the pure-torch
rounds), and the kernel's exp against libm's."""
import math

import numpy as np
import pytest
import torch
import torchvision

import tricklib._soft_nms_kernel as kernel_module
import tricklib.nms as nms_module
from tricklib.nms import batched_soft_nms, soft_nms
from tricklib.scenes import crowded_detections, crowded_scene, simulate_detections

METHODS = ("linear", "gaussian", "hard")


def soft_nms_reference(boxes, scores, iou_threshold=0.3, sigma=0.5, score_threshold=0.001,
                       method="linear"):
    """Bodla et al.'s algorithm as a plain loop: select the best box, decay the others, repeat."""
    dtype = torch.float64 if torch.float64 in (boxes.dtype, scores.dtype) else torch.float32
    boxes, scores = boxes.to(dtype), scores.to(dtype).clone()
    remaining = scores.double() >= score_threshold  # thresholds compared exactly, in float64
    keep, kept = [], []
    while remaining.any():
        best = torch.where(remaining, scores, -torch.inf).argmax()  # argmax: first index among ties
        keep.append(best.item())
        kept.append(scores[best].item())
        remaining[best] = False
        iou = torchvision.ops.box_iou(boxes[best][None], boxes)[0].nan_to_num(0.0)
        if method == "hard":
            remaining &= ~(iou.double() > iou_threshold)
            continue
        if method == "linear":
            decay = torch.where(iou.double() > iou_threshold, 1 - iou, 1.0)
        else:
            decay = torch.exp(-(iou * iou) / sigma)
        scores = torch.where(remaining, scores * decay, scores)
        remaining &= scores.double() >= score_threshold
    return torch.tensor(keep, dtype=torch.int64), torch.tensor(kept, dtype=dtype)


@pytest.fixture(params=["numba", "torch"])
def backend(request, monkeypatch):
    """Run a test through the compiled (numba) kernel and through the pure-torch rounds."""
    if request.param == "numba" and nms_module.numba is None:
        pytest.skip("numba is not installed")
    if request.param == "torch":
        monkeypatch.setattr(nms_module, "numba", None)
    return request.param


def scene(seed, n_objects=6, per_object=8, quantized=False, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    gt = crowded_scene(n_objects, 200, generator=g)
    b, s = simulate_detections(gt, per_object=per_object, generator=g)
    if quantized:  # integer corners and scores on a 0.05 grid: equal IoUs and tied scores
        b, s = b.round(), (s * 20).round() / 20
    return b.to(dtype), s.to(dtype)


def assert_same_as_reference(b, s, **kwargs):
    keep, kept = soft_nms(b, s, **kwargs)
    ref_keep, ref_kept = soft_nms_reference(b, s, **kwargs)
    assert keep.dtype == torch.int64 and kept.dtype == s.dtype
    torch.testing.assert_close(keep, ref_keep, rtol=0, atol=0)
    torch.testing.assert_close(kept, ref_kept.to(s.dtype), rtol=1e-5, atol=0)
    return keep, kept


# ----------------------------------------------------------------------------- Soft-NMS exactness

@pytest.mark.parametrize("method", METHODS)
def test_soft_nms_equals_sequential_loop(backend, method):
    for seed in range(12):
        assert_same_as_reference(*scene(seed), method=method)
    for seed in range(4):  # other settings
        assert_same_as_reference(*scene(seed), method=method, iou_threshold=0.5, sigma=0.1,
                                 score_threshold=0.05)
        assert_same_as_reference(*scene(seed, dtype=torch.float64), method=method, score_threshold=0.0)


@pytest.mark.parametrize("method", METHODS)
def test_soft_nms_ties_and_equal_ious(backend, method):
    for seed in range(8):
        b, s = scene(seed, quantized=True)
        assert_same_as_reference(b, s, method=method)
        assert_same_as_reference(b, torch.full_like(s, 0.5), method=method)


def test_backends_give_identical_results(monkeypatch):
    """The compiled kernel and the torch rounds agree bit for bit, on a larger crowd."""
    if nms_module.numba is None:
        pytest.skip("numba is not installed")
    g = torch.Generator().manual_seed(0)
    b, s = simulate_detections(crowded_scene(20, 400, generator=g), generator=g)
    idxs = torch.randint(3, (len(s),), generator=g)
    compiled = [soft_nms(b, s, method=m) for m in METHODS] + [batched_soft_nms(b, s, idxs)]
    monkeypatch.setattr(nms_module, "numba", None)
    plain = [soft_nms(b, s, method=m) for m in METHODS] + [batched_soft_nms(b, s, idxs)]
    for (keep, kept), (keep_torch, kept_torch) in zip(compiled, plain):
        assert torch.equal(keep, keep_torch) and torch.equal(kept, kept_torch)
    for method, (keep, kept) in zip(METHODS, compiled):
        ref_keep, ref_kept = soft_nms_reference(b, s, method=method)
        assert torch.equal(keep, ref_keep)
        torch.testing.assert_close(kept, ref_kept, rtol=1e-5, atol=0)


def test_backends_agree_on_a_large_crowd(monkeypatch):
    """2,000 crowded boxes: long runs of cells, done boxes moved out of their strips, strips
    skipped. The compiled kernel and the torch rounds agree bit for bit, and keep what the
    sequential loop keeps."""
    if nms_module.numba is None:
        pytest.skip("numba is not installed")
    b, s = crowded_detections(2000, generator=torch.Generator().manual_seed(0))
    idxs = torch.randint(5, (len(s),), generator=torch.Generator().manual_seed(1))
    calls = [lambda m=m: soft_nms(b, s, method=m) for m in METHODS]
    calls.append(lambda: batched_soft_nms(b, s, idxs, method="gaussian"))
    compiled = [call() for call in calls]
    monkeypatch.setattr(nms_module, "numba", None)
    for (keep, kept), call in zip(compiled, calls):
        keep_torch, kept_torch = call()
        assert torch.equal(keep, keep_torch) and torch.equal(kept, kept_torch)
    for method, (keep, _) in zip(("linear", "gaussian"), compiled):
        assert torch.equal(keep, soft_nms_reference(b, s, method=method)[0])


def exp_arguments():
    """Gaussian exponents -IoU^2 / sigma for float32 IoUs, and the edges of the range."""
    g = np.random.default_rng(0)
    iou = g.random(10**6).astype(np.float32).astype(np.float64)
    return np.concatenate([(iou * iou) * scale for scale in (-2.0, -1 / 0.1, -1 / 0.01, -1 / 0.0005)]
                          + [-750 * g.random(10**5), -g.random(10**5) * 1e-6,
                             [0.0, -0.0, -5e-324, -1e-300, -87.3, -103.9, -104.0, -150.0, -200.0, -707.9,
                              -708.0, -708.1, -745.2, -1e4, -np.inf]])


def test_compiled_exp_rounds_like_libm():
    """The kernel's own exp (table and polynomial, so that its loop vectorises) is within
    1 ulp of libm's exp in float64 down to -708 (0 below) and rounds to the same float32
    value but for about one argument in 10^8 (measured: 3 in 4 x 10^8)."""
    if kernel_module.numba is None:
        pytest.skip("numba is not installed")
    numba = kernel_module.numba

    @numba.njit
    def both(x):
        ours, libm = np.empty_like(x), np.empty_like(x)
        for t in range(x.shape[0]):
            ours[t], libm[t] = kernel_module._exp_negative(x[t]), math.exp(x[t])
        return ours, libm

    x = exp_arguments()
    ours, libm = both(x)
    assert (ours.astype(np.float32) != libm.astype(np.float32)).sum() <= len(x) // 10**6
    normal = x >= -708
    np.testing.assert_allclose(ours[normal], libm[normal], rtol=2.3e-16, atol=0)
    assert (ours[~normal] == 0).all() and (libm[~normal] <= math.exp(-708)).all()


def test_torch_exp_has_the_compiled_exps_bits():
    """Both Soft-NMS paths decay by the same Gaussian weights, float64 included."""
    x = torch.from_numpy(exp_arguments())
    ours = kernel_module._exp_negative_torch(x)
    np.testing.assert_allclose(ours[x >= -708].numpy(), np.exp(x[x >= -708].numpy()), rtol=2.3e-16, atol=0)
    assert (ours[x < -708] == 0).all()
    if kernel_module.numba is None:
        pytest.skip("numba is not installed")
    numba = kernel_module.numba

    @numba.njit
    def compiled(x):
        out = np.empty_like(x)
        for t in range(x.shape[0]):
            out[t] = kernel_module._exp_negative(x[t])
        return out

    assert np.array_equal(compiled(x.numpy()).view(np.int64), ours.numpy().view(np.int64))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("sigma", [0.5, 0.05, 0.001])
def test_backends_agree_bit_for_bit_on_the_gaussian_in_any_dtype(monkeypatch, dtype, sigma):
    """float64 used libm's exp in the kernel and torch's exp otherwise: kept scores 1 ulp apart."""
    if nms_module.numba is None:
        pytest.skip("numba is not installed")
    runs = []
    for seed in range(2):
        b, s = crowded_detections(400, generator=torch.Generator().manual_seed(seed))
        runs.append((b.to(dtype), s.to(dtype)))
    compiled = [soft_nms(b, s, method="gaussian", sigma=sigma, score_threshold=0.0) for b, s in runs]
    monkeypatch.setattr(nms_module, "numba", None)
    for (b, s), (keep, kept) in zip(runs, compiled):
        keep_torch, kept_torch = soft_nms(b, s, method="gaussian", sigma=sigma, score_threshold=0.0)
        assert torch.equal(keep, keep_torch) and torch.equal(kept, kept_torch)
        # and so a threshold placed between two kept scores cuts both paths at the same place
        for cut in kept[len(kept) // 3::len(kept) // 3]:
            threshold = float(cut)
            assert torch.equal(soft_nms(b, s, method="gaussian", sigma=sigma, score_threshold=threshold)[0],
                               keep[kept.double() >= threshold])


# ----------------------------------------------------------------------------- pure-torch memory

@pytest.mark.parametrize("budget", [1, 50, 3000])
def test_torch_rounds_by_blocks_give_the_same_bits(monkeypatch, budget):
    """A small pair budget splits the boxes into many blocks: every result stays the same, bit for bit."""
    monkeypatch.setattr(nms_module, "numba", None)
    cases = [(scene(seed, n_objects=8), {}) for seed in range(3)]
    cases += [(scene(0, quantized=True), {"score_threshold": 0.0}), (scene(1, dtype=torch.float64), {}),
              (crowded_detections(600, generator=torch.Generator().manual_seed(2)), {})]
    calls = []
    for (b, s), kwargs in cases:
        idxs = torch.randint(3, (len(s),), generator=torch.Generator().manual_seed(len(s)))
        calls += [lambda b=b, s=s, m=m, kw=kwargs: soft_nms(b, s, method=m, **kw) for m in METHODS]
        calls.append(lambda b=b, s=s, i=idxs, kw=kwargs: batched_soft_nms(b, s, i, method="gaussian", **kw))
    expected = [call() for call in calls]
    monkeypatch.setattr(nms_module, "_PAIR_BUDGET", budget)
    for call, (keep, kept) in zip(calls, expected):
        keep_blocks, kept_blocks = call()
        assert torch.equal(keep_blocks, keep) and torch.equal(kept_blocks, kept)


def test_torch_rounds_form_at_most_the_budget_of_pairs_at_once(monkeypatch):
    """Proposals on one object overlap pairwise: the pairs are formed block by block, within the budget."""
    monkeypatch.setattr(nms_module, "numba", None)
    monkeypatch.setattr(nms_module, "_PAIR_BUDGET", 20_000)
    sizes = []
    real = nms_module._block_pairs

    def recording(*args):
        pairs = real(*args)
        sizes.append(pairs[0].numel())
        return pairs

    monkeypatch.setattr(nms_module, "_block_pairs", recording)
    gt = torch.tensor([[100.0, 100.0, 300.0, 400.0]])
    b, s = simulate_detections(gt, per_object=1500, false_positives=0.0, generator=torch.Generator().manual_seed(0))
    keep, kept = soft_nms(b, s, method="gaussian")
    ref_keep, ref_kept = soft_nms_reference(b, s, method="gaussian")
    assert torch.equal(keep, ref_keep)
    torch.testing.assert_close(kept, ref_kept, rtol=1e-5, atol=0)
    assert len(sizes) > 1 and max(sizes) <= 20_000 < 1500 * 1499 // 2


def test_torch_rounds_on_20000_proposals_of_one_object_fit_in_1_gib(tmp_path):
    """Peak resident memory of a fresh process (torch does not report to tracemalloc)."""
    import subprocess
    import sys
    script = tmp_path / "one_object.py"
    script.write_text(
        "import resource, torch\n"
        "import tricklib.nms as nms\n"
        "from tricklib.scenes import simulate_detections\n"
        "nms.numba = None\n"
        "gt = torch.tensor([[100.0, 100.0, 300.0, 400.0]])\n"
        "b, s = simulate_detections(gt, per_object=20000, false_positives=0.0,\n"
        "                           generator=torch.Generator().manual_seed(0))\n"
        "nms.soft_nms(b[:50], s[:50], method='gaussian')\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "keep, _ = nms.soft_nms(b, s, method='gaussian')\n"
        "print(len(keep), (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)\n")
    root = __import__("pathlib").Path(nms_module.__file__).parents[1]
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600,
                         env={**__import__("os").environ, "PYTHONPATH": str(root)}, check=True).stdout.split()
    kept, extra_bytes = int(out[0]), int(out[1])
    assert kept > 0 and extra_bytes < 2**30, f"{extra_bytes / 2**20:.0f} MiB"


def test_selection_order_is_score_then_index(backend):
    b, s = scene(3, quantized=True)
    idxs = torch.randint(3, (len(s),), generator=torch.Generator().manual_seed(3))
    ties = 0
    for method in METHODS:
        for keep, kept in (soft_nms(b, s, method=method, score_threshold=0.0),
                           batched_soft_nms(b, s, idxs, method=method, score_threshold=0.0)):
            assert (kept[1:] <= kept[:-1]).all()
            tied = kept[1:] == kept[:-1]
            assert (keep[1:][tied] > keep[:-1][tied]).all()
            ties += tied.sum().item()
    assert ties > 10


# ----------------------------------------------------------------------------- hard == torchvision

def test_hard_equals_torchvision_nms(backend):
    for seed in range(5):
        b, s = scene(seed, n_objects=10)
        for threshold in (0.3, 0.5, 0.7):
            keep, kept = soft_nms(b, s, iou_threshold=threshold, score_threshold=0.0, method="hard")
            expected = torchvision.ops.nms(b, s, threshold)
            assert torch.equal(keep, expected) and torch.equal(kept, s[expected])
            keep, _ = soft_nms(b, s, iou_threshold=threshold, score_threshold=0.2, method="hard")
            assert torch.equal(keep, expected[s[expected] >= 0.2])


def test_batched_hard_equals_torchvision_batched_nms(backend):
    for seed in range(6):
        b, s = scene(seed, n_objects=10)
        idxs = torch.randint(4, (len(s),), generator=torch.Generator().manual_seed(seed)) * 7 - 5
        keep, kept = batched_soft_nms(b, s, idxs, iou_threshold=0.5, score_threshold=0.0, method="hard")
        expected = torchvision.ops.batched_nms(b, s, idxs, 0.5)
        assert torch.equal(keep, expected) and torch.equal(kept, s[expected])


@pytest.mark.parametrize("method", ["linear", "gaussian"])
def test_batched_soft_nms_is_per_class_soft_nms_sorted_by_score(backend, method):
    b, s = scene(1, n_objects=10)
    idxs = torch.randint(3, (len(s),), generator=torch.Generator().manual_seed(1))
    keep, kept = batched_soft_nms(b, s, idxs, method=method)
    assert (kept[1:] <= kept[:-1]).all()
    for c in range(3):
        members = torch.nonzero(idxs == c).flatten()
        class_keep, class_kept = soft_nms(b[members], s[members], method=method)
        in_class = idxs[keep] == c
        assert torch.equal(keep[in_class], members[class_keep])
        assert torch.equal(kept[in_class], class_kept)


# ----------------------------------------------------------------------------- edge cases

@pytest.mark.parametrize("method", METHODS)
def test_threshold_plus_minus_epsilon(backend, method):
    # the second box lies inside the first, IoU = width / 100 = threshold +- 1e-5 (torchvision's TestNMS)
    for delta, suppressed in ((1e-5, True), (-1e-5, False)):
        b = torch.tensor([[0.0, 0.0, 100.0, 100.0], [0.0, 0.0, 100 * (0.3 + delta), 100.0]])
        s = torch.tensor([0.9, 0.8])
        keep, kept = assert_same_as_reference(b, s, method=method, iou_threshold=0.3)
        if method == "hard":
            assert keep.tolist() == ([0] if suppressed else [0, 1])
            assert torch.equal(torchvision.ops.nms(b, s, 0.3), keep)
        elif method == "linear":
            assert kept[1].item() == pytest.approx(0.8 * (0.7 - delta) if suppressed else 0.8, rel=1e-4)


@pytest.mark.parametrize("method", METHODS)
def test_touching_and_zero_area_boxes_do_not_interact(backend, method):
    b = torch.tensor([[0.0, 0.0, 10, 10], [10, 0, 20, 10], [0, 10, 10, 20],  # touching edges: IoU 0
                      [5, 5, 5, 5], [5, 5, 5, 5], [3, 3, 3, 8]])  # zero area
    s = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.6, 0.5])
    keep, kept = assert_same_as_reference(b, s, method=method, score_threshold=0.0)
    assert keep.tolist() == [0, 1, 2, 3, 4, 5] and torch.equal(kept, s)


@pytest.mark.parametrize("method", METHODS)
def test_empty_single_and_identical_boxes(backend, method):
    for dtype in (torch.float32, torch.float64):
        keep, kept = soft_nms(torch.zeros(0, 4, dtype=dtype), torch.zeros(0, dtype=dtype), method=method)
        assert keep.dtype == torch.int64 and kept.dtype == dtype and keep.numel() == kept.numel() == 0
    keep, kept = soft_nms(torch.tensor([[1.0, 2, 3, 4]]), torch.tensor([0.5]), method=method)
    assert keep.tolist() == [0] and kept.tolist() == [0.5]
    keep, _ = soft_nms(torch.tensor([[1.0, 2, 3, 4]]), torch.tensor([0.0001]), method=method)
    assert keep.numel() == 0  # below score_threshold
    same = torch.tensor([[10.0, 10, 50, 80]]).repeat(6, 1)
    scores = torch.tensor([0.3, 0.9, 0.3, 0.6, 0.9, 0.1])
    # IoU 1: linear decays to 0 (kept only with score_threshold=0), Gaussian by e^-2 per step, hard removes
    for threshold, kept_boxes in ((0.0, {"linear": 6, "gaussian": 6, "hard": 1}),
                                  (0.001, {"linear": 1, "gaussian": 3, "hard": 1})):
        keep, _ = assert_same_as_reference(same, scores, method=method, score_threshold=threshold)
        assert keep[0].item() == 1 and len(keep) == kept_boxes[method]


@pytest.mark.parametrize("method", METHODS)
def test_negative_zero_scores_tie_with_zero(backend, method):
    b, s = scene(5)
    s[::3] = 0.0
    s[1::3] = -0.0  # equal to 0.0: ties broken by index, as argmax does
    assert_same_as_reference(b, s, method=method, score_threshold=0.0)


@pytest.mark.parametrize("method", METHODS)
def test_layouts_that_stress_the_grid(backend, method):
    """The compiled kernel compares a box only with the boxes of nearby grid cells; these
    layouts would expose a cell bound that is too tight (or a grid that blows up)."""
    g = torch.Generator().manual_seed(0)
    b, s = scene(0, n_objects=12)
    n = len(s)
    huge = torch.cat([b, torch.tensor([[-50.0, -40.0, 260.0, 230.0]])]), torch.cat([s, torch.tensor([0.95])])
    spread = b + torch.randint(0, 40, (n, 2), generator=g).repeat(1, 2) * 1000.0  # mostly empty cells
    far_and_small = b * 0.01 + 1e5  # float32 corners 0.008 apart: coarse rounding
    one_column = b.clone()
    one_column[:, [0, 2]] = b[:, [0, 2]] - b[:, :1] + 3.0  # all x1 equal
    flat = b.clone()
    flat[:, [1, 3]] = 7.0  # zero-height boxes: no box interacts
    for boxes, scores in (huge, (spread, s), (far_and_small, s), (b - 1000.0, s), (one_column, s),
                          (flat, s)):
        assert_same_as_reference(boxes, scores, method=method)
        assert_same_as_reference(boxes.double(), scores.double(), method=method, score_threshold=0.0)


@pytest.mark.parametrize("method", METHODS)
def test_many_classes_and_strided_inputs(backend, method):
    b, s = scene(4, n_objects=12)
    idxs = torch.randint(40, (len(s),), generator=torch.Generator().manual_seed(4), dtype=torch.int32)
    keep, kept = batched_soft_nms(b, s, idxs, method=method)
    for c in idxs.unique().tolist():
        members = torch.nonzero(idxs == c).flatten()
        class_keep, class_kept = soft_nms(b[members], s[members], method=method)
        in_class = idxs[keep] == c
        assert torch.equal(keep[in_class], members[class_keep])
        assert torch.equal(kept[in_class], class_kept)
    strided = torch.cat([b, b], 1)[:, ::2], s.repeat_interleave(2)[::2]  # views, not contiguous
    strided[0][:] = b  # (the same values)
    assert not strided[0].is_contiguous() and not strided[1].is_contiguous()
    for ours, expected in zip(soft_nms(*strided, method=method), soft_nms(b, s, method=method)):
        assert torch.equal(ours, expected)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("method", METHODS)
def test_half_precision_inputs_computed_in_float32(backend, dtype, method):
    b, s = scene(2)
    b, s = b.to(dtype), s.to(dtype)
    keep, kept = soft_nms(b, s, method=method)
    keep32, kept32 = soft_nms(b.float(), s.float(), method=method)
    assert kept.dtype == dtype
    assert torch.equal(keep, keep32) and torch.equal(kept, kept32.to(dtype))


@pytest.mark.parametrize("call, error", [
    (lambda b, s: soft_nms(b[:, :3], s), ValueError),
    (lambda b, s: soft_nms(b[0], s), ValueError),
    (lambda b, s: soft_nms(b, s[:, None]), ValueError),
    (lambda b, s: soft_nms(b, s[:-1]), ValueError),
    (lambda b, s: soft_nms(b[:, [2, 1, 0, 3]], s), ValueError),  # x2 < x1
    (lambda b, s: soft_nms(b[:, [0, 3, 2, 1]], s), ValueError),  # y2 < y1
    (lambda b, s: soft_nms(b, s.index_fill(0, torch.tensor([1]), float("nan"))), ValueError),
    (lambda b, s: soft_nms(b.index_fill(0, torch.tensor([1]), float("inf")), s), ValueError),
    (lambda b, s: soft_nms(b, s, sigma=0.0), ValueError),
    (lambda b, s: soft_nms(b, s, sigma=-1.0), ValueError),
    (lambda b, s: soft_nms(b, s, iou_threshold=1.5), ValueError),
    (lambda b, s: soft_nms(b, s, iou_threshold=-0.1), ValueError),
    (lambda b, s: soft_nms(b, s, score_threshold=-0.1), ValueError),
    (lambda b, s: soft_nms(b, s, method="cubic"), ValueError),
    (lambda b, s: soft_nms(b, s.to("meta")), ValueError),  # different devices
    (lambda b, s: soft_nms(b.long(), s), TypeError),
    (lambda b, s: soft_nms(b.tolist(), s), TypeError),
    (lambda b, s: soft_nms(b, s, sigma="0.5"), TypeError),
    (lambda b, s: batched_soft_nms(b, s, torch.zeros(len(s))), TypeError),
    (lambda b, s: batched_soft_nms(b, s, torch.zeros(len(s) - 1, dtype=torch.long)), ValueError),
])
def test_invalid_arguments_raise(call, error):
    b, s = scene(0)
    with pytest.raises(error):
        call(b, s)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("method", METHODS)
def test_cuda_agrees_with_cpu(method):
    b, s = scene(0, n_objects=30)
    idxs = torch.randint(3, (len(s),), generator=torch.Generator().manual_seed(0))
    keep, kept = soft_nms(b, s, method=method)
    keep_cuda, kept_cuda = soft_nms(b.cuda(), s.cuda(), method=method)
    assert torch.equal(keep_cuda.cpu(), keep)
    torch.testing.assert_close(kept_cuda.cpu(), kept, rtol=1e-5, atol=0)
    keep, _ = batched_soft_nms(b, s, idxs, method=method)
    assert torch.equal(batched_soft_nms(b.cuda(), s.cuda(), idxs.cuda(), method=method)[0].cpu(), keep)
