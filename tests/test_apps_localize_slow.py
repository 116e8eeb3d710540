"""ldisc-localize on a briefly LD-pretrained model recovers the generator's planted landmarks (optic
disc centre, fovea) on unseen synthetic fundus images better than the learning-free intensity baseline
(normalised cross-correlation around the template landmark), by mean radial error.

Slow: it pretrains its own model (stage 1, center-sensitive pooling, 64 px, 50 steps of batch 4).
"""
from __future__ import annotations

import pytest

from ldisc.eval.apptasks import execute_app_run
from ldisc.eval.runs import RunSpec, resolve_checkpoint
from ldisc.train import pretrain


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_localize_beats_ncc_after_brief_pretraining(tmp_path):
    result = pretrain(["data.modality=fundus", "data.image_size=80", "data.size=64", "data.pool=64",
                       "train.stage1_steps=50", "train.stage2_steps=0", "train.batch_size=4",
                       "train.checkpoint_every=50", "objective.patch_pooling=center", "train.progress=false",
                       f"run_dir={tmp_path}"])
    ref = resolve_checkpoint(str(result.checkpoint))
    mre = {}
    for method in ("center", "ncc"):
        rows = [execute_app_run(RunSpec(ref, "synth_fundus_landmarks", method, seed, {},
                                        {"size": 128, "max_test": 16}))[0] for seed in (0, 1)]
        mre[method] = sum(r["mre_pct"] for r in rows) / len(rows)
    print(f"\nMRE (% of width): LD center {mre['center']:.2f}, NCC {mre['ncc']:.2f}")
    assert mre["center"] < mre["ncc"], mre
