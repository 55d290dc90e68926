"""token_loss and token_weights against F.cross_entropy (values and gradients) and a per-sequence loop."""
import pytest
import torch
import torch.nn.functional as F

from tricklib import token_loss, token_weights

PAD = -100


def batch(seed, shape=(5, 9), classes=7, dtype=torch.float64):
    """Random logits and targets with padding at the end of each sequence (and one all-padding row)."""
    g = torch.Generator().manual_seed(seed)
    logits = (2 * torch.randn(*shape, classes, generator=g, dtype=dtype)).requires_grad_()
    targets = torch.randint(0, classes, shape, generator=g)
    lengths = torch.randint(0, shape[-1] + 1, shape[:-1], generator=g)
    lengths.view(-1)[0] = 0  # one sequence of padding only
    targets[torch.arange(shape[-1]) >= lengths[..., None]] = PAD
    return logits, targets


def reference_flat(logits, targets, reduction, **kwargs):
    return F.cross_entropy(logits.flatten(0, -2), targets.flatten(), reduction=reduction, ignore_index=PAD, **kwargs)


def reference_sequence_mean(logits, targets):
    """A plain loop: each sequence's mean over its real tokens, then the mean over sequences that have one."""
    means = [F.cross_entropy(z, y, ignore_index=PAD) for z, y in zip(logits.flatten(0, -3), targets.flatten(0, -2))
             if (y != PAD).any()]
    return torch.stack(means).mean()


def value_and_grad(loss, logits):
    (grad,) = torch.autograd.grad(loss, logits)
    return loss.detach(), grad


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_mean_and_sum_match_cross_entropy(seed, reduction, smoothing):
    logits, targets = batch(seed)
    ours = value_and_grad(token_loss(logits, targets, reduction, label_smoothing=smoothing), logits)
    ref = value_and_grad(reference_flat(logits, targets, reduction, label_smoothing=smoothing), logits)
    torch.testing.assert_close(ours, ref)


@pytest.mark.parametrize("seed", range(5))
def test_none_matches_cross_entropy_and_is_zero_at_padding(seed):
    logits, targets = batch(seed)
    ours = token_loss(logits, targets, "none", label_smoothing=0.2)
    torch.testing.assert_close(ours.flatten(), reference_flat(logits, targets, "none", label_smoothing=0.2))
    assert (ours[targets == PAD] == 0).all()


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("shape", [(5, 9), (2, 3, 6)])
def test_sequence_mean_matches_a_loop_over_sequences(seed, shape):
    logits, targets = batch(seed, shape)
    ours = value_and_grad(token_loss(logits, targets, "sequence_mean"), logits)
    ref = value_and_grad(reference_sequence_mean(logits, targets), logits)
    torch.testing.assert_close(ours, ref)


def test_normalizer_divides_the_sum_and_accumulation_recovers_the_full_batch_mean():
    logits, targets = batch(0, (8, 10))
    total = int((targets != PAD).sum())
    torch.testing.assert_close(token_loss(logits, targets, "sum", normalizer=7.0),
                               token_loss(logits, targets, "sum") / 7)
    full = value_and_grad(token_loss(logits, targets), logits)
    # micro-batches of different token counts: sum each, divide by the whole batch's tokens
    accumulated = sum(token_loss(logits[i:i + 3], targets[i:i + 3], "sum", normalizer=torch.tensor(total))
                      for i in range(0, 8, 3))
    torch.testing.assert_close(value_and_grad(accumulated, logits), full)
    # the mean of the micro-batch means is not the full batch's mean
    naive = sum(token_loss(logits[i:i + 3], targets[i:i + 3]) for i in range(0, 8, 3)) / 3
    assert not torch.allclose(naive, full[0])


def test_weights_are_the_gradient_scale_of_each_token():
    logits, targets = batch(3)
    for reduction in ("mean", "sum", "sequence_mean"):
        (grad,) = torch.autograd.grad(token_loss(logits, targets, reduction), logits)
        (unit,) = torch.autograd.grad(token_loss(logits, targets, "none").sum(), logits)  # w = 1
        w = token_weights(targets, reduction).double()
        torch.testing.assert_close(grad, unit * w[..., None])


