"""Loading a task's images into tensors: adapter → (labelled subset) → train/val/test tensors.

``splits="paper"`` (the authors'): the training list in name order; a data fraction ``task@P%`` keeps its
first ``int(P/100 · n)`` images and ``task@N`` its first N; the validation split is the first
``int(val_fraction · n)`` (at least one) of those, the rest train. ``splits="ldisc"``: the labelled
images are the first N of a fixed shuffle (``split_seed + 1``) and the validation split is 20%
(rounded, at least one) of another fixed shuffle (``split_seed``). Either way every seed and
checkpoint sees the same split. Fundus images are cropped to the field of view first when
``fundus_crop="fov"``. Images that fail to load are skipped and counted.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import torch

from ldisc.eval import adapters_fundus, adapters_xray
from ldisc.eval.dataio import Item, to_tensors
from ldisc.eval.synthetic import read_twin
from ldisc.eval.tasks import Task

log = logging.getLogger(__name__)

ADAPTERS: dict[str, Callable[..., dict[str, list[Item]]]] = {  # (root, structure, splits=) → items
    "idrid": adapters_fundus.read_idrid,
    "rite": adapters_fundus.read_rite,
    "stare": adapters_fundus.read_stare,
    "chase": adapters_fundus.read_chase,
    "hrf": adapters_fundus.read_hrf,
    "drishti": adapters_fundus.read_drishti,
    "siim": adapters_xray.read_siim,
    "jsrt_scr": adapters_xray.read_jsrt_scr,
}


@dataclass
class Split:
    """Images (N, 3, S, S) in [0, 1], masks (N, 1, S, S) in {0, 1}, and the images' names."""

    x: torch.Tensor
    y: torch.Tensor
    names: list[str]

    def __len__(self) -> int:
        return len(self.names)


@dataclass
class TaskData:
    task: Task
    size: int
    train: Split
    val: Split
    test: Split
    skipped: list[str] = field(default_factory=list)  # "name: reason" of images that failed to load


SPLITS = ("paper", "ldisc")
FUNDUS_CROPS = ("fov", "pad")


def task_items(task: Task, roots: Mapping[str, str | None], size: int, splits: str = "paper") -> dict[str, list[Item]]:
    """The adapter's train and test items for ``task`` (the root folder comes from ``roots``)."""
    if task.adapter == "synthetic":
        return read_twin(task, size)
    root = roots.get(task.root_key) if roots else None
    if not root:
        raise FileNotFoundError(f"task {task.name} reads {task.dataset}: set data.roots.{task.root_key} "
                                f"to the dataset folder (or use its synthetic twin synth_{task.base_name})")
    root = Path(str(root)).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"data.roots.{task.root_key} = {root} is not a folder")
    return ADAPTERS[task.adapter](root, task.structure, splits=splits)


def preflight(tasks: list[Task], roots: Mapping[str, str | None] | None, size: int | None = None,
              splits: str = "paper") -> None:
    """Check before any run starts that every task's files are where the config says and the few-label
    sizes fit, so that a wrong path is one clear error instead of a fleet of failed runs."""
    for task in tasks:
        items = task_items(task, roots or {}, int(size or task.input_size), splits)
        if task.n_train is not None and task.n_train > len(items["train"]):
            raise ValueError(f"task {task.name}: asks for {task.n_train} labelled images, "
                             f"the training split of {task.dataset} has {len(items['train'])}")


def _shuffled(items: list[Item], seed: int) -> list[Item]:
    order = np.random.default_rng(seed).permutation(len(items))
    return [items[i] for i in order]


def _stack(items: list[Item], size: int, skipped: list[str], fov_crop: bool = False,
           mask_threshold: float = 0.5) -> Split:
    xs, ys, names = [], [], []
    for item in items:
        try:
            image, mask = item.load()
            x, y = to_tensors(image, mask, size, fov_crop, mask_threshold)
        except (OSError, ValueError, KeyError) as err:
            log.warning("skipping %s: %s", item.name, err)
            skipped.append(f"{item.name}: {err}")
            continue
        xs.append(x), ys.append(y), names.append(item.name)
    if not xs:
        return Split(torch.zeros(0, 3, size, size), torch.zeros(0, 1, size, size), [])
    return Split(torch.stack(xs), torch.stack(ys), names)


def split_train_val(items: list[Item], n_labelled: int | None, val_fraction: float, split_seed: int,
                    splits: str = "paper", fraction: float | None = None) -> tuple[list[Item], list[Item]]:
    """Choose the labelled training images (few-label regime, data fraction) and carve the validation split out of them."""
    if splits not in SPLITS:
        raise ValueError(f"splits must be one of {SPLITS}, got {splits!r}")
    items = sorted(items, key=lambda it: it.name)
    if fraction is not None:
        n_labelled = int(fraction * len(items))
    if n_labelled is not None:
        if n_labelled > len(items):
            raise ValueError(f"asked for {n_labelled} labelled images, the training split has {len(items)}")
        items = items[:n_labelled] if splits == "paper" else _shuffled(items, split_seed + 1)[:n_labelled]
    if len(items) < 2:
        raise ValueError(f"need at least 2 training images (train + validation), have {len(items)}")
    if splits == "paper":  # the authors: val = training_list[:int(0.2 n)], train = the rest
        n_val = min(len(items) - 1, max(1, int(val_fraction * len(items))))
    else:
        n_val = min(len(items) - 1, max(1, int(round(val_fraction * len(items)))))
        items = _shuffled(items, split_seed)
    return items[n_val:], items[:n_val]


def load_task_data(task: Task, roots: Mapping[str, str | None] | None = None, size: int | None = None,
                   val_fraction: float = 0.2, max_test: int | None = None, split_seed: int = 0,
                   splits: str = "paper", fundus_crop: str = "fov", mask_threshold: float = 0.3) -> TaskData:
    """Read, subsample, crop/pad, resize and split a task's images (defaults: the paper protocol's;
    ``ProtocolConfig.data_options()`` gives a protocol's)."""
    if fundus_crop not in FUNDUS_CROPS:
        raise ValueError(f"fundus_crop must be one of {FUNDUS_CROPS}, got {fundus_crop!r}")
    size = int(size or task.input_size)
    items = task_items(task, roots or {}, size, splits)
    train_items, val_items = split_train_val(items["train"], task.n_train, val_fraction, split_seed, splits,
                                             task.fraction)
    test_items = sorted(items["test"], key=lambda it: it.name)[: max_test or None]
    skipped: list[str] = []
    prep = {"fov_crop": task.modality == "fundus" and fundus_crop == "fov", "mask_threshold": mask_threshold}
    data = TaskData(task, size, _stack(train_items, size, skipped, **prep), _stack(val_items, size, skipped, **prep),
                    _stack(test_items, size, skipped, **prep), skipped)
    for name in ("train", "val", "test"):
        if len(getattr(data, name)) == 0:
            raise ValueError(f"task {task.name}: no usable {name} images ({len(skipped)} skipped: {skipped[:3]})")
    return data
