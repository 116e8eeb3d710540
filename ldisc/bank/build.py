"""The bank of a run from the ``bank`` config group, and the one call that feeds it after a step.

    bank = build_bank(cfg.bank, collective, dim=cfg.model.embed_dim, device=device)
    keys = build_key_encoder(cfg.bank, model, cfg.objective.grid, cfg.objective.patch_pooling,
                             cfg.objective.center_sigma)          # None: online vectors
    ...
    losses = objective(model, batch, bank_negatives=bank.bank_negatives())
    engine.step(losses.total)
    feed_bank(bank, losses.patch_vectors, batch, keys, model)

``entries: 0`` builds a bank of capacity 0: ``bank_negatives()`` is always None (the paper) and feeding it
costs nothing, so the trainer needs no special case.
"""
from __future__ import annotations

import torch
from torch import nn

from ldisc.bank.ema import EMAKeyEncoder
from ldisc.bank.memory_bank import ShardedMemoryBank
from ldisc.config_schema import BankConfig, typed_section
from ldisc.dist import Collective


def _bank_config(cfg) -> BankConfig:
    return cfg if isinstance(cfg, BankConfig) else typed_section(BankConfig, cfg, "bank")


def build_bank(cfg, collective: Collective, dim: int, device: torch.device | str = "cpu") -> ShardedMemoryBank:
    """``cfg``: the ``bank`` group (a :class:`BankConfig` or its section); capacity ``entries`` over
    ``collective``'s ranks."""
    return ShardedMemoryBank(_bank_config(cfg).entries, dim, collective, device)


def build_key_encoder(cfg, model: nn.Module, grid: int, pooling: str = "mean",
                      sigma: float = 0.25) -> EMAKeyEncoder | None:
    """An EMA key encoder when the bank is on and ``ema_momentum`` > 0, else None; it pools its patch
    vectors like the objective (``pooling``/``sigma`` = ``objective.patch_pooling``/``center_sigma``)."""
    bank = _bank_config(cfg)
    if bank.entries == 0 or bank.ema_momentum == 0.0:
        return None
    return EMAKeyEncoder(model, bank.ema_momentum, grid, pooling, sigma)


def feed_bank(bank: ShardedMemoryBank, patch_vectors: torch.Tensor, batch: dict[str, torch.Tensor],
              key_encoder: EMAKeyEncoder | None = None, model: nn.Module | None = None) -> None:
    """After the optimiser step: update the key encoder (if any) and enqueue this step's keys.

    Call on every rank. Without a key encoder the step's online vectors (``StepLosses.patch_vectors``)
    are enqueued; with one, its EMA is first moved towards ``model`` and it encodes ``batch``.
    """
    if bank.capacity == 0:
        return
    if key_encoder is None:
        bank.enqueue(patch_vectors)
        return
    if model is not None:
        key_encoder.update(model)
    bank.enqueue(key_encoder.encode_patches(batch))
