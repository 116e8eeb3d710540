"""The sharded memory bank with real processes (gloo, W = 2): FIFO order, sharded NCE, save/resume.

One spawn of two ranks (module fixture) does everything distributed; the parent holds the
single-process references: a plain FIFO fed the global batch, and the criterion with the whole
bank as ``BankNegatives(full_bank)`` in one process.
"""
from __future__ import annotations

from collections import deque

import pytest
import torch
import torch.nn.functional as F

from ldisc.bank import ShardedMemoryBank, StridedLayout, load_bank, save_bank, shard_bytes
from ldisc.bank.layout import slot_ages
from ldisc.dist import Collective, ProcessGroupCollective
from ldisc.objectives.bank_terms import BankTerms
from ldisc.objectives.nce import BankNegatives, instance_nce
from ldisc.objectives.nce_kernel import log_sum_exp
from ldisc.objectives.objective import ObjectiveConfig, _nce_over_ranks
from _dist_helpers import run_ranks

WORLD = 2
DIM = 8
CAPACITY = 11                  # odd: rank 0 holds 6 slots, rank 1 holds 5
STEPS = [3, 5, 7, 1, 6, 2]     # vectors per rank per step; 2·7 = 14 > K: one step overfills the bank
QUERIES = 24                   # per rank (first half ↔ second half are positives)
NCE_BANK = 301                 # bank of the criterion test, filled with 2 × 140 vectors


def unit(gen: torch.Generator, n: int, dim: int = DIM) -> torch.Tensor:
    return F.normalize(torch.randn(n, dim, generator=gen, dtype=torch.float64).float(), dim=1)


def global_fifo(states: list[dict]) -> torch.Tensor:
    """The whole bank, oldest → newest, from all ranks' ``state_dict()``."""
    keys = torch.cat([s["keys"] for s in states])
    if keys.shape[0] == 0:
        return keys
    ages = torch.cat([slot_ages(s["slots"], s["ptr"], s["capacity"]) for s in states])
    return keys[torch.argsort(ages, descending=True)]


def reference_fifo(steps: list[list[torch.Tensor]], capacity: int) -> torch.Tensor:
    """One FIFO fed each step's vectors of all ranks, in rank order; oldest → newest."""
    fifo: deque = deque(maxlen=capacity)
    for per_rank in steps:
        fifo.extend(torch.cat(per_rank))
    return torch.stack(list(fifo)) if fifo else torch.empty(0, DIM)


def make_data(tmp_path) -> dict:
    gen = torch.Generator().manual_seed(7)
    data = {
        "steps": [[unit(gen, n) for _ in range(WORLD)] for n in STEPS],
        "after": [unit(gen, 4) for _ in range(WORLD)],
        "queries": [unit(gen, QUERIES, 16) for _ in range(WORLD)],
        "nce_fill": [unit(gen, 140, 16) for _ in range(WORLD)],
        "save_dir": str(tmp_path / "saved_w2"),
        "single_dir": str(tmp_path / "saved_w1"),
    }
    single = ShardedMemoryBank(CAPACITY, DIM, Collective())
    for per_rank in data["steps"]:
        single.enqueue(torch.cat(per_rank))
    save_bank(single, data["single_dir"])
    return data


def _sharded_nce(rank: int, collective, bank: ShardedMemoryBank, queries: torch.Tensor,
                 detach_keys: bool) -> dict:
    cfg = ObjectiveConfig(detach_keys=detach_keys, chunk=7)
    local = queries.clone().requires_grad_(True)
    loss = _nce_over_ranks(local, collective, cfg, bank.bank_negatives())
    (loss / collective.world_size).backward()          # gradients of the mean over ranks, as DDP
    return {"loss": loss.item(), "grad": local.grad.clone(), "rows": bank.local_rows}


