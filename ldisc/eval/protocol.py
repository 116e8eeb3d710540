"""The downstream protocol: encoder + fresh U-Net decoder, Dice loss, Adam, best-by-validation.

``frozen``: the encoder's weights stay fixed (its batch-norm statistics too, by default) and only the
decoder and the head learn, for ``epochs_frozen`` epochs. ``finetune``: the same frozen phase, then
everything learns for ``epochs_finetune`` more epochs starting from the best frozen weights. The
random-init baseline under ``random_init="scratch"`` instead trains the whole network from the
start for ``epochs_scratch`` epochs (no frozen phase), as the authors' baseline does.

After every epoch the validation split is scored and the best weights so far are kept:
``select="val_loss"`` (the authors'): lowest mean validation loss over batches; ``select="val_dice"``:
highest mean validation Dice at ``threshold``. ``keep_best="phase"`` (the authors'): the fine-tuning
phase starts from the best frozen weights and its own best epoch is kept; ``"run"``: the best of all
epochs, frozen ones included. The test split is scored once, with those weights.
Each training batch is augmented as the authors do (``augment``; see :mod:`ldisc.eval.augment`).

``protocol=paper`` (configs/eval/protocol/paper.yaml) sets every switch to the authors' choice,
``protocol=ldisc`` to this project's earlier ones; docs/fidelity_protocol.md has the table.
Deterministic given the seed: the initialisation, batch order and augmentation draws come from it.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ldisc.eval.augment import PAPER_AUGMENTATION, augment_batch
from ldisc.eval.scores import DICE_LOSSES, dice_per_image, iou_per_image
from ldisc.eval.taskdata import FUNDUS_CROPS, SPLITS, Split, TaskData
from ldisc.model import UNetDecoder, VGGEncoder
from ldisc.model.init import init_weights
from ldisc.preprocess import network_input

PROTOCOLS = ("frozen", "finetune")
SELECTIONS = ("val_loss", "val_dice")
RANDOM_INITS = ("scratch", "protocol")
INITS = ("kaiming", "default")
KEEP_BEST = ("phase", "run")


@dataclass
class ProtocolConfig:
    """Settings of the downstream protocol (``protocol`` in configs/eval.yaml; the YAML files hold the defaults)."""

    epochs_frozen: int = 3
    epochs_finetune: int = 3
    batch_size: int | None = None  # None: the task's (the authors': 2, SIIM 8)
    lr: float = 1e-3
    finetune_lr: float = 1e-3
    threshold: float = 0.5         # prediction threshold for Dice (validation and test)
    frozen_bn: str = "eval"   # "eval": a frozen encoder keeps its BN statistics; "train": re-estimates them
    device: str = "auto"      # "auto" (cuda when available), "cpu" or "cuda"
    overlays: int = 3         # test images whose predictions are returned for the report
    loss: str = "dice_batch"       # dice_batch (the authors': the batch as one volume) | dice_image
    select: str = "val_loss"       # val_loss (the authors') | val_dice
    augment: bool = True           # the authors' flips/rotations (fundus ±180°, X-ray ±30°)
    splits: str = "paper"          # paper: the authors' lists, first 20% for validation | ldisc
    fundus_crop: str = "fov"       # fov: crop to the field of view first | pad: pad the whole image
    mask_threshold: float = 0.3    # binarisation of resized ground-truth masks
    random_init: str = "scratch"   # scratch: random init trained end to end | protocol: frozen/finetune phases
    epochs_scratch: int = 3
    init: str = "kaiming"          # kaiming (fan_out, relu) for decoder/head and the random encoder | default
    xray_channels: int = 1         # input channels of the random-init X-ray encoder (pretrained: from its weights)
    head_kernel: int = 3           # the output convolution: 3×3 (the authors') | 1×1
    keep_best: str = "phase"       # phase: selection restarts with fine-tuning (the authors') | run: best of all epochs

    @classmethod
    def from_mapping(cls, m) -> "ProtocolConfig":
        known = {k: m[k] for k in cls.__dataclass_fields__ if k in m}
        unknown = sorted(set(m) - set(known))
        if unknown:
            raise ValueError(f"unknown protocol settings {unknown}; known: {sorted(cls.__dataclass_fields__)}")
        return cls(**known).validated()

    def validated(self) -> "ProtocolConfig":
        for name, allowed in (("loss", tuple(DICE_LOSSES)), ("select", SELECTIONS), ("splits", SPLITS),
                              ("fundus_crop", FUNDUS_CROPS), ("random_init", RANDOM_INITS), ("init", INITS),
                              ("frozen_bn", ("eval", "train")), ("xray_channels", (1, 3)),
                              ("head_kernel", (1, 3)), ("keep_best", KEEP_BEST)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"protocol.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        return self

    def data_options(self) -> dict:
        """The keyword arguments of :func:`ldisc.eval.taskdata.load_task_data` this protocol sets."""
        return {"splits": self.splits, "fundus_crop": self.fundus_crop, "mask_threshold": self.mask_threshold}


@dataclass
class ProtocolResult:
    dice: list[float]                 # per test image
    iou: list[float]
    val_dice: float                   # validation Dice of the kept weights
    best_epoch: int                   # 1-based epoch (frozen epochs first) of the kept weights
    epochs_frozen: int
    epochs_finetune: int              # epochs with the encoder trainable (fine-tuning, or the scratch baseline)
    train_seconds: float
    history: list[dict] = field(default_factory=list)     # per epoch: phase, loss, val_loss, val_dice
    overlays: list[dict] = field(default_factory=list)    # name, image (S,S,3) u8, truth (S,S) bool, prob (S,S) u8
    batch_size: int = 0                                   # the batch size used


def kaiming_init(module: nn.Module) -> None:
    """The authors' initialisation (:func:`ldisc.model.init.init_weights`, ``kaiming``)."""
    init_weights(module, "kaiming")


