"""Task registry, synthetic twins, splits and scores."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ldisc.eval import PAPER_TASKS, TWIN_TASKS, expand_tasks, get_task, load_task_data
from ldisc.eval.scores import dice_per_image, iou_per_image, radial_error, soft_dice_loss
from ldisc.eval.synthetic import TEST_OFFSET, twin_seed_base


def test_registry_holds_the_papers_twelve_tasks_and_their_twins():
    assert len(PAPER_TASKS) == 12 and len(TWIN_TASKS) == 12
    got = {(get_task(n).modality, get_task(n).structure) for n in PAPER_TASKS}
    assert got == {("fundus", "disc"), ("fundus", "vessel"), ("fundus", "cup"), ("fundus", "exudate"),
                   ("xray", "pneumothorax"), ("xray", "lung"), ("xray", "heart"), ("xray", "clavicle")}
    assert sum(get_task(n).structure == "vessel" for n in PAPER_TASKS) == 4
    for real, twin in zip(PAPER_TASKS, TWIN_TASKS):
        r, t = get_task(real), get_task(twin)
        assert (t.twin_of, t.modality, t.structure, t.adapter) == (real, r.modality, r.structure, "synthetic")
        assert r.metric == t.metric == "dice" and r.root_key and t.root_key is None


def test_task_sets_and_few_label_suffix():
    assert [t.name for t in expand_tasks(["synthetic@8"])] == [f"{n}@8" for n in TWIN_TASKS]
    tasks = expand_tasks(["synthetic_xray", "synth_jsrt_lung", "synth_jsrt_lung@32"])
    assert [t.name for t in tasks] == ["synth_siim_pneumothorax", "synth_jsrt_lung", "synth_jsrt_heart",
                                       "synth_jsrt_clavicle", "synth_jsrt_lung@32"]
    assert get_task("synth_jsrt_lung@32").n_train == 32 and get_task("synth_jsrt_lung").n_train is None
    with pytest.raises(KeyError, match="unknown task 'nope'"):
        get_task("nope")
    with pytest.raises(ValueError, match="few-label suffix"):
        get_task("synth_jsrt_lung@x")


def test_twin_splits_are_fixed_disjoint_and_annotated():
    task = get_task("synth_idrid_exudate@10")
    a = load_task_data(task, size=48, max_test=5)
    b = load_task_data(task, size=48, max_test=5)
    assert (len(a.train), len(a.val), len(a.test)) == (8, 2, 5)
    assert torch.equal(a.train.x, b.train.x) and a.val.names == b.val.names, "fixed, not re-drawn"
    base = twin_seed_base(task)
    seeds = {s: {int(n[4:]) for n in getattr(a, s).names} for s in ("train", "val", "test")}
    assert all(base <= x < base + TEST_OFFSET for x in seeds["train"] | seeds["val"])
    assert all(x >= base + TEST_OFFSET for x in seeds["test"]) and not seeds["train"] & seeds["val"]
    assert all(a.test.y[i].sum() > 0 for i in range(5)), "the exudate twin forces lesions"
    assert a.train.x.shape == (8, 3, 48, 48) and 0 <= a.train.x.min() and a.train.x.max() <= 1
    # a larger few-label set of the same twin draws from the same fixed training images
    assert set(load_task_data(get_task("synth_idrid_exudate@32"), size=48).test.names) >= set(a.test.names)
    assert get_task("synth_idrid_disc").input_side == 64
    # STARE has 10 training images; its twin generates as many as a few-label variant asks for
    stare = load_task_data(get_task("synth_stare_vessel@16"), size=32, max_test=2)
    assert len(stare.train) + len(stare.val) == 16


def test_dice_and_iou_conventions():
    target = torch.zeros(3, 1, 4, 4)
    target[0, 0, :2] = 1                    # 8 pixels
    target[1, 0, 0, 0] = 1
    prob = torch.zeros(3, 1, 4, 4)
    prob[0, 0, :1] = 0.9                    # 4 of the 8, nothing else
    prob[0, 0, 3] = 0.49                    # below the 0.5 threshold
    prob[1, 0, 3, 3] = 0.5                  # at the threshold counts as foreground
    dice, iou = dice_per_image(prob, target), iou_per_image(prob, target)
    assert dice.tolist() == pytest.approx([2 * 4 / 12, 0.0, 1.0])   # image 2: both empty → 1
    assert iou.tolist() == pytest.approx([4 / 8, 0.0, 1.0])
    assert float(soft_dice_loss(target, target)) == pytest.approx(0.0, abs=1e-6)
    np.testing.assert_allclose(radial_error([[0, 0], [3, 4]], [[0, 1], [0, 0]], pixel_spacing=0.5), [0.5, 2.5])
