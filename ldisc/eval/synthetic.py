"""Synthetic twins of the paper's tasks, drawn from the procedural generator ``ldisc.synth``.

A twin segments the same structure in the same modality as its real task. Its images are fixed:
image i of the training split is ``generate(modality, seed=base + i)`` and of the test split
``generate(modality, seed=base + TEST_OFFSET + i)``, with ``base`` fixed per twin and far from the
small seeds a pretraining run draws, so that no test image was seen in pretraining. The exudate twin
forces lesions and the pneumothorax twin forces a pneumothorax in every image (so that every test
image has something to find). Images are generated directly at the input size. The training split
mirrors the real one's size unless a few-label variant asks for more (``synth_stare_vessel@16``
generates 16 though STARE trains on 10): the generator is not limited.
"""
from __future__ import annotations

from functools import lru_cache, partial

import numpy as np

from ldisc.eval.dataio import Item
from ldisc.eval.tasks import TWIN_TASKS, Task

SEED_BASE = 900_000_000
SEEDS_PER_TWIN = 1_000_000
TEST_OFFSET = 500_000
FORCE = {"exudate": {"lesions": True}, "pneumothorax": {"pneumothorax": True}}


def twin_seed_base(task: Task) -> int:
    """First seed of a twin's training split (fixed per twin; few-label variants share it)."""
    return SEED_BASE + TWIN_TASKS.index(task.base_name) * SEEDS_PER_TWIN


@lru_cache(maxsize=4096)
def _generate(modality: str, seed: int, size: int, force: tuple[tuple[str, bool], ...]):
    from ldisc.synth import generate  # imported late: only twins need the generator

    return generate(modality, seed, size=size, **dict(force))


def _load_twin_image(modality: str, structure: str, seed: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    sample = _generate(modality, seed, size, tuple(sorted(FORCE.get(structure, {}).items())))
    if structure not in sample.masks:
        raise KeyError(f"the {modality} generator makes no {structure!r} mask (it makes {sorted(sample.masks)})")
    return np.asarray(sample.image), np.asarray(sample.masks[structure], dtype=bool)


def read_twin(task: Task, size: int) -> dict[str, list[Item]]:
    """Items of a twin's train and test splits, generated at ``size`` pixels when loaded."""
    if task.twin_of is None:
        raise ValueError(f"{task.name} is not a synthetic twin")
    base = twin_seed_base(task)

    def items(first_seed: int, n: int, prefix: str) -> list[Item]:
        return [Item(f"{prefix}{first_seed + i}", partial(_load_twin_image, task.modality, task.structure,
                                                          first_seed + i, size)) for i in range(n)]

    n_train = max(task.n_train_full, task.n_train or 0)  # a few-label twin may ask for more than the real set has
    return {"train": items(base, n_train, "seed"), "test": items(base + TEST_OFFSET, task.n_test, "seed")}