def _worker(rank: int, world: int, data: dict) -> dict:
    collective = ProcessGroupCollective()
    bank = ShardedMemoryBank(CAPACITY, DIM, collective)
    fills = []
    for per_rank in data["steps"]:
        bank.enqueue(per_rank[rank])
        fills.append(bank.fill)
    out = {"fills": fills, "state": bank.state_dict(), "negatives": bank.bank_negatives().keys.clone()}
    save_bank(bank, data["save_dir"])
    bank.enqueue(data["after"][rank])
    out["state_after"] = bank.state_dict()
    again = ShardedMemoryBank(CAPACITY, DIM, collective)
    again.load_state_dict(out["state"])
    again.enqueue(data["after"][rank])
    out["state_dict_roundtrip"] = again.state_dict()

    resumed = ShardedMemoryBank(CAPACITY, DIM, collective)
    out["loaded_fill"] = load_bank(resumed, data["single_dir"])
    out["resumed"] = resumed.state_dict()
    resumed.enqueue(data["after"][rank])
    out["resumed_after"] = resumed.state_dict()

    nce_bank = ShardedMemoryBank(NCE_BANK, 16, collective)
    nce_bank.enqueue(data["nce_fill"][rank])
    out["nce_state"] = nce_bank.state_dict()
    out["nce"] = {d: _sharded_nce(rank, collective, nce_bank, data["queries"][rank], d) for d in (True, False)}
    lonely = ShardedMemoryBank(1, 16, collective)          # K = 1: rank 1's shard is empty
    lonely.enqueue(data["nce_fill"][rank][:1])
    out["lonely_state"] = lonely.state_dict()
    out["lonely"] = _sharded_nce(rank, collective, lonely, data["queries"][rank], True)
    return out


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    data = make_data(tmp_path_factory.mktemp("bank"))
    return data, run_ranks(_worker, WORLD, (data,))


def test_layout_counts_and_memory():
    layouts = [StridedLayout(CAPACITY, WORLD, r) for r in range(WORLD)]
    assert [l.shard_rows for l in layouts] == [6, 5]
    assert [l.local_count(4) for l in layouts] == [2, 2] and [l.local_count(1) for l in layouts] == [1, 0]
    assert shard_bytes(65536, 8, 32) == 8192 * 32 * 4


def test_fifo_order_matches_one_fifo_fed_the_global_batch(ranks):
    data, out = ranks
    for t in range(len(STEPS)):
        expected = min(CAPACITY, WORLD * sum(STEPS[:t + 1]))
        assert [o["fills"][t] for o in out] == [expected] * WORLD
    torch.testing.assert_close(global_fifo([o["state"] for o in out]),
                               reference_fifo(data["steps"], CAPACITY), rtol=0, atol=0)
    torch.testing.assert_close(global_fifo([o["state_after"] for o in out]),
                               reference_fifo(data["steps"] + [data["after"]], CAPACITY), rtol=0, atol=0)
    assert [o["negatives"].shape[0] for o in out] == [6, 5]
    for o in out:                      # state_dict → load_state_dict on the same rank: the same bank
        for key in ("keys", "slots", "ptr", "fill"):
            assert torch.equal(torch.as_tensor(o["state_dict_roundtrip"][key]), torch.as_tensor(o["state_after"][key]))


def test_one_process_bank_is_the_same_fifo():
    gen = torch.Generator().manual_seed(3)
    steps = [[unit(gen, n)] for n in (4, 9, 12, 2)]
    bank = ShardedMemoryBank(CAPACITY, DIM)
    for (v,) in steps:
        bank.enqueue(v)
    torch.testing.assert_close(global_fifo([bank.state_dict()]), reference_fifo(steps, CAPACITY), rtol=0, atol=0)
    assert ShardedMemoryBank(0, DIM).bank_negatives() is None and ShardedMemoryBank(5, DIM).bank_negatives() is None


def test_resume_two_ranks_to_one(ranks, tmp_path):
    data, out = ranks
    for capacity in (CAPACITY, 7, 40):                   # same, smaller (newest kept), larger
        single = ShardedMemoryBank(capacity, DIM)
        assert load_bank(single, data["save_dir"]) == min(CAPACITY, capacity)
        torch.testing.assert_close(global_fifo([single.state_dict()]),
                                   reference_fifo(data["steps"], CAPACITY)[-capacity:], rtol=0, atol=0)
        single.enqueue(torch.cat(data["after"]))
        expected = reference_fifo(data["steps"], CAPACITY)[-capacity:]
        expected = torch.cat([expected, torch.cat(data["after"])])[-capacity:]
        torch.testing.assert_close(global_fifo([single.state_dict()]), expected, rtol=0, atol=0)
    assert load_bank(ShardedMemoryBank(CAPACITY, DIM), tmp_path) == 0          # no bank saved there


def test_resume_one_rank_to_two(ranks):
    data, out = ranks
    assert [o["loaded_fill"] for o in out] == [CAPACITY] * WORLD
    torch.testing.assert_close(global_fifo([o["resumed"] for o in out]),
                               reference_fifo(data["steps"], CAPACITY), rtol=0, atol=0)
    torch.testing.assert_close(global_fifo([o["resumed_after"] for o in out]),
                               reference_fifo(data["steps"] + [data["after"]], CAPACITY), rtol=0, atol=0)


