"""Random-number-generator states of one process (Python, NumPy, torch CPU and the accelerator)."""
from __future__ import annotations

import random

import numpy as np
import torch


def _accelerator():
    from deepspeed.accelerator import get_accelerator
    acc = get_accelerator()
    return None if acc.device_name() == "cpu" else acc


def rng_state() -> dict:
    """Tensors, strings and numbers only: a checkpoint loads it with ``torch.load(weights_only=True)``."""
    numpy = np.random.get_state(legacy=False)
    numpy["state"] = {"key": torch.from_numpy(numpy["state"]["key"].astype(np.int64)), "pos": numpy["state"]["pos"]}
    state = {"python": random.getstate(), "numpy": numpy, "torch": torch.get_rng_state()}
    acc = _accelerator()
    if acc is not None:
        state["accelerator"] = acc.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    numpy = dict(state["numpy"])
    numpy["state"] = {"key": state["numpy"]["state"]["key"].numpy().astype(np.uint32), "pos": numpy["state"]["pos"]}
    np.random.set_state(numpy)
    torch.set_rng_state(state["torch"])
    acc = _accelerator()
    if acc is not None and "accelerator" in state:
        acc.set_rng_state(state["accelerator"])
