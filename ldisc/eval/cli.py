"""``ldisc-eval``: run checkpoints × tasks × protocols × seeds as a Ray fleet and write the report.

A Hydra app over ``configs/eval.yaml``, like ``ldisc-pretrain``::

    ldisc-eval checkpoints=[random,runs/a] tasks=[synthetic@32] seeds=[0,1,2]   # runs/a: its latest checkpoint
    ldisc-eval checkpoints=[runs/a/best] protocol=smoke fleet.mode=serial          # no Ray: one process
    ldisc-eval mode=watch watch.dir=runs/a                # evaluate checkpoints as a pretraining run writes them
    ldisc-eval mode=report out_dir=eval_out               # rewrite the report from the results only
    ldisc-eval -m tasks=[synth_idrid_disc@8],[synth_rite_vessel@8]                # a Hydra multirun
    ldisc-eval --cfg job | --help | --version

``protocol=NAME`` is short for ``eval/protocol@protocol=NAME``: paper (the authors' transfer protocol,
the default), ldisc (this project's earlier choices), demo and smoke (the paper protocol, fewer epochs).
Exit status: 0 when every run succeeded, 1 when some failed, 2 on bad usage.
"""
from __future__ import annotations

import logging
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig, OmegaConf

from ldisc.cli_errors import usage_error
from ldisc.config import compose, config_dir
from ldisc.metrics import run_name, textfile_name

if TYPE_CHECKING:       # the fleet imports torch and Ray: only when a run starts (--cfg, --help stay quick)
    from ldisc.eval.fleet import FleetSummary
    from ldisc.eval.protocol import ProtocolConfig
    from ldisc.eval.runs import CheckpointRef

PROG = "ldisc-eval"
MODES = ("run", "watch", "report")
PROTOCOL_GROUP = "eval/protocol@protocol"
# the flags of the argparse-era ldisc-eval → their config spelling (a one-line hint, exit 2)
RENAMED_FLAGS = {"--watch": "mode=watch watch.dir=DIR", "--report-only": "mode=report",
                 "--serial": "fleet.mode=serial", "--metrics-port": "metrics.port=N", "--out": "out_dir=DIR"}
_exit_codes: list[int] = []


def expand_shorthands(argv: list[str]) -> list[str]:
    """``protocol=NAME[,NAME…]`` → ``eval/protocol@protocol=…`` where every NAME is a protocol preset."""
    out = []
    for arg in argv:
        key, eq, value = arg.partition("=")
        names = value.split(",")
        if key == "protocol" and eq and all((config_dir() / "eval" / "protocol" / f"{n}.yaml").is_file()
                                            for n in names):
            arg = f"{PROTOCOL_GROUP}={value}"
        out.append(arg)
    return out


def compose_config(overrides: list[str]) -> DictConfig:
    """``configs/eval.yaml`` with ``overrides`` (shorthands allowed), as ``ldisc-eval`` would run it."""
    return compose("eval", expand_shorthands(overrides))


def check_eval_config(cfg: DictConfig) -> None:
    """Raise ValueError for the first impossible setting (before any Ray or data is touched)."""
    if cfg.mode not in MODES:
        raise ValueError(f"mode must be one of {'|'.join(MODES)}, got {cfg.mode!r}")
    if cfg.mode == "watch" and not cfg.watch.dir:
        raise ValueError("mode=watch needs watch.dir=RUN_DIR (the pretraining run to follow)")
    if cfg.mode != "watch" and cfg.watch.dir:
        raise ValueError(f"watch.dir={cfg.watch.dir} is only read with mode=watch; add mode=watch")
    if cfg.fleet.mode not in ("ray", "serial"):
        raise ValueError(f"fleet.mode must be 'ray' or 'serial', got {cfg.fleet.mode!r}")


def protocol_config(name: str = "paper", **overrides) -> ProtocolConfig:
    """The settings of ``configs/eval/protocol/<name>.yaml`` (paper, ldisc, demo, smoke) with ``overrides``."""
    from ldisc.eval.protocol import ProtocolConfig

    cfg = compose_config([f"eval/protocol@protocol={name}"])
    return ProtocolConfig.from_mapping({**OmegaConf.to_container(cfg.protocol), **overrides})


