"""Fault tolerance under torchrun: a rank is SIGKILLed mid-epoch, torchrun restarts the job, the job
resumes from the newest complete checkpoint and finishes with the same losses as an uninterrupted run
(bitwise on CPU) and the same samples per rank (none repeated, none skipped). And a crash *during a
save* leaves the previous checkpoint loadable."""
from __future__ import annotations

import json
import subprocess
import sys

from _train_helpers import REPO, TINY, cli_env, finish, losses_without_timing, sample_log, start_torchrun

from _drill import lost_and_duplicates, record
from ldisc.train.checkpoint import TMP_PREFIX, latest_checkpoint
from ldisc.train.env import free_port

# 3 stage-1 + 5 stage-2 steps, 2 ranks, a memory bank; checkpoints after steps 3, 6, 8.
def _overrides(run_dir) -> list[str]:
    return [*TINY, f"run_dir={run_dir}", "train.stage1_steps=3", "train.stage2_steps=5",
            "train.checkpoint_every=3", "train.keep_checkpoints=5", "bank.entries=256", "train.resume=auto",
            # training losses, data position and bank resume bitwise; the held-out validation loss after a
            # resume with a bank on differs in the 3rd digit (not yet bitwise), so it is off here
            "train.val_fraction=0"]


def test_kill_one_rank_mid_epoch_then_resume_exactly(tmp_path):
    ref, faulty = tmp_path / "ref", tmp_path / "faulty"
    # run both jobs at once: 2 × 2 single-thread ranks
    p_ref = start_torchrun(_overrides(ref), free_port())
    p_bad = start_torchrun(_overrides(faulty), free_port(), max_restarts=1,
                           env=cli_env(LDISC_FAULT_KILL_AT_STEP="7", LDISC_FAULT_KILL_RANK="1",
                                       LDISC_FAULT_LOG=str(tmp_path / "faults.jsonl")))
    finish(p_ref)
    out = finish(p_bad)
    assert "Signals.SIGKILL" in out or "exitcode: -9" in out, out[-3000:]
    resumes = [json.loads(x) for x in (faulty / "resumes.jsonl").read_text().splitlines()]
    assert resumes == [{**resumes[0], "step": 6, "world_size": 2, "restart_count": 1}]
    assert losses_without_timing(faulty) == losses_without_timing(ref)
    assert len(losses_without_timing(ref)) == 8
    for rank in (0, 1):
        seen = sample_log(faulty, rank)
        assert [r["step"] for r in seen] == list(range(1, 9))
        assert seen == sample_log(ref, rank)
    assert latest_checkpoint(faulty).name == "step_0000008"
    ids = [[k for rank in (0, 1) for r in sample_log(run, rank) for k in r["sample_ids"]] for run in (ref, faulty)]
    lost, dups = lost_and_duplicates(*ids)
    kill = json.loads((tmp_path / "faults.jsonl").read_text().splitlines()[0])
    record("kill_training_rank", samples_lost=lost, duplicates=dups, recover_s=round(resumes[0]["time"] - kill["time"], 1))


def test_crash_during_save_keeps_previous_checkpoint(tmp_path):
    overrides = [*TINY, f"run_dir={tmp_path}", "train.stage1_steps=4", "train.stage2_steps=0",
                 "train.checkpoint_every=2", "train.resume=auto"]
    cmd = [sys.executable, "-m", "ldisc.train.cli", *overrides]
    crashed = subprocess.run(cmd, cwd=REPO, env=cli_env(LDISC_FAULT_KILL_IN_SAVE="4"), capture_output=True,
                             text=True, timeout=240)
    assert crashed.returncode == -9, crashed.stderr[-3000:]
    assert latest_checkpoint(tmp_path).name == "step_0000002"
    half = list((tmp_path / "checkpoints").glob(f"{TMP_PREFIX}*"))
    assert [p.name for p in half] == [f"{TMP_PREFIX}step_0000004"] and (half[0] / "model.pt").exists()
    resumed = subprocess.run(cmd, cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert latest_checkpoint(tmp_path).name == "step_0000004"
    assert not list((tmp_path / "checkpoints").glob(f"{TMP_PREFIX}*"))
    steps = [r["step"] for r in losses_without_timing(tmp_path)]
    assert steps == [1, 2, 3, 4]
    lost, dups = lost_and_duplicates([1, 2, 3, 4], steps)
    record("kill_during_checkpoint_save", samples_lost=lost, duplicates=dups, unit="steps",
           resumed_from=json.loads((tmp_path / "resumes.jsonl").read_text().splitlines()[0])["step"])


def test_resume_on_fewer_ranks(tmp_path):
    """A job of 2 ranks checkpoints; the same run continues as 1 rank (ZeRO 0, the bank re-sharded)."""
    run = [*TINY, f"run_dir={tmp_path}", "train.stage1_steps=3", "train.checkpoint_every=3", "bank.entries=256"]
    finish(start_torchrun([*run, "train.stage2_steps=0"], free_port()))
    finish(start_torchrun([*run, "train.stage2_steps=2", "train.resume=auto"], free_port(), nproc=1))
    resumes = [json.loads(x) for x in (tmp_path / "resumes.jsonl").read_text().splitlines()]
    assert [(r["step"], r["world_size"]) for r in resumes] == [(3, 1)]
    assert [r["stage"] for r in losses_without_timing(tmp_path)] == [1, 1, 1, 2, 2]
    assert latest_checkpoint(tmp_path).name == "step_0000005"
