"""``ldisc-shard stats`` and ``verify`` exit 0 every time on a good dataset (an intermittent SIGABRT at
interpreter exit was seen when torch was imported beside pyarrow), and non-zero with a message on a dataset
that does not exist. Default: 10 runs of each; the slow variant runs 50."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from _data_fixtures import SECRET, gray_image, write_image
from sharding.ingest import IngestOptions, ingest


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("exit")
    for i in range(6):
        write_image(root / "src" / f"a{i:03d}.png", gray_image(i, (40, 32)))
    ingest(IngestOptions(source=str(root / "src"), dataset=str(root / "ds"), site="s", modality="xray", stored_side=32,
                         shard_samples=4, progress=False, quarantine_report=str(root / "q.jsonl")), SECRET.encode())
    return root / "ds"


def _repeat(dataset: Path, runs: int) -> dict[str, list[int]]:
    import subprocess

    from _data_fixtures import REPO, cli_env

    codes: dict[str, list[int]] = {"stats": [], "verify": []}
    for _ in range(runs):
        for command in codes:
            out = subprocess.run([sys.executable, "-m", "sharding.cli", command, str(dataset)], cwd=REPO,
                                 env=cli_env(), capture_output=True, text=True, timeout=120)
            codes[command].append(out.returncode)
    return codes


def test_stats_and_verify_exit_zero_10_times(tiny_dataset):
    codes = _repeat(tiny_dataset, 10)
    assert codes == {"stats": [0] * 10, "verify": [0] * 10}


@pytest.mark.slow
def test_stats_and_verify_exit_zero_50_times(tiny_dataset):
    codes = _repeat(tiny_dataset, 50)
    assert codes == {"stats": [0] * 50, "verify": [0] * 50}


def test_ldisc_shard_does_not_import_torch():
    import subprocess

    from _data_fixtures import REPO, cli_env

    code = "import sys, sharding.cli, sharding.verify; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=cli_env(), capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr
