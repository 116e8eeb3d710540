"""What users touch first: byte sizes and help of ``ldisc-shard``, ``ldisc-eval``'s Hydra grammar and its
one-line errors, ``checkpoints=[RUN_DIR]``, run records and the optional TensorBoard / MLflow tracking."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from ldisc import __version__
from ldisc.cli_args import format_byte_size, parse_byte_size
from ldisc.runrecord import HISTORY_FILE, POINTER_FILE, read_run_record, write_run_record

REPO = Path(__file__).resolve().parents[1]


def _cli(module: str, *args: str, cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_"))}
    env |= {"PYTHONPATH": str(REPO), "LDISC_PATIENT_KEY_SECRET": "s" * 32}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _one_error_line(out: subprocess.CompletedProcess, prog: str) -> str:
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
    assert "Traceback" not in out.stderr, out.stderr[-2000:]
    lines = [line for line in out.stderr.splitlines() if line.startswith(f"{prog}: error: ")]
    assert len(lines) == 1, out.stderr[-2000:]
    return lines[0]


# --- sizes, help, --version -------------------------------------------------------------------------------
@pytest.mark.parametrize("text, value", [("512MB", 512_000_000), ("256MiB", 256 << 20), ("1.5GB", 1_500_000_000),
                                         ("4096", 4096), ("64 kib", 65536), ("2G", 2_000_000_000)])
def test_byte_sizes(text, value):
    assert parse_byte_size(text) == value
    assert parse_byte_size(format_byte_size(value)) == value


@pytest.mark.parametrize("text", ["512XB", "MB", "-1MB", "0", "1e6", ""])
def test_bad_byte_sizes_are_refused(text):
    with pytest.raises(ValueError, match="byte size"):
        parse_byte_size(text)


def test_shard_ingest_help_names_the_secret_and_shows_defaults(capsys):
    from sharding.cli import _parser

    with pytest.raises(SystemExit) as done:
        _parser().parse_args(["ingest", "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "$LDISC_PATIENT_KEY_SECRET" in text and "--secret-file" in text and "Required secret" in text
    assert "(default: 256MiB)" in text and "(default: 1000)" in text and "(default: 512)" in text
    args = _parser().parse_args(["ingest", "SRC", "--dataset", "D", "--site", "s", "--modality", "xray",
                                 "--shard-bytes", "512MB"])
    assert args.shard_bytes == 512_000_000
    assert _parser().parse_args(["ingest", "S", "--dataset", "D", "--site", "s", "--modality", "xray"]).shard_bytes \
        == 256 << 20
    stats = _parser().parse_args(["stats", "D", "--manifest-version", "3"])
    assert stats.manifest_version == "3"
    with pytest.raises(SystemExit) as done:
        _parser().parse_args(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"ldisc-shard {__version__}"


def test_shard_ingest_records_itself_and_manifest_version_flag(tmp_path):
    from _data_fixtures import gray_image, write_image

    for i in range(2):
        write_image(tmp_path / "src" / f"{i}.png", gray_image(i))
    done = _cli("sharding.cli", "ingest", str(tmp_path / "src"), "--dataset", str(tmp_path / "ds"), "--site", "a",
                "--modality", "xray", "--stored-side", "32", "--shard-bytes", "1MB", "--no-progress", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    log = json.loads((tmp_path / "ds" / "logs" / "ingest-v000001.json").read_text())
    assert log["program"] == "ldisc-shard ingest" and log["argv"][-1] == "--no-progress"
    assert log["result"]["added"] == 2 and log["versions"]["ldisc"] == __version__ and "s" * 32 not in json.dumps(log)
    ok = _cli("sharding.cli", "stats", str(tmp_path / "ds"), "--manifest-version", "1", cwd=tmp_path)
    assert ok.returncode == 0 and "v1: 2" in ok.stdout, ok.stderr
    line = _one_error_line(_cli("sharding.cli", "verify", str(tmp_path / "ds"), "--manifest-version", "7",
                                cwd=tmp_path), "ldisc-shard")
    assert "--manifest-version 7" in line and "[1]" in line


def test_every_console_script_has_a_program_with_main():
    from ldisc.scripts import PROGRAMS

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    routed = sorted(name for name, target in scripts.items() if target.split(":")[0] == "ldisc.scripts")
    assert routed == sorted(PROGRAMS)          # every routed script has a program, and no program is orphaned
    for name in routed:
        program = __import__(PROGRAMS[name], fromlist=["main"])
        assert callable(program.main), name


@pytest.mark.parametrize("module, extra, importer", [
    ("deepspeed", "train", lambda: __import__("ldisc.train.env", fromlist=["x"]).import_deepspeed()),
    ("boto3", "s3", lambda: __import__("ldisc.data.store", fromlist=["x"]).S3Store("bucket")),
])
def test_a_missing_optional_package_names_its_extra(module, extra, importer, monkeypatch):
    from ldisc.cli_errors import MissingExtra

    monkeypatch.setitem(sys.modules, module, None)          # as if not installed
    with pytest.raises(MissingExtra, match=rf"{module} is not installed; pip install 'ldisc\[{extra}\]'"):
        importer()
    assert issubclass(MissingExtra, ValueError)             # the CLIs' usage-error path (exit 2)


# --- ldisc-eval as a Hydra app -------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, words", [
    (["no_such_key=1"], ["no_such_key"]),
    (["--watch", "runs/a"], ["--watch", "mode=watch watch.dir=DIR"]),
    (["--report-only"], ["mode=report"]),
    (["mode=bogus"], ["mode must be one of run|watch|report", "bogus"]),
    (["mode=watch"], ["mode=watch needs watch.dir"]),
    (["watch.dir=runs/a"], ["add mode=watch"]),
    (["-m", "seeds=[0],[1]", "no_such_key=1,2"], ["no_such_key"]),
])
def test_eval_usage_errors_are_one_line_and_exit_2(argv, words, tmp_path, capsys, monkeypatch):
    from ldisc.eval.cli import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as done:
        main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert done.value.code == 2 and len(lines) == 1 and lines[0].startswith("ldisc-eval: error: "), err
    for word in words:
        assert word in lines[0], lines[0]
    assert not list(tmp_path.iterdir())        # nothing started, nothing written


def _fake_run(run_dir: Path, steps: tuple[int, ...], best: int) -> dict[int, Path]:
    from ldisc.model import LDNet, save_encoder
    from ldisc.train import checkpoint as ckpt

    made = {}
    for step in steps:
        torch.manual_seed(step)
        made[step], _ = ckpt.save_checkpoint(run_dir, step, lambda d: save_encoder(LDNet("tiny"), d / "encoder.pt"),
                                             keep=len(steps))
    ckpt.mark_best(run_dir, made[best], stage=1, val_loss=0.5, step=best)
    return made


def test_eval_checkpoints_accept_a_run_dir_and_its_best(tmp_path):
    from ldisc.eval.runs import resolve_checkpoint

    run_dir = tmp_path / "pre"
    made = _fake_run(run_dir, (2, 4), best=2)
    latest, best = resolve_checkpoint(str(run_dir)), resolve_checkpoint(f"{run_dir}/best")
    assert (latest.step, latest.label, Path(latest.path)) == (4, "pre/step_4", made[4] / "encoder.pt")
    assert (best.step, best.label, Path(best.path)) == (2, "pre/step_2", made[2] / "encoder.pt")
    assert resolve_checkpoint(f"{run_dir}/latest").digest == latest.digest != best.digest
    with pytest.raises(FileNotFoundError, match="no best checkpoint"):
        resolve_checkpoint(str(tmp_path / "empty" / "best"))


def test_eval_multirun_job_folders_point_at_their_out_dirs(tmp_path):
    outs = [tmp_path / "ev_a", tmp_path / "ev_b"]
    sweep = tmp_path / "sweep"
    out = _cli("ldisc.eval.cli", "-m", "mode=report", f"out_dir={outs[0]},{outs[1]}", f"hydra.sweep.dir={sweep}",
               cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    for job, target in zip(("0", "1"), outs):
        assert (sweep / job / POINTER_FILE).read_text().strip() == str(target)
        assert (sweep / job / "run").resolve() == target.resolve()
        assert (target / "report").is_dir()


# --- run records and tracking ----------------------------------------------------------------------------------
def test_run_record_holds_config_overrides_versions_git_host(tmp_path):
    cfg = OmegaConf.create({"a": 1, "b": {"c": "${a}"}})
    record = write_run_record(tmp_path, "ldisc-test", cfg, overrides=["a=1"], world_size=3)
    assert OmegaConf.load(tmp_path / "config.yaml") == OmegaConf.create({"a": 1, "b": {"c": 1}})   # resolved
    assert read_run_record(tmp_path) == record
    assert record["overrides"] == ["a=1"] and record["world_size"] == 3 and record["program"] == "ldisc-test"
    assert record["versions"]["ldisc"] == __version__ and record["versions"]["torch"].startswith(torch.__version__[:4])
    assert {"deepspeed", "ray", "python"} <= set(record["versions"]) and record["host"]
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    expected = head.stdout.strip() if head.returncode == 0 else None     # an sdist has no .git: None
    assert (record["git"]["commit"] if record["git"] else None) == expected
    write_run_record(tmp_path, "ldisc-test", cfg, overrides=["a=2"])
    history = [json.loads(x) for x in (tmp_path / HISTORY_FILE).read_text().splitlines()]
    assert [h["overrides"] for h in history] == [["a=1"], ["a=2"]]


def _mlflow_metrics(uri: str, run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from mlflow.tracking import MlflowClient

    from ldisc.tracking import FILE_STORE_OPT_IN

    os.environ.setdefault(FILE_STORE_OPT_IN, "true")     # reading a file: store back (MLflow 3 opt-in)
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("ldisc").experiment_id],
                                f"tags.`ldisc.run_dir` = '{run_dir.resolve()}'")
    assert run.info.status == "FINISHED"
    return {k: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, k)) for k in run.data.metrics}


def _tensorboard_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_pretraining_records_itself_and_tracks_to_tensorboard_and_mlflow(tmp_path):
    from ldisc.train import pretrain

    uri = f"file:{tmp_path / 'mlruns'}"
    run_dir = tmp_path / "run"
    overrides = ["data.source=noise", "data.view_side=32", "data.image_side=48", "data.pool=8", "train.batch_size=1",
                 "train.progress=false", "train.stage1_steps=2", "train.stage2_steps=1", "train.checkpoint_every=3",
                 "train.val_fraction=0", f"run_dir={run_dir}", "logging.tensorboard=true",
                 f"logging.mlflow.tracking_uri={uri}"]
    result = pretrain(overrides)
    record = read_run_record(run_dir)
    assert record["program"] == "ldisc-pretrain" and record["overrides"] == overrides and record["world_size"] == 1
    assert OmegaConf.load(run_dir / "config.yaml").train.stage1_steps == 2
    steps = [(r["step"], r["total"]) for r in result.losses]
    assert [s for s, _ in steps] == [1, 2, 3]
    metrics = _mlflow_metrics(uri, run_dir)
    assert {"total", "patch", "step_seconds", "images_per_s", "lr"} <= set(metrics)
    assert [s for s, _ in metrics["total"]] == [1, 2, 3]
    assert [v for _, v in metrics["total"]] == pytest.approx([v for _, v in steps])
    assert [v for _, v in metrics["step_seconds"]] == pytest.approx([r["seconds"] for r in result.losses])
    scalars = _tensorboard_scalars(run_dir / "tensorboard")
    assert [v for _, v in scalars["total"]] == pytest.approx([v for _, v in steps], rel=1e-6)
    assert [s for s, _ in scalars["images_per_s"]] == [1, 2, 3]


def test_eval_dice_table_goes_to_mlflow_as_metrics(tmp_path):
    from ldisc.tracking import Tracker

    rows = [{"status": "ok", "task": "synth_idrid_disc@8", "protocol": "frozen", "checkpoint": "run/step_4",
             "dice_mean": d} for d in (0.5, 0.7)]
    rows += [{"status": "ok", "task": "synth_idrid_disc@8", "protocol": "frozen", "checkpoint": "random",
              "dice_mean": 0.2}, {"status": "failed", "task": "t", "protocol": "frozen", "checkpoint": "random",
                                  "dice_mean": None}]
    uri = f"file:{tmp_path / 'mlruns'}"
    tracker = Tracker(tmp_path, "eval", tensorboard=True, mlflow_uri=uri)
    logged = tracker.log_dice_table(rows)
    tracker.close()
    assert logged == pytest.approx({"dice/synth_idrid_disc_8/frozen/run/step_4": 0.6,
                                    "dice_std/synth_idrid_disc_8/frozen/run/step_4": 0.1414213562,
                                    "dice/synth_idrid_disc_8/frozen/random": 0.2})
    stored = _mlflow_metrics(uri, tmp_path)
    assert {k: v[0][1] for k, v in stored.items()} == pytest.approx(logged)
    assert _tensorboard_scalars(tmp_path / "tensorboard")["dice/synth_idrid_disc_8/frozen/random"] == \
        [(0, pytest.approx(0.2))]


def test_a_bad_tracking_uri_is_a_usage_error_naming_the_key(tmp_path):
    from ldisc.tracking import Tracker

    with pytest.raises(ValueError, match="logging.mlflow.tracking_uri=nosuchscheme://x: "):
        Tracker(tmp_path, "r", mlflow_uri="nosuchscheme://x")


@pytest.mark.slow
def test_eval_of_a_run_dir_records_itself_and_logs_the_dice_table(tmp_path):
    """The real command end to end: ``ldisc-eval checkpoints=[RUN_DIR]`` (serial, smoke protocol) writes its
    run record into out_dir and the results' Dice to MLflow and TensorBoard."""
    import pyarrow.parquet as pq

    run_dir, out = tmp_path / "pre", tmp_path / "eval"
    _fake_run(run_dir, (3,), best=3)
    uri = f"file:{tmp_path / 'mlruns'}"
    done = _cli("ldisc.eval.cli", f"checkpoints=[{run_dir}]", "tasks=[synth_idrid_disc@8]", "protocols=[frozen]",
                "seeds=[0]", "protocol=smoke", "data.max_test=4", "fleet.mode=serial", "fleet.progress=false",
                f"out_dir={out}", "logging.tensorboard=true", f"logging.mlflow.tracking_uri={uri}", cwd=tmp_path,
                timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    record = read_run_record(out)
    assert record["program"] == "ldisc-eval" and f"checkpoints=[{run_dir}]" in record["overrides"]
    (row,) = pq.read_table(out / "results.parquet").to_pylist()
    assert row["checkpoint"] == "pre/step_3" and row["status"] == "ok"
    key = "dice/synth_idrid_disc_8/frozen/pre/step_3"
    assert _mlflow_metrics(uri, out)[key] == [(0, pytest.approx(row["dice_mean"]))]
    assert _tensorboard_scalars(out / "tensorboard")[key] == [(0, pytest.approx(row["dice_mean"]))]
