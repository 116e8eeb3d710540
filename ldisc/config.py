"""Locating and composing the Hydra configs (``configs/`` at the repository root)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf


# A wheel installs configs/ as data files under <prefix>/share/ldisc/configs (pyproject: data-files).
INSTALLED_CONFIGS = Path("share") / "ldisc" / "configs"


def config_dir() -> Path:
    """``$LDISC_CONFIG_DIR`` if set, else ``configs/`` beside the package (a checkout or editable install),
    else the copy a non-editable install put under ``<sys.prefix>/share/ldisc/configs``."""
    env = os.environ.get("LDISC_CONFIG_DIR")
    path = Path(env) if env else Path(__file__).resolve().parents[1] / "configs"
    if not env and not (path / "pretrain.yaml").is_file():
        path = Path(sys.prefix) / INSTALLED_CONFIGS
    if not (path / "pretrain.yaml").is_file():
        raise FileNotFoundError(f"no ldisc configs in {path}; set LDISC_CONFIG_DIR to the configs/ folder")
    return path


def compose(config_name: str = "pretrain", overrides: list[str] | None = None) -> DictConfig:
    """Compose a config as the CLI would, outside a Hydra app (Python API, tests)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = hydra_compose(config_name=config_name, overrides=list(overrides or []), return_hydra_config=False)
    OmegaConf.resolve(cfg)
    return cfg


def to_dataclass(cls, section: DictConfig):
    """Build a dataclass from a config section, ignoring keys the dataclass does not have."""
    fields = cls.__dataclass_fields__
    values = OmegaConf.to_container(section, resolve=True)
    return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in values.items() if k in fields})
