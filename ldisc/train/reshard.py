"""Resume at another world size: DeepSpeed's universal checkpoint, made once per checkpoint.

Under ZeRO ≥ 1 each rank saves only its partition of the fp32 master weights and Adam moments
(``ds/*optim_states.pt``), cut for the world size of the save. To continue with another number of
ranks, rank 0 converts ``<checkpoint>/ds`` once with DeepSpeed's ``ds_to_universal`` into
``<checkpoint>/universal/ds`` — one folder per parameter holding its full ``fp32``, ``exp_avg`` and
``exp_avg_sq`` — written under ``<checkpoint>/.tmp-universal`` and renamed into place when complete,
so a restart reuses it and a crash mid-conversion leaves nothing half-made. Every rank then loads its
new partition from it (DeepSpeed's ``load_universal`` path). ZeRO 0 keeps the full optimizer state
in ``ds/`` and needs no conversion; neither does a resume at the saved world size (today's exact path).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import sys
import time
from argparse import Namespace
from pathlib import Path

from ldisc.dist import broadcast_object
from ldisc.train.checkpoint import _fsync_dir_files as fsync_files
from ldisc.train.checkpoint_integrity import DERIVED_DIRS
from ldisc.train.env import DistInfo

UNIVERSAL, TMP_UNIVERSAL = DERIVED_DIRS       # written after the checksum manifest; not part of it


def saved_layout(checkpoint: Path, zero_stage: int) -> tuple[int, int]:
    """(world size, ZeRO stage) ``checkpoint`` was saved with, from ``meta.json``. Checkpoints from
    before the stage was recorded: ``zero_stage`` if ``ds/`` holds optimizer partitions, else 0."""
    meta = json.loads((Path(checkpoint) / "meta.json").read_text())
    if "zero_stage" in meta:
        return int(meta["world_size"]), int(meta["zero_stage"])
    partitioned = any(Path(checkpoint).rglob("*optim_states.pt"))
    return int(meta["world_size"]), zero_stage if partitioned else 0


def needs_universal(checkpoint: Path, world_size: int, zero_stage: int) -> bool:
    """True when the optimizer partitions in ``checkpoint`` do not fit ``world_size`` ranks.

    The ZeRO stage must stay that of the save: DeepSpeed's universal loader under ZeRO 3 expects
    ZeRO-3 model files (a ZeRO 2 → 3 resume failed), and ZeRO 0 has no partitions to convert.
    """
    saved_world, saved_stage = saved_layout(checkpoint, zero_stage)
    if saved_stage != zero_stage:
        raise ValueError(f"{checkpoint} was saved with engine.zero_stage={saved_stage}; resume it with the same "
                         f"stage (got engine.zero_stage={zero_stage})")
    return saved_stage > 0 and saved_world != world_size


def universal_dir(checkpoint: Path) -> Path:
    return Path(checkpoint) / UNIVERSAL


def convert_to_universal(checkpoint: Path, ds_tag: str) -> Path:
    """Rank 0 only: ``<checkpoint>/<ds_tag>`` → ``<checkpoint>/universal/<ds_tag>``, atomically."""
    from deepspeed.checkpoint import ds_to_universal

    checkpoint = Path(checkpoint)
    final, tmp = universal_dir(checkpoint), checkpoint / TMP_UNIVERSAL
    shutil.rmtree(tmp, ignore_errors=True)
    args = Namespace(input_folder=str(checkpoint / ds_tag), output_folder=str(tmp / ds_tag),
                     num_extract_workers=1, num_merge_workers=1, keep_temp_folder=False, strict=True,
                     inject_missing_state=True)
    quiet = io.StringIO()                                # its prints and progress bars
    try:
        with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
            ds_to_universal.main(args)
        fsync_files(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def is_universal(folder: Path, ds_tag: str) -> bool:
    return (Path(folder) / ds_tag / "zero" / "optimizer_state.pt").is_file()


def universal_for(checkpoint: Path, ds_tag: str, info: DistInfo, zero_stage: int) -> Path | None:
    """Collective: ``None`` when ``checkpoint`` loads as saved, else its universal folder (made once, by rank 0)."""
    checkpoint = Path(checkpoint)
    if not needs_universal(checkpoint, info.world_size, zero_stage):
        return None
    folder = universal_dir(checkpoint)
    error = None
    if info.rank == 0:
        saved_world, saved_stage = saved_layout(checkpoint, zero_stage)
        what = (f"ldisc: {checkpoint.name} was saved by {_ranks(saved_world)} (ZeRO {saved_stage}); resuming on "
                f"{_ranks(info.world_size)} (ZeRO {zero_stage})")
        if is_universal(folder, ds_tag):
            _say(f"{what} from its universal checkpoint {folder}")
        else:
            _say(f"{what}: re-sharding the optimizer state through a universal checkpoint, written once to {folder}")
            started = time.perf_counter()
            try:
                convert_to_universal(checkpoint, ds_tag)
            except Exception as err:  # noqa: BLE001 - every rank must learn it, not wait for rank 0
                error = f"{type(err).__name__}: {err}"
            else:
                _say(f"ldisc: universal checkpoint written in {time.perf_counter() - started:.1f} s")
    error = broadcast_object(error)
    if error:
        raise RuntimeError(f"cannot re-shard {checkpoint} for {_ranks(info.world_size)}: {error}")
    return folder


def _ranks(n: int) -> str:
    return f"{n} rank" if n == 1 else f"{n} ranks"


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
