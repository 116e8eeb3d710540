"""``ldisc-launch ... --target local`` with real processes: pretraining under torchrun with
``launch.procs_per_node=2`` leaves a checkpoint, eval on a local Ray writes the results table, ingest lands
a manifest version (and re-ingesting adds nothing). The metrics those three runs export are scraped, and
every ``ldisc_*`` name the Grafana dashboard and the PrometheusRule use must be among them."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from launcher.k8s.assets import ALERTS, PANELS
from ldisc.data.manifest import latest_version
from ldisc.data.store import open_store
from ldisc.train.checkpoint import list_checkpoints
from _data_fixtures import SECRET, fundus_image, write_image
from _prom import lint, promtool, promtool_check, value
from _train_helpers import TINY, cli_env

REPO = Path(__file__).resolve().parents[1]
LAUNCH = [sys.executable, "-m", "launcher.cli"]


RAY_START_TIMEOUT = "The current node timed out during startup"    # Ray's fixed 30 s raylet registration


def _launch(*args: str, timeout: float = 300, attempts: int = 1) -> str:
    """``ldisc-launch ARGS`` as a real process; ``attempts`` > 1 retries only a local Ray that failed to
    come up (a loaded machine), never a failure of the launched command itself."""
    env = cli_env(LDISC_PATIENT_KEY_SECRET=SECRET, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_AUTH_MODE="disabled",
                  PYTHONUNBUFFERED="1")
    for attempt in range(attempts):
        proc = subprocess.run([*LAUNCH, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
        if proc.returncode == 0 or RAY_START_TIMEOUT not in proc.stderr:
            break
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def tmp(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("launch-local")


@pytest.fixture(scope="module")
def pretrain_run(tmp) -> Path:
    run = tmp / "run"
    _launch("pretrain", "--target", "local", "launch.procs_per_node=2", *TINY, f"run_dir={run}",
            "train.stage1_steps=2", "train.stage2_steps=0", "train.checkpoint_every=2", "bank=fifo", "bank.entries=16")
    return run


@pytest.fixture(scope="module")
def ingest_run(tmp) -> dict:
    drop, dataset, metrics = tmp / "drop", tmp / "dataset", tmp / "ingest.prom"
    for i in range(3):
        write_image(drop / f"p{i}.png", fundus_image((120, 100), center=(60, 50), radius=40, seed=i))
    (drop / "broken.png").write_bytes(b"not a png")          # a corrupt input: quarantined and counted
    ingest = ["ingest", "--target", "local", f"launch.ingest.source={drop}", f"launch.ingest.dataset={dataset}",
              "launch.ingest.site=h7", "launch.ingest.modality=fundus", "launch.ingest.stored_side=64",
              f"launch.ingest.metrics_file={metrics}"]
    return {"dataset": dataset, "metrics": metrics, "first": _launch(*ingest), "again": _launch(*ingest)}


@pytest.fixture(scope="module")
def eval_run(tmp) -> Path:
    out = tmp / "eval"
    _launch("eval", "--target", "local", "protocol=smoke", "protocol.epochs_frozen=2", "data.max_test=4",
            "ray.num_cpus=2", "fleet.progress=false", "protocols=[frozen]", "seeds=[0]", "checkpoints=[random]",
            "tasks=[synth_idrid_disc@8]", "report.enabled=false", f"out_dir={out}", attempts=2)
    return out


def test_pretrain_runs_two_processes_and_leaves_a_checkpoint(pretrain_run):
    run = pretrain_run
    assert sorted(p.name for p in run.glob("metrics.rank*.prom")) == ["metrics.rank0.prom", "metrics.rank1.prom"]
    ckpt = list_checkpoints(run)
    assert ckpt and ckpt[-1].name.endswith("2")
    steps = [json.loads(line)["step"] for line in (run / "losses.jsonl").read_text().splitlines()]
    assert steps == [1, 2]


def test_ingest_lands_a_manifest_version_and_reingest_adds_nothing(ingest_run):
    store = open_store(ingest_run["dataset"])
    assert "inputs 4  added 3  duplicates 0  quarantined 1  -> manifest version 1" in ingest_run["first"]
    assert "inputs 4  added 0  duplicates 3  quarantined 1  -> manifest version 1" in ingest_run["again"]
    assert latest_version(store) == 1
    text = ingest_run["metrics"].read_text()        # written by the second run
    assert value(text, "ldisc_shard_duplicates_total", run="dataset-h7", site="h7", modality="fundus") == 3


def test_eval_writes_the_results_table(eval_run):
    rows = pq.read_table(eval_run / "results.parquet").to_pylist()
    assert {(r["task"], r["protocol"], r["checkpoint"]) for r in rows} == {("synth_idrid_disc@8", "frozen", "random")}


def _exported(paths: list[Path]) -> set[str]:
    """Sample names in Prometheus text files (histograms give _bucket/_sum/_count, counters _total)."""
    names = set()
    for path in paths:
        for line in path.read_text().splitlines():
            if line and not line.startswith("#"):
                names.add(re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group(0))
    return names


def _textfiles(pretrain_run, ingest_run, eval_run) -> list[Path]:
    files = [*sorted(pretrain_run.glob("metrics.rank*.prom")), ingest_run["metrics"], eval_run / "metrics.prom"]
    assert len(files) == 4
    return files


def test_real_textfiles_follow_the_prometheus_conventions(pretrain_run, ingest_run, eval_run):
    """Every textfile the three real runs wrote passes the pure-Python lint."""
    for path in _textfiles(pretrain_run, ingest_run, eval_run):
        assert lint(path.read_text()) == [], (path, lint(path.read_text()))


@pytest.mark.skipif(promtool() is None, reason="promtool not installed (Debian package prometheus)")
def test_real_textfiles_pass_promtool(pretrain_run, ingest_run, eval_run):
    """The same files through ``promtool check metrics``."""
    for path in _textfiles(pretrain_run, ingest_run, eval_run):
        proc = promtool_check(path)
        assert proc.returncode == 0 and not (proc.stdout + proc.stderr).strip(), (path, proc)


def test_every_dashboard_and_alert_metric_is_exported_by_a_real_run(pretrain_run, ingest_run, eval_run):
    exported = _exported([*pretrain_run.glob("metrics.rank*.prom"), ingest_run["metrics"], eval_run / "metrics.prom"])
    used = {m for _, _, targets in PANELS for expr, _ in targets for m in re.findall(r"\bldisc_[a-z0-9_]+", expr)}
    used |= {m for _, expr, *_ in ALERTS for m in re.findall(r"\bldisc_[a-z0-9_]+", expr)}
    committed = (REPO / "k8s" / "grafana-dashboard.json").read_text() + (REPO / "k8s" / "prometheusrule.yaml").read_text()
    assert used == set(re.findall(r"\bldisc_[a-z0-9_]+", committed))
    assert len(used) >= 12 and used <= exported, sorted(used - exported)
