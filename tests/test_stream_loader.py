"""The streaming loader: rank/worker split, exact resume across world sizes, new manifest
versions at epoch boundaries, corrupt samples, mixing weights, deterministic views."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from _data_fixtures import N_FIRST, add_images
from ldisc.data import StreamLoader, open_store, read_manifest
from ldisc.data.build import build_data_source
from ldisc.data.source import position_from_json, position_to_json
from ldisc.views import ViewConfig


def ids_of(loader, steps=None):
    """Sample ids of the next ``steps`` batches (all if None), flattened."""
    out = []
    for k, batch in enumerate(loader):
        out += batch["sample_ids"]
        if steps is not None and k + 1 == steps:
            break
    return out


def global_sequence(dataset, world, steps=None, state=None, **kw):
    """The global sample sequence of W ranks stepping together (rank-major within a step)."""
    loaders = [StreamLoader(dataset, batch_size=2, world_size=world, rank=r, **kw) for r in range(world)]
    if state:
        for ld in loaders:
            ld.seek(state)
    per_rank = [[b["sample_ids"] for b in _take(ld, steps)] for ld in loaders]
    assert len({len(p) for p in per_rank}) == 1, "ranks disagree on the number of steps"
    seq = [sid for step in zip(*per_rank) for batch in step for sid in batch]
    return seq, loaders[0].position()


def _take(loader, steps):
    out = []
    for batch in loader:
        out.append(batch)
        if steps is not None and len(out) == steps:
            break
    return out


def test_two_ranks_two_workers_disjoint_union_is_the_epoch(dataset):
    per_rank = {}
    for rank in range(2):
        loader = StreamLoader(dataset, batch_size=2, world_size=2, rank=rank, num_workers=2, output="images")
        batches = list(loader)
        assert all(len(b["images"]) == 4 for b in batches) and [b["step"] for b in batches] == list(range(5))
        per_rank[rank] = [sid for b in batches for sid in b["sample_ids"]]
        assert loader.position().dropped_samples == N_FIRST - 5 * 8
    a, b = set(per_rank[0]), set(per_rank[1])
    assert len(per_rank[0]) == len(a) == 20 and not a & b
    reference = StreamLoader(dataset, batch_size=2, world_size=1, rank=0, output="ids")
    order = reference.epoch_order(1, 0)
    table = reference._table(1)
    assert a | b == set(table.sample_id[order[:40]])  # the epoch, minus the dropped tail of 5
    assert len(set(table.sample_id[order])) == N_FIRST  # every sample once per epoch


@pytest.mark.parametrize("before,after", [(2, 1), (1, 2)])
def test_resume_with_another_world_size_continues_the_global_sequence(dataset, before, after):
    uninterrupted, _ = global_sequence(dataset, 1, output="ids")
    head, state = global_sequence(dataset, before, steps=3 if before == 1 else 2, output="ids")
    assert state.consumed == len(head) and state.manifest_version == 1
    tail, end_state = global_sequence(dataset, after, state=state, output="ids")
    assert head + tail == uninterrupted[: len(head) + len(tail)]
    assert len(tail) == (N_FIRST - len(head)) // (after * 4) * (after * 4)  # remainder dropped, equally
    assert end_state.epoch == 1 and end_state.consumed == 0


def test_resumed_views_equal_uninterrupted_views(dataset):
    cfg = ViewConfig(view_side=24)
    full = _take(StreamLoader(dataset, batch_size=2, view_config=cfg, num_workers=2), None)
    first = StreamLoader(dataset, batch_size=2, view_config=cfg)
    _take(first, 3)
    resumed = StreamLoader(dataset, batch_size=2, view_config=cfg)
    resumed.seek(position_from_json(position_to_json(first.position())))    # through its JSON form
    rest = _take(resumed, None)
    assert len(rest) == len(full) - 3
    for a, b in zip(full[3:], rest):
        assert a["sample_ids"] == b["sample_ids"]
        for key in ("x1_1", "x1_2", "x2_1", "x2_2", "mix", "rot1", "flip2", "mix_w"):
            assert torch.equal(a[key], b[key]), key
    assert full[0]["x1_1"].shape == (2, 3, 24, 24)


def test_order_is_a_function_of_version_seed_epoch(dataset):
    a = StreamLoader(dataset, batch_size=2, seed=5, output="ids")
    b = StreamLoader(dataset, batch_size=2, seed=5, output="ids")
    assert np.array_equal(a.epoch_order(1, 3), b.epoch_order(1, 3))
    assert not np.array_equal(a.epoch_order(1, 3), a.epoch_order(1, 4))
    assert not np.array_equal(a.epoch_order(1, 3), StreamLoader(dataset, batch_size=2, seed=6).epoch_order(1, 3))


def test_equal_steps_on_every_rank_when_nothing_divides(dataset):
    steps = {r: len(list(StreamLoader(dataset, batch_size=1, world_size=7, rank=r, output="ids")))
             for r in range(7)}
    assert set(steps.values()) == {N_FIRST // 14}


def test_new_version_joins_at_the_next_epoch_boundary(tmp_path):
    ds = tmp_path / "ds"
    add_images(ds, tmp_path / "src1", range(100, 116))
    loader = StreamLoader(ds, batch_size=2, output="ids")
    first = ids_of(loader, steps=2)
    saved = loader.position()
    add_images(ds, tmp_path / "src2", range(200, 208), site="t")  # version 2 lands mid-epoch
    rest = ids_of(loader)
    v1_ids = set(read_manifest(open_store(ds), 1).samples.column("sample_id").to_pylist())
    assert set(first + rest) == v1_ids and len(first + rest) == 16  # epoch 0 stays on version 1
    resumed = StreamLoader(ds, batch_size=2, output="ids")
    resumed.seek(saved)
    assert ids_of(resumed) == rest  # a resumed position is exact for the old version too
    epoch1 = ids_of(loader)
    assert loader.position().epoch == 2 and len(epoch1) == 24 and set(epoch1) > v1_ids
    again = ids_of(resumed)
    assert again == epoch1


def test_corrupt_sample_in_a_shard_is_replaced_and_counted(tmp_path, dataset):
    ds = tmp_path / "ds"
    shutil.copytree(dataset, ds)
    manifest = read_manifest(open_store(ds))
    row = manifest.samples.to_pylist()[7]
    path = ds / row["shard"]
    data = bytearray(path.read_bytes())
    for k in range(20):
        data[row["png_offset"] + 40 + k] ^= 0x5A
    path.write_bytes(bytes(data))
    loader = StreamLoader(ds, batch_size=2, output="images", num_workers=2, max_bad_fraction=0.05)
    batches = list(loader)
    assert len(batches) == N_FIRST // 4 and loader.corrupt_samples == 1
    assert sum(b["corrupt"] for b in batches) == 1
    assert [s for b in batches for s in b.get("bad_shards", [])] == [row["shard"]]


def test_mixing_weights_set_group_proportions(tmp_path):
    ds = tmp_path / "ds"
    add_images(ds, tmp_path / "a", range(300, 340), site="a")
    add_images(ds, tmp_path / "b", range(400, 410), site="b")
    loader = StreamLoader(ds, batch_size=5, weights={"a/*": 1, "b/xray": 1}, epoch_samples=40, output="ids")
    order = loader.epoch_order(2, 0)
    table = loader._table(2)
    groups = np.array(table.groups)[table.group_index[order]]
    assert (groups == "a/xray").sum() == 20 and (groups == "b/xray").sum() == 20
    b_rows = order[groups == "b/xray"]
    assert np.bincount(b_rows).max() == 2  # the small site is repeated, evenly
    assert len(ids_of(loader)) == 40


def test_trainer_seam_from_config_next_batch_crosses_epochs_and_resumes(dataset):
    """``build_data_source`` (``StreamLoader.from_config``) + ``next_batch``: epochs follow each other; a saved position resumes exactly."""
    from ldisc.config import compose

    cfg = compose("pretrain", ["data=shards", f"data.dataset={dataset}", "data.view_side=16", "data.num_workers=0",
                               "train.batch_size=2", "seed=3"])
    loader = build_data_source(cfg, rank=0, world_size=1)
    per_epoch = loader.steps_remaining()
    first = [loader.next_batch() for _ in range(per_epoch + 2)]
    assert [b["epoch"] for b in first] == [0] * per_epoch + [1, 1]
    assert first[0]["x1_1"].shape == (2, 3, 16, 16)
    state = loader.position()
    after = [loader.next_batch()["sample_ids"] for _ in range(3)]
    resumed = build_data_source(cfg, rank=0, world_size=1)
    resumed.seek(state)
    assert [resumed.next_batch()["sample_ids"] for _ in range(3)] == after


def test_positions_are_json_with_only_what_seek_reads_and_sources_refuse_a_foreign_one(dataset):
    """A position is a small JSON object; a source will not continue from another kind of source's, nor
    from another seed's."""
    import json

    from ldisc.data.pairs import noise_pairs
    from ldisc.data.source import PairPosition, StreamPosition

    loader = StreamLoader(dataset, batch_size=2, seed=4, output="ids")
    ids_of(loader, steps=2)
    text = position_to_json(loader.position())
    assert json.loads(text) == {"kind": "stream", "seed": 4, "epoch": 0, "manifest_version": 1, "consumed": 8,
                                "corrupt_samples": 0, "dropped_samples": 0, "epoch_bad_by_shard": {}}
    assert position_from_json(text) == StreamPosition(4, 0, 1, 8)
    pairs = noise_pairs(16, 16, pool=4, batch_size=1)
    pairs.next_batch()
    assert position_from_json(position_to_json(pairs.position())) == PairPosition(step=1)
    with pytest.raises(ValueError, match="pool source cannot continue from a stream position"):
        pairs.seek(loader.position())
    with pytest.raises(ValueError, match="shard stream cannot continue from a pairs position"):
        loader.seek(PairPosition(3))
    with pytest.raises(ValueError, match="saved with seed 4, loader has 5"):
        StreamLoader(dataset, batch_size=2, seed=5).seek(loader.position())
    with pytest.raises(ValueError, match="not a data position"):
        position_from_json('{"format": "ldisc-stream/1", "epoch": 0}')
