"""Procedural, seeded generators of colour fundus photographs and chest radiographs.

No labelled medical data can be downloaded where ldisc is developed, so tests, demos, the
data loader and the "synthetic twins" of the downstream segmentation tasks use these
images. Each sample comes with exact masks and landmarks, transformed with the image.

    >>> from ldisc.synth import generate
    >>> sample = generate("fundus", seed=3, size=256)
    >>> sample.image.shape, sorted(sample.masks)
    ((256, 256, 3), ['cup', 'disc', 'exudate', 'haemorrhage', 'vessel'])
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from ._common import check_seed, check_size
from .fundus import FUNDUS_LANDMARKS, FUNDUS_MASKS, render_fundus
from .sites import FUNDUS_SITES, XRAY_SITES
from .xray import XRAY_LANDMARKS, XRAY_MASKS, render_xray

MODALITIES: tuple[str, ...] = ("fundus", "xray")
MASKS: dict[str, tuple[str, ...]] = {"fundus": FUNDUS_MASKS, "xray": XRAY_MASKS}
LANDMARKS: dict[str, tuple[str, ...]] = {"fundus": FUNDUS_LANDMARKS, "xray": XRAY_LANDMARKS}
SITES: dict[str, tuple[str, ...]] = {
    "fundus": tuple(site.name for site in FUNDUS_SITES),
    "xray": tuple(site.name for site in XRAY_SITES),
}
LESION_PROBABILITY = 0.5  # fundus: chance of exudates/haemorrhages when lesions=None
PNEUMOTHORAX_PROBABILITY = 0.3  # X-ray: chance of a pneumothorax when pneumothorax=None

__all__ = [
    "LANDMARKS",
    "MASKS",
    "MODALITIES",
    "SITES",
    "SynthSample",
    "generate",
    "generate_many",
    "sample_seed",
    "to_pil",
]


@dataclass
class SynthSample:
    """One generated image with its exact annotations.

    ``masks`` holds every name in ``MASKS[modality]`` (bool HxW, possibly all False);
    ``landmarks`` every name in ``LANDMARKS[modality]`` as (x, y) pixel coordinates.
    ``generate(modality, seed, size)`` with the same arguments gives identical bytes.
    """

    image: np.ndarray  # uint8, HxWx3 for fundus, HxW for xray
    masks: dict[str, np.ndarray]
    landmarks: dict[str, tuple[float, float]]
    modality: str
    seed: int
    site: int = field(default=0)  # index into SITES[modality]: the acquisition look used


def _check_modality(modality: object) -> str:
    if modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}; expected one of {', '.join(MODALITIES)}")
    return str(modality)


def generate(
    modality: str,
    seed: int,
    size: int = 512,
    lesions: bool | None = None,
    pneumothorax: bool | None = None,
    site: int | None = None,
) -> SynthSample:
    """Generate one ``size`` x ``size`` image of ``modality`` ("fundus" or "xray").

    ``lesions`` (fundus: hard exudates and haemorrhages/microaneurysms) and ``pneumothorax``
    (X-ray) are drawn at random when None, else forced on or off; the option of the other
    modality is ignored. ``site`` picks the acquisition look (index into ``SITES``), random
    when None. Raises ValueError for an unknown modality, a bad size, seed or site.
    """
    modality = _check_modality(modality)
    size, seed = check_size(size), check_seed(seed)
    rng = np.random.default_rng(seed)
    if modality == "fundus":
        with_lesions = bool(rng.random() < LESION_PROBABILITY) if lesions is None else lesions
        image, masks, landmarks, site_index = render_fundus(rng, size, bool(with_lesions), site)
    else:
        with_ptx = rng.random() < PNEUMOTHORAX_PROBABILITY if pneumothorax is None else pneumothorax
        image, masks, landmarks, site_index = render_xray(rng, size, bool(with_ptx), site)
    return SynthSample(image, masks, landmarks, modality, seed, site_index)


def sample_seed(seed: int, index: int) -> int:
    """The seed of sample ``index`` of the stream started by ``seed`` (via SeedSequence).

    It depends only on (seed, index), so a sample is the same whatever the stream length,
    and ``generate(modality, sample_seed(seed, i))`` regenerates it alone.
    """
    sequence = np.random.SeedSequence(check_seed(seed), spawn_key=(int(index),))
    return int(sequence.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def generate_many(
    modality: str,
    n: int,
    size: int = 512,
    seed: int = 0,
    lesions: bool | None = None,
    pneumothorax: bool | None = None,
    site: int | None = None,
) -> Iterator[SynthSample]:
    """Yield ``n`` samples; sample i is ``generate(modality, sample_seed(seed, i), size, ...)``."""
    _check_modality(modality)
    check_size(size)
    check_seed(seed)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    for index in range(int(n)):
        yield generate(modality, sample_seed(seed, index), size, lesions, pneumothorax, site)


def to_pil(sample: SynthSample) -> Image.Image:
    """The sample's image as a Pillow image ("RGB" for fundus, "L" for X-ray)."""
    return Image.fromarray(sample.image)
