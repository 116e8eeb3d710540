"""The platform files of ``k8s/``, rendered from Python like the per-job objects:

- ``namespace-rbac.yaml``: Namespace, the ``ldisc`` ServiceAccount, the least Role for apply/status/logs/delete;
- ``clustertrainingruntime.yaml``: the ClusterTrainingRuntime that ``launch.k8s.kind=trainjob`` references;
- ``prometheusrule.yaml``: alerts (no step for N minutes, NaN loss, restarts, failing eval runs);
- ``grafana-dashboard.json``: step time, images/s, losses, data wait, bank fill, corrupt samples, eval progress.

    python -m launcher.k8s.assets k8s/        # regenerate (tests check the committed files are current)
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from omegaconf import OmegaConf

from ldisc.config import compose

from .common import APP, meta, rbac_objects, yaml_stream
from .pretrain import cluster_training_runtime

STALL_MINUTES = 15
INGEST_STALE_HOURS = 48      # a scheduled (CronJob) ingest is expected at least this often

ALERTS = [
    ("LdiscTrainingStalled", f"sum by (namespace, pod) (increase(ldisc_train_steps_total[{STALL_MINUTES}m])) == 0",
     f"{STALL_MINUTES}m", "critical", f"No optimiser step in {STALL_MINUTES} minutes on {{{{ $labels.pod }}}}"),
    ("LdiscLossNaN", "count by (namespace, pod) (ldisc_train_loss != ldisc_train_loss) > 0",
     "1m", "critical", "A loss term of {{ $labels.pod }} is NaN"),
    ("LdiscTrainingRestarted", "sum by (namespace, pod) (resets(ldisc_train_steps_total[30m])) > 0",
     "0m", "warning", "Training process on {{ $labels.pod }} restarted (step counter reset) in the last 30 minutes"),
    ("LdiscEvalRunsFailing", "sum by (namespace, run) (increase(ldisc_eval_runs_total{status=\"failed\"}[30m])) > 0",
     "0m", "warning", "Evaluation runs of {{ $labels.run }} failed in the last 30 minutes"),
    ("LdiscIngestQuarantine", "sum by (namespace, site, reason) (increase(ldisc_shard_quarantined_total[1h])) > 100",
     "0m", "warning", "More than 100 inputs of site {{ $labels.site }} quarantined ({{ $labels.reason }}) in an hour"),
    ("LdiscIngestNotSucceeding", f"time() - max by (namespace, site) (ldisc_shard_last_success_timestamp_seconds) "
     f"> {INGEST_STALE_HOURS} * 3600", "0m", "warning",
     f"No ingest of site {{{{ $labels.site }}}} has ended well in {INGEST_STALE_HOURS} hours"),
]

PANELS = [  # (title, unit, [(PromQL, legend)])
    ("Step time (p50 / p95)", "s", [
        ("histogram_quantile(0.5, sum by (le) (rate(ldisc_train_step_duration_seconds_bucket[5m])))", "p50"),
        ("histogram_quantile(0.95, sum by (le) (rate(ldisc_train_step_duration_seconds_bucket[5m])))", "p95")]),
    ("Images / s", "none", [("sum by (run) (rate(ldisc_train_images_total[5m]))", "{{run}}: all ranks"),
                            ("rate(ldisc_train_images_total[5m])", "{{run}} rank {{rank}}")]),
    ("Losses", "none", [("avg by (term) (ldisc_train_loss)", "{{term}}")]),
    ("Data wait (share of step time)", "percentunit", [
        ("sum by (run) (rate(ldisc_train_data_wait_duration_seconds_sum[5m])) / "
         "sum by (run) (rate(ldisc_train_step_duration_seconds_sum[5m]))", "{{run}}")]),
    ("Memory-bank fill", "percentunit", [("avg(ldisc_train_bank_fill_ratio)", "fill")]),
    ("Step / newest checkpoint", "none", [("max by (run) (ldisc_train_step)", "{{run}}: step"),
                                          ("max by (run) (ldisc_train_checkpoint_step)", "{{run}}: checkpoint step"),
                                          ("max by (run) (ldisc_train_stage)", "{{run}}: stage")]),
    ("Resident memory", "bytes", [("ldisc_process_resident_memory_bytes", "rank {{rank}}")]),
    ("Ingest: samples, duplicates, corrupt", "none", [
        ("sum(increase(ldisc_shard_inputs_total[1h]))", "inputs"),
        ("sum(increase(ldisc_shard_samples_total[1h]))", "samples"),
        ("sum(increase(ldisc_shard_duplicates_total[1h]))", "duplicates"),
        ("sum by (reason) (increase(ldisc_shard_quarantined_total[1h]))", "corrupt: {{reason}}")]),
    ("Ingest: manifest version", "none", [("max(ldisc_shard_manifest_version)", "version")]),
    ("Eval progress", "none", [("sum by (status) (ldisc_eval_runs_total)", "{{status}}"),
                               ("sum(ldisc_eval_run_retries_total)", "retries"),
                               ("sum(ldisc_eval_runs_running)", "running")]),
    ("Eval run time (p50)", "s", [
        ("histogram_quantile(0.5, sum by (le) (rate(ldisc_eval_run_duration_seconds_bucket[30m])))", "p50")]),
    ("Time since last success", "s", [
        ("time() - max by (run) (ldisc_train_last_success_timestamp_seconds)", "train {{run}}"),
        ("time() - max by (run) (ldisc_eval_last_success_timestamp_seconds)", "eval {{run}}"),
        ("time() - max by (run) (ldisc_shard_last_success_timestamp_seconds)", "ingest {{run}}")]),
]


def prometheus_rule(namespace: str) -> dict:
    rules = [{"alert": name, "expr": expr, "for": wait, "labels": {"severity": severity},
              "annotations": {"summary": summary}} for name, expr, wait, severity, summary in ALERTS]
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
            "metadata": meta(APP, namespace, "platform", "platform"),
            "spec": {"groups": [{"name": "ldisc", "rules": rules}]}}


def dashboard() -> dict:
    panels = []
    for i, (title, unit, targets) in enumerate(PANELS):
        panels.append({"id": i + 1, "type": "timeseries", "title": title,
                       "datasource": {"type": "prometheus", "uid": "${datasource}"},
                       "gridPos": {"h": 8, "w": 12, "x": 12 * (i % 2), "y": 8 * (i // 2)},
                       "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                       "targets": [{"refId": chr(ord("A") + j), "expr": expr, "legendFormat": legend}
                                   for j, (expr, legend) in enumerate(targets)]})
    return {"title": "ldisc", "uid": "ldisc", "schemaVersion": 39, "tags": ["ldisc"], "time": {"from": "now-6h", "to": "now"},
            "templating": {"list": [{"name": "datasource", "type": "datasource", "query": "prometheus"}]},
            "panels": panels}


def platform_objects(namespace: str = "ldisc") -> dict[str, list[dict]]:
    """file name -> objects, from the default ``launch`` config."""
    launch = OmegaConf.to_container(compose(None, ["+launch=default"]).launch, resolve=True)
    launch["procs_per_node"] = 8       # the runtime declares metrics ports for up to 8 ranks per node
    return {"namespace-rbac.yaml": rbac_objects(namespace, launch["service_account"]),
            "clustertrainingruntime.yaml": [cluster_training_runtime(launch)],
            "prometheusrule.yaml": [prometheus_rule(namespace)]}


def files() -> dict[str, str]:
    out = {name: yaml_stream(objs) for name, objs in platform_objects().items()}
    out["grafana-dashboard.json"] = json.dumps(dashboard(), indent=1) + "\n"
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    out = Path(argv[0] if argv else "k8s")
    for name, text in files().items():
        (out / name).write_text(text)
        print(out / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
