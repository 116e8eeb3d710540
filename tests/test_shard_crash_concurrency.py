"""An ingest killed with SIGKILL and run again equals a clean run; concurrent ingests into
one dataset (local directory and S3 via a local moto server) all land, without duplicates."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from _data_fixtures import PYTHON, REPO, cli_env, gray_image, run_cli, write_image
from _s3_server import local_s3
from _drill import lost_and_duplicates, record
from ldisc.data import latest_version, open_store, read_manifest


def make_source(root: Path, seeds: range) -> Path:
    for i in seeds:
        write_image(root / f"img{i:03d}.png", gray_image(i, (48, 40)))
    return root


def ingest_args(src: Path, dataset: str, tmp: Path, tag: str) -> list[str]:
    return ["ingest", str(src), "--dataset", dataset, "--site", "s", "--modality", "xray", "--stored-side", "32",
            "--shard-samples", "1", "--no-progress", "--quarantine-report", str(tmp / f"q-{tag}.jsonl")]


def comparable(dataset: str) -> tuple:
    """Manifest content without creation times, and the set of shard objects with their bytes."""
    store = open_store(dataset)
    m = read_manifest(store)
    shards = m.shards.drop_columns(["created"]).sort_by("shard")
    files = {k: store.get_bytes(k) for k in store.list("shards/")}
    return m.version, shards.to_pylist(), m.samples.to_pylist(), files


def test_sigkill_mid_commit_then_rerun_equals_clean_run(tmp_path):
    src = make_source(tmp_path / "src", range(60))
    clean, crashed = str(tmp_path / "clean"), tmp_path / "crashed"
    run_cli(*ingest_args(src, clean, tmp_path, "clean"))
    proc = subprocess.Popen([PYTHON, "-m", "sharding.cli", *ingest_args(src, str(crashed), tmp_path, "k")],
                            env=cli_env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shard_dir = crashed / "shards" / "s" / "xray"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if shard_dir.is_dir() and any(n.endswith(".tar") for n in os.listdir(shard_dir)):
            break
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    written = [n for n in os.listdir(shard_dir) if n.endswith(".tar")]
    assert 0 < len(written) < 60, "the kill should land while shards are being written"
    assert latest_version(open_store(crashed)) == 0  # nothing half-committed is visible
    t0 = time.monotonic()
    run_cli(*ingest_args(src, str(crashed), tmp_path, "rerun"))
    assert comparable(str(crashed)) == comparable(clean)
    ids = [read_manifest(open_store(d)).samples.column("sample_id").to_pylist() for d in (clean, crashed)]
    lost, dups = lost_and_duplicates(*ids)
    record("kill_ingest_and_rerun", samples_lost=lost, duplicates=dups, recover_s=round(time.monotonic() - t0, 1))
    assert "0 problems" in run_cli("verify", str(crashed)).stdout


def run_concurrently(commands: list[list[str]], env: dict) -> None:
    procs = [subprocess.Popen([PYTHON, "-m", "sharding.cli", *c], env=env, cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in commands]
    for p in procs:
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0, f"{out}\n{err}"


def check_union(dataset: str, expected: int) -> None:
    m = read_manifest(open_store(dataset))
    ids = m.samples.column("sample_id").to_pylist()
    assert m.version == 2 and len(ids) == len(set(ids)) == expected
    assert sum(m.shards.column("samples").to_pylist()) == expected
    record("concurrent_ingests", dataset=dataset.split("://")[0] if "://" in dataset else "local",
           samples_lost=expected - len(set(ids)), duplicates=len(ids) - len(set(ids)), versions=m.version)


def test_concurrent_local_ingests_both_land(tmp_path):
    a = make_source(tmp_path / "a", range(0, 30))
    b = make_source(tmp_path / "b", range(20, 50))  # 10 images overlap
    ds = str(tmp_path / "ds")
    run_concurrently([ingest_args(a, ds, tmp_path, "a"), ingest_args(b, ds, tmp_path, "b")], cli_env())
    check_union(ds, 50)


@pytest.fixture(scope="module")
def s3_endpoint():
    with local_s3("ldisc-test") as s3:
        yield s3.env


def test_s3_ingest_verify_and_concurrent_optimistic_commits(tmp_path, s3_endpoint):
    a = make_source(tmp_path / "a", range(0, 12))
    b = make_source(tmp_path / "b", range(8, 20))
    env = cli_env(**s3_endpoint)
    url = "s3://ldisc-test/concurrent"
    run_concurrently([ingest_args(a, url, tmp_path, "a"), ingest_args(b, url, tmp_path, "b")], env)
    check_union(url, 20)
    assert "20 samples" in run_cli("verify", url, env=env).stdout
    # version 1 is whichever ingest committed first, alone: the same images ingested into a local
    # dataset give the same samples, shard for shard
    s3_store = open_store(url)
    v1_ids = sorted(read_manifest(s3_store, 1).samples.column("sample_id").to_pylist())
    locals_ = {}
    for tag, src in (("a", a), ("b", b)):
        run_cli(*ingest_args(src, str(tmp_path / f"local-{tag}"), tmp_path, f"l{tag}"))
        locals_[tag] = open_store(str(tmp_path / f"local-{tag}"))
    first = [tag for tag, store in locals_.items()
             if sorted(read_manifest(store).samples.column("sample_id").to_pylist()) == v1_ids]
    assert len(first) == 1, "version 1 holds exactly one source's samples"
    local_shards = read_manifest(locals_[first[0]]).shards.column("shard").to_pylist()
    assert len(local_shards) == 12
    for key in local_shards:
        assert s3_store.get_bytes(key) == locals_[first[0]].get_bytes(key)
    # a version object can only be created once (the commit primitive)
    assert not s3_store.put_if_absent("manifest/v00000001.json", b"{}")


def test_loader_streams_from_s3_like_from_a_local_copy(tmp_path, s3_endpoint):
    """The training stream reads an S3 dataset (ranged GETs) and yields what the local copy yields."""
    from ldisc.data import StreamLoader
    from ldisc.views import ViewConfig

    src = make_source(tmp_path / "src", range(0, 10))
    env = cli_env(**s3_endpoint)
    url, local = "s3://ldisc-test/stream", str(tmp_path / "local")
    run_cli(*ingest_args(src, url, tmp_path, "s3"), env=env)
    run_cli(*ingest_args(src, local, tmp_path, "loc"))
    remote = StreamLoader(url, batch_size=2, seed=1, world_size=1, rank=0, view_config=ViewConfig(view_side=16))
    copy = StreamLoader(local, batch_size=2, seed=1, world_size=1, rank=0, view_config=ViewConfig(view_side=16))
    got, want = list(remote), list(copy)
    assert len(got) == len(want) == 2
    for a, b in zip(got, want):
        assert a["sample_ids"] == b["sample_ids"]
        assert torch.equal(a["x1_1"], b["x1_1"]) and torch.equal(a["mix"], b["mix"])
