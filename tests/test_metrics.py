"""Prometheus metrics of one training process: scraped over HTTP while it runs, and the textfile."""
from __future__ import annotations

import re
import threading
import time
import urllib.request

from _train_helpers import TINY

from ldisc.train import pretrain
from ldisc.train.env import free_port
from _prom import lint, value

NAMES = ("ldisc_train_step_duration_seconds_bucket", "ldisc_train_images_total", "ldisc_train_loss",
         "ldisc_train_data_wait_duration_seconds_count", "ldisc_train_bank_fill_ratio", "ldisc_train_step",
         "ldisc_train_checkpoint_save_duration_seconds_count", "ldisc_train_checkpoint_step",
         "ldisc_process_resident_memory_bytes", "ldisc_process_max_resident_memory_bytes", "ldisc_train_stage")


def test_metrics_are_served_and_written(tmp_path):
    port = free_port()
    scrapes: list[str] = []
    done = threading.Event()

    def scrape():
        while not done.is_set():
            try:
                scrapes.append(urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode())
            except OSError:
                pass
            time.sleep(0.2)

    t = threading.Thread(target=scrape)
    t.start()
    try:
        pretrain([*TINY, f"run_dir={tmp_path}", "train.stage1_steps=3", "train.stage2_steps=0", "bank.entries=128",
                  "train.checkpoint_every=3", f"metrics.port={port}", "metrics.linger_s=1",
                  f"metrics.textfile_dir={tmp_path / 'collector'}"])
    finally:
        done.set()
        t.join()
    last = scrapes[-1]
    for name in NAMES:
        assert re.search(name + r'\{[^}]*rank="0"', last), name
    run = tmp_path.name                                             # the run label: the run_dir's name
    assert value(last, "ldisc_train_steps_total", run=run, rank="0") == 3
    assert value(last, "ldisc_train_step", rank="0") == value(last, "ldisc_train_checkpoint_step", rank="0") == 3
    assert value(last, "ldisc_train_images_total", rank="0") == 3 * 5        # batch 1: 5 views a step
    assert value(last, "ldisc_train_loss", rank="0", term="patch") > 0
    assert value(last, "ldisc_train_bank_fill_ratio", rank="0") == 1.0   # 3 steps x 2 x 64 vectors > 128
    assert lint(last) == [] and "_created" not in scrapes[0]              # served with the same conventions
    text = (tmp_path / "metrics.rank0.prom").read_text()
    assert value(text, "ldisc_train_steps_total", run=run, rank="0") == 3 and lint(text) == []
    # metrics.textfile_dir: the same file again, named for a shared node-exporter folder
    assert (tmp_path / "collector" / f"ldisc_train_{run}_rank0.prom").read_text() == text
