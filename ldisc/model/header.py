"""The self-describing header of an exported encoder (``encoder.pt`` / ``encoder.safetensors``).

A tool that has never seen ldisc can read from the file alone what network the weights belong to
and how to feed it: the architecture and its widths, the input channels, the input normalisation
(from :data:`ldisc.views.INPUT_NORMALIZATION`, the one owner of that contract), the pretraining step,
the ldisc version and a digest of the resolved pretraining config.

In ``.pt`` files the header is the dict under ``"header"``; in ``.safetensors`` files it is the
metadata (``str → str``: strings as they are, everything else as JSON). Files written before the
header existed still load: :func:`read_header` returns what they recorded (width, in_channels).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field

FORMAT = "ldisc-encoder"
HEADER_VERSION = 1
ARCHITECTURE = "vgg16_bn"


@dataclass(frozen=True)
class EncoderHeader:
    width: str                                   # tiny | small | full (ldisc.model.encoder.WIDTH_DIVISORS)
    channels: tuple[int, ...]                    # output channels of the five blocks
    in_channels: int                             # 3 (fundus, RGB) | 1 (X-ray)
    conv_bias: bool = True
    modality: str | None = None                  # fundus | xray (None: unknown, old file)
    mean: tuple[float, ...] | None = None        # input normalisation: (x − mean) / std per channel,
    std: tuple[float, ...] | None = None         # x in [0, 1]
    step: int | None = None                      # pretraining step of the weights
    ldisc_version: str | None = None
    config_digest: str | None = None             # sha256 of the resolved config YAML, first 16 hex digits
    architecture: str = ARCHITECTURE
    format: str = FORMAT
    header_version: int = HEADER_VERSION
    extra: dict = field(default_factory=dict, compare=False)   # keys this version does not know

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        out.update(self.extra)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items() if v is not None}

    def to_metadata(self) -> dict[str, str]:
        """``str → str`` (safetensors metadata): strings as they are, the rest JSON-encoded."""
        return {k: v if isinstance(v, str) else json.dumps(v) for k, v in self.to_dict().items()}

    @classmethod
    def from_dict(cls, data: dict) -> "EncoderHeader":
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        values = {k: data[k] for k in known if data.get(k) is not None}
        for key in ("channels", "mean", "std"):
            if key in values:
                values[key] = tuple(values[key])
        extra = {k: v for k, v in data.items() if k not in known}
        return cls(**values, extra=extra)

    @classmethod
    def from_metadata(cls, metadata: dict[str, str]) -> "EncoderHeader":
        """Inverse of :meth:`to_metadata`: the fields that are not strings are JSON; other keys stay text."""
        text = {f.name for f in dataclasses.fields(cls) if f.type in ("str", "str | None")}
        known = {f.name for f in dataclasses.fields(cls)}
        return cls.from_dict({k: v if k in text or k not in known else json.loads(v) for k, v in metadata.items()})

    def normalization_text(self) -> str:
        if self.mean is None or self.std is None:
            return "unknown"
        if len(set(self.mean)) == 1 and len(set(self.std)) == 1:
            return f"(x − {self.mean[0]:g}) / {self.std[0]:g}"
        return f"mean {list(self.mean)}, std {list(self.std)}"


def config_digest(cfg) -> str:
    """First 16 hex digits of the sha256 of the resolved config as YAML (an OmegaConf config or a dict)."""
    from omegaconf import OmegaConf

    text = OmegaConf.to_yaml(cfg, resolve=True) if OmegaConf.is_config(cfg) else json.dumps(cfg, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def encoder_header(encoder, step: int | None = None, modality: str | None = None, cfg=None) -> EncoderHeader:
    """The header of ``encoder`` (a :class:`~ldisc.model.encoder.VGGEncoder`); ``modality`` defaults to
    the one whose input contract has the encoder's channel count."""
    import ldisc
    from ldisc.views import input_normalization, modality_of_channels

    modality = modality or modality_of_channels(encoder.in_channels)
    channels, mean, std = input_normalization(modality)
    if channels != encoder.in_channels:
        raise ValueError(f"modality {modality!r} feeds {channels} channels, the encoder takes {encoder.in_channels}")
    return EncoderHeader(width=encoder.width, channels=tuple(encoder.channels), in_channels=encoder.in_channels,
                         conv_bias=bool(encoder.bias), modality=modality, mean=tuple(mean), std=tuple(std),
                         step=None if step is None else int(step), ldisc_version=ldisc.__version__,
                         config_digest=config_digest(cfg) if cfg is not None else None)
