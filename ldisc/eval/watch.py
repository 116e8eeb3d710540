"""Follow a pretraining run: evaluate each new checkpoint as it appears (``ldisc-eval mode=watch watch.dir=DIR``).

The trainer renames ``<run_dir>/checkpoints/step_<N>/`` into place only when the save is complete
(:mod:`ldisc.train.checkpoint` owns the layout), so a complete checkpoint holding ``encoder.pt`` is ready. Because the trainer prunes old
checkpoints, each new encoder is first copied to ``<out_dir>/snapshots/<run name>/step_<N>/`` and
evaluated from there.
"""
from __future__ import annotations

import logging
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

from ldisc.eval.runs import CheckpointRef, resolve_checkpoint
from ldisc.train.checkpoint import ENCODER_FILE, checkpoint_root, list_checkpoints, run_dir_of

log = logging.getLogger(__name__)


def find_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints holding ``encoder.pt`` of a run dir (or of its ``checkpoints/``), oldest first."""
    root = Path(root)
    run_dir = root.parent if root.name == "checkpoints" and not checkpoint_root(root).is_dir() else root
    return [p for p in list_checkpoints(run_dir) if (p / ENCODER_FILE).is_file()]


def snapshot(checkpoint_dir: Path, snapshot_root: Path) -> CheckpointRef:
    """Copy a checkpoint's encoder out of reach of pruning and resolve the copy."""
    target = snapshot_root / run_dir_of(checkpoint_dir).name / checkpoint_dir.name / ENCODER_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    shutil.copyfile(checkpoint_dir / ENCODER_FILE, tmp)
    tmp.replace(target)
    return replace(resolve_checkpoint(str(target)), spec=str(checkpoint_dir))


def watch_checkpoints(root: str | Path, snapshot_root: str | Path, evaluate: Callable[[list[CheckpointRef]], None],
                      interval_s: float = 30.0, idle_timeout_s: float | None = None,
                      sleep: Callable[[float], None] = time.sleep) -> int:
    """Poll ``root`` every ``interval_s``; call ``evaluate`` with the new checkpoints; return how many were seen.

    Stops once ``idle_timeout_s`` pass without a new checkpoint (never, if None).
    """
    seen: set[str] = set()
    last_new = time.monotonic()
    while True:
        refs = []
        for ckpt in find_checkpoints(root):
            if ckpt.name in seen:
                continue
            try:
                refs.append(snapshot(ckpt, Path(snapshot_root)))
            except FileNotFoundError:  # pruned between listing and copying
                log.warning("checkpoint %s vanished before it could be copied; skipped", ckpt)
            seen.add(ckpt.name)
        if refs:
            evaluate(refs)
            last_new = time.monotonic()
        elif idle_timeout_s is not None and time.monotonic() - last_new >= idle_timeout_s:
            return len(seen)
        sleep(interval_s)
