"""Pretraining helps: a briefly LD-pretrained encoder beats random init on synthetic vessel and optic-disc twins.

The encoder comes from this test's own short pretraining (``ldisc.train.pretrain``, stage 1 only, on
generated fundus images at 64 px); both encoders then go through the fleet's frozen protocol (in one
process, ``serial=True``) on the twins of RITE vessels and IDRiD optic disc with 16 labelled images,
over several seeds. The margins (mean test Dice of LD minus random init) are printed.
"""
from __future__ import annotations

import time

import numpy as np
import pytest

from ldisc.eval import ResultsStore, evaluate
from ldisc.eval.report import summarise, win_lines

TASKS = ["synth_rite_vessel@16", "synth_idrid_disc@16"]


def _pretrain(run_dir, stage1: int, stage2: int) -> tuple[str, float]:
    from ldisc.train import pretrain

    t0 = time.perf_counter()
    result = pretrain(["data.modality=fundus", "data.image_side=80", "data.view_side=64", "data.pool=64",
                       f"train.stage1_steps={stage1}", f"train.stage2_steps={stage2}", "train.batch_size=4",
                       f"train.checkpoint_every={stage1 + stage2}", "train.progress=false", f"run_dir={run_dir}"])
    return str(result.encoder_path.parent), time.perf_counter() - t0


def _margins(out, protocols) -> dict[tuple[str, str], tuple[float, float]]:
    rows = ResultsStore(out).rows("ok")
    means = {}
    for task in TASKS:
        for proto in protocols:
            for ck in ("random", "ld"):
                vals = [r["dice_mean"] for r in rows if r["task"] == task and r["protocol"] == proto
                        and (r["checkpoint"] == "random") == (ck == "random")]
                means[(task, proto, ck)] = float(np.mean(vals))
    return {(t, p): (means[(t, p, "random")], means[(t, p, "ld")]) for t in TASKS for p in protocols}


def _check(tmp_path, stage1, stage2, protocols, seeds, epochs):
    ckpt, pretrain_s = _pretrain(tmp_path / "pretrain", stage1, stage2)
    t0 = time.perf_counter()
    table = evaluate(checkpoints=["random", ckpt], tasks=TASKS, protocols=protocols, seeds=seeds,
                     out_dir=str(tmp_path / "eval"), serial=True,
                     overrides=["protocol=ldisc", f"protocol.epochs_frozen={epochs}", "protocol.epochs_finetune=10",
                                "protocol.device=cpu", "data.max_test=16", "fleet.progress=false"])
    eval_s = time.perf_counter() - t0
    assert table.num_rows == 2 * len(TASKS) * len(protocols) * len(seeds)
    margins = _margins(tmp_path / "eval", protocols)
    print(f"\npretraining {stage1}+{stage2} steps: {pretrain_s:.0f} s; evaluation of {table.num_rows} runs: {eval_s:.0f} s")
    for (task, proto), (rand, ld) in margins.items():
        print(f"  {task:22s} {proto:8s} random {rand:.3f}  LD {ld:.3f}  margin {ld - rand:+.3f}")
    print("  " + "; ".join(win_lines(summarise(tmp_path / "eval", overlays_per_task=0))))
    return margins


def test_ld_pretraining_beats_random_init_in_the_frozen_protocol(tmp_path):
    margins = _check(tmp_path, stage1=40, stage2=0, protocols=["frozen"], seeds=[0, 1, 2], epochs=15)
    # The authors' Kaiming-initialised random baseline is stronger than PyTorch's default init was: measured
    # margins +0.016 (vessel) and +0.033 (disc) with the two-function NCE, +0.016 and +0.014 with the shared
    # tiled kernel (same loss; fp32 rounding moves a 40-step run). LD must win every task, by 0.01 on average.
    for (task, _), (rand, ld) in margins.items():
        assert ld > rand, f"{task}: LD {ld:.3f} does not beat random init {rand:.3f}"
    assert np.mean([ld - rand for rand, ld in margins.values()]) > 0.01, margins


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_ld_pretraining_beats_random_init_longer(tmp_path):
    margins = _check(tmp_path, stage1=150, stage2=50, protocols=["frozen", "finetune"], seeds=[0, 1, 2], epochs=20)
    frozen = {task: m for (task, proto), m in margins.items() if proto == "frozen"}
    assert sorted(frozen) == sorted(TASKS)
    for task, (rand, ld) in frozen.items():
        assert ld > rand + 0.05, f"{task}: LD {ld:.3f} does not beat random init {rand:.3f}"
    # fine-tuning moves both encoders, so the gap narrows (docs/eval.md: +0.141 vessel, +0.060 disc after
    # 100 steps); LD must not fall behind on any task and must win on average
    finetune = {task: m for (task, proto), m in margins.items() if proto == "finetune"}
    assert sorted(finetune) == sorted(TASKS)
    for task, (rand, ld) in finetune.items():
        assert ld > rand - 0.02, f"{task}: fine-tuned LD {ld:.3f} falls behind random init {rand:.3f}"
    assert np.mean([ld - rand for rand, ld in finetune.values()]) > 0.0, finetune
