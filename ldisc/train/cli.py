"""``ldisc-pretrain``: Hydra app over ``configs/pretrain.yaml``; e.g. ``ldisc-pretrain data.modality=xray``."""
from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from ldisc.config import config_dir


def _main(cfg: DictConfig) -> None:
    from ldisc.train.run import run_pretraining

    result = run_pretraining(cfg)
    if result is not None:
        print(f"checkpoint: {result.checkpoint}\nencoder: {result.encoder_path}\nlog: {result.run_dir / 'losses.jsonl'}")


def main() -> None:
    hydra.main(config_path=str(config_dir()), config_name="pretrain", version_base="1.3")(_main)()


if __name__ == "__main__":
    sys.exit(main())
