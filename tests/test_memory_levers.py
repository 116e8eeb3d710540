"""Memory and speed levers of the training step (docs/training.md, "Memory and speed"): activation
checkpointing gives the plain step's losses, gradients and batch-norm buffers; channels-last gives the
same losses; bf16 autocast runs the network in bf16 and every loss (the NCE included) in fp32; the
entropy term and freeing the view images change nothing but memory."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch.overrides import TorchFunctionMode

from ldisc.config import compose
from ldisc.model import CHECKPOINTING, LDNet, set_activation_checkpointing
from ldisc.objectives.objective import LDObjective, ObjectiveConfig
from ldisc.objectives.region import entropy_loss
from ldisc.views import ViewConfig, make_views_batch


def _batch(size: int = 32, pairs: int = 1, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    imgs = torch.rand(2, pairs, 3, size, size, generator=gen)
    return make_views_batch(imgs[0], imgs[1], ViewConfig(view_side=size), gen)


def _step(model: LDNet, batch: dict) -> tuple[dict, dict, dict]:
    """Losses, gradients and buffers (batch-norm running statistics) after one training-mode step."""
    result = LDObjective(ObjectiveConfig(stage=2))(model, dict(batch))
    result.total.backward()
    losses = {k: float(v.detach()) for k, v in result.terms.items()}
    return losses, {n: p.grad for n, p in model.named_parameters()}, dict(model.named_buffers())


def test_checkpointed_steps_equal_the_plain_step_fp32():
    torch.manual_seed(0)
    base, batch = LDNet("tiny", 32, 4), _batch()
    plain = _step(copy.deepcopy(base), batch)
    for mode in ("decoder", "all"):
        model = set_activation_checkpointing(copy.deepcopy(base), mode)
        calls = []
        model.embed.register_forward_pre_hook(lambda *_: calls.append(1))
        model.encoder.blocks[0].register_forward_pre_hook(lambda *_: calls.append(0))
        losses, grads, buffers = _step(model, batch)
        # the heads (and, with "all", the encoder blocks) ran again during the backward pass
        assert calls.count(1) == 2 and calls.count(0) == (2 if mode == "all" else 1)
        assert losses.keys() == plain[0].keys()
        for k, v in losses.items():
            assert v == pytest.approx(plain[0][k], abs=1e-6), (mode, k)
        for n, g in grads.items():
            assert torch.allclose(g, plain[1][n], rtol=0, atol=1e-6), (mode, n)
        for n, b in buffers.items():    # running statistics: updated once, not again by the recomputation
            assert torch.equal(b, plain[2][n]), (mode, n)


def test_checkpointing_off_in_eval_and_unknown_mode_rejected():
    model = set_activation_checkpointing(LDNet("tiny", 32, 4), "all").eval()
    calls = []
    model.embed.register_forward_pre_hook(lambda *_: calls.append(1))
    out = model(_batch(32, 1)["x1_1"])
    out.embedding.sum().backward()
    assert calls == [1]                       # eval mode: no checkpoint, no recomputation
    assert compose("pretrain", ["run_dir=/unused"]).engine.activation_checkpointing == "none"
    assert CHECKPOINTING == ("none", "decoder", "all", "selective")
    with pytest.raises(ValueError, match="activation_checkpointing"):
        set_activation_checkpointing(model, "encoder")


def test_channels_last_gives_the_same_losses():
    torch.manual_seed(1)
    model, batch = LDNet("tiny", 32, 4), _batch()
    objective = LDObjective(ObjectiveConfig(stage=2))
    plain = objective(model, dict(batch))

    def nhwc(x, reduce):
        out = model(x.contiguous(memory_format=torch.channels_last))
        assert out.embedding.is_contiguous(memory_format=torch.channels_last)
        return reduce(out.embedding, out.masks)

    last = objective(nhwc, dict(batch))
    for k, v in plain.terms.items():
        assert float(last.terms[k].detach()) == pytest.approx(float(v.detach()), rel=1e-5, abs=1e-6), k


class _Dtypes(TorchFunctionMode):
    """Output dtype of every convolution and every matrix product called while it is active."""

    PRODUCTS = ("mm", "bmm", "matmul", "einsum", "__matmul__", "addmm", "baddbmm", "linear")

    def __init__(self):
        super().__init__()
        self.conv, self.products = set(), {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = getattr(func, "__name__", "")
        if isinstance(out, torch.Tensor) and out.is_floating_point():
            if name == "conv2d":
                self.conv.add(out.dtype)
            elif name in self.PRODUCTS:
                self.products.setdefault(out.dtype, set()).add(name)
        return out


@pytest.mark.parametrize("checkpointing", ["decoder", "selective"])
def test_bf16_autocast_engine_keeps_the_losses_in_fp32(checkpointing):
    from ldisc.config_schema import pretrain_sections
    from ldisc.train.ds_config import build_ds_config
    from ldisc.train.engine import Engine
    from ldisc.train.env import init_distributed, single_process_env

    cfg = compose("pretrain", ["run_dir=/unused", "engine.precision=bf16-autocast", "train.batch_size=2",
                               f"engine.activation_checkpointing={checkpointing}"])
    with single_process_env():
        info = init_distributed("auto")
        sections = pretrain_sections(cfg)
        engine = Engine(LDNet("tiny", 32, 4), sections.engine, build_ds_config(sections.engine, sections.train, 1), info)
        assert engine.module.checkpoint_heads == (checkpointing == "decoder")
        assert engine.module.chunked_heads == (checkpointing == "selective")
        with _Dtypes() as seen:
            result = LDObjective(ObjectiveConfig(stage=2))(engine, _batch(), keep_masks=True)
            engine.backward(result.total)
        engine.destroy()
    assert seen.conv == {torch.bfloat16}                         # the network ran under bf16 autocast
    assert torch.bfloat16 not in seen.products, seen.products   # NCE and region products: fp32 (or fp64)
    assert {"einsum", "matmul"} <= seen.products[torch.float32]
    assert result.patch_vectors.dtype == torch.float32 and result.masks.dtype == torch.float32
    assert all(v.dtype == torch.float32 and math.isfinite(float(v)) for v in result.terms.values())


def test_fused_entropy_equals_the_plain_formula():
    torch.manual_seed(2)
    x = torch.rand(3, 4, 5, 5, dtype=torch.float64)
    x[0, 0, 0, :3] = torch.tensor([0.0, 1.0, 1e-8])               # outside the clamp: no gradient
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    m = b.clamp(1e-6, 1 - 1e-6)
    plain = -(m * torch.log(m) + (1 - m) * torch.log(1 - m)).mean() / math.log(2)
    fused = entropy_loss(a)
    (fused * 3).backward()
    (plain * 3).backward()
    assert float(fused) == pytest.approx(float(plain), rel=1e-12)
    assert torch.allclose(a.grad, b.grad, rtol=1e-9, atol=1e-15)
    assert torch.equal(a.grad[0, 0, 0, :3], torch.zeros(3, dtype=torch.float64))
    assert float(entropy_loss(torch.full((1, 2, 2, 2), 0.5), math.e)) == pytest.approx(math.log(2), rel=1e-6)


def test_consumed_views_are_freed_and_change_nothing():
    torch.manual_seed(3)
    model, batch = LDNet("tiny", 32, 4), _batch()
    objective = LDObjective(ObjectiveConfig(stage=2))
    kept = objective(model, dict(batch)).total
    consumed_batch = dict(batch)
    consumed = objective(model, consumed_batch, consume_views=True).total
    assert float(consumed) == float(kept)
    assert not {"x1_1", "x1_2", "x2_1", "x2_2", "mix"} & consumed_batch.keys()
    assert {"flip1", "rot1", "mix_w"} <= consumed_batch.keys()
