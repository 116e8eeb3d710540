"""``ldisc-pretrain``: Hydra app over ``configs/pretrain.yaml``.

One process:      ``ldisc-pretrain run_dir=runs/a train.stage1_steps=20``
One machine:      ``torchrun --nproc-per-node 4 -m ldisc.train.cli run_dir=runs/a engine.zero_stage=2``
Several nodes:    ``torchrun --nnodes 2 --node-rank R --rdzv-backend c10d --rdzv-endpoint HOST:29400
                  --nproc-per-node 8 -m ldisc.train.cli run_dir=/shared/runs/a train.resume=auto``
"""
from __future__ import annotations

import os
import sys

from omegaconf import DictConfig

from ldisc.cli_errors import usage_error
from ldisc.hydra_cli import start


def _main(cfg: DictConfig) -> None:
    from ldisc.data.loader import BadDataError
    from ldisc.train.checkpoint import CheckpointSaveError
    from ldisc.train.run import run_pretraining

    try:
        result = run_pretraining(cfg)
    except (ValueError, FileNotFoundError) as err:     # a setting or an input to change, not a bug
        usage_error("ldisc-pretrain", err)
    except (BadDataError, CheckpointSaveError) as err:
        print(f"ldisc-pretrain: error: {err}", file=sys.stderr, flush=True)
        sys.exit(1)
    if int(os.environ.get("RANK", 0)) == 0 and result.checkpoint is not None:
        last = result.losses[-1] if result.losses else {}
        print(f"steps: {last.get('step', 0)}  final total loss: {last.get('total', float('nan')):.4f}\n"
              f"checkpoint: {result.checkpoint}\nencoder: {result.encoder_path}\n"
              f"log: {result.run_dir / 'losses.jsonl'}\ncurve: {result.run_dir / 'loss_curve.png'}", flush=True)


def main() -> None:
    from ldisc.train.validate import check_pretrain_config

    start("ldisc-pretrain", "pretrain", _main, check=check_pretrain_config)
    if int(os.environ.get("WORLD_SIZE", 1)) > 1:
        from ldisc.train.env import hard_exit
        hard_exit(0)     # all ranks are done and the group is destroyed; skip gloo's exit-time teardown


if __name__ == "__main__":
    sys.exit(main())
