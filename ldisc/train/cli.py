"""``ldisc-pretrain``: Hydra app over ``configs/pretrain.yaml``.

One process:      ``ldisc-pretrain run_dir=runs/a train.stage1_steps=20``
One machine:      ``torchrun --nproc-per-node 4 -m ldisc.train.cli run_dir=runs/a engine.zero_stage=2``
Several nodes:    ``torchrun --nnodes 2 --node-rank R --rdzv-backend c10d --rdzv-endpoint HOST:29400
                  --nproc-per-node 8 -m ldisc.train.cli run_dir=/shared/runs/a train.resume=auto``
"""
from __future__ import annotations

import os
import sys

import hydra
from omegaconf import DictConfig

from ldisc.cli_errors import usage_error
from ldisc.config import config_dir


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


def _precheck(argv: list[str]) -> None:
    """Compose and check plain ``key=value`` overrides before Hydra starts: a bad key or value is one line and
    exit status 2 here (Hydra itself would print a stack hint and exit 1). Hydra flags skip this."""
    if any(a.startswith("-") or "=" not in a for a in argv):
        return
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from ldisc.config import compose
    from ldisc.train.validate import check_pretrain_config

    try:
        check_pretrain_config(compose("pretrain", argv))
    except (HydraException, OmegaConfBaseException, ValueError) as err:
        usage_error("ldisc-pretrain", err)


def main() -> None:
    _precheck(sys.argv[1:])
    hydra.main(config_path=str(config_dir()), config_name="pretrain", version_base="1.3")(_main)()
    if int(os.environ.get("WORLD_SIZE", 1)) > 1:
        from ldisc.train.env import hard_exit
        hard_exit(0)     # all ranks are done and the group is destroyed; skip gloo's exit-time teardown


if __name__ == "__main__":
    sys.exit(main())
