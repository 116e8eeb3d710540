"""Training never runs on garbage silently: replaced samples are counted by shard, a share above
``data.max_bad_fraction`` stops the job naming the shards, and a missing shard object is an error at plan
time. Real datasets written by the real ingest, real corruption of the files."""
from __future__ import annotations

import logging
import shutil

import pytest

from ldisc.data import StreamLoader, open_store, read_manifest
from ldisc.data.loader import BadDataError
from _data_fixtures import N_FIRST             # the conftest fixture ``dataset`` holds N_FIRST images


def _corrupt(ds, rows: list[int]) -> list[str]:
    """Flip bytes inside the PNG of manifest rows ``rows``; returns their shards."""
    samples = read_manifest(open_store(ds)).samples.to_pylist()
    shards = []
    for i in rows:
        row = samples[i]
        path = ds / row["shard"]
        data = bytearray(path.read_bytes())
        for k in range(20):
            data[row["png_offset"] + 40 + k] ^= 0x5A
        path.write_bytes(bytes(data))
        shards.append(row["shard"])
    return shards


def test_bad_share_above_threshold_stops_with_the_shards_named(tmp_path, dataset, caplog):  # noqa: F811
    ds = tmp_path / "ds"
    shutil.copytree(dataset, ds)
    shards = _corrupt(ds, [3, 7])                       # 2 of 45 samples: 4.4 % > 1 %
    loader = StreamLoader(ds, batch_size=2, output="images")
    with caplog.at_level(logging.WARNING, logger="ldisc.data.loader"), \
            pytest.raises(BadDataError, match="max_bad_fraction=0.01") as err:
        list(loader)
    assert any(s in str(err.value) for s in shards)
    assert any("undecodable" in r.getMessage() and r.getMessage().count("shards/") == 1 for r in caplog.records)


def test_bad_share_below_threshold_trains_on_and_counts(tmp_path, dataset):  # noqa: F811
    ds = tmp_path / "ds"
    shutil.copytree(dataset, ds)
    _corrupt(ds, [3, 7])
    loader = StreamLoader(ds, batch_size=2, output="images", max_bad_fraction=0.1)
    batches = list(loader)
    assert len(batches) == N_FIRST // 4
    assert loader.corrupt_samples == 2 and sum(len(b.get("bad_shards", [])) for b in batches) == 2
    assert loader.epoch_bad == {}                       # the per-epoch count restarts at the boundary


def test_every_shard_deleted_is_an_error_at_plan_time(tmp_path, dataset):  # noqa: F811
    ds = tmp_path / "ds"
    shutil.copytree(dataset, ds)
    tars = sorted(ds.rglob("*.tar"))
    assert tars
    for tar in tars:
        tar.unlink()
    loader = StreamLoader(ds, batch_size=2, output="images", max_bad_fraction=None)
    with pytest.raises(BadDataError, match=f"{len(tars)} shard object\\(s\\) missing"):
        loader.plan()
