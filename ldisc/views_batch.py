"""LD views made on the training device (``data.views_device=accelerator``).

With ``data.views_device=loader`` (the default) every loader worker decodes its images and makes the
five views of each pair on the CPU (:func:`ldisc.views.make_views`): about 5 batches/s per worker at
448 px, so a GPU step of 10–20 ms needs 10–20 workers. With ``accelerator`` the workers only read and
decode: a batch carries the images as uint8 at their stored side, channels last (``images_u8``: as
PIL decodes them, one copy into the batch), and one seed per pair
(``view_seeds``, the seed of the pair's generator, :func:`ldisc.data.stream.pair_seed`). The training
process then makes the views of the whole batch on its device (:func:`views_on_device`):

- the random draws of each pair come from its own CPU generator, in the order
  :func:`ldisc.views.draw_pair` takes them, which is the order the loader path takes them: the same
  seed gives the same draws on either path. The worker draws them (``view_draws``, cheap CPU work)
  so that the training process only launches the warps;
- the draws of the batch are joined and applied at once (one ``grid_sample`` per view over all pairs,
  colour jitter, second-view flip/rot90, mixup, normalisation) on the device of the images.

On the CPU the two paths give the same tensors (tests/test_views_device.py). Images of different
stored sizes in one batch are warped per size group.
"""
from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from ldisc.views import (ViewConfig, cat_draws, draw_pair, finish_pair, input_normalization, map_draws,
                         pil_pixels, to_channels, two_views, uint8_to_float)

VIEWS_DEVICES = ("loader", "accelerator")


def check_views_device(value: str) -> str:
    """``data.views_device``: loader | accelerator (one-line error otherwise)."""
    if value not in VIEWS_DEVICES:
        raise ValueError(f"unknown data.views_device {value!r}; one of {VIEWS_DEVICES}")
    return value


def pair_draws(seeds, cfg: ViewConfig) -> dict:
    """The random draws of the views of a batch of pairs, each from its own seed's CPU generator."""
    return cat_draws([draw_pair(torch.Generator().manual_seed(int(s)), 1, cfg) for s in seeds])


def decoded_batch(images: list[Image.Image], seeds: list[int], cfg: ViewConfig | None = None) -> dict[str, Any]:
    """The loader worker's half: ``images_u8``, the pixels as they are decoded, channels last ((2B, H, W, C)
    uint8 when all images share a shape, else a list of (H, W, C); C = 1 or 3), ``view_seeds`` (B int64,
    one per pair of consecutive images) and, given ``cfg``, ``view_draws`` (:func:`pair_draws`: a few
    hundred bytes that spare the trainer ~20 small CPU ops per pair)."""
    if len(images) != 2 * len(seeds):
        raise ValueError(f"{len(images)} images for {len(seeds)} pairs")
    pixels = [pil_pixels(im) for im in images]
    if len({a.shape for a in pixels}) == 1:      # one copy, straight into the batch
        stack = torch.empty((len(pixels), *pixels[0].shape), dtype=torch.uint8)
        view = stack.numpy()
        for i, a in enumerate(pixels):
            view[i] = a
    else:
        stack = [torch.from_numpy(a.copy()) for a in pixels]
    out = {"images_u8": stack, "view_seeds": torch.tensor([int(s) for s in seeds], dtype=torch.int64)}
    if cfg is not None:
        out["view_draws"] = pair_draws(seeds, cfg)
    return out


def _views_of(images, draws: dict, cfg: ViewConfig, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Both views of a list/stack of uint8 images, warped per group of equal shape."""
    channels = input_normalization(cfg.modality)[0]
    shapes = [tuple(im.shape) for im in images]
    groups: dict[tuple, list[int]] = {}
    for i, shape in enumerate(shapes):
        groups.setdefault(shape, []).append(i)
    out: list[torch.Tensor] | None = None
    for idx in groups.values():
        stack = images if len(groups) == 1 and torch.is_tensor(images) else torch.stack([images[i] for i in idx])
        x = uint8_to_float(stack.to(device, non_blocking=True).permute(0, 3, 1, 2))   # NHWC → NCHW
        x = to_channels(x, channels).contiguous()
        side = draws if len(groups) == 1 else map_draws(lambda t, idx=idx: t[idx], draws)
        views = two_views(x, side, cfg)
        if len(groups) == 1:
            return views
        if out is None:
            out = [torch.empty(len(shapes), *v.shape[1:], dtype=v.dtype, device=v.device) for v in views]
        for o, v in zip(out, views):
            o[torch.tensor(idx, device=v.device)] = v
    return out[0], out[1]


def views_on_device(batch: dict, cfg: ViewConfig, device: torch.device | str) -> dict:
    """Replace a decoded batch's ``images_u8``, ``view_seeds`` (and ``view_draws``, drawn from the seeds
    here when the worker did not) by its LD views made on ``device`` (the keys and values the loader
    path gives: x1_1 … mix, flip1, rot1, flip2, rot2, mix_w)."""
    batch = dict(batch)
    images, seeds, draws = batch.pop("images_u8"), batch.pop("view_seeds"), batch.pop("view_draws", None)
    if draws is None:
        draws = pair_draws(seeds.tolist(), cfg)
    first, second = images[0::2], images[1::2]
    x1_1, x1_2 = _views_of(first, draws["first"], cfg, torch.device(device))
    x2_1, x2_2 = _views_of(second, draws["second"], cfg, torch.device(device))
    batch.update(finish_pair(x1_1, x1_2, x2_1, x2_2, draws["finish"], cfg))
    return batch


class DeviceViews:
    """A data source whose batches get their views on ``device`` (wraps a :class:`StreamLoader` with
    ``output='decoded'``); position and everything else are the wrapped loader's."""

    def __init__(self, source, cfg: ViewConfig, device: torch.device | str):
        self.source, self.cfg, self.device = source, cfg, torch.device(device)

    def next_batch(self) -> dict:
        return views_on_device(self.source.next_batch(), self.cfg, self.device)

    def position(self):
        return self.source.position()

    def seek(self, position) -> None:
        self.source.seek(position)

    def __getattr__(self, name: str):
        return getattr(self.source, name)
