"""The Prometheus textfiles of pretraining, evaluation and ingestion follow one set of conventions
(:mod:`ldisc.metrics`): checked with prometheus_client's parser everywhere, and with ``promtool check
metrics`` where the Debian package ``prometheus`` is installed. Two runs' files share one
node-exporter textfile folder without a clash."""
from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from ldisc.eval.monitor import FleetMonitor
from ldisc.metrics import textfile_name
from ldisc.objectives.diagnostics import ClusterStats
from ldisc.train.metrics import TrainMetrics
from sharding.metrics import IngestMetrics
from _prom import families, lint, promtool, promtool_check, series, value


def _train(run: str, rank: int, folder: Path) -> Path:
    m = TrainMetrics(rank, run=run)
    for step in (1, 2, 3):
        m.observe_step(0.5, 0.1, 20, {"patch": 7.0, "total": 9.0}, stage=1, step=step)
    m.set_bank_fill(0.5)
    m.observe_checkpoint(0.2, 3)
    m.observe_validation(1.5, 1.4)
    m.observe_bad_samples(["shard-000001.tar"])
    m.observe_clusters(ClusterStats(crispness=0.3, effective_count=3.0, area_share=[0.5, 0.5], dice={"vessel": 0.2}))
    m.mark_success()
    path = folder / textfile_name("train", run, rank)
    m.write(path)
    return path


def _eval(run: str, folder: Path) -> Path:
    path = folder / textfile_name("eval", run)
    mon = FleetMonitor(3, path, progress=False, run=run)
    mon.skipped(1)
    mon.started()
    mon.retried()          # the first attempt died; the same run again:
    mon.started()
    mon.finished(True, 4.0)
    mon.started()
    mon.finished(False, 2.0)
    mon.succeeded()
    mon.close()
    return path


def _ingest(site: str, folder: Path) -> Path:
    m = IngestMetrics()
    m.bind(site, "fundus", "/data/ds")
    for seconds in (0.01, 0.02, 0.03):
        m.observe_input(seconds, 1000)
    m.quarantine("corrupt_image")
    m.duplicate()
    m.finish(SimpleNamespace(added=1, shard_bytes=5000, shards_written=1, seconds=0.2, version=4))
    path = folder / textfile_name("shard", f"ds-{site}")
    m.write(path)
    return path


@pytest.fixture
def textfiles(tmp_path) -> list[Path]:
    """Two pretraining runs (two ranks each), two eval runs, two ingests: one node-exporter folder."""
    folder = tmp_path / "textfile_collector"
    files = [_train(run, rank, folder) for run in ("ld-fundus", "ld-xray") for rank in (0, 1)]
    files += [_eval(run, folder) for run in ("eval-a", "eval-b")]
    files += [_ingest(site, folder) for site in ("h1", "h2")]
    return files


def test_textfiles_follow_the_conventions(textfiles):
    assert len({p.name for p in textfiles}) == len(textfiles) == 8      # one file per run (and rank)
    for path in textfiles:
        text = path.read_text()
        assert lint(text) == [], (path.name, lint(text))
        assert "_created" not in text and "per_second" not in text


def test_two_runs_in_one_folder_do_not_collide(textfiles):
    per_file = [series(p.read_text()) for p in textfiles]
    union = set().union(*per_file)
    assert len(union) == sum(len(s) for s in per_file)
    a, b = textfiles[0].read_text(), textfiles[2].read_text()
    assert value(a, "ldisc_train_images_total", run="ld-fundus", rank="0") == 60
    assert value(b, "ldisc_train_images_total", run="ld-xray", rank="0") == 60


