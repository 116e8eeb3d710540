"""Pretraining validation split (``train.val_fraction``) and the ``best`` checkpoint next to ``latest``."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from _data_fixtures import SECRET, gray_image, write_image
from ldisc.data import StreamLoader
from ldisc.data.order import holdout_mask
from ldisc.train import checkpoint as ckpt
from ldisc.train import pretrain
from ldisc.data.pairs import holdout_split, noise_pool
from ldisc.views import ViewConfig
from sharding.ingest import IngestOptions, ingest

TINY = ["data.source=noise", "data.view_side=32", "data.image_side=48", "data.pool=8", "train.batch_size=1",
        "model.clusters=4", "train.progress=false", "threads=1", "train.val_batches=1"]


def _save(run_dir: Path, step: int, keep: int = 1) -> Path:
    return ckpt.save_checkpoint(run_dir, step, lambda d: (d / "w.txt").write_text(str(step)), keep=keep)[0]


def test_best_is_resolvable_and_never_pruned(tmp_path):
    first = _save(tmp_path, 1)
    with pytest.raises(FileNotFoundError, match="val_fraction"):
        ckpt.resolve_checkpoint(tmp_path, "best")
    ckpt.mark_best(tmp_path, first, stage=1, val_loss=2.0, step=1)
    _save(tmp_path, 2)
    _save(tmp_path, 3)                                  # keep=1 prunes step 2, not the best step 1
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_0000001", "step_0000003"]
    assert ckpt.resolve_checkpoint(tmp_path, "best") == first
    assert ckpt.resolve_checkpoint(tmp_path, "latest").name == "step_0000003"
    assert ckpt.resolve_checkpoint_spec(tmp_path / "best") == first
    assert ckpt.resolve_checkpoint_spec(tmp_path / "checkpoints" / "latest").name == "step_0000003"
    assert ckpt.resolve_resume("best", tmp_path) == first
    assert not ckpt.is_better(tmp_path, 1, 2.5) and ckpt.is_better(tmp_path, 1, 1.5)
    assert ckpt.is_better(tmp_path, 2, 9.0)             # a new stage starts its own best
    with pytest.raises(ValueError):
        ckpt.resolve_checkpoint(tmp_path, "newest")


def test_synthetic_holdout_is_the_pool_tail():
    images = noise_pool(8, 10, seed=0)
    train, val = holdout_split(images, 0.2, "train"), holdout_split(images, 0.2, "val")
    assert len(train) == 8 and len(val) == 2
    assert (train == images[:8]).all() and (val == images[8:]).all()
    with pytest.raises(ValueError, match="val_fraction"):
        holdout_split(images[:3], 0.5, "train")


def test_shard_holdout_by_sample_id_is_disjoint_complete_and_xray_views_are_one_channel(tmp_path):
    src = tmp_path / "src"
    for i in range(24):
        write_image(src / f"x{i:03d}.png", gray_image(i, (40, 32)))
    ingest(IngestOptions(source=str(src), dataset=str(tmp_path / "ds"), site="s", modality="xray", stored_side=32,
                         shard_samples=4, progress=False, quarantine_report=str(tmp_path / "q.jsonl")), SECRET.encode())
    kw = dict(batch_size=1, world_size=1, rank=0, output="ids", holdout=0.3)
    splits = {s: StreamLoader(tmp_path / "ds", split=s, **kw) for s in ("train", "val")}
    ids = {}
    for s, loader in splits.items():
        table = loader._table(1)
        ids[s] = set(table.sample_id[loader.epoch_order(1, 0)])
    assert ids["train"] and ids["val"] and not ids["train"] & ids["val"]
    assert ids["train"] | ids["val"] == set(table.sample_id)
    assert ids["val"] == set(np.asarray(table.sample_id)[holdout_mask(table.sample_id, 0.3)])
    views = StreamLoader(tmp_path / "ds", batch_size=2, split="train", holdout=0.3,
                         view_config=ViewConfig(view_side=16, modality="xray")).next_batch()
    assert views["x1_1"].shape == (2, 1, 16, 16) and views["mix"].shape == (2, 1, 16, 16)


def test_validation_loss_logged_and_best_checkpoint_selected(tmp_path):
    run = tmp_path / "run"
    pretrain([*TINY, f"run_dir={run}", "train.stage1_steps=2", "train.stage2_steps=3", "train.checkpoint_every=1",
              "train.keep_checkpoints=1", "train.val_fraction=0.25"])
    records = [json.loads(line) for line in (run / "losses.jsonl").read_text().splitlines()]
    assert all("val_loss" in r and np.isfinite(r["val_loss"]) for r in records)
    stage2 = [r for r in records if r["stage"] == 2]
    best = ckpt.best_record(run)
    low = min(stage2, key=lambda r: r["val_loss"])
    assert best["stage"] == 2 and best["step"] == low["step"]
    assert best["val_loss"] == pytest.approx(low["val_loss"])
    path = ckpt.resolve_checkpoint(run, "best")
    assert path.name == ckpt.step_dir_name(low["step"]) and (path / "encoder.pt").is_file()
    prom = (run / "metrics.rank0.prom").read_text()
    assert "ldisc_train_val_loss{" in prom and "ldisc_train_best_val_loss{" in prom
    again = pretrain([*TINY, f"run_dir={tmp_path / 'from_best'}", "train.stage1_steps=0", "train.stage2_steps=1",
                      f"train.init_from={run}/best", "train.val_fraction=0"])
    assert len(again.losses) == 1 and not (tmp_path / "from_best" / "checkpoints" / "BEST").exists()


def test_xray_run_trains_and_exports_a_one_channel_encoder(tmp_path):
    from ldisc.model import load_encoder

    result = pretrain([*TINY, f"run_dir={tmp_path}", "data.modality=xray", "train.stage1_steps=1",
                       "train.stage2_steps=0", "train.val_fraction=0"])
    enc = load_encoder(result.checkpoint / "encoder.safetensors")
    assert enc.in_channels == 1 and enc.blocks[0][0][0].weight.shape[1] == 1
