"""Helpers of the trainer tests: the tiny run's overrides, its logs, and torchrun agents as real processes."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# A run small enough for 2 shared CPU cores: tiny VGG, 32 px views, one pair per rank and step.
TINY = ["data.source=noise", "data.view_side=32", "data.image_side=48", "data.pool=8", "train.batch_size=1",
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


def tiny_steps(run_dir: Path, s1: int, s2: int, every: int, *extra: str) -> list[str]:
    return [*TINY, f"run_dir={run_dir}", f"train.stage1_steps={s1}", f"train.stage2_steps={s2}",
            f"train.checkpoint_every={every}", "train.keep_checkpoints=10", *extra]
