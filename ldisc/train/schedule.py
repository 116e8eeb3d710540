"""The paper's learning-rate schedule — lr halved every N optimiser steps — for any optimiser.

``torch.optim.lr_scheduler.StepLR`` refuses the wrappers DeepSpeed puts around the optimiser under
bf16 or ZeRO (they are not ``torch.optim.Optimizer`` subclasses), so the ``scheduler`` section of the
generated DeepSpeed config (``{"type": "StepLR", "params": {"step_size", "gamma"}}``) is instantiated
here and handed to ``deepspeed.initialize``; DeepSpeed steps it and saves it in its checkpoints.
"""
from __future__ import annotations


class StepLR:
    """lr = base_lr · gamma ** (steps // step_size), set on every param group of ``optimizer``."""

    def __init__(self, optimizer, step_size: int, gamma: float = 0.5):
        if step_size < 1:
            raise ValueError(f"step_size must be ≥ 1, got {step_size}")
        self.optimizer, self.step_size, self.gamma = optimizer, int(step_size), float(gamma)
        self.base_lrs = [float(g["lr"]) for g in optimizer.param_groups]
        self.last_epoch = 0
        self._apply()

    def _apply(self) -> None:
        factor = self.gamma ** (self.last_epoch // self.step_size)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor

    def step(self, *_, **__) -> None:
        self.last_epoch += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [float(g["lr"]) for g in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {"last_epoch": self.last_epoch, "base_lrs": list(self.base_lrs), "step_size": self.step_size,
                "gamma": self.gamma}

    def load_state_dict(self, state: dict) -> None:
        self.last_epoch, self.base_lrs = int(state["last_epoch"]), list(state["base_lrs"])
        self.step_size, self.gamma = int(state["step_size"]), float(state["gamma"])
        self._apply()


SCHEDULERS = {"StepLR": StepLR}


def scheduler_factory(ds_config: dict):
    """Pop ``scheduler`` from a DeepSpeed config → (config without it, ``optimizer -> scheduler`` or None)."""
    config = dict(ds_config)
    spec = config.pop("scheduler", None)
    if spec is None:
        return config, None
    if spec["type"] not in SCHEDULERS:
        return ds_config, None            # one of DeepSpeed's own: let DeepSpeed build it
    cls, params = SCHEDULERS[spec["type"]], dict(spec.get("params", {}))
    return config, (lambda optimizer: cls(optimizer, **params))
