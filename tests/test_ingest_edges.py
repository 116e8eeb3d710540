"""Ingestion edge cases: symlink loops are quarantined with a reason, unreadable folders are counted and
reported, and the quarantine report (it names source files) goes by default into a private 0700 folder of
the dataset with 0600 permissions, never into the current directory. Real files, the real CLI."""
from __future__ import annotations

import json
import os
import stat

import pytest

from _data_fixtures import gray_image, run_cli, write_image


def _ingest(src, ds, *extra):
    return run_cli("ingest", str(src), "--dataset", str(ds), "--site", "a", "--modality", "xray", "--stored-side", "32",
                   "--no-progress", *extra)


def _report(ds) -> tuple[object, list[dict]]:
    private = ds / ".ldisc-private"
    reports = sorted(private.glob("quarantine-*.jsonl"))
    assert len(reports) == 1, sorted(private.iterdir())
    return reports[0], [json.loads(line) for line in reports[0].read_text().splitlines()]


def test_symlink_loop_is_quarantined_and_report_is_private(tmp_path):
    src, ds = tmp_path / "src", tmp_path / "ds"
    for i in range(3):
        write_image(src / f"img{i}.png", gray_image(i, (40, 32)))
    (src / "loop_a").symlink_to("loop_b")
    (src / "loop_b").symlink_to("loop_a")
    out = _ingest(src, ds)
    assert "quarantined symlink_loop: 2" in out.stdout, out.stdout
    report, rows = _report(ds)
    assert {(r["path"], r["reason"]) for r in rows} == {("loop_a", "symlink_loop"), ("loop_b", "symlink_loop")}
    assert stat.S_IMODE(report.stat().st_mode) == 0o600
    assert stat.S_IMODE(report.parent.stat().st_mode) == 0o700
    assert not list(tmp_path.glob("quarantine-*")) and not list((tmp_path / "src").glob("quarantine-*"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads folders whatever their permissions")
def test_unreadable_folder_is_counted_and_reported(tmp_path):
    src, ds = tmp_path / "src", tmp_path / "ds"
    write_image(src / "ok.png", gray_image(1, (40, 32)))
    write_image(src / "locked" / "hidden.png", gray_image(2, (40, 32)))
    (src / "locked").chmod(0)
    try:
        out = _ingest(src, ds)
    finally:
        (src / "locked").chmod(0o755)
    assert "quarantined unreadable_folder: 1" in out.stdout, out.stdout
    assert ("locked/", "unreadable_folder") in {(r["path"], r["reason"]) for r in _report(ds)[1]}


def test_unreadable_folder_is_reported_by_discovery(tmp_path, monkeypatch):
    """Root cannot be denied a folder: make os.walk's listing fail the way EACCES does."""
    import sharding.discover as discover

    write_image(tmp_path / "ok.png", gray_image(1, (40, 32)))
    (tmp_path / "locked").mkdir()
    real_scandir = os.scandir

    def scandir(path="."):
        if os.fspath(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(discover.os, "scandir", scandir)
    entries = discover.discover(tmp_path)
    assert [(e.rel, e.problem) for e in entries] == [("locked/", "unreadable_folder"), ("ok.png", None)]


def test_leftovers_of_a_killed_ingest_are_reported_then_cleaned(tmp_path):
    src, ds, staging = tmp_path / "src", tmp_path / "ds", tmp_path / "staging"
    for i in range(3):
        write_image(src / f"img{i}.png", gray_image(i, (40, 32)))
    staging.mkdir()
    _ingest(src, ds, "--staging-dir", str(staging))
    dead = 2**22 + 12345                                    # above pid_max: never a live process
    tmp_shard = ds / "shards" / f".tmp-{dead}-0123abcd-x.tar"
    tmp_shard.write_bytes(b"half a shard")
    orphan = ds / "manifest" / "data" / "v00000002-deadbeef0000.samples.parquet"
    orphan.write_bytes(b"PAR1")
    spool = staging / "ldisc-ingest-killed"
    spool.mkdir(parents=True)
    (spool / "owner.pid").write_text(str(dead))
    (spool / "spool.bin").write_bytes(b"x" * 100)
    out = run_cli("verify", str(ds))
    assert f"LEFTOVER temporary_files {tmp_shard}" in out.stdout
    assert "LEFTOVER orphan_manifest_files manifest/data/v00000002-deadbeef0000.samples.parquet" in out.stdout
    write_image(src / "img9.png", gray_image(9, (40, 32)))
    out = _ingest(src, ds, "--staging-dir", str(staging))
    assert "cleaned leftover temporary_files: 1" in out.stdout and "cleaned leftover stale_spools: 1" in out.stdout
    assert "cleaned leftover orphan_manifest_files: 1" in out.stdout
    assert not tmp_shard.exists() and not orphan.exists() and not spool.exists()
    assert "LEFTOVER" not in run_cli("verify", str(ds)).stdout
