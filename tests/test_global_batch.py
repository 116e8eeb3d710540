"""Global-batch equivalence with real processes: W = 2 ranks × batch B ≡ 1 rank × batch W·B.

Same samples, same initial weights, BatchNorm in eval mode (SyncBatchNorm needs a GPU), torch SGD
with momentum, gradients averaged over ranks as DDP / DeepSpeed do (all-reduce, / W). Each rank's
loss is the mean over its own queries, so mean_r L_r = L of one process; the averaged gradients and
the updated parameters must agree to fp32 tolerance. (SGD rather than Adam for the parameter check:
Adam divides by √v, so an element whose true gradient is ~0 moves by ±lr on rounding noise alone.) Cases: stage 1, stage 2 (region centres over the global batch), stage 2
with EMA prototypes and the memory bank (fed the online vectors, wrapping around), stage 1 with a
bank fed by an EMA key encoder.
"""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from ldisc.bank import ShardedMemoryBank, build_key_encoder, feed_bank
from ldisc.dist import Collective, ProcessGroupCollective
from ldisc.model import LDNet
from ldisc.objectives.objective import LDObjective, ObjectiveConfig
from ldisc.views import ViewConfig, make_views_batch
from _dist_helpers import run_ranks

WORLD = 2
PER_RANK = 2                 # image pairs per rank per step
SIZE = 32                    # view size (px)
EMBED = 8
CLUSTERS = 4
VECTORS_PER_RANK = 4 * PER_RANK * 64
LR = 0.05


@dataclass(frozen=True)
class Case:
    stage: int
    steps: int
    bank: int = 0
    prototype_momentum: float = 0.0
    ema_momentum: float = 0.0


CASES = {
    "stage1": Case(stage=1, steps=2),
    "stage2": Case(stage=2, steps=2),
    "stage2_bank_prototypes": Case(stage=2, steps=3, bank=1500, prototype_momentum=0.5),
    "stage1_bank_ema_keys": Case(stage=1, steps=2, bank=1500, ema_momentum=0.9),
}


def make_data() -> dict:
    gen = torch.Generator().manual_seed(11)
    batches = []
    for _ in range(max(c.steps for c in CASES.values())):
        x1, x2 = torch.rand(2, WORLD * PER_RANK, 3, SIZE + 8, SIZE + 8, generator=gen)
        batches.append(make_views_batch(x1, x2, ViewConfig(view_side=SIZE), gen))
    torch.manual_seed(5)
    # PyTorch's default init (model.init=torch): with BN in eval mode the Kaiming-initialised net keeps
    # its deep activations at scale ~1, which amplifies fp32 summation-order noise over the steps past
    # the 1e-4-of-the-update tolerance below; equivalence is a property of the objective, not the init
    init = {stage: LDNet("tiny", EMBED, CLUSTERS if stage == 2 else 0, init="torch").state_dict() for stage in (1, 2)}
    return {"batches": batches, "init": init}


def to_rank_order(vectors: torch.Tensor, world: int) -> torch.Tensor:
    """One process's patch vectors [view][sample][cell] → the order W ranks enqueue them in."""
    v = vectors.view(4, world, -1, 64, vectors.shape[-1])
    return v.permute(1, 0, 2, 3, 4).reshape(vectors.shape)


def average_gradients(model: torch.nn.Module, collective: Collective) -> None:
    for p in model.parameters():
        if p.grad is not None:
            p.grad.copy_(collective.all_reduce_detached(p.grad) / collective.world_size)


