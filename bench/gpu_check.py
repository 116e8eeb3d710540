"""Accelerator check: the criterion, the views and a stage-2 step on the device equal the CPU.

Prints one JSON object. Usage (on a machine with a GPU): python bench/gpu_check.py --device cuda
"""
from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

from ldisc.model import LDNet
from ldisc.objectives.nce import authors_nce, instance_nce
from ldisc.objectives.objective import LDObjective, ObjectiveConfig
from ldisc.views import ViewConfig, make_views_batch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    dev = ap.parse_args().device
    torch.manual_seed(0)
    x = F.normalize(torch.randn(4096, 32, dtype=torch.float64), dim=1)
    idx = torch.arange(4096)
    pos = (idx + 2048) % 4096
    xd = x.to(dev).requires_grad_()
    ours = instance_nce(xd, xd, idx.to(dev), pos.to(dev), 0.1, ObjectiveConfig().chunk).mean()
    (g,) = torch.autograd.grad(ours, xd)
    xc = x.clone().requires_grad_()
    ref = authors_nce(xc)
    (gr,) = torch.autograd.grad(ref, xc)
    imgs = torch.rand(2, 3, 96, 96)
    v_cpu = make_views_batch(imgs, imgs.flip(0), ViewConfig(view_side=64), torch.Generator().manual_seed(1))
    v_dev = make_views_batch(imgs.to(dev), imgs.flip(0).to(dev), ViewConfig(view_side=64), torch.Generator().manual_seed(1))
    view_err = max((v_cpu[k] - v_dev[k].cpu()).abs().max().item() for k in ("x1_1", "x1_2", "x2_2", "mix"))
    model = LDNet("tiny", 32, 16).eval()
    obj = LDObjective(ObjectiveConfig(stage=2))
    loss_cpu = obj(model, v_cpu).total.item()
    loss_dev = obj(model.to(dev), {k: t.to(dev) for k, t in v_cpu.items()}).total.item()
    print(json.dumps({"device": torch.cuda.get_device_name() if dev.startswith("cuda") else dev,
                      "nce_abs_diff_vs_authors": abs(ours.item() - ref.item()),
                      "nce_grad_max_diff": (g.cpu() - gr).abs().max().item(),
                      "views_max_diff": view_err, "stage2_loss_cpu": loss_cpu, "stage2_loss_device": loss_dev}))


if __name__ == "__main__":
    main()
