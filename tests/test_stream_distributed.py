"""The shard stream under a real gloo group: ranks agree on the manifest version (rank 0 decides)
and split each epoch into disjoint parts whose union is the epoch."""
from __future__ import annotations

import pytest

from _data_fixtures import SECRET, gray_image, write_image
from _dist_helpers import run_ranks
from ldisc.data import StreamLoader
from sharding.ingest import IngestOptions, ingest


def _ingest(dataset, src, seeds):
    for i in seeds:
        write_image(src / f"img{i:03d}.png", gray_image(i, (40, 32)))
    ingest(IngestOptions(source=str(src), dataset=str(dataset), site="s", modality="xray", stored_side=32,
                         shard_samples=4, progress=False, quarantine_report=str(src.parent / "q.jsonl")),
           SECRET.encode())


def _epoch_ids(rank: int, world: int, dataset: str) -> dict:
    # rank 1 asks for version 1, rank 0 for the latest (2): rank 0's choice must win everywhere
    loader = StreamLoader(dataset, batch_size=2, seed=5, version="latest" if rank == 0 else 1, output="ids")
    ids = [i for batch in loader for i in batch["sample_ids"]]
    return {"ids": ids, "world": loader.world_size, "dropped": loader.dropped_samples,
            "order_len": len(loader.epoch_order(2, 0))}


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist-stream")
    _ingest(root / "ds", root / "src1", range(21))
    _ingest(root / "ds", root / "src2", range(21, 30))
    return root / "ds"


def test_two_ranks_agree_on_rank0_version_and_split_the_epoch(two_versions):
    r0, r1 = run_ranks(_epoch_ids, world_size=2, args=(str(two_versions),))
    assert r0["world"] == r1["world"] == 2
    assert len(r0["ids"]) == len(r1["ids"]) > 0            # equal steps on both ranks
    assert not set(r0["ids"]) & set(r1["ids"])              # disjoint
    # the union is version 2's epoch (30 samples) minus the counted tail: rank 1 followed rank 0
    assert len(r0["ids"]) + len(r1["ids"]) + r0["dropped"] == r0["order_len"] == 30