def test_counters_and_gauges_say_what_happened(textfiles):
    train, ev, ingest = (p.read_text() for p in (textfiles[0], textfiles[4], textfiles[6]))
    assert value(train, "ldisc_train_steps_total", rank="0") == 3
    assert value(train, "ldisc_train_step", rank="0") == 3
    assert value(train, "ldisc_train_step_duration_seconds_count", rank="0") == 3
    assert value(train, "ldisc_train_data_wait_duration_seconds_sum", rank="0") == pytest.approx(0.3)
    assert value(train, "ldisc_train_checkpoint_step", rank="0") == 3
    assert value(train, "ldisc_train_last_success_timestamp_seconds", rank="0") > 1.7e9
    # eval: each planned run counts once by its final outcome; the retry is counted apart
    outcomes = {s: value(ev, "ldisc_eval_runs_total", status=s) for s in ("done", "failed", "skipped")}
    assert outcomes == {"done": 1, "failed": 1, "skipped": 1} and sum(outcomes.values()) == 3
    assert value(ev, "ldisc_eval_run_retries_total") == 1
    assert value(ev, "ldisc_eval_run_duration_seconds_count") == 2
    assert value(ev, "ldisc_eval_runs_running") == 0
    # ingest: quarantined carries run/site/modality like the other counters, plus its reason
    assert value(ingest, "ldisc_shard_quarantined_total", run="ds-h1", site="h1", modality="fundus",
                 reason="corrupt_image") == 1
    assert value(ingest, "ldisc_shard_inputs_total", site="h1") == 3
    assert value(ingest, "ldisc_shard_ingest_duration_seconds", site="h1") == pytest.approx(0.2)


def test_lint_catches_each_breach():
    """The lint is not vacuous: each convention, broken once, is reported."""
    bad = "\n".join([
        "# HELP ldisc_x_images_per_second a rate", "# TYPE ldisc_x_images_per_second gauge",
        'ldisc_x_images_per_second{run="a"} 1.0',
        "# HELP ldisc_x_step_seconds step time", "# TYPE ldisc_x_step_seconds gauge", 'ldisc_x_step_seconds{run="a"} 1.0',
        "# HELP ldisc_x_items items", "# TYPE ldisc_x_items counter", "ldisc_x_items_total 1.0",
        "# HELP ldisc_x_effective_count a count", "# TYPE ldisc_x_effective_count gauge",
        'ldisc_x_effective_count{run="a"} 2.0',
        'ldisc_x_items_created{run="a"} 1.7e9', ""])
    problems = "\n".join(lint(bad))
    for words in ("precomputed rate", "durations are", "no run label", "_created series", "belong to histograms",
                  "no *_last_success_timestamp_seconds"):
        assert words in problems, problems


@pytest.mark.skipif(promtool() is None, reason="promtool not installed (Debian package prometheus)")
def test_promtool_checks_every_textfile(textfiles):
    for path in textfiles:
        proc = promtool_check(path)
        assert proc.returncode == 0 and not proc.stdout.strip() and not proc.stderr.strip(), (path.name, proc)


def test_readme_metrics_table_names_what_the_processes_export(textfiles):
    """README "Metrics": the table lists exactly the exported names (``ldisc_cluster_*`` as a prefix)
    and the textfile names the code writes."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    table = [line for line in section.splitlines() if line.startswith("| ")]
    found = re.findall(r"\b(ldisc_[a-z_]+)(\*?)(?=[`{])", "\n".join(table[2:]))   # `name`, `name{…}`, `prefix_*`
    listed, prefixes = {n for n, star in found if not star}, {n for n, star in found if star}
    exported = {f.name + ("_total" if f.type == "counter" else "")
                for p in textfiles for f in families(p.read_text())}
    assert len(listed) >= 30 and prefixes == {"ldisc_cluster_"}
    assert listed == {n for n in exported if not any(n.startswith(p) for p in prefixes)}
    assert all(any(n.startswith(p) for n in exported) for p in prefixes)
    assert (textfile_name("train", "RUN", 3), textfile_name("eval", "RUN")) == ("ldisc_train_RUN_rank3.prom",
                                                                               "ldisc_eval_RUN.prom")
    for name in ("ldisc_train_<run>_rank<R>.prom", "ldisc_eval_<run>.prom", "metrics.rank<R>.prom", "metrics.prom",
                 "--metrics-file"):
        assert name in section, name
