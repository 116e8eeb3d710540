"""Optional experiment tracking: TensorBoard event files and an MLflow run, beside the JSONL logs.

Config (``logging`` in ``configs/pretrain.yaml`` and ``configs/eval.yaml``)::

    logging.tensorboard=true                      event files in <run_dir>/tensorboard/ (needs `tensorboard`)
    logging.mlflow.tracking_uri=file:/abs/mlruns  an MLflow run (any tracking URI; needs `mlflow-skinny`;
                                                  a file: store sets MLFLOW_ALLOW_FILE_STORE=true for you)
    logging.mlflow.experiment=ldisc               the experiment the run goes into

Pretraining logs every optimiser step's losses, ``step_seconds`` and ``images_per_s`` (the records of
``losses.jsonl``); evaluation logs the Dice table, one metric per (task, protocol, checkpoint):
``dice/<task>/<protocol>/<checkpoint>`` (mean over seeds) and ``dice_std/…``. Both get the resolved
config (``config.yaml``) and ``run.json`` as artifacts and the overrides as parameters.
Off by default; only rank 0 tracks. ``pip install 'ldisc[tracking]'`` brings both packages.
"""
from __future__ import annotations

import math
import os
import re
import time
from pathlib import Path

from omegaconf import DictConfig

TENSORBOARD_DIR = "tensorboard"
FILE_STORE_OPT_IN = "MLFLOW_ALLOW_FILE_STORE"           # MLflow ≥ 3.x refuses a file: store without it
_NOT_IN_KEY = re.compile(r"[^A-Za-z0-9_\-./ ]")       # what MLflow accepts in a metric name
STEP_KEYS = {"seconds": "step_seconds"}                # losses.jsonl field → metric name
NOT_METRICS = ("step", "stage")


def metric_name(*parts: str) -> str:
    return "/".join(_NOT_IN_KEY.sub("_", str(p)) for p in parts)


class Tracker:
    """Fans metrics out to the configured backends; a no-op when none is configured."""

    def __init__(self, run_dir: str | Path, run_name: str, tensorboard: bool = False,
                 mlflow_uri: str | None = None, experiment: str = "ldisc", params: dict | None = None):
        self.run_dir = Path(run_dir)
        self.writer = None
        self.client = self.run_id = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:
                raise ValueError("logging.tensorboard=true needs the tensorboard package: "
                                 "pip install 'ldisc[tracking]'") from err
            self.writer = SummaryWriter(log_dir=str(self.run_dir / TENSORBOARD_DIR))
        if mlflow_uri:
            try:
                from mlflow.tracking import MlflowClient
            except ImportError as err:
                raise ValueError("logging.mlflow.tracking_uri needs MLflow: pip install 'ldisc[tracking]'") from err
            from mlflow.exceptions import MlflowException

            if str(mlflow_uri).startswith("file:"):        # asked for by name: MLflow 3 wants an opt-in
                os.environ.setdefault(FILE_STORE_OPT_IN, "true")
            try:
                self.client = MlflowClient(tracking_uri=str(mlflow_uri))
                found = self.client.get_experiment_by_name(experiment)
                exp_id = found.experiment_id if found else self.client.create_experiment(experiment)
                tags = {"ldisc.run_dir": str(self.run_dir.resolve())}
                self.run_id = self.client.create_run(exp_id, run_name=run_name, tags=tags).info.run_id
                if params:
                    from mlflow.entities import Param
                    self.client.log_batch(self.run_id, params=[Param(metric_name(k)[:250], str(v)[:500])
                                                               for k, v in params.items()])
            except MlflowException as err:
                raise ValueError(f"logging.mlflow.tracking_uri={mlflow_uri}: {err.message}") from err

    @property
    def enabled(self) -> bool:
        return self.writer is not None or self.client is not None

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        metrics = {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}
        if not metrics:
            return
        if self.writer is not None:
            for key, value in metrics.items():
                self.writer.add_scalar(key, value, step)
        if self.client is not None:
            from mlflow.entities import Metric
            now = int(time.time() * 1000)
            self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, int(step)) for k, v in metrics.items()])

    def log_step(self, record: dict) -> None:
        """One ``losses.jsonl`` record: every numeric field but step/stage, ``seconds`` as ``step_seconds``."""
        if not self.enabled:
            return
        metrics = {STEP_KEYS.get(k, k): v for k, v in record.items()
                   if k not in NOT_METRICS and isinstance(v, (int, float))}
        self.log_metrics(metrics, int(record["step"]))

    def log_dice_table(self, rows: list[dict], step: int = 0) -> dict[str, float]:
        """Mean and spread over seeds of the ``ok`` rows' test Dice, per (task, protocol, checkpoint)."""
        cells: dict[tuple[str, str, str], list[float]] = {}
        for r in rows:
            if r.get("status") == "ok" and r.get("dice_mean") is not None:
                cells.setdefault((r["task"], r["protocol"], r["checkpoint"]), []).append(float(r["dice_mean"]))
        metrics = {}
        for (task, protocol, checkpoint), values in sorted(cells.items()):
            mean = sum(values) / len(values)
            metrics[metric_name("dice", task, protocol, checkpoint)] = mean
            if len(values) > 1:
                std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
                metrics[metric_name("dice_std", task, protocol, checkpoint)] = std
        self.log_metrics(metrics, step)
        return metrics

    def log_artifacts(self, *paths: str | Path) -> None:
        if self.client is not None:
            for path in paths:
                if Path(path).is_file():
                    self.client.log_artifact(self.run_id, str(path))

    def close(self, failed: bool = False) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self.client is not None:
            self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")
            self.client = None


def open_tracker(cfg: DictConfig, run_dir: str | Path, rank: int = 0, overrides: list[str] | None = None) -> Tracker:
    """The tracker ``cfg.logging`` asks for (a no-op one on ranks other than 0 or without ``logging``)."""
    section = cfg.get("logging") if rank == 0 else None
    if not section:
        return Tracker(run_dir, "")
    mlflow = section.get("mlflow") or {}
    from ldisc.runrecord import CONFIG_FILE, RECORD_FILE, hydra_overrides

    overrides = overrides if overrides is not None else hydra_overrides() or []
    params = {f"override.{o.partition('=')[0]}": o.partition("=")[2] for o in overrides}
    tracker = Tracker(run_dir, Path(run_dir).name, bool(section.get("tensorboard", False)),
                      mlflow.get("tracking_uri"), str(mlflow.get("experiment") or "ldisc"), params)
    tracker.log_artifacts(Path(run_dir) / CONFIG_FILE, Path(run_dir) / RECORD_FILE)
    return tracker
