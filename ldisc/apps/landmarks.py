"""One-shot landmark localization with center-sensitive averaging (the paper's application).

From ONE annotated template image:

1. Feature maps of the template and of every query image at ``size`` × ``size`` input pixels
   (:func:`ldisc.apps.model_io.feature_maps`): ``features="embedding"`` (default, the paper's) is the
   network's unit pixel embedding e(p); ``"hypercolumn"`` adds every encoder level and decoder stage.
2. The center-sensitive vector at every pixel of a map: c(p) = normalise(Σ_q w(q − p) f(q)), the map
   convolved with the weight kernel w of :func:`ldisc.objectives.patches.center_weights` (a Gaussian
   of σ·side pixels over a side × side window; side = the cell of the patch grid the network was
   trained with, size / grid, in the map's own pixels, rounded to odd). It is separable, so it
   costs two 1-D convolutions. ``pooling="mean"`` uses the flat box kernel instead.
3. Template vector t_k = c_template(landmark k) (bilinear between pixels); similarity map
   s_k(p) = t_k · c_query(p) (cosine: both are unit vectors). With several maps (hypercolumn) each
   map's channels are first centred (minus the image's mean over pixels: ReLU features are all
   positive) and s_k is the mean of the maps' cosines, each upsampled (bilinear) to size × size.
   The prediction is the argmax of s_k.
4. Coarse-to-fine (``levels`` > 1): the next level repeats 2–3 with a kernel half as wide, its argmax
   searched only within one previous-level side of the previous estimate. The wide kernel sees
   context (where in the eye a pixel lies); the narrow one sharpens the peak.
5. ``mirror``: the query's mirror image is scored too (its map mirrored back) and each pixel keeps
   the better score — for left and right eyes, whose anatomy is mirrored, under one template.

Coordinates are (x, y) in the pixels of each original image (pixel centres at integers).
The learning-free baseline :func:`ncc_localize` does the same search with normalised
cross-correlation of grey intensities around the template landmark.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ldisc.apps.model_io import FEATURES, feature_maps, to_input
from ldisc.model import LDNet
from ldisc.objectives.patches import center_profile


@dataclass
class LocalizeConfig:
    size: int = 256            # working resolution (the network sees size × size inputs)
    grid: int = 8              # the patch grid of pretraining: kernel side = size / grid
    sigma: float = 0.25        # center-sensitive Gaussian, in units of the kernel side
    pooling: str = "center"    # center | mean (flat average, for comparison)
    levels: int = 2            # coarse-to-fine levels (1: the argmax of the first map only)
    batch: int = 8             # images per forward pass
    features: str = "embedding"  # embedding (the paper's) | hypercolumn (+ every encoder/decoder map)
    mirror: bool = False       # also score the query's mirror image (left/right eyes), keep the better


def kernel_side(size: int, grid: int, level: int = 0, minimum: int = 3) -> int:
    """Odd kernel side of a level: the patch cell (size / grid) halved per level, at least ``minimum``."""
    side = max(minimum, round(size / grid / 2 ** level))
    return side if side % 2 else side + 1


def kernel_profile(side: int, pooling: str, sigma: float) -> torch.Tensor:
    """1-D factor of the separable pooling kernel over ``side`` pixels (sums to 1)."""
    if pooling == "center":
        return center_profile(side, sigma)
    if pooling == "mean":
        return torch.full((side,), 1.0 / side)
    raise ValueError(f"pooling must be 'center' or 'mean', got {pooling!r}")


def pooled_map(emb: torch.Tensor, profile: torch.Tensor) -> torch.Tensor:
    """(N, D, H, W) unit embeddings → unit center-sensitive embeddings at every pixel (same size).

    Separable convolution with ``outer(profile, profile)``, zero padding outside the image.
    """
    n, d, h, w = emb.shape
    k = profile.numel()
    p = profile.to(emb)
    x = F.conv2d(emb.reshape(n * d, 1, h, w), p.view(1, 1, k, 1), padding=(k // 2, 0))
    x = F.conv2d(x, p.view(1, 1, 1, k), padding=(0, k // 2))
    return F.normalize(x.view(n, d, h, w), dim=1)


def vectors_at(maps: torch.Tensor, points: torch.Tensor, size: int | None = None) -> torch.Tensor:
    """(1, D, h, w) map, (K, 2) (x, y) points in size × size working pixels (default: the map's own)
    → (K, D) unit vectors, bilinear between pixel centres (exact at integer points of a full-size map)."""
    size = size or maps.shape[-1]
    g = ((points.to(maps) + 0.5) / size * 2 - 1).view(1, -1, 1, 2)
    v = F.grid_sample(maps, g, mode="bilinear", padding_mode="border", align_corners=False)
    return F.normalize(v[0, :, :, 0].T, dim=1)


def similarity(maps: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """(N, D, H, W) unit maps, (K, D) unit vectors → (N, K, H, W) cosine similarity."""
    return torch.einsum("ndhw,kd->nkhw", maps, vectors)


def argmax_xy(sim: torch.Tensor, centre: torch.Tensor | None = None,
              radius: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K, H, W) scores → ((N, K, 2) (x, y) of each map's maximum, (N, K) maximum).

    With ``centre`` (N, K, 2) and ``radius``, only pixels within the square of that radius around
    the centre compete. Ties go to the first pixel in row-major order.
    """
    n, k, h, w = sim.shape
    if centre is not None:
        ys = torch.arange(h, device=sim.device).view(1, 1, h, 1)
        xs = torch.arange(w, device=sim.device).view(1, 1, 1, w)
        inside = ((xs - centre[..., 0, None, None]).abs() <= radius) & ((ys - centre[..., 1, None, None]).abs() <= radius)
        sim = sim.masked_fill(~inside, float("-inf"))
    score, index = sim.flatten(2).max(-1)
    return torch.stack([index % w, index // w], -1).to(sim.dtype), score


def to_map(xy: np.ndarray, shape: tuple[int, int], size: int) -> np.ndarray:
    """(x, y) in an image of ``shape`` (H, W) → (x, y) in the size × size working map."""
    scale = np.array([size / shape[1], size / shape[0]])
    return (np.asarray(xy, dtype=float) + 0.5) * scale - 0.5


def from_map(uv: np.ndarray, shape: tuple[int, int], size: int) -> np.ndarray:
    scale = np.array([shape[1] / size, shape[0] / size])
    return (np.asarray(uv, dtype=float) + 0.5) * scale - 0.5


@dataclass
class Prediction:
    xy: np.ndarray          # (K, 2) in the image's pixels
    score: np.ndarray       # (K,) cosine similarity at the final level
    heat: torch.Tensor      # (K, size, size) similarity maps of the first (coarse) level


class Localizer:
    """Template vectors of one annotated image; :meth:`predict` finds them in query images."""

    def __init__(self, net: LDNet, template: np.ndarray, landmarks: dict[str, tuple[float, float]],
                 cfg: LocalizeConfig | None = None):
        self.net, self.cfg = net, cfg or LocalizeConfig()
        c = self.cfg
        if not landmarks:
            raise ValueError("no landmarks given for the template")
        if c.features not in FEATURES:
            raise ValueError(f"features must be one of {FEATURES}, got {c.features!r}")
        self.names = list(landmarks)
        self.points = torch.as_tensor(to_map(np.array([landmarks[k] for k in self.names]), template.shape[:2], c.size))
        maps = self._maps(to_input(template, c.size))
        # per coarse-to-fine level, per feature map: (1-D kernel profile, (K, D) template vectors)
        self.kernels = []
        for level in range(c.levels):
            per_map = {}
            for name, m in maps.items():
                profile = self._profile(m.shape[-1], level)
                per_map[name] = (profile, vectors_at(pooled_map(m, profile.to(m)), self.points.to(m), c.size))
            self.kernels.append(per_map)

    def _maps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        maps = feature_maps(self.net, x, self.cfg.features, self.cfg.batch)
        if self.cfg.features == "hypercolumn":         # centre each map's channels per image
            maps = {k: v - v.mean((2, 3), keepdim=True) for k, v in maps.items()}
        return maps

    def _profile(self, width: int, level: int) -> torch.Tensor:
        c = self.cfg
        side = kernel_side(width, c.grid, level, 3 if width == c.size else 1)
        return kernel_profile(side, c.pooling, c.sigma)

    def _similarity(self, maps: dict[str, torch.Tensor], level: int) -> torch.Tensor:
        """(N, K, size, size): mean over feature maps of the cosine with the template vectors."""
        size, total = self.cfg.size, 0
        for name, (profile, vectors) in self.kernels[level].items():
            sim = similarity(pooled_map(maps[name], profile.to(maps[name])), vectors)
            if sim.shape[-1] != size:
                sim = F.interpolate(sim, size=(size, size), mode="bilinear", align_corners=False)
            total = total + sim
        return total / len(self.kernels[level])

    @torch.no_grad()
    def predict(self, images: list[np.ndarray]) -> list[Prediction]:
        """Landmarks of each uint8 H×W×3 image (one batch: sizes may differ)."""
        c = self.cfg
        x = torch.cat([to_input(im, c.size) for im in images])
        maps = self._maps(x)
        mirrored = self._maps(x.flip(-1)) if c.mirror else None
        centre, score, heat = None, None, None
        for level in range(c.levels):
            sim = self._similarity(maps, level)
            if mirrored is not None:
                sim = torch.maximum(sim, self._similarity(mirrored, level).flip(-1))
            radius = None if centre is None else kernel_side(c.size, c.grid, level - 1)
            centre, score = argmax_xy(sim, centre, radius)
            heat = sim if heat is None else heat
        return [Prediction(from_map(centre[i].cpu().numpy(), im.shape[:2], c.size), score[i].cpu().numpy(),
                           heat[i].cpu()) for i, im in enumerate(images)]


def grey(rgb: np.ndarray, size: int) -> torch.Tensor:
    """uint8 H×W(×3) → (1, 1, size, size) float luminance in [0, 1]."""
    x = torch.as_tensor(np.asarray(rgb, dtype=np.float32) / 255.0)
    x = x.mean(-1) if x.ndim == 3 else x
    return F.interpolate(x[None, None], size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def ncc_maps(template: torch.Tensor, points: torch.Tensor, query: torch.Tensor, side: int) -> torch.Tensor:
    """Normalised cross-correlation of the side × side template patches at ``points`` (K, 2) over
    ``query`` (N, 1, H, W) → (N, K, H, W) in [−1, 1] (reflect padding at the borders)."""
    r = side // 2
    padded = F.pad(template, (r, r, r, r), mode="reflect")
    xs, ys = points[:, 0].round().long(), points[:, 1].round().long()
    patches = torch.stack([padded[0, 0, y:y + side, x:x + side] for x, y in zip(xs.tolist(), ys.tolist())])
    patches = patches - patches.mean((1, 2), keepdim=True)
    patches = patches / patches.flatten(1).norm(dim=1).clamp_min(1e-8).view(-1, 1, 1)
    q = F.pad(query, (r, r, r, r), mode="reflect")
    num = F.conv2d(q, patches[:, None])                                   # Σ I·T0 (T0 sums to 0)
    n = side * side
    s1 = F.avg_pool2d(q, side, stride=1) * n
    s2 = F.avg_pool2d(q * q, side, stride=1) * n
    spread = (s2 - s1 * s1 / n).clamp_min(0).sqrt()
    return num / spread.clamp_min(1e-6)


def ncc_localize(template: np.ndarray, landmarks: dict[str, tuple[float, float]], images: list[np.ndarray],
                 size: int = 256, side: int | None = None) -> list[np.ndarray]:
    """Learning-free baseline: per image the (K, 2) argmax of :func:`ncc_maps` (default patch side:
    two patch cells of the 8×8 grid, made odd)."""
    side = side or kernel_side(size, 4)
    pts = torch.as_tensor(to_map(np.array(list(landmarks.values())), template.shape[:2], size))
    t = grey(template, size)
    out = []
    for im in images:
        xy, _ = argmax_xy(ncc_maps(t, pts, grey(im, size), side))
        out.append(from_map(xy[0].numpy(), im.shape[:2], size))
    return out