def test_weights_formulas():
    targets = torch.tensor([[1, 2, PAD, PAD], [0, 1, 2, 0]])  # n_s = 2 and 4, N = 6
    torch.testing.assert_close(token_weights(targets, "mean"), torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]]) / 6.0)
    torch.testing.assert_close(token_weights(targets, "sum"), torch.tensor([[1., 1, 0, 0], [1, 1, 1, 1]]))
    torch.testing.assert_close(token_weights(targets, "sequence_mean"),
                               torch.tensor([[1 / 4, 1 / 4, 0, 0], [1 / 8, 1 / 8, 1 / 8, 1 / 8]]))
    for reduction in ("mean", "sequence_mean"):  # the weights of a normalised loss add up to 1
        assert token_weights(targets, reduction).sum().item() == pytest.approx(1.0)


@pytest.mark.parametrize("reduction", ["mean", "sum", "sequence_mean"])
def test_all_padding_gives_a_differentiable_zero(reduction):
    logits = torch.randn(3, 4, 5, requires_grad=True)
    targets = torch.full((3, 4), PAD)
    loss = token_loss(logits, targets, reduction)
    (grad,) = torch.autograd.grad(loss, logits)
    assert loss.item() == 0 and not grad.any()
    assert torch.isnan(F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=PAD))  # torch's mean


@pytest.mark.parametrize("reduction", ["mean", "sum", "sequence_mean", "none"])
def test_empty_batch(reduction):
    logits, targets = torch.randn(0, 6, 5, requires_grad=True), torch.zeros(0, 6, dtype=torch.long)
    loss = token_loss(logits, targets, reduction)
    assert loss.numel() == 0 if reduction == "none" else loss.item() == 0


def test_custom_ignore_index_and_flat_tokens():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(40, 5, generator=g, dtype=torch.float64)
    targets = torch.randint(0, 5, (40,), generator=g)  # class 0 is the padding here
    ours = token_loss(logits, targets, "mean", ignore_index=0)
    torch.testing.assert_close(ours, F.cross_entropy(logits, targets, ignore_index=0))
    # one sequence: its sequence mean is the token mean
    torch.testing.assert_close(token_loss(logits, targets, "sequence_mean", ignore_index=0), ours)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_low_precision_close_to_float64(dtype):
    logits, targets = batch(2, (6, 12))
    low = logits.detach().to(dtype).requires_grad_()
    for reduction in ("mean", "sum", "sequence_mean"):
        ours, grad = value_and_grad(token_loss(low, targets, reduction), low)
        ref, grad_ref = value_and_grad(token_loss(logits, targets, reduction), logits)
        assert ours.dtype == dtype and grad.dtype == dtype
        tol = 1e-5 if dtype == torch.float32 else 2e-2
        torch.testing.assert_close(ours.double(), ref, rtol=tol, atol=tol)
        torch.testing.assert_close(grad.double(), grad_ref, rtol=tol, atol=tol)


def test_bad_input():
    logits, targets = torch.randn(2, 3, 4), torch.randint(0, 4, (2, 3))
    with pytest.raises(ValueError, match="reduction"):
        token_loss(logits, targets, "average")
    with pytest.raises(ValueError, match="classes last"):
        token_loss(logits.transpose(1, 2), targets)  # F.cross_entropy's (N, C, T) layout
    with pytest.raises(TypeError, match="targets"):
        token_loss(logits, targets.float())
    with pytest.raises(TypeError, match="logits"):
        token_loss(targets, targets[:, :2])
    with pytest.raises(TypeError, match="targets"):
        token_loss(logits, [[0, 1, 2], [0, 1, 2]])
    with pytest.raises(ValueError, match="targets must be class indices"):
        token_loss(logits, targets.index_put((torch.tensor(0), torch.tensor(0)), torch.tensor(4)))
    with pytest.raises(ValueError, match="targets must be class indices"):
        token_loss(logits, torch.full((2, 3), -1))  # -1 is not the ignore_index
    with pytest.raises(ValueError, match="normalizer"):
        token_loss(logits, targets, "mean", normalizer=10)
    with pytest.raises(ValueError, match="normalizer"):
        token_loss(logits, targets, "sum", normalizer=0)
    with pytest.raises(ValueError, match="normalizer"):
        token_loss(logits, targets, "sum", normalizer=torch.tensor([3.0]))
    with pytest.raises(ValueError, match="normalizer"):
        token_loss(logits, targets, "sum", normalizer=float("inf"))
    with pytest.raises(ValueError, match="label_smoothing"):
        token_loss(logits, targets, label_smoothing=1.5)
    with pytest.raises(TypeError, match="ignore_index"):
        token_loss(logits, targets, ignore_index=0.5)
    with pytest.raises(ValueError, match="time dimension"):
        token_weights(torch.tensor(3), "sequence_mean")
