"""Patch NCE against the authors' BatchCriterion form: values and gradients, memory-lean paths."""
import pytest
import torch
import torch.nn.functional as F

from ldisc.objectives.nce import BankNegatives, authors_nce, instance_nce


def _unit(n, d=16, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=1)


def _ours(x, tau=0.1, detach_keys=True, chunk=7, bank_negatives=None):
    n = x.shape[0]
    idx = torch.arange(n)
    return instance_nce(x, x, idx, (idx + n // 2) % n, tau, chunk, detach_keys, bank_negatives).mean()


@pytest.mark.parametrize("n", [2, 6, 64, 130])
@pytest.mark.parametrize("detach_keys", [True, False])
def test_matches_authors_value_and_gradient(n, detach_keys):
    """fp32 ours vs. the authors' form in fp64 (in fp32 their Σ_j − diagonal cancels badly)."""
    x = _unit(n, seed=n).requires_grad_()
    x64 = x.detach().double().requires_grad_()
    ref = authors_nce(x64, 0.1, detach_keys)
    (g_ref,) = torch.autograd.grad(ref, x64)
    ours = _ours(x, 0.1, detach_keys)
    (g_ours,) = torch.autograd.grad(ours, x)
    assert ours.item() == pytest.approx(ref.item(), abs=1e-5)
    torch.testing.assert_close(g_ours.double(), g_ref, atol=1e-5, rtol=1e-4)


def test_only_positive_pair_gives_zero_loss():
    # with N = 2 the only other vector is the positive: p = 1 and there are no negatives
    x = _unit(2).requires_grad_()
    assert _ours(x).item() == pytest.approx(0.0, abs=1e-6)


def test_detach_keys_moves_gradient_to_query_rows_only():
    x = _unit(8, seed=3, dtype=torch.float64).requires_grad_()
    keys = _unit(8, seed=3, dtype=torch.float64).requires_grad_()
    idx = torch.arange(8)
    loss = instance_nce(x, keys, idx, (idx + 4) % 8, 0.1, 3, detach_keys=True).mean()
    loss.backward()
    assert keys.grad is None and x.grad.abs().sum() > 0
    keys2 = keys.detach().clone().requires_grad_()
    instance_nce(x.detach(), keys2, idx, (idx + 4) % 8, 0.1, 3, detach_keys=False).mean().backward()
    assert keys2.grad.abs().sum() > 0


def test_chunk_size_does_not_change_result():
    x = _unit(100, seed=5, dtype=torch.float64).requires_grad_()
    a = _ours(x, chunk=1000)
    (ga,) = torch.autograd.grad(a, x)
    b = _ours(x, chunk=9)
    (gb,) = torch.autograd.grad(b, x)
    assert a.item() == pytest.approx(b.item(), rel=1e-12)
    torch.testing.assert_close(ga, gb)


def test_bank_negatives_equal_extra_detached_keys():
    """Bank entries enter the denominator and the log(1 − p) sum exactly like extra keys."""
    x = _unit(12, seed=7, dtype=torch.float64).requires_grad_()
    bank = _unit(20, seed=8, dtype=torch.float64)
    idx = torch.arange(12)
    pos = (idx + 6) % 12
    a = instance_nce(x, x, idx, pos, 0.1, 5, bank_negatives=BankNegatives(bank)).mean()
    (ga,) = torch.autograd.grad(a, x)
    b = instance_nce(x, torch.cat([x, bank]), idx, pos, 0.1, 5).mean()
    (gb,) = torch.autograd.grad(b, x)
    assert a.item() == pytest.approx(b.item(), rel=1e-12)
    torch.testing.assert_close(ga, gb)
    assert a.item() > authors_nce(x.detach()).item()   # more negatives, harder task


def test_loss_decreases_when_positives_align():
    x = _unit(16, seed=9)
    aligned = torch.cat([x[:8], x[:8]])
    assert _ours(aligned).item() < _ours(x).item()
