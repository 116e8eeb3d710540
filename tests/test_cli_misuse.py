"""Misuse of every console script gets one line that says what to change and exit status 2, never a
traceback: impossible pretraining values, missing datasets, missing checkpoints, files that are not
encoders, bad option values. Real subprocesses of the real entry points."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
PRETRAIN_TINY = ["data.source=noise", "data.view_side=32", "data.image_side=48", "train.progress=false"]


def _run(module: str, args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_"))}
    env |= {"PYTHONPATH": str(REPO), "LDISC_PATIENT_KEY_SECRET": "s" * 32}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)


def _assert_usage_error(out: subprocess.CompletedProcess, prog: str, *words: str) -> None:
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
    assert "Traceback" not in out.stderr, out.stderr[-2000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith(prog) and ": error:" in line]
    assert len(errors) == 1, out.stderr[-2000:]
    for word in words:
        assert word in errors[0], errors[0]


@pytest.mark.parametrize("override, words", [
    ("train.stage1_steps=-5", ["train.stage1_steps", "-5"]),
    ("train.batch_size=0", ["train.batch_size"]),
    ("train.lr=nan", ["train.lr", "nan"]),
    ("train.lr=inf", ["train.lr", "inf"]),
    ("data.view_side=40", ["data.view_side=40", "multiples of 16"]),
    ("train.resume=/nonexistent/ckpt", ["/nonexistent/ckpt"]),
    ("data=shards", ["no committed manifest"]),
    ("train.no_such_key=1", ["no_such_key"]),
    ("+train.no_such_key=1", ["unknown key train.no_such_key"]),
    ("train.batch_size=two", ["train.batch_size must be int", "two"]),
    ("train.progress=3", ["train.progress must be bool"]),
    ("engine.precision=fp8", ["engine.precision", "fp8"]),
    ("bank.ema_momentum=1.5", ["bank.ema_momentum", "1.5"]),
])
def test_pretrain_rejects_impossible_values(tmp_path, override, words):
    base = (["data=shards", "data.view_side=32", f"data.dataset={tmp_path / 'missing'}", "data.num_workers=0"]
            if override == "data=shards" else [*PRETRAIN_TINY])
    out = _run("ldisc.train.cli", [*base, f"run_dir={tmp_path / 'run'}", "train.stage1_steps=1",
                                   "train.stage2_steps=0", *([] if override == "data=shards" else [override])],
               tmp_path)
    _assert_usage_error(out, "ldisc-pretrain", *words)


def test_pretrain_with_zero_steps_everywhere_is_an_error(tmp_path):
    out = _run("ldisc.train.cli", [*PRETRAIN_TINY, f"run_dir={tmp_path / 'run'}", "train.stage1_steps=0",
                                   "train.stage2_steps=0"], tmp_path)
    _assert_usage_error(out, "ldisc-pretrain", "nothing to train")
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("case", ["missing", "not_an_encoder", "bad_override"])
def test_eval_misuse(tmp_path, case):
    if case == "missing":
        args, words = ["checkpoints=[/nonexistent/encoder.pt]"], ["/nonexistent/encoder.pt"]
    elif case == "not_an_encoder":
        bogus = tmp_path / "encoder.pt"
        torch.save({"optimizer": torch.zeros(3)}, bogus)
        args, words = [f"checkpoints=[{bogus}]"], ["not an ldisc encoder"]
    else:
        args, words = ["no_such_key=1"], ["no_such_key"]
    out = _run("ldisc.eval.cli", [*args, f"out_dir={tmp_path / 'eval'}", "fleet.mode=serial"], tmp_path)
    _assert_usage_error(out, "ldisc-eval", *words)
    assert not (tmp_path / "eval" / "results.parquet").exists()     # no run was started


@pytest.mark.parametrize("args, words", [
    (["verify", "{tmp}/missing"], ["no committed dataset"]),
    (["stats", "{tmp}/missing"], ["no committed dataset"]),
    (["ingest", "{tmp}/missing", "--dataset", "{tmp}/ds", "--site", "a", "--modality", "xray"], ["missing"]),
    (["ingest", "{tmp}", "--dataset", "{tmp}/ds", "--site", "a", "--modality", "ct"], ["--modality"]),
])
def test_shard_misuse(tmp_path, args, words):
    out = _run("sharding.cli", [a.format(tmp=tmp_path) for a in args], tmp_path)
    _assert_usage_error(out, "ldisc-shard", *words)


@pytest.mark.parametrize("args, words", [
    (["--modality", "xray", "--n", "0", "--out", "x"], ["--n"]),
    (["--modality", "xray", "--n", "1", "--size", "64", "--out", "/proc/ldisc-cannot-write"], ["/proc/ldisc-cannot-write"]),
])
def test_synth_misuse(tmp_path, args, words):
    out = _run("ldisc.synth.cli", args, tmp_path)
    _assert_usage_error(out, "ldisc-synth", *words)
