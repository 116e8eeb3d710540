"""``ldisc-eval``: run checkpoints × tasks × protocols × seeds as a Ray fleet and write the report.

    ldisc-eval [--watch DIR] [--metrics-port N] [--report-only] [--serial] [key=value …]

Everything else is a Hydra override of ``configs/eval.yaml`` (``LDISC_CONFIG_DIR`` points elsewhere).
``protocol=NAME`` is short for ``eval/protocol@protocol=NAME``: paper (the authors' transfer protocol,
the default), ldisc (this project's earlier choices), demo and smoke (the paper protocol, fewer epochs).
Exit status: 0 when every run succeeded, 1 when some failed, 2 on bad usage.
"""
from __future__ import annotations

import logging
import sys
from dataclasses import asdict
from pathlib import Path

from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ldisc.cli_errors import usage_error

from ldisc.config import config_dir
from ldisc.eval.fleet import FleetConfig, FleetSummary, init_ray, plan_runs, run_fleet, run_serial
from ldisc.eval.monitor import FleetMonitor
from ldisc.eval.protocol import ProtocolConfig
from ldisc.eval.ray_local import stop_local_ray
from ldisc.eval.report import landmark_table, markdown_table, summarise, win_lines, write_report
from ldisc.eval.runs import RANDOM, CheckpointRef, check_encoder, resolve_checkpoint
from ldisc.eval.store import ResultsStore
from ldisc.eval.taskdata import preflight
from ldisc.eval.tasks import expand_tasks
from ldisc.eval.watch import watch_checkpoints

FLAGS_WITH_VALUE = {"--watch": "watch.dir", "--metrics-port": "metrics.port", "--out": "out_dir"}
FLAGS = {"--report-only": "report_only", "--serial": "serial"}


def parse_argv(argv: list[str]) -> tuple[dict[str, bool], list[str]]:
    """Split ``--flags`` from Hydra overrides; flags with values become overrides."""
    flags, overrides, i = {v: False for v in FLAGS.values()}, [], 0
    while i < len(argv):
        arg = argv[i]
        name, eq, value = arg.partition("=")
        if name in FLAGS_WITH_VALUE:
            if not eq:
                if i + 1 >= len(argv):
                    raise SystemExit(f"ldisc-eval: {name} needs a value")
                value, i = argv[i + 1], i + 1
            overrides.append(f"{FLAGS_WITH_VALUE[name]}={value}")
        elif arg in FLAGS:
            flags[FLAGS[arg]] = True
        elif arg in ("-h", "--help"):
            print(__doc__)
            raise SystemExit(0)
        elif arg.startswith("--"):
            raise SystemExit(f"ldisc-eval: unknown flag {arg}; see ldisc-eval --help")
        else:
            if name == "protocol" and eq and (config_dir() / "eval" / "protocol" / f"{value}.yaml").is_file():
                arg = f"eval/protocol@protocol={value}"
            overrides.append(arg)
        i += 1
    return flags, overrides


def compose_config(overrides: list[str]) -> DictConfig:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name="eval", overrides=overrides)


def protocol_config(name: str = "paper", **overrides) -> ProtocolConfig:
    """The settings of ``configs/eval/protocol/<name>.yaml`` (paper, ldisc, demo, smoke) with ``overrides``."""
    cfg = compose_config([f"eval/protocol@protocol={name}"])
    return ProtocolConfig.from_mapping({**OmegaConf.to_container(cfg.protocol), **overrides})


class Evaluator:
    """Holds what one ``ldisc-eval`` command shares across batches of checkpoints (Ray, store, metrics)."""

    def __init__(self, cfg: DictConfig, serial: bool = False):
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
        textfile = self.store.dir / "metrics.prom" if cfg.metrics.textfile else None
        self.monitor = FleetMonitor(0, textfile, self.fleet_cfg.metrics_port, self.fleet_cfg.progress)
        self.started_ray = False if self.serial else init_ray(self.fleet_cfg)
        self.total = FleetSummary()

    def evaluate(self, checkpoints: list[CheckpointRef]) -> FleetSummary:
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
        return summary

    def close(self) -> None:
        self.monitor.close()
        if self.started_ray:
            stop_local_ray()


def print_report(cfg: DictConfig, out=sys.stdout) -> None:
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
    """Evaluate the configured checkpoints (or follow ``watch.dir``), then write the report."""
    refs = None if cfg.watch.dir else [resolve_checkpoint(str(c)) for c in cfg.checkpoints]  # fail before Ray starts
    for ref in refs or []:
        check_encoder(ref)
    ev = Evaluator(cfg, serial)
    try:
        if cfg.watch.dir:
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


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    flags, overrides = parse_argv(sys.argv[1:] if argv is None else argv)
    try:
        cfg = compose_config(overrides)
    except (HydraException, OmegaConfBaseException) as err:
        usage_error("ldisc-eval", err)
    if flags["report_only"]:
        print_report(cfg)
        return 0
    try:
        total = run(cfg, flags["serial"])
    except (FileNotFoundError, KeyError, ValueError) as err:
        usage_error("ldisc-eval", err.args[0] if isinstance(err, KeyError) else err)
    except KeyboardInterrupt:
        print(f"\nldisc-eval: interrupted; finished runs are kept in {cfg.out_dir}, rerun to continue", file=sys.stderr)
        return 130
    print(f"ldisc-eval: {total.planned} runs planned, {total.skipped} already done, {total.done} done, "
          f"{total.failed} failed, {total.retried} retried, {total.wall_s:.1f} s "
          f"→ {ResultsStore(cfg.out_dir).table_path}")
    for failure in total.failures:
        print(f"  failed: {failure}", file=sys.stderr)
    if cfg.report.enabled:
        print_report(cfg)
    return 1 if total.failed else 0


if __name__ == "__main__":
    sys.exit(main())
