"""The DeepSpeed engine behind the trainer — the one seam between the loop and the accelerator.

:class:`Engine` wraps ``deepspeed.initialize`` for an :class:`~ldisc.model.LDNet`:

* ``engine(x)`` — forward on the accelerator (inputs cast to the engine's dtype and memory format,
  outputs returned in float32 so the objectives always work in full precision);
* ``engine.backward(loss)`` / ``engine.step()`` — DeepSpeed's (gradient averaging over ranks,
  accumulation, clipping, ZeRO, the StepLR schedule of the generated config);
* ``save(dir)`` / ``load(dir)`` — DeepSpeed's own per-rank checkpoint files under ``dir/ds`` (or, at
  another world size under ZeRO ≥ 1, the universal checkpoint made from them: :mod:`ldisc.train.reshard`);
* ``full_state_dict()`` — the whole model on every rank (gathered under ZeRO-3), for exports.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torch import nn

from ldisc.model import LDOutput, set_activation_checkpointing
from ldisc.train.checkpoint import ENGINE_DIR as DS_TAG, MODEL_FILE
from ldisc.train.env import DistInfo, import_deepspeed
from ldisc.train.reshard import universal_for
from ldisc.train.schedule import scheduler_factory
from ldisc.train.sync_bn import convert_sync_batchnorm



class Engine:
    def __init__(self, module: nn.Module, engine_cfg, ds_config: dict, info: DistInfo):
        deepspeed = import_deepspeed()
        precision = str(engine_cfg.precision)
        if precision == "fp16" and info.device.type == "cpu":
            raise ValueError("engine.precision=fp16 needs an accelerator with fp16 support; use bf16 on CPU")
        if engine_cfg.sync_batchnorm:
            module = convert_sync_batchnorm(module, info.device)
        set_activation_checkpointing(module, engine_cfg.activation_checkpointing)
        # channels-last *activations* only: DeepSpeed views parameters as flat bytes (broadcast, ZeRO
        # buffers), which NHWC-strided weights break; convolutions follow the input's memory format.
        self.channels_last = bool(engine_cfg.channels_last)
        config, make_scheduler = scheduler_factory(ds_config)
        self.ds, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=module, model_parameters=[p for p in module.parameters() if p.requires_grad], config=config,
            lr_scheduler=make_scheduler)
        if engine_cfg.compile:
            self.ds.compile()
        self.info = info
        self.device = info.device
        # inputs follow the weights DeepSpeed keeps (bf16 params under engine.precision=bf16)
        self.dtype = next(self.ds.module.parameters()).dtype if precision != "bf16-autocast" else torch.float32
        for buf in self.ds.module.buffers():   # DeepSpeed casts parameters only; BN needs its stats alike
            if buf.is_floating_point():
                buf.data = buf.data.to(self.dtype)
        self.zero_stage = int(ds_config["zero_optimization"]["stage"])

    # -- training ---------------------------------------------------------------------------------
    @property
    def module(self) -> nn.Module:
        return self.ds.module

    def __call__(self, x: torch.Tensor, reduce=None):
        """The network's :class:`LDOutput` in fp32, or ``reduce``'s per-image quantities (see
        :class:`ldisc.model.LDNet`; the reductions compute in fp32 themselves)."""
        x = x.to(self.device, self.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if reduce is not None:
            return self.ds(x, reduce=reduce)
        out = self.ds(x)
        return LDOutput(out.embedding.float(), None if out.masks is None else out.masks.float())

    def train(self) -> None:
        self.ds.train()

    def eval(self) -> None:
        self.ds.eval()

    def backward(self, loss: torch.Tensor) -> None:
        self.ds.backward(loss)

    def step(self) -> None:
        self.ds.step()

    @property
    def lr(self) -> float:
        return float(self.ds.get_lr()[0])

    # -- state ------------------------------------------------------------------------------------
    def save(self, directory: Path) -> None:
        """Collective: every rank writes its part (weights, optimizer partitions, scheduler)."""
        self.ds.save_checkpoint(str(directory), tag=DS_TAG, save_latest=False)

    def load(self, directory: Path) -> None:
        """Collective: restore weights, optimizer and scheduler saved by :meth:`save`.

        At the saved world size (or under ZeRO 0) from ``directory/ds`` as saved. Otherwise every rank
        takes its new partition of the full per-parameter fp32 weights and Adam moments from the
        universal checkpoint made once from ``ds/`` (:mod:`ldisc.train.reshard`). DeepSpeed's universal
        load restores parameters only: the buffers (batch-norm statistics) come from ``model.pt``.
        """
        universal = universal_for(directory, DS_TAG, self.info, self.zero_stage)
        if universal is None:
            path, _ = self.ds.load_checkpoint(str(directory), tag=DS_TAG, load_module_strict=True,
                                              load_optimizer_states=True, load_lr_scheduler_states=True)
        else:
            self.ds._config.load_universal_checkpoint = True      # the `checkpoint.load_universal` key
            try:
                path, _ = self.ds.load_checkpoint(str(universal), tag=DS_TAG, load_optimizer_states=True,
                                                  load_lr_scheduler_states=True)
            finally:
                self.ds._config.load_universal_checkpoint = False
            self._load_buffers(directory / MODEL_FILE)
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint under {universal or directory}/{DS_TAG}")

    def _load_buffers(self, full_state: Path) -> None:
        saved = torch.load(full_state, map_location="cpu", weights_only=True)
        for name, buf in self.module.named_buffers():
            if name in saved:
                buf.data.copy_(saved[name].to(buf.dtype))

    def _gathered(self):
        if self.zero_stage == 3:
            import deepspeed
            return deepspeed.zero.GatheredParameters(list(self.module.parameters()), modifier_rank=None)
        return contextlib.nullcontext()

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """Collective under ZeRO-3: full float32 weights and buffers as CPU tensors, on every rank."""
        with self._gathered():
            return {k: (v.detach().float() if v.is_floating_point() else v.detach()).cpu().clone()
                    for k, v in self.module.state_dict().items()}

    def destroy(self) -> None:
        """Release the engine's hooks and buffers (before a new stage builds another engine)."""
        if hasattr(self.ds, "destroy"):
            self.ds.destroy()
        self.ds = None
