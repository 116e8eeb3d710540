"""One evaluation run: (checkpoint, task, protocol, seed) → a results row. The unit the fleet schedules.

``execute_run`` is what a Ray task (or a serial loop) calls: it loads the task's data, builds the
encoder (from the checkpoint, or randomly initialised for the ``random`` baseline), runs the
protocol and returns the row plus a few prediction overlays. While it runs, a small JSON file
``<results_dir>/running/<run_id>.json`` says which host and process carries it.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch

from ldisc.eval.protocol import ProtocolConfig, kaiming_init, run_protocol
from ldisc.eval.taskdata import load_task_data
from ldisc.eval.tasks import Task, get_task
from ldisc.model import VGGEncoder, load_encoder
from ldisc.train.checkpoint import ENCODER_FILES, PREFIX, encoder_file, run_dir_of, step_of

RANDOM = "random"


@dataclass(frozen=True)
class CheckpointRef:
    """A resolved ``checkpoints=[…]`` entry."""

    spec: str              # as the user gave it
    label: str             # short readable name used in the report
    path: str | None       # encoder file (None for random init)
    digest: str            # content hash of the encoder file ("random" for random init)
    step: int | None       # training step, when the path names one (…/step_0000100/…)


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def resolve_checkpoint(entry: str) -> CheckpointRef:
    """``random``, an encoder file (``.pt``/``.safetensors``), a checkpoint dir holding ``encoder.pt``, a
    pretraining run dir (→ its latest checkpoint) or ``RUN_DIR/best`` / ``RUN_DIR/latest``; run dirs are
    resolved by :mod:`ldisc.train.checkpoint`, the owner of that layout."""
    from ldisc.train import checkpoint as ckpt

    entry = str(entry)
    if entry == RANDOM:
        return CheckpointRef(RANDOM, RANDOM, None, RANDOM, None)
    path = Path(entry).expanduser().resolve()
    if path.name in ckpt.NAMES and not path.exists():          # RUN_DIR/best, RUN_DIR/latest
        path = ckpt.resolve_checkpoint_spec(path).resolve()
    elif path.is_dir() and ckpt.checkpoint_root(path).is_dir():  # a run dir: its latest complete checkpoint
        path = ckpt.resolve_checkpoint(path, "latest").resolve()
    if path.is_dir():
        found = encoder_file(path)
        if found is None:
            raise FileNotFoundError(f"checkpoint dir {path} holds no {' or '.join(ENCODER_FILES)} (not saved yet?)")
        path = found
    elif not path.is_file():
        raise FileNotFoundError(f"checkpoint {entry!r} is neither 'random', an encoder file nor a checkpoint dir")
    step = step_of(path)
    parent = path.parent
    if step is not None:  # <run_dir>/checkpoints/step_N/encoder.pt → "<run_dir name>/step_N"
        label = f"{run_dir_of(parent).name}/{PREFIX}{step}"
    else:
        label = f"{parent.name}/{path.stem}" if path.stem in ("encoder",) else path.stem
    return CheckpointRef(entry, label, str(path), _file_digest(path), step)


def check_encoder(ref: CheckpointRef) -> None:
    """Raise ValueError unless ``ref`` is ``random`` or a file :func:`ldisc.model.ld.load_encoder` accepts."""
    if ref.path is None:
        return
    from ldisc.model.ld import load_encoder

    try:
        load_encoder(ref.path)
    except Exception as err:  # noqa: BLE001 - whatever the file is, it is not an encoder we can evaluate
        reason = " ".join(str(err).split())[:200] or type(err).__name__
        raise ValueError(f"checkpoint {ref.spec!r} is not an ldisc encoder file ({type(err).__name__}: {reason})") from None


@dataclass(frozen=True)
class RunSpec:
    """Everything a run needs; ``run_id`` is a hash of what determines its result."""

    checkpoint: CheckpointRef
    task: str
    protocol: str
    seed: int
    protocol_cfg: dict
    data: dict = field(default_factory=dict)      # input_side, val_fraction, max_test, roots, random_width
    results_dir: str | None = None
    threads: int = 1

    @property
    def run_id(self) -> str:
        settings = {k: v for k, v in self.protocol_cfg.items() if k not in ("device", "overlays")}
        data = {k: v for k, v in self.data.items() if k != "roots"}
        if self.checkpoint.path is not None:
            data.pop("random_width", None)
        key = json.dumps([self.checkpoint.digest, self.task, self.protocol, self.seed, settings, data], sort_keys=True)
        return hashlib.sha1(key.encode()).hexdigest()[:16]


def versions() -> dict[str, str]:
    """Versions of python, torch, ldisc (and deepspeed/ray where installed): one owner, ldisc.runrecord."""
    from ldisc.runrecord import package_versions

    return {k: v for k, v in package_versions().items() if v is not None}


def _now() -> datetime:
    """A run's start/finish time: a timezone-aware UTC timestamp (results.parquet stores timestamp[ms, UTC])."""
    return datetime.now(timezone.utc)


