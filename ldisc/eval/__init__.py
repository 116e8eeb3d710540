"""Downstream evaluation of pretrained encoders: tasks, the paper's protocol, a Ray fleet, results, report.

    from ldisc.eval import evaluate
    table = evaluate(checkpoints=["random", "runs/a/checkpoints/step_0000100"], tasks=["synthetic@8"],
                     protocols=["frozen"], seeds=[0, 1], out_dir="eval_out", overrides=["protocol=smoke"])

Pieces: ``tasks`` (registry), ``taskdata`` (loading), ``adapters_fundus``/``adapters_xray``/``synthetic``
(datasets), ``protocol`` (training), ``runs`` (one run), ``fleet`` (Ray), ``store`` (Parquet),
``monitor`` (progress + Prometheus), ``report``, ``watch``, ``cli``.
"""
from __future__ import annotations

import importlib

# lazy (PEP 562): `ldisc-eval --cfg job` / `--help` import this package without torch
_EXPORTS = {
    "ldisc.eval.protocol": ("PROTOCOLS", "ProtocolConfig", "ProtocolResult", "SegmentationNet", "run_protocol"),
    "ldisc.eval.runs": ("CheckpointRef", "RunSpec", "execute_run", "resolve_checkpoint"),
    "ldisc.eval.scores": ("dice_per_image", "iou_per_image", "radial_error"),
    "ldisc.eval.store": ("ResultsStore",),
    "ldisc.eval.taskdata": ("TaskData", "load_task_data"),
    "ldisc.eval.tasks": ("PAPER_TASKS", "REGISTRY", "TASK_SETS", "TWIN_TASKS", "Task", "expand_tasks", "get_task"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}


def __getattr__(name: str):
    if name in _MODULE_OF:
        return getattr(importlib.import_module(_MODULE_OF[name]), name)
    raise AttributeError(f"module 'ldisc.eval' has no attribute {name!r}")


__all__ = ["PROTOCOLS", "ProtocolConfig", "ProtocolResult", "SegmentationNet", "run_protocol", "CheckpointRef",
           "RunSpec", "execute_run", "resolve_checkpoint", "dice_per_image", "iou_per_image", "radial_error",
           "ResultsStore", "TaskData", "load_task_data", "PAPER_TASKS", "REGISTRY", "TASK_SETS", "TWIN_TASKS", "Task",
           "expand_tasks", "get_task", "evaluate"]


def evaluate(checkpoints=("random",), tasks=("synthetic@8",), protocols=("frozen", "finetune"), seeds=(0,),
             out_dir: str = "eval_out", overrides: list[str] | tuple[str, ...] = (), serial: bool = False):
    """Run the fleet from Python (same config and behaviour as ``ldisc-eval``); returns the results table."""
    from ldisc.eval.cli import compose_config, run
    from ldisc.eval.report import write_report
    from ldisc.eval.store import ResultsStore

    listed = lambda xs: "[" + ",".join(str(x) for x in xs) + "]"  # noqa: E731
    cfg = compose_config([f"checkpoints={listed(checkpoints)}", f"tasks={listed(tasks)}",
                          f"protocols={listed(protocols)}", f"seeds={listed(seeds)}", f"out_dir={out_dir}",
                          *overrides])
    run(cfg, serial)
    if cfg.report.enabled:
        write_report(cfg.out_dir, cfg.report.baseline, int(cfg.report.overlays_per_task))
    return ResultsStore(cfg.out_dir).table()
