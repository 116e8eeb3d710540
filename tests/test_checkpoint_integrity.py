"""Checkpoints you can trust: every file is covered by a checksum manifest written last, a flipped byte
in the optimizer state is detected before loading, and ``train.resume=auto`` falls back past a truncated
newest checkpoint (saying which and why) instead of crash-looping. Real checkpoints of a real run."""
from __future__ import annotations

import json
import logging
import shutil

import pytest

from ldisc.train import pretrain
from ldisc.train.checkpoint import list_checkpoints, resolve_resume
from ldisc.train.checkpoint_integrity import MANIFEST, verify
from _train_helpers import tiny_steps


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("integrity")
    pretrain(tiny_steps(run_dir, 3, 0, 1))
    return run_dir


def _optimizer_file(ckpt):
    """DeepSpeed's file holding the optimizer state (its own file under ZeRO, in the model states at stage 0)."""
    found = sorted(p for p in ckpt.rglob("*optim*") if p.is_file()) or sorted(ckpt.rglob("mp_rank_*_model_states.pt"))
    assert found, sorted(ckpt.rglob("*"))
    return found[0]


def test_manifest_covers_every_file_of_every_checkpoint(run):
    ckpts = list_checkpoints(run)
    assert len(ckpts) == 3
    for ckpt in ckpts:
        listed = json.loads((ckpt / MANIFEST).read_text())["files"]
        on_disk = {p.relative_to(ckpt).as_posix() for p in ckpt.rglob("*") if p.is_file() and p.name != MANIFEST}
        assert set(listed) == on_disk and "COMPLETE" in listed and "meta.json" in listed
        assert verify(ckpt) == []


def test_a_flipped_byte_in_the_optimizer_state_is_detected(run, tmp_path):
    ckpt = tmp_path / "step"
    shutil.copytree(list_checkpoints(run)[-1], ckpt)
    target = _optimizer_file(ckpt)
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    problems = verify(ckpt)
    assert problems == [f"{target.relative_to(ckpt).as_posix()}: SHA-256 mismatch (corrupted)"]
    with pytest.raises(ValueError, match="fails verification"):
        resolve_resume(str(ckpt), tmp_path)


def test_resume_auto_falls_back_past_a_truncated_newest_checkpoint(run, tmp_path, caplog):
    run_dir = tmp_path / "run"
    shutil.copytree(run, run_dir)
    newest = list_checkpoints(run_dir)[-1]
    target = _optimizer_file(newest)
    target.write_bytes(target.read_bytes()[:100])
    with caplog.at_level(logging.WARNING, logger="ldisc.train.checkpoint_integrity"):
        result = pretrain(tiny_steps(run_dir, 4, 0, 1, "train.resume=auto"))
    assert any(str(newest) in r.getMessage() and "truncated" in r.getMessage() for r in caplog.records)
    resumes = [json.loads(line) for line in (run_dir / "resumes.jsonl").read_text().splitlines()]
    assert resumes[-1]["step"] == 2 and resumes[-1]["checkpoint"].endswith("step_0000002")
    assert [r["step"] for r in result.losses] == [1, 2, 3, 4]
    assert verify(list_checkpoints(run_dir)[-1]) == []
