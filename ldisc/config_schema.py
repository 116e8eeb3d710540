"""Typed sections of the ``ldisc-pretrain`` config: one dataclass per config group, read once at start.

The YAML under ``configs/`` holds every default; these classes hold none. :func:`typed_section`
builds a class from a composed section and refuses, with one line naming the key, a missing key, an
unknown key (a typo, or ``+key=`` Hydra let in) and a value of the wrong type. Range checks that
need several keys live in :mod:`ldisc.train.validate`, which calls :func:`pretrain_sections`.

    sections = pretrain_sections(cfg)          # PretrainSections(train=TrainConfig(...), ...)
    sections.bank.entries, sections.data.view_side
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the key and what to set."""


@dataclass(frozen=True)
class TrainConfig:
    stage1_steps: int
    stage2_steps: int
    batch_size: int
    lr: float
    lr_halve_every: int
    init_from: str | None
    checkpoint_every: int
    keep_checkpoints: int
    resume: str | None
    val_fraction: float
    val_batches: int
    progress: bool
    cluster_image_every: int
    cluster_probe_images: int


@dataclass(frozen=True)
class EngineConfig:
    name: str
    zero_stage: int
    precision: str
    gradient_accumulation: int
    grad_clip: float
    sync_batchnorm: bool
    channels_last: bool
    compile: bool
    backend: str
    extra: dict
    activation_checkpointing: str


@dataclass(frozen=True)
class BankConfig:
    entries: int
    ema_momentum: float


@dataclass(frozen=True)
class GeneratedDataConfig:
    """``data.source`` synthetic (procedural images) or noise (smooth random images)."""
    source: str
    modality: str
    image_side: int
    view_side: int
    pool: int


@dataclass(frozen=True)
class ShardDataConfig:
    """``data.source=shards``: the streaming shard loader (:mod:`ldisc.data`)."""
    source: str
    dataset: str
    endpoint_url: str | None
    version: int | str
    num_workers: int
    prefetch_factor: int
    shuffle_window: int
    weights: dict | None
    epoch_samples: int | None
    view_side: int
    modality: str
    max_bad_fraction: float | None
    views_device: str
    cache_dir: str | None
    cache_limit_gb: float
    cache_prefetch: int


@dataclass(frozen=True)
class ShapePriorConfig:
    source: str
    pool: int
    width: int
    lr_scale: float


@dataclass(frozen=True)
class MetricsConfig:
    port: int
    addr: str
    linger_s: float
    run: str | None
    textfile_dir: str | None


@dataclass(frozen=True)
class PretrainSections:
    train: TrainConfig
    engine: EngineConfig
    bank: BankConfig
    data: GeneratedDataConfig | ShardDataConfig
    shape_prior: ShapePriorConfig
    metrics: MetricsConfig


DATA_CONFIGS = {"synthetic": GeneratedDataConfig, "noise": GeneratedDataConfig, "shards": ShardDataConfig}


def _type_name(kind) -> str:
    return " or ".join("null" if k is type(None) else getattr(k, "__name__", str(k)) for k in _options(kind))


def _options(kind) -> tuple:
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        return typing.get_args(kind)
    return (kind,)


def _fits(value: Any, kind) -> bool:
    for option in _options(kind):
        if option is type(None) and value is None:
            return True
        if option is bool and isinstance(value, bool):
            return True
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return True
        if option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        if option in (str, dict) and isinstance(value, option):
            return True
    return False


def typed_section(cls, section: DictConfig | dict, group: str):
    """``cls`` from the keys of ``section`` (config group ``group``): every field present, no other
    key, each value of its field's type (an int is a float; a bool is not an int)."""
    values = OmegaConf.to_container(section, resolve=True) if isinstance(section, DictConfig) else dict(section)
    if not isinstance(values, dict):
        raise ConfigError(f"{group} must be a mapping of keys, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ConfigError(f"unknown key {group}.{unknown[0]}; {group} has: {', '.join(names)}")
    missing = [n for n in names if n not in values]
    if missing:
        raise ConfigError(f"missing key {group}.{missing[0]} (every default lives in configs/)")
    for name in names:
        if not _fits(values[name], hints[name]):
            raise ConfigError(f"{group}.{name} must be {_type_name(hints[name])}, got {values[name]!r}")
    return cls(**{n: float(v) if hints[n] is float else v for n, v in values.items()})


def data_section(section: DictConfig | dict) -> GeneratedDataConfig | ShardDataConfig:
    """The typed ``data`` group: its class follows ``data.source``."""
    source = section.get("source")
    if source not in DATA_CONFIGS:
        raise ConfigError(f"unknown data.source {source!r}; one of {', '.join(DATA_CONFIGS)}")
    return typed_section(DATA_CONFIGS[source], section, "data")


def pretrain_sections(cfg: DictConfig) -> PretrainSections:
    """Every typed section of a composed pretraining config (first problem → :class:`ConfigError`)."""
    for group in ("train", "engine", "bank", "data", "shape_prior", "metrics"):
        if not isinstance(cfg.get(group), DictConfig):
            raise ConfigError(f"missing config group {group}")
    return PretrainSections(train=typed_section(TrainConfig, cfg.train, "train"),
                            engine=typed_section(EngineConfig, cfg.engine, "engine"),
                            bank=typed_section(BankConfig, cfg.bank, "bank"),
                            data=data_section(cfg.data),
                            shape_prior=typed_section(ShapePriorConfig, cfg.shape_prior, "shape_prior"),
                            metrics=typed_section(MetricsConfig, cfg.metrics, "metrics"))
