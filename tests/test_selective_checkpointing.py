"""``engine.activation_checkpointing=selective`` (ldisc/model/chunked_heads.py): the heads run image-chunk
by image-chunk with batch statistics over the whole batch, the first encoder block is recomputed, and
the step equals the plain one up to float summation order — in one process and, with batch norm over
the global batch, across real processes."""
from __future__ import annotations

import copy

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from ldisc.dist import Collective, ProcessGroupCollective
from ldisc.model import LDNet, LDOutput, set_activation_checkpointing
from ldisc.objectives.objective import LDObjective, ObjectiveConfig
from ldisc.train.sync_bn import convert_sync_batchnorm
from ldisc.views import ViewConfig, make_views_batch
from _dist_helpers import run_ranks

SIZE, PAIRS = 32, 2


def _batch(pairs: int = PAIRS, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    imgs = torch.rand(2, pairs, 3, SIZE, SIZE, generator=gen)
    return make_views_batch(imgs[0], imgs[1], ViewConfig(view_side=SIZE), gen)


def _step(model, batch: dict, collective: Collective | None = None, **objective) -> tuple[dict, dict, dict]:
    result = LDObjective(ObjectiveConfig(stage=2, **objective), collective)(model, dict(batch))
    result.total.backward()
    return ({k: float(v.detach()) for k, v in result.terms.items()},
            {n: p.grad.clone() for n, p in model.named_parameters()},
            {n: b.clone() for n, b in model.named_buffers()})


def _close(got: dict, want: dict, scale: float = 2e-6) -> None:
    """Per tensor: |got − want| ≤ 5e-6 + scale · max|want| (conv biases before a batch norm have a true
    gradient of 0: both sides are rounding noise of ~1e-6, whose size depends on the thread count)."""
    assert got.keys() == want.keys()
    for n, g in got.items():
        w = want[n].float()
        tol = 5e-6 + scale * float(w.abs().max())
        assert float((g.float() - w).abs().max()) <= tol, (n, float((g.float() - w).abs().max()), tol)


@pytest.mark.parametrize("objective", [{}, {"w_area": 0.5, "mask_power": 2.0, "region_views": "all"}])
def test_selective_step_equals_the_plain_step(objective):
    torch.manual_seed(0)
    base, batch = LDNet("tiny", 32, 4), _batch()
    plain = _step(copy.deepcopy(base), batch, **objective)
    model = set_activation_checkpointing(copy.deepcopy(base), "selective")
    calls = {"last_conv": 0, "block0": 0, "block1": 0}
    model.embed.net[1].register_forward_pre_hook(lambda *_: calls.__setitem__("last_conv", calls["last_conv"] + 1))
    model.encoder.blocks[0].register_forward_pre_hook(lambda *_: calls.__setitem__("block0", calls["block0"] + 1))
    model.encoder.blocks[1].register_forward_pre_hook(lambda *_: calls.__setitem__("block1", calls["block1"] + 1))
    losses, grads, buffers = _step(model, batch, **objective)
    # five chunks (one per view), each head's last convolution run again in backward; block 0 recomputed
    # (its second convolution's output kept)
    assert calls == {"last_conv": 10, "block0": 2, "block1": 1}
    assert losses.keys() == plain[0].keys() and ("area" in losses) == bool(objective)
    for k, v in losses.items():
        assert v == pytest.approx(plain[0][k], abs=2e-6, rel=1e-6), k
    _close(grads, plain[1])
    _close(buffers, plain[2])   # running statistics updated once, with the plain batch norm's values


class _Shapes(TorchDispatchMode):
    """The shape of every tensor an operation returns while it is active."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.seen += [tuple(t.shape) for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        return out


def test_selective_never_forms_a_whole_batch_full_resolution_head_tensor():
    """The plain step creates whole-batch, full-resolution tensors of ≥ 32 channels (the joined feature,
    the embedding, their gradients); the selective step never does, forward or backward: the heads'
    tensors exist one chunk of images at a time (the first block's 16-channel maps stay whole)."""
    torch.manual_seed(1)
    batch = _batch()
    seen = {}
    for mode in ("none", "selective"):
        model = set_activation_checkpointing(LDNet("tiny", 32, 4), mode)
        with _Shapes() as shapes:
            LDObjective(ObjectiveConfig(stage=2))(model, dict(batch)).total.backward()
        seen[mode] = [s for s in shapes.seen if len(s) == 4 and s[0] == 5 * PAIRS and s[2:] == (SIZE, SIZE)]
    assert max(s[1] for s in seen["none"]) >= 32
    assert max(s[1] for s in seen["selective"]) == 16, sorted(set(seen["selective"]))


def test_selective_outside_training_computes_at_once():
    model = set_activation_checkpointing(LDNet("tiny", 32, 4), "selective").eval()
    x = _batch()["x1_1"]
    out = model(x)
    assert isinstance(out, LDOutput) and out.embedding.shape == (PAIRS, 32, SIZE, SIZE)
    with torch.no_grad():
        reduced = model.train()(x, reduce=lambda e, m: {"e": e, "m": m})
    assert reduced["e"].shape == (PAIRS, 32, SIZE, SIZE) and reduced["m"].shape == (PAIRS, 4, SIZE, SIZE)


WORLD = 2


def _rank_steps(rank: int, world: int, base_state: dict, batch: dict) -> dict:
    """Plain and selective steps on this rank's half of the pairs, batch norm over both ranks."""
    torch.set_num_threads(1)
    out = {}
    for mode in ("none", "selective"):
        model = LDNet("tiny", 16, 4)
        model.load_state_dict(base_state)
        model = set_activation_checkpointing(convert_sync_batchnorm(model, torch.device("cpu")), mode)
        rows = slice(rank * PAIRS, (rank + 1) * PAIRS)
        collective = ProcessGroupCollective()
        losses, grads, buffers = _step(model, {k: v[rows] for k, v in batch.items()}, collective)
        grads = {n: collective.all_reduce_detached(g) / world for n, g in grads.items()}
        out[mode] = {"losses": losses, "grads": grads, "buffers": buffers}
    return out


def test_selective_across_ranks_equals_the_plain_step_and_one_process():
    """Batch norm over the global batch: the chunked heads' statistics span both ranks. Selective
    equals plain on the same two ranks (gradients, running statistics); the losses equal one process
    with the global batch. (Two ranks and one process differ by ~1e-3 of a first-layer gradient with
    either mode: float summation order amplified through the network, as tests/test_global_batch.py notes.)"""
    torch.manual_seed(2)
    base = LDNet("tiny", 16, 4)
    batch = _batch(pairs=WORLD * PAIRS, seed=3)
    ranks = run_ranks(_rank_steps, WORLD, (base.state_dict(), batch), timeout=240)
    torch.set_num_threads(1)
    one = _step(copy.deepcopy(base), batch)
    for term, value in one[0].items():
        got = sum(r["selective"]["losses"][term] for r in ranks) / WORLD
        assert got == pytest.approx(value, rel=2e-5, abs=2e-6), term
    for r in ranks:
        for term, value in r["none"]["losses"].items():
            assert r["selective"]["losses"][term] == pytest.approx(value, rel=1e-6, abs=2e-6), term
        _close(r["selective"]["grads"], r["none"]["grads"])
        _close(r["selective"]["buffers"], r["none"]["buffers"])
    _close(ranks[1]["selective"]["buffers"], ranks[0]["selective"]["buffers"], scale=0)   # the same on both ranks
