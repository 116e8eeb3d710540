"""LD views: two images → five network inputs, with the parameters needed to undo the second views.

For each image x of a pair (x1, x2):

1. one *geometric* augmentation shared by both of its views: random horizontal / vertical flip
   (p = 0.5 each), rotation θ ~ U(−180°, 180°), random resized crop to ``size`` with area scale
   in (0.9, 1) and aspect ratio in (3/4, 4/3);
2. two *photometric* views: rotation φ ~ U(−2°, 2°), colour jitter (brightness, contrast,
   saturation 0.4, hue 0.02; applied in that order), grayscale with p = 0.2 (on a 1-channel X-ray
   only brightness and contrast change anything);
3. the second view additionally gets a flip and ``rot90`` by k ∈ {0..3}, kept as (flip, rot) to undo
   them on features. ``second_view``: ``rotations`` (default, the authors'): ``flip(dims=(H, W))``
   with p = 0.5, a 180° turn, so only the four rotations occur, never a mirror image;
   ``dihedral``: a horizontal mirror with p = 0.5, all 8 elements of the dihedral group. The flip
   code in the batch says which: 0 none, 1 horizontal mirror, 2 flip of both axes.

The mixup image is w·x1_1 + (1 − w)·x2_1 with w ~ U(0.2, 0.8). Inputs are normalised per modality
(:func:`input_normalization`, the one owner of those constants): fundus RGB with ImageNet mean/std,
X-ray 1 channel as (x − 0.5)/0.5.

All random numbers come from one ``torch.Generator`` on the CPU, so the views are a pure function of
the seed on any device. The geometry (flip ∘ rotation ∘ crop ∘ small rotation) is one affine map per
view, resampled once with ``grid_sample``; the same code serves a PIL pair (``make_views``) and a
batch of tensors on any device (``make_views_batch``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
VIEW_KEYS = ("x1_1", "x1_2", "x2_1", "x2_2", "mix")
# modality → (input channels, mean, std): the network's input contract, for pretraining and downstream
INPUT_NORMALIZATION = {"fundus": (3, IMAGENET_MEAN, IMAGENET_STD), "xray": (1, (0.5,), (0.5,))}
SECOND_VIEWS = {"rotations": 2, "dihedral": 1}     # second-view set → its flip code (see module doc)
_LUMA = (0.299, 0.587, 0.114)


@dataclass
class ViewConfig:
    view_side: int = 448
    crop_scale: tuple[float, float] = (0.9, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    rotation_deg: float = 180.0
    view_rotation_deg: float = 2.0
    flip_p: float = 0.5
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.02
    grayscale_p: float = 0.2
    second_flip_p: float = 0.5
    mix_range: tuple[float, float] = (0.2, 0.8)
    second_view: str = "rotations"   # rotations (the authors': 4 turns) | dihedral (8, with mirrors)
    modality: str = "fundus"         # fundus (RGB, ImageNet stats) | xray (1 channel, (x − 0.5)/0.5)

    def __post_init__(self):
        if self.second_view not in SECOND_VIEWS:
            raise ValueError(f"unknown views.second_view {self.second_view!r}; one of {sorted(SECOND_VIEWS)}")
        input_normalization(self.modality)


def view_config(cfg) -> ViewConfig:
    """The :class:`ViewConfig` of a composed ``ldisc-pretrain`` config: ``data.view_side``, ``data.modality``,
    ``views.second_view``."""
    return ViewConfig(view_side=int(cfg.data.view_side), modality=str(cfg.data.modality),
                      second_view=str(cfg.views.second_view))


def input_normalization(modality: str) -> tuple[int, tuple[float, ...], tuple[float, ...]]:
    """(channels, mean, std) of the network input for ``modality`` (fundus | xray)."""
    if modality not in INPUT_NORMALIZATION:
        raise ValueError(f"unknown modality {modality!r}; one of {sorted(INPUT_NORMALIZATION)}")
    return INPUT_NORMALIZATION[modality]


def modality_of_channels(in_channels: int) -> str:
    """The modality whose network input has ``in_channels`` channels (3 → fundus, 1 → xray)."""
    found = [m for m, (c, _, _) in INPUT_NORMALIZATION.items() if c == int(in_channels)]
    if not found:
        raise ValueError(f"encoders take 1 or 3 input channels, this one takes {in_channels}")
    return found[0]


def _uniform(gen: torch.Generator, n: int, lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen, dtype=torch.float64)


def _bernoulli(gen: torch.Generator, n: int, p: float) -> torch.Tensor:
    return torch.rand(n, generator=gen, dtype=torch.float64) < p


def _rotation(theta: torch.Tensor) -> torch.Tensor:
    c, s = torch.cos(theta), torch.sin(theta)
    return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)


def _geometry(gen: torch.Generator, n: int, cfg: ViewConfig) -> torch.Tensor:
    """(n, 2, 3) affine maps from crop coordinates to (aspect-corrected) image coordinates."""
    flips = torch.ones(n, 2, dtype=torch.float64)
    flips[_bernoulli(gen, n, cfg.flip_p), 0] = -1
    flips[_bernoulli(gen, n, cfg.flip_p), 1] = -1
    theta = _uniform(gen, n, -cfg.rotation_deg, cfg.rotation_deg) * math.pi / 180
    area = _uniform(gen, n, *cfg.crop_scale)
    log_ratio = _uniform(gen, n, math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1]))
    w = torch.sqrt(area * torch.exp(log_ratio)).clamp(max=1.0)
    h = torch.sqrt(area / torch.exp(log_ratio)).clamp(max=1.0)
    cx = _uniform(gen, n, -1, 1) * (1 - w)
    cy = _uniform(gen, n, -1, 1) * (1 - h)
    # crop (u in [-1,1]^2) -> rotated frame -> unrotate -> unflip
    scale = torch.diag_embed(torch.stack([w, h], -1))
    linear = torch.diag_embed(flips) @ _rotation(-theta) @ scale
    offset = (torch.diag_embed(flips) @ _rotation(-theta) @ torch.stack([cx, cy], -1)[..., None])
    return torch.cat([linear, offset], -1)


def _photometric(gen: torch.Generator, n: int, cfg: ViewConfig) -> dict[str, torch.Tensor]:
    return {
        "angle": _uniform(gen, n, -cfg.view_rotation_deg, cfg.view_rotation_deg) * math.pi / 180,
        "brightness": _uniform(gen, n, 1 - cfg.brightness, 1 + cfg.brightness),
        "contrast": _uniform(gen, n, 1 - cfg.contrast, 1 + cfg.contrast),
        "saturation": _uniform(gen, n, 1 - cfg.saturation, 1 + cfg.saturation),
        "hue": _uniform(gen, n, -cfg.hue, cfg.hue),
        "gray": _bernoulli(gen, n, cfg.grayscale_p),
    }


def _grid(affine: torch.Tensor, angle: torch.Tensor, in_hw: tuple[int, int], size: int,
          device: torch.device) -> torch.Tensor:
    """Sampling grid for crop-then-small-rotation, honouring the input aspect ratio."""
    h, w = in_hw
    side = max(h, w)
    aspect = torch.tensor([side / w, side / h], dtype=torch.float64)
    small = _rotation(angle)
    theta = torch.diag(aspect) @ affine[:, :, :2] @ small
    full = torch.cat([theta, (aspect[:, None] * affine[:, :, 2:])], -1)
    grid = F.affine_grid(full.float(), [affine.shape[0], 3, size, size], align_corners=False)
    return grid.to(device)


def _gray(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(1)


def _shift_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate hue by ``shift`` (fraction of a turn) per image, via HSV."""
    r, g, b = x.unbind(1)
    maxc, _ = x.max(1)
    minc, _ = x.min(1)
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    hr = ((g - b) / safe) % 6
    hg = (b - r) / safe + 2
    hb = (r - g) / safe + 4
    hue = torch.where(maxc == r, hr, torch.where(maxc == g, hg, hb)) / 6
    hue = torch.where(delta > 0, hue, torch.zeros_like(hue))
    hue = (hue + shift.view(-1, 1, 1)) % 1.0
    sat = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), 0 * maxc)
    k = (torch.tensor([5.0, 3.0, 1.0], device=x.device).view(1, 3, 1, 1) + 6 * hue.unsqueeze(1)) % 6
    weight = torch.clamp(torch.minimum(k, 4 - k), 0, 1)
    v = maxc.unsqueeze(1)
    return v - v * sat.unsqueeze(1) * weight


