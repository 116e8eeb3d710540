"""The plain-PyTorch engine: one process, Adam, lr halved every N steps, optional clipping."""
from __future__ import annotations

import torch
from torch import nn


def pick_device(name: str = "auto") -> torch.device:
    if name != "auto":
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class LocalEngine:
    """Owns the module's placement, optimiser and schedule; ``step(loss)`` does one update."""

    def __init__(self, module: nn.Module, lr: float, halve_every: int, grad_clip: float = 0.0,
                 device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.module = module.to(self.device)
        self.optimizer = torch.optim.Adam(self.module.parameters(), lr=lr)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=max(1, halve_every), gamma=0.5)
        self.grad_clip = grad_clip

    def step(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.module.parameters(), self.grad_clip)
        self.optimizer.step()
        self.scheduler.step()

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