def protocol_columns(cfg: ProtocolConfig | None = None, **method) -> dict:
    """The protocol parameters of a row: lr, fine-tune lr and threshold as columns, every setting as JSON."""
    if cfg is None:
        return {"protocol_params": json.dumps(method, sort_keys=True)}
    params = {k: v for k, v in asdict(cfg).items() if k not in ("device", "overlays")}
    return {"lr": cfg.lr, "finetune_lr": cfg.finetune_lr, "threshold": cfg.threshold,
            "protocol_params": json.dumps(params, sort_keys=True)}


def build_encoder(spec: RunSpec, task: Task, cfg: ProtocolConfig) -> VGGEncoder:
    """The checkpoint's encoder, or the random-init baseline's: Kaiming-initialised (``init``), with
    ``xray_channels`` input channels for an X-ray task and 3 for fundus."""
    if spec.checkpoint.path is None:
        torch.manual_seed(spec.seed)
        in_channels = cfg.xray_channels if task.modality == "xray" else 3
        enc = VGGEncoder(spec.data.get("random_width", "tiny"), in_channels=in_channels)
        if cfg.init == "kaiming":
            kaiming_init(enc)
        return enc
    return load_encoder(spec.checkpoint.path)


def _mark_running(spec: RunSpec) -> Path | None:
    if not spec.results_dir:
        return None
    try:
        path = Path(spec.results_dir) / "running" / f"{spec.run_id}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"run_id": spec.run_id, "pid": os.getpid(), "host": socket.gethostname(),
                                    "task": spec.task, "started_at": _now().isoformat(timespec="seconds")}))
        return path
    except OSError:  # a worker on another machine may not see the driver's results dir
        return None


def base_row(spec: RunSpec) -> dict:
    """The identifying columns of a run's row."""
    task = get_task(spec.task)
    ck = spec.checkpoint
    return {"run_id": spec.run_id, "checkpoint": ck.label, "checkpoint_spec": ck.spec, "checkpoint_digest": ck.digest,
            "checkpoint_step": ck.step, "task": task.name, "task_base": task.base_name, "n_labelled": task.n_train,
            "modality": task.modality, "structure": task.structure, "protocol": spec.protocol, "seed": spec.seed}


def execute_run(spec: RunSpec) -> tuple[dict, list[dict]]:
    """Run one evaluation; returns (row, overlays). Raises on failure (the fleet records and retries)."""
    torch.set_num_threads(max(1, int(spec.threads)))
    if get_task(spec.task).adapter == "application":
        from ldisc.eval.apptasks import execute_app_run
        return execute_app_run(spec)
    marker = _mark_running(spec)
    started, t0 = _now(), time.perf_counter()
    try:
        if os.environ.get("LDISC_FAULT_EVAL_FAIL_TASK") == spec.task:   # test-only fault injection
            raise RuntimeError(f"injected failure of task {spec.task} (LDISC_FAULT_EVAL_FAIL_TASK)")
        cfg = ProtocolConfig(**spec.protocol_cfg).validated()
        task = get_task(spec.task)
        data = load_task_data(task, spec.data.get("roots") or {}, spec.data.get("input_side"),
                              spec.data.get("val_fraction", 0.2), spec.data.get("max_test"), **cfg.data_options())
        scratch = spec.checkpoint.path is None and cfg.random_init == "scratch"
        result = run_protocol(build_encoder(spec, task, cfg), data, spec.protocol, cfg, spec.seed, scratch=scratch)
    finally:
        if marker is not None:
            marker.unlink(missing_ok=True)
    row = base_row(spec) | {
        "status": "ok", "dice_mean": float(torch.tensor(result.dice).mean()), "dice_per_image": result.dice,
        "iou_mean": float(torch.tensor(result.iou).mean()), "iou_per_image": result.iou,
        "val_dice": result.val_dice, "best_epoch": result.best_epoch, "epochs_frozen": result.epochs_frozen,
        "epochs_finetune": result.epochs_finetune, "n_train": len(data.train), "n_val": len(data.val),
        "n_test": len(data.test), "n_skipped": len(data.skipped), "test_names": data.test.names,
        "input_size": data.size, "batch_size": result.batch_size, "wall_s": time.perf_counter() - t0,
        "train_s": result.train_seconds, "host": socket.gethostname(), "pid": os.getpid(),
        "device": str(torch.device("cuda" if cfg.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")),
        "versions": json.dumps(versions(), sort_keys=True), "started_at": started, "finished_at": _now(),
        "history": json.dumps(result.history), "error": None} | protocol_columns(cfg)
    return row, result.overlays
