"""The DeepSpeed config of a run, generated from the Hydra config (``engine``, ``train`` sections).

Everything the engine does is in this one dict, written to ``<run_dir>/ds_config.json``:
ZeRO stage, precision, gradient accumulation and clipping, and the paper's optimiser and schedule —
Adam (torch's implementation, never the fused op), lr 1e-3 halved every ``train.lr_halve_every``
optimiser steps (``scheduler: StepLR``, instantiated by :mod:`ldisc.train.schedule` for DeepSpeed).
"""
from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

PRECISIONS = ("fp32", "bf16", "fp16", "bf16-autocast")


def _deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def build_ds_config(cfg: DictConfig, world_size: int) -> dict:
    """DeepSpeed config for ``cfg`` on ``world_size`` data-parallel ranks. Bad values → ValueError."""
    e, t = cfg.engine, cfg.train
    zero = int(e.zero_stage)
    if zero not in (0, 1, 2, 3):
        raise ValueError(f"engine.zero_stage must be 0, 1, 2 or 3, got {zero}")
    precision = str(e.precision)
    if precision not in PRECISIONS:
        raise ValueError(f"engine.precision must be one of {PRECISIONS}, got {precision!r}")
    accum = int(e.gradient_accumulation)
    micro = int(t.batch_size)
    if accum < 1 or micro < 1 or world_size < 1:
        raise ValueError(f"need engine.gradient_accumulation ≥ 1 and train.batch_size ≥ 1 (got {accum}, {micro})")
    if float(t.lr) <= 0 or int(t.lr_halve_every) < 1:
        raise ValueError(f"need train.lr > 0 and train.lr_halve_every ≥ 1 (got {t.lr}, {t.lr_halve_every})")
    config = {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accum,
        "train_batch_size": micro * accum * world_size,
        "gradient_clipping": float(e.grad_clip),
        "optimizer": {"type": "Adam", "params": {
            "lr": float(t.lr), "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0,
            "torch_adam": True, "adam_w_mode": False}},
        "scheduler": {"type": "StepLR", "params": {"step_size": int(t.lr_halve_every), "gamma": 0.5}},
        "zero_optimization": {"stage": zero},
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16", "initial_scale_power": 16},
        "steps_per_print": 10 ** 9,
        "wall_clock_breakdown": False,
        "zero_allow_untested_optimizer": True,
    }
    if precision == "bf16-autocast":
        config["torch_autocast"] = {"enabled": True, "dtype": "bfloat16"}
    extra = e.get("extra") or {}
    if extra:
        config = _deep_merge(config, OmegaConf.to_container(extra, resolve=True))
    return config