def _single_process_nce(queries: list[torch.Tensor], full_bank: torch.Tensor, detach_keys: bool):
    """The criterion in one process over all ranks' queries, arranged so positives stay paired."""
    half = QUERIES // 2
    arranged = torch.cat([q[:half] for q in queries] + [q[half:] for q in queries]).requires_grad_(True)
    cfg = ObjectiveConfig(detach_keys=detach_keys, chunk=7)
    loss = _nce_over_ranks(arranged, Collective(), cfg, BankNegatives(full_bank))
    loss.backward()
    g = arranged.grad
    grads = [torch.cat([g[r * half:(r + 1) * half], g[(WORLD + r) * half:(WORLD + r + 1) * half]])
             for r in range(WORLD)]
    return loss.item(), grads


@pytest.mark.parametrize("detach_keys", [True, False])
def test_sharded_bank_criterion_equals_whole_bank(ranks, detach_keys):
    data, out = ranks
    full_bank = global_fifo([o["nce_state"] for o in out])
    assert full_bank.shape[0] == 280 and [o["nce"][True]["rows"] for o in out] == [140, 140]
    loss, grads = _single_process_nce(data["queries"], full_bank, detach_keys)
    mean_loss = sum(o["nce"][detach_keys]["loss"] for o in out) / WORLD
    assert mean_loss == pytest.approx(loss, rel=1e-5)
    for r, o in enumerate(out):
        torch.testing.assert_close(o["nce"][detach_keys]["grad"], grads[r], rtol=1e-4, atol=1e-6)


def test_sharded_criterion_with_an_empty_shard(ranks):
    data, out = ranks
    assert [o["lonely"]["rows"] for o in out] == [1, 0]
    full_bank = global_fifo([o["lonely_state"] for o in out])
    torch.testing.assert_close(full_bank, data["nce_fill"][1][:1], rtol=0, atol=0)
    loss, grads = _single_process_nce(data["queries"], full_bank, True)
    assert sum(o["lonely"]["loss"] for o in out) / WORLD == pytest.approx(loss, rel=1e-5)
    for r, o in enumerate(out):
        torch.testing.assert_close(o["lonely"]["grad"], grads[r], rtol=1e-4, atol=1e-6)


def dense_nce_with_bank(q: torch.Tensor, bank: torch.Tensor, tau: float) -> torch.Tensor:
    """Reference: whole matrices, autograd; positive of row i is row (i + N/2) mod N; keys detached."""
    n = q.shape[0]
    keys = q.detach()
    s = q @ keys.t() / tau
    eye = torch.eye(n, dtype=torch.bool)
    pos = torch.roll(eye, n // 2, dims=1)
    sb = q @ bank.t() / tau
    log_z = torch.logsumexp(torch.cat([s.masked_fill(eye, float("-inf")), sb], 1), 1)
    p, pb = torch.exp(s - log_z[:, None]), torch.exp(sb - log_z[:, None])
    log1m = torch.log1p(-p).masked_fill(eye | pos, 0.0).sum(1) + torch.log1p(-pb).sum(1)
    return (-(s[pos] - log_z) - log1m).mean()


def test_bank_criterion_equals_dense_reference():
    gen = torch.Generator().manual_seed(1)
    q, bank = unit(gen, 30, 16).double(), unit(gen, 57, 16).double()
    rows = torch.arange(30)
    q1 = q.clone().requires_grad_(True)
    loss = instance_nce(q1, q1, rows, (rows + 15) % 30, 0.1, 7, bank_negatives=BankNegatives(bank)).mean()   # 7 × 7 tiles
    loss.backward()
    q2 = q.clone().requires_grad_(True)
    ref = dense_nce_with_bank(q2, bank, 0.1)
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-12)
    torch.testing.assert_close(q1.grad, q2.grad, rtol=1e-10, atol=1e-12)


def test_bank_terms_gradcheck():
    gen = torch.Generator().manual_seed(2)
    q = unit(gen, 9, 6).double().requires_grad_(True)
    keys = unit(gen, 11, 6).double()
    a = torch.randn(9, generator=gen, dtype=torch.float64).add(2.0).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda q, a: BankTerms.apply(q, a, keys, 0.5, 4, None), (q, a))


def test_bank_logsumexp_when_scores_span_more_than_fp32_exp():
    """τ = 0.01: e^{s − |q||x|/τ} underflows for rows far from every key; those rows are redone exactly."""
    gen = torch.Generator().manual_seed(4)
    keys = F.pad(unit(gen, 40, 3), (0, 1))                           # no key has a 4th component
    far = torch.tensor([[0.0, 0.0, 0.0, 1.0], [0.1, 0.0, 0.0, 0.995]])  # s ≈ 0..10 of a bound 100
    q = torch.cat([unit(gen, 5, 4), far])
    expected = torch.logsumexp(q @ keys.t() / 0.01, 1)
    got = log_sum_exp(q, keys, 0.01, 3)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-4)