def encoder_in_channels(encoder: nn.Module) -> int:
    """Input channels of an encoder, read from the shape of its first convolution's weight."""
    first = next(m for m in encoder.modules() if isinstance(m, nn.Conv2d))
    return int(first.weight.shape[1])


class SegmentationNet(nn.Module):
    """Encoder → U-Net decoder → 3×3 (or 1×1) conv → sigmoid probability of the structure.

    Takes (B, 3, S, S) images in [0, 1] and feeds the encoder what its first convolution expects
    (:func:`ldisc.preprocess.network_input`): ImageNet-normalised RGB, or gray as (x − 0.5)/0.5.
    """

    def __init__(self, encoder: VGGEncoder, init: str = "default", head_kernel: int = 1):
        super().__init__()
        self.encoder = encoder
        self.in_channels = encoder_in_channels(encoder)
        self.decoder = UNetDecoder(encoder.channels)
        self.head = nn.Conv2d(self.decoder.out_channels, 1, head_kernel, padding=head_kernel // 2)
        if init == "kaiming":
            kaiming_init(self.decoder)
            kaiming_init(self.head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.head(self.decoder(self.encoder(network_input(x, self.in_channels)))))


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


def _train_epoch(net: SegmentationNet, data: TaskData, opt: torch.optim.Optimizer, cfg: ProtocolConfig,
                 batch_size: int, gen: torch.Generator, device: torch.device, frozen: bool) -> float:
    net.train()
    if frozen and cfg.frozen_bn == "eval":
        net.encoder.eval()
    split, loss_fn = data.train, DICE_LOSSES[cfg.loss]
    aug = PAPER_AUGMENTATION[data.task.modality] if cfg.augment else None
    order = torch.randperm(len(split), generator=gen)
    losses = []
    for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size]
        x, y = split.x[idx].to(device), split.y[idx].to(device)
        if aug is not None:
            x, y, _ = augment_batch(x, y, aug, gen)
        loss = loss_fn(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return float(np.mean(losses)) if losses else float("nan")


def _set_encoder_trainable(net: SegmentationNet, trainable: bool) -> None:
    for p in net.encoder.parameters():
        p.requires_grad_(trainable)


def validation_scores(prob: torch.Tensor, split: Split, cfg: ProtocolConfig, batch_size: int) -> tuple[float, float]:
    """(mean loss over validation batches in list order, mean Dice per image) of predictions ``prob``."""
    loss_fn = DICE_LOSSES[cfg.loss]
    losses = [float(loss_fn(prob[i:i + batch_size], split.y[i:i + batch_size])) for i in range(0, len(split), batch_size)]
    return float(np.mean(losses)), float(dice_per_image(prob, split.y, cfg.threshold).mean())


def run_protocol(encoder: VGGEncoder, data: TaskData, protocol: str, cfg: ProtocolConfig, seed: int,
                 scratch: bool = False) -> ProtocolResult:
    """Train on ``data`` with ``encoder`` (modified in place) and score the test split.

    ``scratch``: the random-init baseline trained end to end for ``cfg.epochs_scratch`` epochs, whatever
    ``protocol`` says (the caller decides; see ``random_init``).
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {PROTOCOLS}")
    cfg.validated()
    device = resolve_device(cfg.device)
    batch_size = int(cfg.batch_size or data.task.batch_size)
    torch.manual_seed(seed)
    net = SegmentationNet(encoder, cfg.init, cfg.head_kernel).to(device)
    gen = torch.Generator().manual_seed(seed)
    if scratch:
        phases = [("scratch", cfg.epochs_scratch, cfg.lr)]
    else:
        phases = [("frozen", cfg.epochs_frozen, cfg.lr)]
        if protocol == "finetune":
            phases.append(("finetune", cfg.epochs_finetune, cfg.finetune_lr))

    start = time.perf_counter()
    best_key, best_val, best_epoch, best_state, history, epoch = float("inf"), -1.0, 0, None, [], 0
    for phase, n_epochs, lr in phases:
        frozen = phase == "frozen"
        if best_state is not None:
            net.load_state_dict(best_state)   # a phase starts from the best weights of the one before
            if cfg.keep_best == "phase":
                best_key = float("inf")
        _set_encoder_trainable(net, not frozen)
        opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=lr)
        for _ in range(n_epochs):
            epoch += 1
            loss = _train_epoch(net, data, opt, cfg, batch_size, gen, device, frozen)
            val_loss, val_dice = validation_scores(predict(net, data.val, batch_size, device), data.val, cfg, batch_size)
            history.append({"epoch": epoch, "phase": phase, "loss": loss, "val_loss": val_loss, "val_dice": val_dice})
            key = val_loss if cfg.select == "val_loss" else -val_dice
            if key < best_key:
                best_key, best_val, best_epoch, best_state = key, val_dice, epoch, copy.deepcopy(net.state_dict())
    if best_state is not None:
        net.load_state_dict(best_state)
    train_seconds = time.perf_counter() - start

    prob = predict(net, data.test, batch_size, device)
    dice = dice_per_image(prob, data.test.y, cfg.threshold)
    iou = iou_per_image(prob, data.test.y, cfg.threshold)
    overlays = [{"name": data.test.names[i],
                 "image": (data.test.x[i].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8),
                 "truth": data.test.y[i, 0].numpy() > 0.5,
                 "prob": (prob[i, 0].numpy() * 255 + 0.5).astype(np.uint8)}
                for i in range(min(cfg.overlays, len(data.test)))]
    epochs_frozen = 0 if scratch else cfg.epochs_frozen
    epochs_trainable = cfg.epochs_scratch if scratch else (cfg.epochs_finetune if protocol == "finetune" else 0)
    return ProtocolResult(dice.tolist(), iou.tolist(), best_val, best_epoch, epochs_frozen, epochs_trainable,
                          train_seconds, history, overlays, batch_size)