class Evaluator:
    """Holds what one ``ldisc-eval`` command shares across batches of checkpoints (Ray, store, metrics)."""

    def __init__(self, cfg: DictConfig, serial: bool = False):
        from ldisc.eval.fleet import FleetConfig, FleetSummary, init_ray
        from ldisc.eval.monitor import FleetMonitor
        from ldisc.eval.protocol import ProtocolConfig
        from ldisc.eval.store import ResultsStore
        from ldisc.eval.taskdata import preflight
        from ldisc.eval.tasks import expand_tasks

        self.cfg = cfg
        self.store = ResultsStore(cfg.out_dir)
        self.tasks = expand_tasks(list(cfg.tasks))
        self.protocol_cfg = asdict(ProtocolConfig.from_mapping(OmegaConf.to_container(cfg.protocol)))
        data = OmegaConf.to_container(cfg.data, resolve=True)
        self.data_cfg = {"input_side": data["input_side"], "val_fraction": data["val_fraction"], "max_test": data["max_test"],
                         "random_width": data["random_width"], "roots": data.get("roots") or {}}
        preflight(self.tasks, self.data_cfg["roots"], self.data_cfg["input_side"], self.protocol_cfg["splits"])
        fleet = cfg.fleet
        self.fleet_cfg = FleetConfig(retries=int(fleet.retries), cpus_per_run=float(fleet.cpus_per_run),
                                     gpus_per_run=float(fleet.gpus_per_run), address=cfg.ray.address,
                                     num_cpus=cfg.ray.num_cpus, num_gpus=cfg.ray.num_gpus,
                                     max_in_flight=fleet.max_in_flight, object_store_mb=cfg.ray.object_store_mb,
                                     warm_start=bool(fleet.warm_start),
                                     progress=bool(fleet.progress), metrics_port=cfg.metrics.port,
                                     auth=bool(cfg.ray.get("auth", True)))
        self.serial = serial or fleet.mode == "serial"
        if fleet.mode not in ("ray", "serial"):
            raise ValueError(f"fleet.mode must be 'ray' or 'serial', got {fleet.mode!r}")
        run = str(cfg.metrics.get("run") or run_name(self.store.dir))
        textfiles = [self.store.dir / "metrics.prom"] if cfg.metrics.textfile else []
        if cfg.metrics.get("textfile_dir"):
            textfiles.append(Path(cfg.metrics.textfile_dir) / textfile_name("eval", run))
        self.monitor = FleetMonitor(0, textfiles, self.fleet_cfg.metrics_port, self.fleet_cfg.progress, run=run)
        self.started_ray = False if self.serial else init_ray(self.fleet_cfg)
        self.total = FleetSummary()

    def evaluate(self, checkpoints: list[CheckpointRef]) -> FleetSummary:
        from ldisc.eval.fleet import plan_runs, run_fleet, run_serial

        threads = max(1, int(self.fleet_cfg.cpus_per_run))
        specs = plan_runs(checkpoints, self.tasks, list(self.cfg.protocols), list(self.cfg.seeds),
                          self.protocol_cfg, self.data_cfg, str(self.store.dir), threads)
        self.monitor.bar.total = (self.monitor.bar.total or 0) + len(specs)
        self.monitor.bar.refresh()
        if self.serial:
            summary = run_serial(specs, self.store, self.monitor, self.fleet_cfg.retries)
        else:
            summary = run_fleet(specs, self.store, self.fleet_cfg, self.monitor)
        for name in ("planned", "skipped", "done", "failed", "retried"):
            setattr(self.total, name, getattr(self.total, name) + getattr(summary, name))
        self.total.wall_s += summary.wall_s
        self.total.failures += summary.failures
        if not summary.failed:
            self.monitor.succeeded()
        return summary

    def close(self) -> None:
        from ldisc.eval.ray_local import stop_local_ray

        self.monitor.close()
        if self.started_ray:
            stop_local_ray()


