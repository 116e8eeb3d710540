"""Pretraining from WebDataset shards (``data=shards``): the trainer streams the shard loader, saves
its position in checkpoints, and a resume continues the stream exactly — across an epoch boundary."""
from __future__ import annotations

import shutil

from _data_fixtures import SECRET, gray_image, write_image
from _train_helpers import TINY, losses_without_timing, sample_log

from ldisc.train import pretrain
from sharding.ingest import IngestOptions, ingest

N_IMAGES = 10          # 5 steps of one pair per epoch


def _dataset(root):
    src = root / "src"
    for i in range(N_IMAGES):
        write_image(src / f"s{i:03d}.png", gray_image(i, (40, 32)))
    ingest(IngestOptions(source=str(src), dataset=str(root / "ds"), site="s", modality="xray", stored_side=32,
                         shard_samples=4, progress=False, quarantine_report=str(root / "q.jsonl")), SECRET.encode())
    return root / "ds"


def _overrides(run_dir, dataset, *extra):
    return [*[o for o in TINY if not o.startswith("data.")], "data=shards", f"data.dataset={dataset}",
            "data.view_side=32", "data.num_workers=0", "data.shuffle_window=4", f"run_dir={run_dir}",
            "train.stage1_steps=4", "train.stage2_steps=3", "train.checkpoint_every=3", "train.keep_checkpoints=9",
            "train.val_fraction=0", *extra]          # every image in the epoch (no held-out split)


def test_shards_stream_and_resume_exactly(tmp_path):
    dataset = _dataset(tmp_path)
    ref = tmp_path / "ref"
    result = pretrain(_overrides(ref, dataset))
    assert [r["stage"] for r in result.losses] == [1, 1, 1, 1, 2, 2, 2]
    seen = [k for r in sample_log(ref, 0) for k in r["sample_ids"]]
    first_epoch, second_epoch = seen[:N_IMAGES], seen[N_IMAGES:]
    assert len(set(first_epoch)) == N_IMAGES                  # each image once per epoch
    assert len(set(second_epoch)) == len(second_epoch) == 4   # the next epoch has begun
    resumed = tmp_path / "resumed"
    shutil.copytree(ref, resumed)
    for late in ("step_0000006", "step_0000007"):            # resume from step 4 (the stage boundary)
        shutil.rmtree(resumed / "checkpoints" / late)
    pretrain(_overrides(resumed, dataset, "train.resume=auto"))
    assert losses_without_timing(resumed) == losses_without_timing(ref)
    assert sample_log(resumed, 0) == sample_log(ref, 0)
