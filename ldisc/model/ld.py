"""The LD network: encoder → U-Net decoder → embedding branch (+ clustering branch in stage 2)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ldisc.model.checkpointing import run_segment
from ldisc.model.chunked_heads import heads_by_chunks
from ldisc.model.decoder import ClusterHead, EmbeddingHead, UNetDecoder
from ldisc.model.encoder import VGGEncoder
from ldisc.model.header import FORMAT, EncoderHeader, encoder_header


FIRST_CONV = "blocks.0.0.0"   # the encoder's first convolution (its weight says the input channels)


@dataclass
class LDOutput:
    embedding: torch.Tensor            # (B, D, H, W), unit norm over D
    masks: torch.Tensor | None = None  # (B, K, H, W), sums to ~1 over K


class LDNet(nn.Module):
    """``in_channels``: 3 (fundus) or 1 (X-ray); ``decoder``: ``authors`` | ``ldisc`` (see
    :mod:`ldisc.model.decoder`); ``init``: ``kaiming`` | ``torch`` (see :mod:`ldisc.model.init`).
    Activation checkpointing: :func:`ldisc.model.checkpointing.set_activation_checkpointing`.

    ``forward(x)`` gives the full-resolution :class:`LDOutput`; ``forward(x, reduce=f)`` gives
    ``f(embedding, masks)``, the per-image quantities a loss reads (a dict of tensors, batch first) —
    computed chunk by chunk in training under ``selective`` checkpointing
    (:mod:`ldisc.model.chunked_heads`), at once otherwise."""
    checkpoint_heads = False
    chunked_heads = False

    def __init__(self, width: str = "tiny", embed_dim: int = 32, clusters: int = 0, in_channels: int = 3,
                 decoder: str = "authors", init: str = "kaiming"):
        super().__init__()
        self.encoder = VGGEncoder(width, in_channels, init=init)
        self.decoder = UNetDecoder(self.encoder.channels, decoder, init)
        c = self.decoder.out_channels
        self.embed = EmbeddingHead(c, embed_dim, style=decoder, init=init)
        self.cluster = ClusterHead(c, clusters, style=decoder, init=init) if clusters > 0 else None

    def forward(self, x: torch.Tensor, reduce: Callable[[torch.Tensor, torch.Tensor | None], dict] | None = None):
        feats = self.encoder(x)
        if reduce is not None and self.chunked_heads and self.training and torch.is_grad_enabled():
            return heads_by_chunks(self, self.decoder.stages(feats), feats[0], reduce)
        h = self.decoder(feats)
        on = self.checkpoint_heads
        out = LDOutput(run_segment(self.embed, h, enabled=on),
                       run_segment(self.cluster, h, enabled=on) if self.cluster is not None else None)
        return out if reduce is None else reduce(out.embedding, out.masks)


def load_stage1(model: LDNet, state: dict[str, torch.Tensor]) -> list[str]:
    """Load stage-1 weights by parameter name; the clustering branch starts fresh.

    Returns the names left at their initial values. Anything else missing, or any unexpected or
    mis-shaped name, is an error: a stage-1 checkpoint must cover encoder, decoder and embedding.
    """
    own = model.state_dict()
    bad = [k for k, v in state.items() if k not in own or own[k].shape != v.shape]
    if bad:
        raise ValueError(f"stage-1 state does not fit this model: {bad[:5]} (+{max(0, len(bad) - 5)})")
    missing = [k for k in own if k not in state]
    if any(not k.startswith("cluster.") for k in missing):
        raise ValueError(f"stage-1 state lacks {[k for k in missing if not k.startswith('cluster.')][:5]}")
    model.load_state_dict(state, strict=False)
    return missing


def encoder_state(model: LDNet) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.encoder.state_dict().items()}


def read_encoder_file(path: str | Path) -> tuple[dict[str, torch.Tensor], EncoderHeader | None, dict]:
    """(weights, header or None for files written before headers, whatever else the file recorded)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.torch import load_file
        state = load_file(str(path))
        with safe_open(str(path), "pt") as f:
            meta = dict(f.metadata() or {})
        header = EncoderHeader.from_metadata(meta) if meta.get("format") == FORMAT else None
        return state, header, meta
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or "encoder" not in blob:
        raise ValueError(f"{path}: not an ldisc encoder file (no 'encoder' weights)")
    header = EncoderHeader.from_dict(blob["header"]) if isinstance(blob.get("header"), dict) else None
    return blob["encoder"], header, {k: v for k, v in blob.items() if k != "encoder"}


def load_encoder(path: str | Path, width: str | None = None) -> VGGEncoder:
    """Build a :class:`VGGEncoder` from an exported encoder file (``.pt`` or ``.safetensors``).

    The width is read from the file's header unless given; the input channels and the conv bias
    from the weights themselves (so files written before headers existed load too). The header
    (:class:`~ldisc.model.header.EncoderHeader`, or None for such old files) is ``encoder.header``.
    """
    state, header, recorded = read_encoder_file(path)
    width = width or (header.width if header else recorded.get("width"))
    if width is None:
        raise ValueError(f"{path}: no encoder width recorded; pass width=")
    first = state[FIRST_CONV + ".weight"]
    enc = VGGEncoder(width, in_channels=int(first.shape[1]), bias=FIRST_CONV + ".bias" in state, init="torch")
    enc.load_state_dict(state)
    enc.header = header
    return enc


def save_encoder(model: LDNet, path: str | Path, step: int | None = None, modality: str | None = None,
                 cfg=None) -> Path:
    """Export the encoder alone with its header (:mod:`ldisc.model.header`): ``.pt``
    (``{"encoder": state, "header": {...}, "width": w, "in_channels": c}``) or ``.safetensors``
    (the header as its metadata). ``cfg``: the resolved pretraining config (its digest is recorded)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = encoder_state(model)
    header = encoder_header(model.encoder, step=step, modality=modality, cfg=cfg)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata=header.to_metadata())
    else:
        torch.save({"encoder": state, "header": header.to_dict(), "width": header.width,
                    "in_channels": header.in_channels}, path)
    return path