def print_report(cfg: DictConfig, out=sys.stdout) -> None:
    from ldisc.eval.report import landmark_table, markdown_table, summarise, win_lines, write_report

    paths = write_report(cfg.out_dir, cfg.report.baseline, int(cfg.report.overlays_per_task))
    s = summarise(cfg.out_dir, cfg.report.baseline, 0)
    if s.cells:
        print(markdown_table(s), file=out)
        for line in win_lines(s):
            print(line, file=out)
    landmarks = landmark_table(cfg.out_dir)
    if landmarks:
        print(landmarks, file=out)
    print("report: " + ", ".join(str(p) for p in paths.values()), file=out)


def run(cfg: DictConfig, serial: bool = False) -> FleetSummary:
    """Evaluate the configured checkpoints (or, with ``mode=watch``, follow ``watch.dir``)."""
    from ldisc.eval.report import write_report
    from ldisc.eval.runs import RANDOM, check_encoder, resolve_checkpoint
    from ldisc.eval.watch import watch_checkpoints

    check_eval_config(cfg)
    watching = cfg.mode == "watch"
    refs = None if watching else [resolve_checkpoint(str(c)) for c in cfg.checkpoints]  # fail before Ray starts
    for ref in refs or []:
        check_encoder(ref)
    ev = Evaluator(cfg, serial)
    try:
        if watching:
            if cfg.watch.include_random:
                ev.evaluate([resolve_checkpoint(RANDOM)])

            def evaluate_and_report(refs: list[CheckpointRef]) -> None:
                ev.evaluate(refs)
                if cfg.report.enabled:
                    write_report(cfg.out_dir, cfg.report.baseline, int(cfg.report.overlays_per_task))

            watch_checkpoints(cfg.watch.dir, Path(cfg.out_dir) / "snapshots", evaluate_and_report,
                              float(cfg.watch.interval_s), cfg.watch.idle_timeout_s)
        else:
            ev.evaluate(refs)
    finally:
        ev.close()
    return ev.total


def _app(cfg: DictConfig) -> None:
    """One ``ldisc-eval`` job (a multirun has several): record it, run it, report, track the Dice table."""
    from ldisc.eval.store import ResultsStore
    from ldisc.runrecord import link_job_folder, write_run_record
    from ldisc.tracking import open_tracker

    logging.getLogger("ldisc").setLevel(logging.WARNING)
    if cfg.mode == "report":
        link_job_folder(cfg.out_dir)
        print_report(cfg)
        _exit_codes.append(0)
        return
    write_run_record(cfg.out_dir, PROG, cfg)
    try:
        tracker = open_tracker(cfg, cfg.out_dir)
        total = run(cfg)
    except (FileNotFoundError, KeyError, ValueError) as err:
        usage_error(PROG, err.args[0] if isinstance(err, KeyError) else err)
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted; finished runs are kept in {cfg.out_dir}, rerun to continue", file=sys.stderr)
        _exit_codes.append(130)
        return
    store = ResultsStore(cfg.out_dir)
    print(f"{PROG}: {total.planned} runs planned, {total.skipped} already done, {total.done} done, "
          f"{total.failed} failed, {total.retried} retried, {total.wall_s:.1f} s → {store.table_path}")
    for failure in total.failures:
        print(f"  failed: {failure}", file=sys.stderr)
    if cfg.report.enabled:
        print_report(cfg)
    tracker.log_dice_table(store.rows())
    tracker.close(failed=bool(total.failed))
    _exit_codes.append(1 if total.failed else 0)


def main(argv: list[str] | None = None) -> int:
    from ldisc.hydra_cli import start

    argv = sys.argv[1:] if argv is None else list(argv)
    for arg in argv:
        if arg.partition("=")[0] in RENAMED_FLAGS:
            usage_error(PROG, f"{arg.partition('=')[0]} is now a config key: {RENAMED_FLAGS[arg.partition('=')[0]]}")
    _exit_codes.clear()
    start(PROG, "eval", _app, expand_shorthands(argv), check=check_eval_config)
    return max(_exit_codes, default=0)


if __name__ == "__main__":
    sys.exit(main())
