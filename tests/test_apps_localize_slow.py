"""ldisc-localize on a briefly LD-pretrained model recovers the generator's planted landmarks (optic
disc centre, fovea) on unseen synthetic fundus images: better than the same network at random init,
and better with the center-sensitive kernel than with the flat one. The learning-free intensity
baseline (NCC) is printed beside them: at this training budget it is still ahead (see
docs/applications.md for the figures).

Slow: it pretrains its own model (stage 1, center-sensitive pooling, 64 px, 50 steps of batch 4).
"""
from __future__ import annotations

import pytest

from ldisc.eval.apptasks import execute_app_run
from ldisc.eval.runs import RANDOM, RunSpec, resolve_checkpoint
from ldisc.train import pretrain


def _mre(checkpoint: str, method: str) -> float:
    ref = resolve_checkpoint(checkpoint)
    rows = [execute_app_run(RunSpec(ref, "synth_fundus_landmarks", method, seed, {},
                                    {"input_side": 128, "max_test": 16}))[0] for seed in (0, 1)]
    return sum(r["mre_pct"] for r in rows) / len(rows)


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_localize_after_brief_pretraining_beats_random_init_and_the_flat_kernel(tmp_path):
    result = pretrain(["data.modality=fundus", "data.image_side=80", "data.view_side=64", "data.pool=64",
                       "train.stage1_steps=50", "train.stage2_steps=0", "train.batch_size=4",
                       "train.checkpoint_every=50", "objective.patch_pooling=center", "train.progress=false",
                       f"run_dir={tmp_path}"])
    ld = str(result.checkpoint)
    mre = {"ld_center": _mre(ld, "center"), "ld_flat": _mre(ld, "flat"), "random_center": _mre(RANDOM, "center"),
           "ncc": _mre(RANDOM, "ncc")}
    print("\nMRE (% of width): " + ", ".join(f"{k} {v:.2f}" for k, v in mre.items()))
    assert mre["ld_center"] < mre["random_center"], mre
    assert mre["ld_center"] < mre["ld_flat"], mre
