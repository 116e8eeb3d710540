"""Reject impossible ``ldisc-pretrain`` settings before anything starts, with one line that says what to change.

First the typed sections (:mod:`ldisc.config_schema`: every key present, no unknown key, each value of
its type), then the ranges. The network takes square views whose side is a multiple of 16 (four 2×
poolings in the encoder, mirrored by the decoder's skip connections) and at least 32 px (smaller views
leave the deepest feature map 1 px wide).
"""
from __future__ import annotations

import math

from omegaconf import DictConfig

from ldisc.config_schema import ConfigError, PretrainSections, pretrain_sections
from ldisc.model.checkpointing import CHECKPOINTING
from ldisc.train.ds_config import PRECISIONS
from ldisc.views import INPUT_NORMALIZATION

VIEW_MULTIPLE = 16
MIN_VIEW = 32

__all__ = ["ConfigError", "check_pretrain_config", "MIN_VIEW", "VIEW_MULTIPLE"]


def _at_least(key: str, value: int, low: int) -> int:
    if value < low:
        raise ConfigError(f"{key} must be ≥ {low}, got {value}")
    return value


def _one_of(key: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{key} must be one of {', '.join(map(str, allowed))}; got {value!r}")


def _fraction(key: str, value: float | None, high_open: bool = True) -> None:
    if value is not None and not (0 <= value < 1 if high_open else 0 <= value <= 1):
        raise ConfigError(f"{key} must be in [0, 1{')' if high_open else ']'}, got {value}")


def check_pretrain_config(cfg: DictConfig) -> PretrainSections:
    """The typed sections of a composed pretraining config; :class:`ConfigError` for the first
    impossible value."""
    if not isinstance(cfg.get("threads"), int) or isinstance(cfg.get("threads"), bool):
        raise ConfigError(f"threads must be an integer ≥ 0, got {cfg.get('threads')!r}")
    _at_least("threads", cfg.threads, 0)
    s = pretrain_sections(cfg)
    t, e, d = s.train, s.engine, s.data
    s1, s2 = _at_least("train.stage1_steps", t.stage1_steps, 0), _at_least("train.stage2_steps", t.stage2_steps, 0)
    stage = cfg.objective.get("stage")
    _one_of("objective.stage", stage, (None, 1, 2))
    wanted = {None: s1 + s2, 1: s1, 2: s2}[stage]
    if wanted == 0:
        raise ConfigError(f"nothing to train: train.stage1_steps={s1}, train.stage2_steps={s2}"
                          f"{f', objective.stage={stage}' if stage is not None else ''}; set a step count ≥ 1")
    for key in ("batch_size", "checkpoint_every", "keep_checkpoints", "lr_halve_every", "val_batches"):
        _at_least(f"train.{key}", getattr(t, key), 1)
    if not math.isfinite(t.lr) or t.lr <= 0:
        raise ConfigError(f"train.lr must be a finite number > 0, got {t.lr!r}")
    _fraction("train.val_fraction", t.val_fraction)
    _at_least("engine.gradient_accumulation", e.gradient_accumulation, 1)
    _one_of("engine.zero_stage", e.zero_stage, (0, 1, 2, 3))
    _one_of("engine.precision", e.precision, PRECISIONS)
    _one_of("engine.activation_checkpointing", e.activation_checkpointing, CHECKPOINTING)
    _at_least("bank.entries", s.bank.entries, 0)
    _fraction("bank.ema_momentum", s.bank.ema_momentum)
    _one_of("data.modality", d.modality, sorted(INPUT_NORMALIZATION))
    _fraction("data.max_bad_fraction", getattr(d, "max_bad_fraction", None), high_open=False)
    if not 0 <= s.metrics.port <= 65535:
        raise ConfigError(f"metrics.port must be 0 (off) or a TCP port, got {s.metrics.port}")
    size = _at_least("data.view_side", d.view_side, MIN_VIEW)
    if size % VIEW_MULTIPLE:
        raise ConfigError(f"data.view_side={size}: the network takes view sides that are multiples of {VIEW_MULTIPLE} "
                          f"(e.g. {size // VIEW_MULTIPLE * VIEW_MULTIPLE or MIN_VIEW} or "
                          f"{(size // VIEW_MULTIPLE + 1) * VIEW_MULTIPLE})")
    return s