def _jitter(x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
    dev = x.device
    col = lambda t: t.to(dev, torch.float32).view(-1, 1, 1, 1)  # noqa: E731
    x = (x * col(p["brightness"])).clamp(0, 1)
    mean = _gray(x).mean((1, 2, 3), keepdim=True)
    x = (col(p["contrast"]) * x + (1 - col(p["contrast"])) * mean).clamp(0, 1)
    x = (col(p["saturation"]) * x + (1 - col(p["saturation"])) * _gray(x)).clamp(0, 1)
    if x.shape[1] == 3:
        x = _shift_hue(x, p["hue"].to(dev, torch.float32))
    gray = p["gray"].to(dev).view(-1, 1, 1, 1)
    return torch.where(gray, _gray(x).expand_as(x), x)


def _flip(x: torch.Tensor, code: int) -> torch.Tensor:
    """Flip code 0: none; 1: horizontal mirror; 2: both axes (a 180° turn)."""
    return x.flip(-1) if code == 1 else x.flip(-2, -1) if code == 2 else x


def _per_transform(x: torch.Tensor, flip: torch.Tensor, rot: torch.Tensor, one) -> torch.Tensor:
    out = torch.empty_like(x)
    for f in (0, 1, 2):
        for k in range(4):
            sel = ((flip == f) & (rot == k)).nonzero().flatten().to(x.device)
            if sel.numel():
                out[sel] = one(x[sel], f, k)
    return out


def apply_dihedral(x: torch.Tensor, flip: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
    """x' = rot90(flip_f(x), k) per sample, on the last two dims (square maps); f: flip code."""
    return _per_transform(x, flip, rot, lambda y, f, k: torch.rot90(_flip(y, f), k, dims=(-2, -1)))


def undo_dihedral(x: torch.Tensor, flip: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`apply_dihedral`: flip_f(rot90(x, −k)) (every flip is its own inverse)."""
    return _per_transform(x, flip, rot, lambda y, f, k: _flip(torch.rot90(y, -k, dims=(-2, -1)), f))


def draw_side(gen: torch.Generator, n: int, cfg: ViewConfig) -> dict:
    """The random draws of the two views of ``n`` images: one shared geometry, two photometric sets."""
    return {"geometry": _geometry(gen, n, cfg), "views": (_photometric(gen, n, cfg), _photometric(gen, n, cfg))}


def two_views(x: torch.Tensor, side: dict, cfg: ViewConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The two views of images ``x`` (B, C, H, W) in [0, 1] from their draws (:func:`draw_side`)."""
    views = []
    for p in side["views"]:
        grid = _grid(side["geometry"], p["angle"], tuple(x.shape[-2:]), cfg.view_side, x.device)
        warped = F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="zeros",
                               align_corners=False)
        views.append(_jitter(warped, p))
    return views[0], views[1]


def draw_pair(gen: torch.Generator, n: int, cfg: ViewConfig) -> dict:
    """Every random draw of the views of ``n`` pairs, in the order the generator gives them: first
    images, second images, then second-view flip/rot90 and mixup weight. Applying the draws uses no
    random numbers, so views may be made anywhere (loader worker or training device) from them."""
    return {"first": draw_side(gen, n, cfg), "second": draw_side(gen, n, cfg), "finish": _draw_finish(gen, n, cfg)}


def map_draws(fn, draws):
    """``fn`` applied to every tensor of (nested) draws."""
    if isinstance(draws, dict):
        return {k: map_draws(fn, v) for k, v in draws.items()}
    if isinstance(draws, tuple):
        return tuple(map_draws(fn, v) for v in draws)
    return fn(draws)


def cat_draws(parts: list) -> dict:
    """Draws of several batches of pairs joined along the batch dimension."""
    first = parts[0]
    if isinstance(first, dict):
        return {k: cat_draws([p[k] for p in parts]) for k in first}
    if isinstance(first, tuple):
        return tuple(cat_draws([p[i] for p in parts]) for i in range(len(first)))
    return torch.cat(parts)


def to_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """(B, C, H, W) in [0, 1] → ``channels`` (1: luma of RGB; 3: gray replicated)."""
    if x.shape[1] == channels:
        return x
    if channels == 1 and x.shape[1] == 3:
        return _gray(x)
    if channels == 3 and x.shape[1] == 1:
        return x.expand(-1, 3, -1, -1)
    raise ValueError(f"cannot turn {x.shape[1]}-channel images into {channels}-channel ones")


def normalize(x: torch.Tensor, modality: str = "fundus") -> torch.Tensor:
    """(x − mean) / std of :func:`input_normalization` (``x`` already has the modality's channels)."""
    c, mean, std = input_normalization(modality)
    mean = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, c, 1, 1)
    std = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, c, 1, 1)
    return (x - mean) / std


