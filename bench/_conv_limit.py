"""This machine's convolution throughput on the LD network's own layer shapes (fp32 or bf16).

Every ``Conv2d`` of the network is found with its input shape (a forward on the meta device, no
compute), then timed alone, forward + backward (input gradient except for the first layer, whose
input needs none; weight and bias gradients), with that layer's count of FLOPs from torch's flop
counter. The limit is Σ FLOPs / Σ seconds over the network's layers: what the step would reach if
it did nothing but its convolutions at this machine's speed.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode


def conv_shapes(model: torch.nn.Module, images: int, size: int, in_channels: int = 3) -> list[tuple]:
    """[(in_shape, weight_shape, padding, stride, first)] of every Conv2d the forward runs, in order."""
    shapes = []
    hooks = [m.register_forward_pre_hook(lambda mod, inp: shapes.append(
        (tuple(inp[0].shape), tuple(mod.weight.shape), mod.padding, mod.stride, not shapes)))
        for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    try:
        with torch.no_grad():
            model.to("meta")(torch.empty(images, in_channels, size, size, device="meta"))
    finally:
        for h in hooks:
            h.remove()
    return shapes


def _conv_once(x, w, b, padding, stride) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one forward + backward."""
    t, c = time.perf_counter(), time.process_time()
    y = F.conv2d(x, w, b, stride=stride, padding=padding)
    y.backward(torch.ones_like(y))
    return time.perf_counter() - t, time.process_time() - c


def conv_limit(model: torch.nn.Module, images: int, size: int, dtype: torch.dtype = torch.float32,
               channels_last: bool = False, reps: int = 2) -> dict:
    """Throughput of ``model``'s convolutions at ``images`` × ``size``² (``model`` is moved to the meta
    device: pass a fresh one), by wall time and by process CPU time / threads (the steadier figure on
    a shared machine); each layer's best of ``reps``."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    threads = torch.get_num_threads()
    flops = wall = cpu = 0.0
    for in_shape, w_shape, padding, stride, first in conv_shapes(model, images, size):
        x = torch.randn(in_shape, dtype=dtype).contiguous(memory_format=fmt).requires_grad_(not first)
        w = torch.randn(w_shape, dtype=dtype).contiguous(memory_format=fmt).requires_grad_()
        b = torch.zeros(w_shape[0], dtype=dtype, requires_grad=True)
        with FlopCounterMode(display=False) as counter:
            _conv_once(x, w, b, padding, stride)        # also the warm-up
        flops += counter.get_total_flops()
        times = [_conv_once(x, w, b, padding, stride) for _ in range(reps)]
        wall += min(t for t, _ in times)
        cpu += min(c for _, c in times) / threads
    return {"dtype": str(dtype).replace("torch.", ""), "images": images, "size": size,
            "channels_last": channels_last, "conv_gflop": round(flops / 1e9, 2), "conv_seconds": round(wall, 3),
            "conv_cpu_seconds": round(cpu, 3), "gflops_per_second": round(flops / wall / 1e9, 2),
            "gflops_per_cpu_second": round(flops / cpu / 1e9, 2)}
