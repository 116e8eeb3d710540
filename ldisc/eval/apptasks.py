"""Application tasks of the fleet: one-shot landmarks and shape-guided segmentation, read out of the
LD network itself (no downstream training), on fixed synthetic images.

- ``synth_fundus_landmarks`` / ``synth_xray_landmarks``: the template is ``generate(modality,
  base + seed)`` (so seeds vary the template), the test images ``generate(modality, base + TEST_OFFSET
  + i)``; landmarks from the generator. Methods (:data:`LANDMARK_METHODS`): ``center``
  (center-sensitive kernel on the LD embedding, coarse-to-fine: the paper's), ``flat`` (box kernel,
  same search), ``mirror`` (``center`` + the test-time mirror image), ``hypercolumn`` (``mirror`` on
  every encoder/decoder map), ``ncc`` (learning-free normalised cross-correlation of intensities).
  The network works at ``data.work_size`` px, by default the view size the checkpoint was trained
  at (its features are learnt at that scale; the random network: the image size); NCC at
  ``data.work_size`` or the image size. Scores: mean radial error (px, % of the image width),
  success within 2/4/8 % of the width.
- ``synth_fundus_vessel_unsup``: Dice of the readout (:data:`SEGMENT_METHODS`: ``mask0`` and
  ``prototype`` at threshold 0.5, ``mask0_otsu`` and ``prototype_otsu`` at Otsu's threshold inside
  the field of view; ``frangi`` = Frangi + Otsu baseline) against the generator's vessel masks, which
  no shape-guided run ever trains on; the network at ``data.work_size`` or its training view size.

The network is the checkpoint's full LD model (``model.pt`` beside the encoder file), or a randomly
initialised one for ``random``.
"""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import numpy as np
import torch

from ldisc.apps.landmarks import LocalizeConfig, Localizer, ncc_localize
from ldisc.apps.model_io import LoadedModel, load_ld_model, random_ld_model, recalibrate_bn, to_input
from ldisc.apps.segment import OTSU, frangi_otsu, segment
from ldisc.eval.runs import RANDOM, RunSpec, _now, base_row, protocol_columns, versions
from ldisc.eval.scores import dice_per_image, iou_per_image, landmark_scores
from ldisc.eval.synthetic import SEEDS_PER_TWIN, TEST_OFFSET, SEED_BASE
from ldisc.eval.tasks import APP_TASKS, Task, get_task

APP_SEED_BASE = SEED_BASE + 100 * SEEDS_PER_TWIN     # far from the twins' seeds and from pretraining's


def app_seed_base(task: Task) -> int:
    return APP_SEED_BASE + APP_TASKS.index(task.base_name) * SEEDS_PER_TWIN


def _samples(task: Task, first: int, n: int, size: int):
    from ldisc.synth import generate
    return [generate(task.modality, first + i, size=size) for i in range(n)]


def _n_test(spec: RunSpec, task: Task) -> int:
    return min(task.n_test, int(spec.data.get("max_test") or task.n_test))


def _rgb(image: np.ndarray) -> np.ndarray:
    return np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image


# readout and threshold of the segmentation methods (``frangi`` is the classical baseline)
SEGMENT_METHODS: dict[str, tuple[str, float | str]] = {
    "mask0": ("mask0", 0.5), "prototype": ("prototype", 0.5), "mask0_otsu": ("mask0", OTSU),
    "prototype_otsu": ("prototype", OTSU)}
# localizer settings of the landmark methods (``ncc`` is the learning-free baseline)
LANDMARK_METHODS: dict[str, dict] = {"center": {}, "flat": {"pooling": "mean"}, "mirror": {"mirror": True},
                                     "hypercolumn": {"mirror": True, "features": "hypercolumn"}}