def make_views_batch(x1: torch.Tensor, x2: torch.Tensor, cfg: ViewConfig,
                     generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Batched views of image pairs. x1, x2: (B, 3 or 1, H, W) floats in [0, 1], any device; the views
    have the channels of ``cfg.modality``."""
    if x1.ndim != 4 or x1.shape[1] not in (1, 3) or x2.ndim != 4 or x2.shape[1] not in (1, 3):
        raise ValueError(f"expected (B, 3, H, W) or (B, 1, H, W) images, got {tuple(x1.shape)} and {tuple(x2.shape)}")
    channels = input_normalization(cfg.modality)[0]
    x1, x2 = to_channels(x1, channels), to_channels(x2, channels)
    draws = draw_pair(generator, x1.shape[0], cfg)
    x1_1, x1_2 = two_views(x1, draws["first"], cfg)
    x2_1, x2_2 = two_views(x2, draws["second"], cfg)
    return finish_pair(x1_1, x1_2, x2_1, x2_2, draws["finish"], cfg)


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """Any PIL mode → (3, H, W) float32 in [0, 1] (grayscale replicated to RGB)."""
    return uint8_to_float(pil_to_uint8(img)).contiguous()


def pil_pixels(img: Image.Image) -> np.ndarray:
    """Any PIL mode → (H, W, C) uint8 pixels (read-only), C = 1 (gray modes) or 3."""
    if img.mode not in ("RGB", "L"):
        img = img.convert("L") if img.mode in ("I", "I;16", "F", "LA", "1") else img.convert("RGB")
    arr = np.asarray(img, dtype=np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr


def pil_to_uint8(img: Image.Image) -> torch.Tensor:
    """Any PIL mode → (C, H, W) uint8 (a channels-last view of its own copy of the pixels)."""
    return torch.from_numpy(pil_pixels(img).copy()).permute(2, 0, 1)


def uint8_to_float(x: torch.Tensor) -> torch.Tensor:
    """(…, 1 or 3, H, W) uint8 → 3-channel float32 in [0, 1] (gray replicated), on ``x``'s device."""
    t = x.float().div_(255)
    return t.expand(*t.shape[:-3], 3, *t.shape[-2:]).contiguous() if t.shape[-3] == 1 else t


def make_views(img_a: Image.Image, img_b: Image.Image, cfg: ViewConfig,
               generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Views of one pair of PIL images (any sizes, any modes); unbatched tensors."""
    channels = input_normalization(cfg.modality)[0]
    a, b = to_channels(pil_to_tensor(img_a)[None], channels), to_channels(pil_to_tensor(img_b)[None], channels)
    draws = draw_pair(generator, 1, cfg)
    x1_1, x1_2 = two_views(a, draws["first"], cfg)
    x2_1, x2_2 = two_views(b, draws["second"], cfg)
    return {k: v[0] for k, v in finish_pair(x1_1, x1_2, x2_1, x2_2, draws["finish"], cfg).items()}


def _draw_finish(generator: torch.Generator, n: int, cfg: ViewConfig) -> dict[str, torch.Tensor]:
    code = SECOND_VIEWS[cfg.second_view]
    flip1 = code * _bernoulli(generator, n, cfg.second_flip_p).long()
    rot1 = torch.randint(0, 4, (n,), generator=generator)
    flip2 = code * _bernoulli(generator, n, cfg.second_flip_p).long()
    rot2 = torch.randint(0, 4, (n,), generator=generator)
    mix_w = _uniform(generator, n, *cfg.mix_range).float()
    return {"flip1": flip1, "rot1": rot1, "flip2": flip2, "rot2": rot2, "mix_w": mix_w}


def finish_pair(x1_1: torch.Tensor, x1_2: torch.Tensor, x2_1: torch.Tensor, x2_2: torch.Tensor,
                finish: dict[str, torch.Tensor], cfg: ViewConfig) -> dict[str, torch.Tensor]:
    """Second-view flip/rot90, mixup and normalisation of a batch of first/second views."""
    x1_2 = apply_dihedral(x1_2, finish["flip1"], finish["rot1"])
    x2_2 = apply_dihedral(x2_2, finish["flip2"], finish["rot2"])
    w = finish["mix_w"].to(x1_1.device).view(-1, 1, 1, 1)
    mix = w * x1_1 + (1 - w) * x2_1
    out = {k: normalize(v, cfg.modality) for k, v in zip(VIEW_KEYS, (x1_1, x1_2, x2_1, x2_2, mix))}
    out.update(finish)
    return out


def collate_views(samples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack unbatched view dicts into a batch."""
    if not samples:
        raise ValueError("collate_views needs at least one sample")
    return {k: torch.stack([s[k] for s in samples]) for k in samples[0]}
