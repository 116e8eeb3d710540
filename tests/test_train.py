"""The DeepSpeed trainer in one process (Python API): files of a run, exports, schedule, exact resume,
stage 2 from a stage-1 checkpoint, clear errors."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch

import ldisc
from ldisc.train import pretrain
from ldisc.train.checkpoint import list_checkpoints

from _train_helpers import REPO, cli_env, losses_without_timing, sample_log, tiny_steps

# lr halved every 2 steps; a memory bank fed by an EMA key encoder (both must resume exactly)
REF_EXTRA = ("train.lr_halve_every=2", "bank.entries=512", "bank.ema_momentum=0.5")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted single-process run: 3 stage-1 + 2 stage-2 steps."""
    run_dir = tmp_path_factory.mktemp("ref")
    result = pretrain(tiny_steps(run_dir, 3, 2, 2, *REF_EXTRA))
    return run_dir, result


def test_run_writes_checkpoints_logs_and_exports(reference):
    run_dir, result = reference
    assert [c.name for c in list_checkpoints(run_dir)] == ["step_0000002", "step_0000003", "step_0000004",
                                                           "step_0000005"]
    ck = result.checkpoint
    for name in ("COMPLETE", "meta.json", "trainer.pt", "rank_00000.pt", "data_rank_00000.json", "model.pt", "encoder.pt",
                 "encoder.safetensors", "ds/mp_rank_00_model_states.pt"):
        assert (ck / name).is_file(), name
    losses = result.losses
    assert [r["stage"] for r in losses] == [1, 1, 1, 2, 2]
    assert set(losses[-1]) >= {"patch", "mix", "region", "entropy", "total"}
    assert all(torch.isfinite(torch.tensor(r["total"])) for r in losses)
    # the paper's schedule from the generated DeepSpeed config: halved every 2 steps, fresh in stage 2
    assert [r["lr"] for r in losses] == [1e-3, 1e-3, 5e-4, 1e-3, 1e-3]
    ds = json.loads((run_dir / "ds_config.json").read_text())
    assert ds["scheduler"] == {"type": "StepLR", "params": {"step_size": 2, "gamma": 0.5}}
    assert ds["optimizer"]["params"]["torch_adam"] is True
    assert (run_dir / "loss_curve.png").stat().st_size > 1000
    # the encoder alone, as .pt and .safetensors, equals the encoder of the full model
    full = torch.load(ck / "model.pt", weights_only=True)
    for path in (result.encoder_path, ck / "encoder.safetensors"):
        enc = ldisc.load_encoder(path)
        for k, v in enc.state_dict().items():
            assert torch.equal(v, full[f"encoder.{k}"]), (path, k)
        # the self-describing header: this checkpoint's step, the fundus input contract, the config digest
        assert (enc.header.step, enc.header.modality, enc.header.in_channels) == (5, "fundus", 3), enc.header
        assert len(enc.header.config_digest) == 16 and enc.header.ldisc_version == ldisc.__version__


def test_resume_auto_is_bitwise_exact(reference, tmp_path):
    run_dir, _ = reference
    resumed = tmp_path / "resumed"
    shutil.copytree(run_dir, resumed)
    for late in ("step_0000004", "step_0000005"):       # as if the job died during step 4
        shutil.rmtree(resumed / "checkpoints" / late)
    result = pretrain(tiny_steps(resumed, 3, 2, 2, *REF_EXTRA, "train.resume=auto"))
    assert losses_without_timing(resumed) == losses_without_timing(run_dir)
    assert sample_log(resumed, 0) == sample_log(run_dir, 0)
    assert [r["step"] for r in result.losses] == [1, 2, 3, 4, 5]
    resumes = [json.loads(x) for x in (resumed / "resumes.jsonl").read_text().splitlines()]
    assert resumes[-1]["step"] == 3


def test_stage2_from_stage1_checkpoint(reference, tmp_path):
    run_dir, _ = reference
    stage1 = run_dir / "checkpoints" / "step_0000003"
    result = pretrain(tiny_steps(tmp_path / "s2", 0, 2, 2, f"train.init_from={stage1}"))
    assert [r["stage"] for r in result.losses] == [2, 2]
    with pytest.raises(FileNotFoundError, match="init_from"):
        pretrain(tiny_steps(tmp_path / "bad", 0, 1, 1, f"train.init_from={tmp_path}"))


@pytest.mark.parametrize("override, message", [
    ("engine.zero_stage=5", "zero_stage"),
    ("engine.precision=fp8", "precision"),
    ("data.source=bogus", "data.source"),
    ("train.lr_halve_every=0", "lr_halve_every"),
])
def test_bad_config_is_a_clear_error(tmp_path, override, message):
    with pytest.raises(ValueError, match=message):
        pretrain(tiny_steps(tmp_path, 1, 0, 1, override))


def test_cli_prints_where_things_are(tmp_path):
    out = subprocess.run([sys.executable, "-m", "ldisc.train.cli", *tiny_steps(tmp_path, 2, 0, 2)], cwd=REPO,
                         env=cli_env(), capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"checkpoint: {tmp_path}/checkpoints/step_0000002" in out.stdout
    assert "final total loss" in out.stdout