def train(case: Case, data: dict, collective: Collective, rows: slice, world: int) -> dict:
    """``case.steps`` Adam steps on ``rows`` of every batch; ``world`` > collective's: one process."""
    model = LDNet("tiny", EMBED, CLUSTERS if case.stage == 2 else 0)
    model.load_state_dict(data["init"][case.stage])
    model.eval()
    objective = LDObjective(ObjectiveConfig(stage=case.stage, prototype_momentum=case.prototype_momentum,
                                            chunk=200), collective)
    bank = ShardedMemoryBank(case.bank, EMBED, collective)
    keys = build_key_encoder({"entries": case.bank, "ema_momentum": case.ema_momentum}, model, 8)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    history, first_grads = [], None
    for batch in data["batches"][:case.steps]:
        local = {k: v[rows] for k, v in batch.items()}
        out = objective(model, local, bank_negatives=bank.bank_negatives())
        opt.zero_grad()
        out.total.backward()
        average_gradients(model, collective)
        if first_grads is None:
            first_grads = {k: p.grad.clone() for k, p in model.named_parameters()}
        opt.step()
        single = world // collective.world_size
        patches = to_rank_order(out.patch_vectors, single)
        if keys is not None:
            keys.update(model)
            bank.enqueue(to_rank_order(keys.encode_patches(local), single))
        else:
            feed_bank(bank, patches, local)
        history.append({"total": out.total.item(), "fill": bank.fill,
                        **{k: v.item() for k, v in out.terms.items()}})
    return {"history": history, "params": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "prototypes": objective.prototypes.clone(), "grads": first_grads}


def _worker(rank: int, world: int, data: dict) -> dict:
    collective = ProcessGroupCollective()
    rows = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
    return {name: train(case, data, collective, rows, world) for name, case in CASES.items()}


@pytest.fixture(scope="module")
def runs():
    data = make_data()
    distributed = run_ranks(_worker, WORLD, (data,), timeout=240)
    torch.set_num_threads(1)
    single = {name: train(case, data, Collective(), slice(None), WORLD) for name, case in CASES.items()}
    return distributed, single


@pytest.mark.parametrize("name", list(CASES))
def test_losses_equal_one_process_with_the_global_batch(runs, name):
    distributed, single = runs
    ref = single[name]["history"]
    for step, expected in enumerate(ref):
        for term, value in expected.items():
            got = sum(d[name]["history"][step][term] for d in distributed) / WORLD
            assert got == pytest.approx(value, rel=2e-5, abs=1e-6), (name, step, term)
    if CASES[name].bank:
        fills = [h["fill"] for h in ref]
        assert fills[0] == WORLD * VECTORS_PER_RANK and fills[-1] == CASES[name].bank   # wrapped around
    assert any(h.get("region", 0) > 0 for h in ref) == (CASES[name].stage == 2)


@pytest.mark.parametrize("name", list(CASES))
def test_averaged_gradients_equal_one_process(runs, name):
    distributed, single = runs
    for key, expected in single[name]["grads"].items():
        scale = expected.abs().max().item()
        assert scale > 0, f"{key} has no gradient"
        for d in distributed:
            torch.testing.assert_close(d[name]["grads"][key], expected, rtol=1e-4, atol=1e-5 * scale, msg=key)


@pytest.mark.parametrize("name", list(CASES))
def test_parameter_updates_equal_one_process(runs, name):
    distributed, single = runs
    init = make_data()["init"][CASES[name].stage]
    largest = 0.0
    for key, expected in single[name]["params"].items():
        if not expected.is_floating_point():
            continue
        moved = (expected - init[key]).abs().max().item()      # tolerance: 1e-4 of this tensor's update
        largest = max(largest, moved)
        for d in distributed:
            torch.testing.assert_close(d[name]["params"][key], expected, rtol=1e-5, atol=1e-4 * moved + 1e-8,
                                       msg=key)
    assert largest > 1e-3                                      # the steps did change the network


def test_prototypes_identical_across_ranks_and_equal_one_process(runs):
    distributed, single = runs
    name = "stage2_bank_prototypes"
    protos = [d[name]["prototypes"] for d in distributed]
    assert protos[0].shape == (CLUSTERS, EMBED)
    torch.testing.assert_close(protos[1], protos[0], rtol=0, atol=0)
    torch.testing.assert_close(protos[0], single[name]["prototypes"], rtol=1e-5, atol=1e-6)
