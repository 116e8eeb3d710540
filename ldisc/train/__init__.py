"""Pretraining: loop, engines, checkpoints, metrics."""
from ldisc.train.loop import PretrainResult, Trainer
from ldisc.train.run import pretrain, run_pretraining

__all__ = ["PretrainResult", "Trainer", "pretrain", "run_pretraining"]
