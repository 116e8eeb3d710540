"""Reading shape-guided segmentations out of a stage-2 LD network, and a classical baseline.

Readouts (``--readout``):

- ``mask0``: cluster mask 0 (the one the shape-prior discriminator shaped), ≥ ``threshold``
  (0.5: cluster 0 holds the majority of the pixel's soft assignment).
- ``prototype``: per pixel p, softmax over clusters k of e(p) · c_k / τ (τ = 0.2, the region
  temperature) with c_k the stored region centres (``objective.prototypes`` of the checkpoint when
  the run kept them, else the centres of the images being segmented: normalise(mean_b r_bk),
  r_bk = normalise(mean_p e(p) · m_k(p))); probability of cluster 0 ≥ ``threshold``.

Fundus images: only pixels inside the field of view (the shared preprocessing's rule,
:func:`ldisc.preprocess.field_of_view_mask`) can be foreground. Masks come back at each input's size.

``threshold``: a number (default 0.5, the plain reading of "threshold mask 0") or ``"otsu"`` — per
image, Otsu's threshold of the foreground probability over the pixels inside the field of view
(relative to what the network outputs on that image: a briefly trained mask 0 stays near 1/K
everywhere, and a fixed 0.5 then reads out nothing).
The baseline :func:`frangi_otsu` is a Frangi vesselness filter (dark ridges of the green channel)
thresholded by Otsu's method inside the field of view (scikit-image).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ldisc.apps.model_io import embed, to_input
from ldisc.model import LDNet
from ldisc.objectives.region import region_features
from ldisc.preprocess import NoFieldOfView, field_of_view_mask

READOUTS = ("mask0", "prototype")
OTSU = "otsu"


def parse_threshold(value: str | float) -> float | str:
    """``"otsu"`` or a number in (0, 1); anything else is a ValueError."""
    if str(value).lower() == OTSU:
        return OTSU
    t = float(value)
    if not 0 < t < 1:
        raise ValueError(f"threshold must be in (0, 1) or 'otsu', got {value!r}")
    return t


def binarize(prob: np.ndarray, inside: np.ndarray, threshold: float | str) -> np.ndarray:
    """prob ≥ threshold inside the field of view; ``"otsu"``: Otsu's threshold of prob over the FOV."""
    if threshold == OTSU:
        from skimage.filters import threshold_otsu

        values = prob[inside]
        if values.size == 0 or values.max() <= values.min():
            return np.zeros(prob.shape, bool)
        threshold = threshold_otsu(values)
        return inside & (prob > threshold)
    return inside & (prob >= threshold)


def fov(rgb: np.ndarray, modality: str = "fundus") -> np.ndarray:
    """Field of view of a fundus image (bool H×W); everything for other modalities."""
    if modality != "fundus":
        return np.ones(rgb.shape[:2], bool)
    try:
        return field_of_view_mask(rgb)
    except NoFieldOfView:
        return np.ones(rgb.shape[:2], bool)


def batch_centres(emb: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """(K, D) region centres of a batch: normalise(mean over images of the region features)."""
    return F.normalize(region_features(emb, masks).mean(0), dim=1)


def cluster0_probability(emb: torch.Tensor, masks: torch.Tensor, readout: str,
                         centres: torch.Tensor | None = None, tau: float = 0.2) -> torch.Tensor:
    """(N, D, S, S) embeddings, (N, K, S, S) masks → (N, S, S) foreground probability of ``readout``."""
    if readout == "mask0":
        return masks[:, 0]
    if readout == "prototype":
        c = centres.to(emb) if centres is not None else batch_centres(emb, masks)
        return torch.softmax(torch.einsum("ndhw,kd->nkhw", emb, c) / tau, dim=1)[:, 0]
    raise ValueError(f"readout must be one of {READOUTS}, got {readout!r}")


@torch.no_grad()
def segment(net: LDNet, images: list[np.ndarray], readout: str = "mask0", size: int = 256,
            threshold: float | str = 0.5, centres: torch.Tensor | None = None, modality: str = "fundus",
            batch: int = 8) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(binary masks, probabilities), each at its image's size, for uint8 H×W×3 images."""
    if net.cluster is None:
        raise ValueError("this checkpoint has no clustering branch (a stage-1 model): segment needs stage 2")
    x = torch.cat([to_input(im, size) for im in images])
    emb, masks = embed(net, x, batch)
    prob = cluster0_probability(emb, masks, readout, centres)
    out_masks, out_probs = [], []
    for im, p in zip(images, prob):
        h, w = im.shape[:2]
        full = F.interpolate(p[None, None].cpu(), size=(h, w), mode="bilinear", align_corners=False)[0, 0].numpy()
        inside = fov(im, modality)
        full = full * inside
        out_masks.append(binarize(full, inside, threshold))
        out_probs.append(full)
    return out_masks, out_probs


def frangi_otsu(rgb: np.ndarray, modality: str = "fundus") -> np.ndarray:
    """Classical unsupervised vessel baseline: Frangi vesselness of the green channel's dark ridges,
    Otsu threshold over the field of view (the FOV rim, a bright edge, is eroded away first)."""
    from scipy import ndimage
    from skimage.filters import frangi, threshold_otsu

    green = rgb[..., 1].astype(np.float64) / 255.0 if rgb.ndim == 3 else rgb / 255.0
    inside = fov(rgb, modality)
    rim = max(2, round(0.02 * max(rgb.shape[:2])))
    core = ndimage.binary_erosion(inside, iterations=rim) if inside.any() else inside
    scale = max(rgb.shape[:2]) / 512
    sigmas = np.linspace(1.0, 4.0, 4) * max(scale, 0.25)
    v = frangi(np.where(inside, green, green[inside].mean() if inside.any() else 0), sigmas=sigmas, black_ridges=True)
    v = np.where(core, v, 0)
    if not core.any() or v[core].max() <= 0:
        return np.zeros(rgb.shape[:2], bool)
    return core & (v > threshold_otsu(v[core]))
