"""The EMA key encoder and the bank config group (one process)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from ldisc.bank import EMAKeyEncoder, ShardedMemoryBank, build_bank, build_key_encoder, feed_bank
from ldisc.dist import Collective
from ldisc.model import LDNet
from ldisc.objectives.objective import LDObjective, ObjectiveConfig
from ldisc.views import ViewConfig, make_views_batch

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _batch(seed: int = 0, pairs: int = 2, size: int = 32) -> dict:
    gen = torch.Generator().manual_seed(seed)
    x1, x2 = torch.rand(2, pairs, 3, size + 8, size + 8, generator=gen)
    return make_views_batch(x1, x2, ViewConfig(view_side=size), gen)


def _bank_cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose("pretrain", overrides=list(overrides)).bank


def test_config_group_builds_the_bank():
    none = _bank_cfg()
    assert build_bank(none, Collective(), 32).capacity == 0
    assert build_key_encoder(none, LDNet("tiny", 8), 8) is None
    fifo = _bank_cfg("bank=fifo")
    assert (fifo.entries, fifo.ema_momentum) == (65536, 0.0)
    bank = build_bank(fifo, Collective(), 32)
    assert (bank.capacity, bank.keys.shape) == (65536, (65536, 32))
    assert build_key_encoder(fifo, LDNet("tiny", 8), 8) is None
    ema = build_key_encoder(_bank_cfg("bank=fifo", "bank.ema_momentum=0.99"), LDNet("tiny", 8), 8)
    assert isinstance(ema, EMAKeyEncoder) and ema.momentum == 0.99


def test_key_encoder_vectors_are_the_objective_vectors_with_the_same_weights():
    torch.manual_seed(0)
    model = LDNet("tiny", 8).eval()
    batch = _batch()
    keys = EMAKeyEncoder(model, 0.9).encode_patches(batch)
    online = LDObjective(ObjectiveConfig())(model, batch).patch_vectors
    assert keys.shape == online.shape == (4 * 2 * 64, 8)
    torch.testing.assert_close(keys, online, rtol=1e-5, atol=1e-6)


def test_key_encoder_update_is_an_exponential_moving_average():
    torch.manual_seed(0)
    model = LDNet("tiny", 8)
    ema = EMAKeyEncoder(model, 0.75)
    before = {k: v.clone() for k, v in ema.model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
        model.encoder.blocks[0][0][1].running_mean.fill_(3.0)
    ema.update(model)
    after = ema.model.state_dict()
    online = model.state_dict()
    for name, _ in model.named_parameters():
        torch.testing.assert_close(after[name], 0.75 * before[name] + 0.25 * online[name])
    torch.testing.assert_close(after["encoder.blocks.0.0.1.running_mean"], torch.full((16,), 3.0))
    assert not any(p.requires_grad for p in ema.model.parameters())


def test_feed_bank_with_and_without_key_encoder():
    torch.manual_seed(0)
    model = LDNet("tiny", 8).eval()
    batch = _batch(1)
    online = LDObjective(ObjectiveConfig())(model, batch).patch_vectors
    plain = ShardedMemoryBank(1000, 8)
    feed_bank(plain, online, batch)
    assert plain.fill == 512 and torch.equal(plain.keys[:512], online)
    keyed = ShardedMemoryBank(1000, 8)
    encoder = EMAKeyEncoder(model, 0.5)
    feed_bank(keyed, online, batch, encoder, model)
    torch.testing.assert_close(keyed.keys[:512], online, rtol=1e-5, atol=1e-6)
    off = ShardedMemoryBank(0, 8)
    feed_bank(off, online, batch)
    assert off.fill == 0 and off.bank_negatives() is None and off.fill_ratio == 0.0


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError):
        EMAKeyEncoder(LDNet("tiny", 8), 1.0)
    with pytest.raises(ValueError):
        ShardedMemoryBank(10, 8).enqueue(torch.zeros(3, 7))
