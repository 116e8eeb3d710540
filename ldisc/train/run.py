"""Entry points: run a configured pretraining (CLI, torchrun), or compose one from overrides (Python API)."""
from __future__ import annotations

import torch
from omegaconf import DictConfig, OmegaConf

from ldisc.config import compose
from ldisc.dist import broadcast_object
from ldisc.runrecord import write_run_record
from ldisc.train.env import init_distributed, shutdown, single_process_env
from ldisc.train.loop import PretrainResult, Trainer
from ldisc.train.validate import check_pretrain_config


def run_pretraining(cfg: DictConfig, overrides: list[str] | None = None) -> PretrainResult:
    """Run ``cfg`` in this process: one rank of a torchrun job, or a whole job of one rank.

    The env contract (RANK, WORLD_SIZE, …) comes from the launcher, or is set here for one process.
    Every rank uses rank 0's ``run_dir`` (a ``${now:…}`` default may differ by a second between ranks).
    """
    sections = check_pretrain_config(cfg)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    with single_process_env():
        info = init_distributed(sections.engine.backend)
        try:
            cfg = OmegaConf.merge(cfg, {"run_dir": broadcast_object(str(cfg.run_dir))})
            if info.rank == 0:
                write_run_record(cfg.run_dir, "ldisc-pretrain", cfg, overrides, info.world_size)
            return Trainer(cfg, info).run()
        finally:
            shutdown(info)


def pretrain(overrides: list[str] | None = None) -> PretrainResult:
    """Python API: ``pretrain(["data.modality=xray", "train.stage1_steps=20", "run_dir=/tmp/r"])``."""
    return run_pretraining(compose("pretrain", overrides), list(overrides or []))
