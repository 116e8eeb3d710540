"""Entry points: run a configured pretraining (CLI), or compose one from overrides (Python API)."""
from __future__ import annotations

import torch
from omegaconf import DictConfig

from ldisc.config import compose
from ldisc.train.loop import PretrainResult, Trainer


def run_pretraining(cfg: DictConfig) -> PretrainResult:
    if int(cfg.get("threads", 0)) > 0:
        torch.set_num_threads(int(cfg.threads))
    return Trainer(cfg).run()


def pretrain(overrides: list[str] | None = None) -> PretrainResult:
    """Python API: ``pretrain(["data.modality=xray", "train.stage1_steps=20", "run_dir=/tmp/r"])``."""
    return run_pretraining(compose("pretrain", overrides))
