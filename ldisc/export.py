"""ldisc-export: a pretrained ldisc encoder under the key names of segmentation_models_pytorch, timm or
torchvision, so that those libraries load it without glue code.

ldisc's :class:`~ldisc.model.encoder.VGGEncoder` is a VGG16-bn: five blocks of 3×3 conv → BN → ReLU
(2, 2, 3, 3, 3 convs), a 2×2 max-pool between blocks. torchvision's ``VGG.features``, timm's
``VGG.features`` and smp's ``VGGEncoder`` (a torchvision VGG) number the same layers in one
``nn.Sequential``: conv at ``features.i``, its BN at ``features.i+1``, ReLU at ``i+2``, pool after each
block. Only the widths differ for ldisc's ``tiny``/``small`` encoders; they are recorded as the VGG
layer list ``vgg_cfg`` (torchvision's ``make_layers`` / timm's ``cfg`` format) next to the header
(:mod:`ldisc.model.header`).

Output: ``OUT.safetensors`` → the weights with the header and the target's settings as metadata;
any other suffix (``.pt``, ``.pth``) → a plain ``state_dict`` (``torch.save``) plus ``OUT.json``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ldisc.cli_errors import usage_error

# torch is imported where it is used: `ldisc-export --version` and --help stay instant

TARGETS = ("smp", "timm", "torchvision-vgg")
PROG = "ldisc-export"
ENCODER_FILES = ("encoder.safetensors", "encoder.pt")
EXPORT_TEXT_KEYS = ("target", "source")                         # what ldisc-export adds to the header
EXPORT_KEYS = (*EXPORT_TEXT_KEYS, "vgg_cfg", "smp_params", "in_chans")


def vgg_cfg(channels) -> list:
    """torchvision/timm layer list (``[16, 16, "M", 32, …]``) of a VGG16 with these block widths."""
    from ldisc.model.encoder import VGG16_BLOCKS

    out: list = []
    for c, (_, n_convs) in zip(channels, VGG16_BLOCKS):
        out += [int(c)] * n_convs + ["M"]
    return out


def feature_names() -> dict[str, str]:
    """ldisc module prefix → ``features.<i>`` (``blocks.b.k.0`` conv, ``blocks.b.k.1`` BN)."""
    from ldisc.model.encoder import VGG16_BLOCKS

    names, index = {}, 0
    for b, (_, n_convs) in enumerate(VGG16_BLOCKS):
        for k in range(n_convs):
            names[f"blocks.{b}.{k}.0"] = f"features.{index}"
            names[f"blocks.{b}.{k}.1"] = f"features.{index + 1}"
            index += 3
        index += 1  # the max-pool after the block
    return names


def to_vgg_features(state: dict) -> dict:
    """ldisc encoder weights under the torchvision/timm/smp ``features.<i>`` names (a zero conv bias
    where the encoder has none: those libraries' VGG convolutions always carry one)."""
    import torch

    names = feature_names()
    out = {}
    for key, value in state.items():
        prefix, _, leaf = key.rpartition(".")
        if prefix not in names:
            raise ValueError(f"unexpected encoder weight {key!r}: not a VGG16-bn layer")
        out[f"{names[prefix]}.{leaf}"] = value.detach().contiguous()
    for prefix, name in names.items():
        if prefix.endswith(".0") and f"{name}.bias" not in out:
            weight = out[f"{name}.weight"]
            out[f"{name}.bias"] = torch.zeros(weight.shape[0], dtype=weight.dtype)
    return out


def target_settings(target: str, header) -> dict:
    """What the target library needs besides the weights to build the network."""
    cfg = vgg_cfg(header.channels)
    if target == "smp":
        # smp's VGGEncoder params: out_channels of its six features (the last is the final pool's)
        params = {"out_channels": [*header.channels, header.channels[-1]], "config": cfg, "batch_norm": True}
        return {"target": target, "vgg_cfg": cfg, "smp_params": params, "in_chans": header.in_channels}
    if target == "timm":
        return {"target": target, "vgg_cfg": cfg, "in_chans": header.in_channels}
    if target == "torchvision-vgg":
        if header.in_channels != 3:
            raise ValueError(f"torchvision's VGG takes 3 input channels, this encoder takes {header.in_channels} "
                             f"({header.modality}); export --to smp or --to timm, which take in_chans")
        return {"target": target, "vgg_cfg": cfg}
    raise ValueError(f"unknown target {target!r}; one of {', '.join(TARGETS)}")


def resolve_source(spec: str | Path) -> Path:
    """An encoder file, a checkpoint directory, ``<run_dir>/latest|best``, or a run directory (its
    latest checkpoint, as :mod:`ldisc.train.checkpoint` resolves it) → the encoder file."""
    from ldisc.train import checkpoint as ckpt

    path = Path(spec)
    if path.is_file():
        return path
    if path.name in ckpt.NAMES and not path.exists():
        directory = ckpt.resolve_checkpoint_spec(path)
    elif path.is_dir() and ckpt.is_complete(path):
        directory = path
    elif path.is_dir() and ckpt.checkpoint_root(path).is_dir():
        directory = ckpt.resolve_checkpoint(path, "latest")
    else:
        raise FileNotFoundError(f"{spec} is neither an encoder file, a checkpoint directory nor a run directory")
    found = [directory / name for name in ENCODER_FILES if (directory / name).is_file()]
    if not found:
        raise FileNotFoundError(f"checkpoint {directory} holds no {' or '.join(ENCODER_FILES)}")
    return found[0]


def export_encoder(source: str | Path, target: str, out: str | Path) -> tuple[Path, dict]:
    """Write the encoder of ``source`` for ``target``; returns the file and its metadata."""
    import torch

    from ldisc.model.header import encoder_header
    from ldisc.model.ld import load_encoder

    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; one of {', '.join(TARGETS)}")
    path = resolve_source(source)
    try:
        encoder = load_encoder(path)
    except Exception as err:  # noqa: BLE001 - whatever the file is, it is not an encoder we can export
        raise ValueError(f"{path} is not an ldisc encoder file ({type(err).__name__}: {err})") from None
    header = encoder.header or encoder_header(encoder)   # files without a header: derived from the weights
    meta = {**header.to_dict(), **target_settings(target, header), "source": str(path)}
    weights = to_vgg_features(encoder.state_dict())
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".safetensors":
        from safetensors.torch import save_file
        save_file(weights, str(out), metadata={k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()})
    else:
        torch.save(weights, out)
        Path(f"{out}.json").write_text(json.dumps(meta, indent=1) + "\n")
    return out, meta


def read_export(path: str | Path) -> tuple[dict, dict]:
    """(weights, metadata) of an ``ldisc-export`` file (metadata values decoded from JSON)."""
    import torch

    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.torch import load_file

        from ldisc.model.header import EncoderHeader
        with safe_open(str(path), "pt") as f:
            raw = dict(f.metadata() or {})
        meta = EncoderHeader.from_metadata({k: v for k, v in raw.items() if k not in EXPORT_KEYS}).to_dict()
        meta.update({k: raw[k] if k in EXPORT_TEXT_KEYS else json.loads(raw[k]) for k in EXPORT_KEYS if k in raw})
        return load_file(str(path)), meta
    return torch.load(path, map_location="cpu", weights_only=True), json.loads(Path(f"{path}.json").read_text())


def register_smp_encoder(path: str | Path) -> str:
    """Register an ``ldisc-export --to smp`` file's encoder with segmentation_models_pytorch (its own
    ``VGGEncoder`` class, no weights download) and return the name to pass to ``smp.Unet(...)``."""
    from segmentation_models_pytorch.encoders import encoders
    from segmentation_models_pytorch.encoders.vgg import VGGEncoder

    _, meta = read_export(path)
    if meta.get("target") != "smp":
        raise ValueError(f"{path} was exported for {meta.get('target')!r}, not smp")
    name = f"ldisc-{meta['architecture']}-{meta['width']}"
    encoders[name] = {"encoder": VGGEncoder, "pretrained_settings": {}, "params": dict(meta["smp_params"])}
    return name


def main(argv: list[str] | None = None) -> None:
    import ldisc

    parser = argparse.ArgumentParser(prog=PROG, description="Write an ldisc encoder under the key names of "
                                     "segmentation_models_pytorch (smp), timm or torchvision's VGG.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {ldisc.__version__}")
    parser.add_argument("--to", required=True, choices=TARGETS, help="library whose key names to write")
    parser.add_argument("checkpoint", help="encoder.pt/.safetensors, a checkpoint dir, <run_dir>/latest|best, or a "
                        "run dir (its latest checkpoint)")
    parser.add_argument("out", help="output file: .safetensors (header as metadata) or .pt/.pth (+ OUT.json)")
    args = parser.parse_args(argv)
    try:
        out, meta = export_encoder(args.checkpoint, args.to, args.out)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        usage_error(PROG, err)
    step = f", step {meta['step']}" if "step" in meta else ""
    print(f"{PROG}: {meta['source']} ({meta['architecture']} {meta['width']}, {meta['in_channels']} input "
          f"channel(s), {meta.get('modality')}{step}) → {out} ({args.to} key names)")


if __name__ == "__main__":
    main()
