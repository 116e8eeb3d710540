"""Reject impossible ``ldisc-pretrain`` settings before anything starts, with one line that says what to change.

The network takes square views whose side is a multiple of 16 (four 2× poolings in the encoder, mirrored
by the decoder's skip connections) and at least 32 px (smaller views leave the deepest feature map 1 px wide).
"""
from __future__ import annotations

import math

from omegaconf import DictConfig

VIEW_MULTIPLE = 16
MIN_VIEW = 32


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the key and what to set."""


def _int(cfg: DictConfig, key: str, low: int) -> int:
    value = cfg
    for part in key.split("."):
        value = value.get(part) if isinstance(value, DictConfig) else None
    try:
        number = int(value)
        if number != float(value):
            raise ValueError
    except (TypeError, ValueError):
        raise ConfigError(f"{key} must be an integer ≥ {low}, got {value!r}") from None
    if number < low:
        raise ConfigError(f"{key} must be ≥ {low}, got {number}")
    return number


def check_pretrain_config(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` for the first impossible value of a composed pretraining config."""
    t = cfg.train
    s1, s2 = _int(cfg, "train.stage1_steps", 0), _int(cfg, "train.stage2_steps", 0)
    stage = cfg.objective.get("stage")
    wanted = {None: s1 + s2, 1: s1, 2: s2}.get(stage, s1 + s2)
    if wanted == 0:
        raise ConfigError(f"nothing to train: train.stage1_steps={s1}, train.stage2_steps={s2}"
                          f"{f', objective.stage={stage}' if stage is not None else ''}; set a step count ≥ 1")
    _int(cfg, "train.batch_size", 1)
    _int(cfg, "train.checkpoint_every", 1)
    _int(cfg, "train.keep_checkpoints", 1)
    _int(cfg, "train.lr_halve_every", 1)
    _int(cfg, "engine.gradient_accumulation", 1)
    _int(cfg, "threads", 0)
    try:
        lr = float(t.lr)
    except (TypeError, ValueError):
        raise ConfigError(f"train.lr must be a finite number > 0, got {t.lr!r}") from None
    if not math.isfinite(lr) or lr <= 0:
        raise ConfigError(f"train.lr must be a finite number > 0, got {t.lr!r}")
    size = _int(cfg, "data.size", MIN_VIEW)
    if size % VIEW_MULTIPLE:
        raise ConfigError(f"data.size={size}: the network takes view sides that are multiples of {VIEW_MULTIPLE} "
                          f"(e.g. {size // VIEW_MULTIPLE * VIEW_MULTIPLE or MIN_VIEW} or "
                          f"{(size // VIEW_MULTIPLE + 1) * VIEW_MULTIPLE})")