def app_network(spec: RunSpec, clusters: int, images: list[np.ndarray], size: int) -> LoadedModel:
    """The checkpoint's LD network, or a random one (``random``; ``clusters`` for segmentation; its
    "view size" is ``size``) whose BatchNorm statistics are those of the task's images at ``size``
    (see :func:`recalibrate_bn`)."""
    if spec.checkpoint.path is None:
        net = random_ld_model(spec.data.get("random_width", "tiny"), clusters, spec.seed)
        net = recalibrate_bn(net, torch.cat([to_input(_rgb(im), size) for im in images]))
        return LoadedModel(net, "fundus", size, None, Path(RANDOM))
    return load_ld_model(Path(spec.checkpoint.path).parent)


def run_landmarks(spec: RunSpec, task: Task, size: int) -> tuple[dict, list]:
    base = app_seed_base(task)
    template = _samples(task, base + spec.seed, 1, size)[0]
    tests = _samples(task, base + TEST_OFFSET, _n_test(spec, task), size)
    images = [_rgb(s.image) for s in tests]
    truth = np.array([[s.landmarks[k] for k in template.landmarks] for s in tests])
    work = int(spec.data.get("work_size") or 0)
    if spec.protocol == "ncc":
        pred = np.stack(ncc_localize(_rgb(template.image), template.landmarks, images, work or size))
    else:
        model = app_network(spec, 0, [template.image, *images], work or size)
        cfg = LocalizeConfig(size=work or model.train_size, **LANDMARK_METHODS[spec.protocol])
        loc = Localizer(model.net, _rgb(template.image), template.landmarks, cfg)
        pred = np.stack([p.xy for p in loc.predict(images)])
    return landmark_scores(pred, truth, size) | {"n_test": len(tests), "n_train": 1}, []


def run_segmentation(spec: RunSpec, task: Task, size: int) -> tuple[dict, list]:
    tests = _samples(task, app_seed_base(task) + TEST_OFFSET, _n_test(spec, task), size)
    images = [s.image for s in tests]
    truth = torch.as_tensor(np.stack([s.masks[task.structure] for s in tests])).float()
    if spec.protocol == "frangi":
        masks = [frangi_otsu(im) for im in images]
    else:
        work = int(spec.data.get("work_size") or 0)
        model = app_network(spec, 8, images, work or size)
        readout, threshold = SEGMENT_METHODS[spec.protocol]
        masks, _ = segment(model.net, images, readout, work or model.train_size, threshold, model.prototypes)
    pred = torch.as_tensor(np.stack(masks)).float()
    dice, iou = dice_per_image(pred, truth), iou_per_image(pred, truth)
    overlays = [{"name": f"seed{app_seed_base(task) + TEST_OFFSET + i}", "image": images[i],
                 "truth": truth[i].numpy().astype(bool), "prob": (pred[i].numpy() * 255).astype(np.uint8)}
                for i in range(min(3, len(images)))]
    return {"dice_mean": float(dice.mean()), "dice_per_image": dice.tolist(), "iou_mean": float(iou.mean()),
            "iou_per_image": iou.tolist(), "n_test": len(tests), "n_train": 0}, overlays


def execute_app_run(spec: RunSpec) -> tuple[dict, list[dict]]:
    """One application run → (row, overlays), like :func:`ldisc.eval.runs.execute_run`."""
    task = get_task(spec.task)
    size = int(spec.data.get("input_side") or task.input_side)
    started, t0 = _now(), time.perf_counter()
    run = run_landmarks if task.metric == "mre" else run_segmentation
    scores, overlays = run(spec, task, size)
    row = base_row(spec) | scores | {
        "status": "ok", "n_val": 0, "n_skipped": 0, "input_size": size, "wall_s": time.perf_counter() - t0,
        "host": socket.gethostname(), "pid": os.getpid(), "device": "cpu",
        "versions": json.dumps(versions(), sort_keys=True), "started_at": started, "finished_at": _now(), "error": None}
    row |= protocol_columns(method=spec.protocol, input_size=size)
    return row, overlays
