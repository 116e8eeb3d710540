"""Two "nodes" on 127.0.0.1: two torchrun agents (``--nnodes 2``, one process each) meet through a
c10d rendezvous, train as one job of two ranks, and each rank serves its Prometheus metrics."""
from __future__ import annotations

import json
import threading
import time
import urllib.request

from _train_helpers import TINY, finish, losses_without_timing, sample_log, start_torchrun

from ldisc.train.env import free_port
from _prom import value


def _scrape_until_done(port: int, procs, found: dict) -> None:
    """Keep the newest scrape of ``port`` until every process has exited."""
    while any(p.poll() is None for p in procs):
        try:
            found[port] = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
        except OSError:
            pass
        time.sleep(0.3)


def test_two_nodes_one_job(tmp_path):
    rdzv = free_port()
    metric_ports = [free_port(), free_port()]
    common = [*TINY, f"run_dir={tmp_path}", "train.stage1_steps=2", "train.stage2_steps=2",
              "train.checkpoint_every=2", "metrics.linger_s=3"]
    procs = [start_torchrun([*common, f"metrics.port={metric_ports[node]}"], rdzv, nproc=1, nnodes=2,
                            node_rank=node) for node in (0, 1)]
    found: dict[int, str] = {}
    scrapers = [threading.Thread(target=_scrape_until_done, args=(port, procs, found)) for port in metric_ports]
    for s in scrapers:
        s.start()
    outputs = [finish(p) for p in procs]
    for s in scrapers:
        s.join()
    assert "final total loss" in outputs[0]
    meta = json.loads((tmp_path / "checkpoints" / "step_0000004" / "meta.json").read_text())
    assert meta["world_size"] == 2
    assert [r["step"] for r in losses_without_timing(tmp_path)] == [1, 2, 3, 4]
    for rank in (0, 1):                                              # each rank read 2 images a step
        assert [len(r["sample_ids"]) for r in sample_log(tmp_path, rank)] == [2, 2, 2, 2]
    # metrics from every rank, labelled by rank, final values (scraped while the ranks linger)
    for rank, port in enumerate(metric_ports):
        text = found[port]
        label = {"run": tmp_path.name, "rank": str(rank)}
        assert value(text, "ldisc_train_steps_total", **label) == 4
        assert value(text, "ldisc_train_step", **label) == 4
        assert value(text, "ldisc_train_step_duration_seconds_count", **label) == 4
        assert value(text, "ldisc_train_data_wait_duration_seconds_count", **label) == 4
        assert value(text, "ldisc_train_images_total", **label) > 0
        assert value(text, "ldisc_train_checkpoint_save_duration_seconds_count", **label) == 2
        assert value(text, "ldisc_process_resident_memory_bytes", **label) > 10e6
        assert value(text, "ldisc_train_loss", term="region", **label) > 0
        assert value(text, "ldisc_train_bank_fill_ratio", **label) >= 0
