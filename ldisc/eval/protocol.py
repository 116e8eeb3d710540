"""The paper's downstream protocol: encoder + fresh U-Net decoder, Dice loss, Adam, best-by-validation.

``frozen``: the encoder's weights stay fixed (its batch-norm statistics too, by default) and only the
decoder and the 1×1 sigmoid head learn, for ``epochs_frozen`` epochs. ``finetune``: the same frozen
phase, then everything learns for ``epochs_finetune`` more epochs starting from the best frozen
weights. After every epoch the validation Dice (threshold 0.5, mean over images) is measured and the
best weights so far are kept; the test split is scored once, with those weights.

Deterministic given the seed: the decoder's initialisation and the batch order come from it.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ldisc.eval.scores import dice_per_image, iou_per_image, soft_dice_loss
from ldisc.eval.taskdata import Split, TaskData
from ldisc.model import UNetDecoder, VGGEncoder
from ldisc.views import normalize

PROTOCOLS = ("frozen", "finetune")


@dataclass
class ProtocolConfig:
    """Settings of the downstream protocol (``protocol`` in configs/eval.yaml)."""

    epochs_frozen: int = 3
    epochs_finetune: int = 3
    batch_size: int = 4
    lr: float = 1e-3
    finetune_lr: float = 1e-3
    threshold: float = 0.5
    frozen_bn: str = "eval"   # "eval": a frozen encoder keeps its BN statistics; "train": re-estimates them
    device: str = "auto"      # "auto" (cuda when available), "cpu" or "cuda"
    overlays: int = 3         # test images whose predictions are returned for the report

    @classmethod
    def from_mapping(cls, m) -> "ProtocolConfig":
        known = {k: m[k] for k in cls.__dataclass_fields__ if k in m}
        unknown = sorted(set(m) - set(known))
        if unknown:
            raise ValueError(f"unknown protocol settings {unknown}; known: {sorted(cls.__dataclass_fields__)}")
        return cls(**known)


@dataclass
class ProtocolResult:
    dice: list[float]                 # per test image
    iou: list[float]
    val_dice: float                   # best validation Dice
    best_epoch: int                   # 1-based epoch (frozen epochs first) of the kept weights
    epochs_frozen: int
    epochs_finetune: int
    train_seconds: float
    history: list[dict] = field(default_factory=list)     # per epoch: phase, loss, val_dice
    overlays: list[dict] = field(default_factory=list)    # name, image (S,S,3) u8, truth (S,S) bool, prob (S,S) u8


class SegmentationNet(nn.Module):
    """Encoder → U-Net decoder → 1×1 conv → sigmoid probability of the structure."""

    def __init__(self, encoder: VGGEncoder):
        super().__init__()
        self.encoder = encoder
        self.decoder = UNetDecoder(encoder.channels)
        self.head = nn.Conv2d(self.decoder.out_channels, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.head(self.decoder(self.encoder(normalize(x)))))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("protocol.device=cuda but no CUDA device is available")
    return torch.device(name)


@torch.no_grad()
def predict(net: nn.Module, split: Split, batch_size: int, device: torch.device) -> torch.Tensor:
    """Probabilities (N, 1, S, S) on the CPU."""
    net.eval()
    out = [net(split.x[i:i + batch_size].to(device)).float().cpu() for i in range(0, len(split), batch_size)]
    return torch.cat(out)


def _train_epoch(net: SegmentationNet, split: Split, opt: torch.optim.Optimizer, cfg: ProtocolConfig,
                 gen: torch.Generator, device: torch.device, frozen: bool) -> float:
    net.train()
    if frozen and cfg.frozen_bn == "eval":
        net.encoder.eval()
    order = torch.randperm(len(split), generator=gen)
    losses = []
    for i in range(0, len(order), cfg.batch_size):
        idx = order[i:i + cfg.batch_size]
        if len(idx) < 2 and len(order) > 1:  # a batch of one breaks batch norm in training mode
            continue
        x, y = split.x[idx].to(device), split.y[idx].to(device)
        loss = soft_dice_loss(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return float(np.mean(losses)) if losses else float("nan")


def _set_encoder_trainable(net: SegmentationNet, trainable: bool) -> None:
    for p in net.encoder.parameters():
        p.requires_grad_(trainable)


def run_protocol(encoder: VGGEncoder, data: TaskData, protocol: str, cfg: ProtocolConfig, seed: int) -> ProtocolResult:
    """Train a decoder on ``data`` with ``encoder`` (modified in place) and score the test split."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {PROTOCOLS}")
    if cfg.frozen_bn not in ("eval", "train"):
        raise ValueError(f"protocol.frozen_bn must be 'eval' or 'train', got {cfg.frozen_bn!r}")
    device = resolve_device(cfg.device)
    torch.manual_seed(seed)
    net = SegmentationNet(encoder).to(device)
    gen = torch.Generator().manual_seed(seed)
    phases = [("frozen", cfg.epochs_frozen, cfg.lr)]
    if protocol == "finetune":
        phases.append(("finetune", cfg.epochs_finetune, cfg.finetune_lr))

    start = time.perf_counter()
    best_val, best_epoch, best_state, history, epoch = -1.0, 0, None, [], 0
    for phase, n_epochs, lr in phases:
        frozen = phase == "frozen"
        if best_state is not None:
            net.load_state_dict(best_state)
        _set_encoder_trainable(net, not frozen)
        opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=lr)
        for _ in range(n_epochs):
            epoch += 1
            loss = _train_epoch(net, data.train, opt, cfg, gen, device, frozen)
            val = float(dice_per_image(predict(net, data.val, cfg.batch_size, device), data.val.y, cfg.threshold).mean())
            history.append({"epoch": epoch, "phase": phase, "loss": loss, "val_dice": val})
            if val > best_val:
                best_val, best_epoch, best_state = val, epoch, copy.deepcopy(net.state_dict())
    if best_state is not None:
        net.load_state_dict(best_state)
    train_seconds = time.perf_counter() - start

    prob = predict(net, data.test, cfg.batch_size, device)
    dice = dice_per_image(prob, data.test.y, cfg.threshold)
    iou = iou_per_image(prob, data.test.y, cfg.threshold)
    overlays = [{"name": data.test.names[i],
                 "image": (data.test.x[i].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8),
                 "truth": data.test.y[i, 0].numpy() > 0.5,
                 "prob": (prob[i, 0].numpy() * 255 + 0.5).astype(np.uint8)}
                for i in range(min(cfg.overlays, len(data.test)))]
    return ProtocolResult(dice.tolist(), iou.tolist(), best_val, best_epoch, cfg.epochs_frozen,
                          cfg.epochs_finetune if protocol == "finetune" else 0, train_seconds, history, overlays)
