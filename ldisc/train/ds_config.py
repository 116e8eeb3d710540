"""The DeepSpeed config of a run, generated from the typed ``engine`` and ``train`` sections.

Everything the engine does is in this one dict, written to ``<run_dir>/ds_config.json``:
ZeRO stage, precision, gradient accumulation and clipping, and the paper's optimiser and schedule —
Adam (torch's implementation, never the fused op), lr 1e-3 halved every ``train.lr_halve_every``
optimiser steps (``scheduler: StepLR``, instantiated by :mod:`ldisc.train.schedule` for DeepSpeed).
"""
from __future__ import annotations

from ldisc.config_schema import EngineConfig, TrainConfig

PRECISIONS = ("fp32", "bf16", "fp16", "bf16-autocast")


def _deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def build_ds_config(e: EngineConfig, t: TrainConfig, world_size: int) -> dict:
    """DeepSpeed config of ``e`` and ``t`` (checked by :mod:`ldisc.train.validate`) on ``world_size``
    data-parallel ranks."""
    precision, accum, micro = e.precision, e.gradient_accumulation, t.batch_size
    config = {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accum,
        "train_batch_size": micro * accum * world_size,
        "gradient_clipping": e.grad_clip,
        "optimizer": {"type": "Adam", "params": {
            "lr": t.lr, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0,
            "torch_adam": True, "adam_w_mode": False}},
        "scheduler": {"type": "StepLR", "params": {"step_size": t.lr_halve_every, "gamma": 0.5}},
        "zero_optimization": {"stage": e.zero_stage},
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16", "initial_scale_power": 16},
        "steps_per_print": 10 ** 9,
        "wall_clock_breakdown": False,
        "zero_allow_untested_optimizer": True,
    }
    if precision == "bf16-autocast":
        config["torch_autocast"] = {"enabled": True, "dtype": "bfloat16"}
    return _deep_merge(config, e.extra)
