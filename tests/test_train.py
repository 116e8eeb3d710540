"""The DeepSpeed trainer in one process (Python API): files of a run, exports, schedule, exact resume,
stage 2 from a stage-1 checkpoint, clear errors. Also the helpers the multi-process tests share."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ldisc
from ldisc.train import pretrain
from ldisc.train.checkpoint import list_checkpoints

REPO = Path(__file__).resolve().parents[1]

# A run small enough for 2 shared CPU cores: tiny VGG, 32 px views, one pair per rank and step.
TINY = ["data.source=noise", "data.size=32", "data.image_size=48", "data.pool=8", "train.batch_size=1",
        "model.clusters=4", "train.progress=false", "threads=1"]
TIMING_KEYS = ("seconds", "images_per_s")


def losses_without_timing(run_dir: Path) -> list[dict]:
    lines = (Path(run_dir) / "losses.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS} for line in lines]


def sample_log(run_dir: Path, rank: int) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / f"samples.rank{rank}.jsonl").read_text().splitlines()]


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LDISC_FAULT", "RANK", "WORLD_SIZE",
                                                                    "LOCAL_RANK", "MASTER_"))}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), DS_BUILD_OPS="0", **extra)
    return env


def start_torchrun(overrides: list[str], port: int, nproc: int = 2, nnodes: int = 1, node_rank: int = 0,
                   max_restarts: int = 0, env: dict | None = None) -> subprocess.Popen:
    """One torchrun agent running ``ldisc.train.cli`` (output captured)."""
    from launcher.local import TorchrunSpec, torchrun_command

    spec = TorchrunSpec(nproc, nnodes, node_rank, f"127.0.0.1:{port}", f"test-{port}", max_restarts)
    return subprocess.Popen(torchrun_command(spec, overrides), cwd=REPO, env=env or cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, timeout: float = 240) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return out


def _steps(run_dir: Path, s1: int, s2: int, every: int, *extra: str) -> list[str]:
    return [*TINY, f"run_dir={run_dir}", f"train.stage1_steps={s1}", f"train.stage2_steps={s2}",
            f"train.checkpoint_every={every}", "train.keep_checkpoints=10", *extra]


# lr halved every 2 steps; a memory bank fed by an EMA key encoder (both must resume exactly)
REF_EXTRA = ("train.lr_halve_every=2", "bank.size=512", "bank.ema_momentum=0.5")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted single-process run: 3 stage-1 + 2 stage-2 steps."""
    run_dir = tmp_path_factory.mktemp("ref")
    result = pretrain(_steps(run_dir, 3, 2, 2, *REF_EXTRA))
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
    result = pretrain(_steps(resumed, 3, 2, 2, *REF_EXTRA, "train.resume=auto"))
    assert losses_without_timing(resumed) == losses_without_timing(run_dir)
    assert sample_log(resumed, 0) == sample_log(run_dir, 0)
    assert [r["step"] for r in result.losses] == [1, 2, 3, 4, 5]
    resumes = [json.loads(x) for x in (resumed / "resumes.jsonl").read_text().splitlines()]
    assert resumes[-1]["step"] == 3


def test_stage2_from_stage1_checkpoint(reference, tmp_path):
    run_dir, _ = reference
    stage1 = run_dir / "checkpoints" / "step_0000003"
    result = pretrain(_steps(tmp_path / "s2", 0, 2, 2, f"train.init_from={stage1}"))
    assert [r["stage"] for r in result.losses] == [2, 2]
    with pytest.raises(FileNotFoundError, match="init_from"):
        pretrain(_steps(tmp_path / "bad", 0, 1, 1, f"train.init_from={tmp_path}"))


@pytest.mark.parametrize("override, message", [
    ("engine.zero_stage=5", "zero_stage"),
    ("engine.precision=fp8", "precision"),
    ("data.source=bogus", "data.source"),
    ("train.lr_halve_every=0", "lr_halve_every"),
])
def test_bad_config_is_a_clear_error(tmp_path, override, message):
    with pytest.raises(ValueError, match=message):
        pretrain(_steps(tmp_path, 1, 0, 1, override))


def test_cli_prints_where_things_are(tmp_path):
    out = subprocess.run([sys.executable, "-m", "ldisc.train.cli", *_steps(tmp_path, 2, 0, 2)], cwd=REPO,
                         env=cli_env(), capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"checkpoint: {tmp_path}/checkpoints/step_0000002" in out.stdout
    assert "final total loss" in out.stdout
