"""Prometheus metrics of one training process: scraped over HTTP while it runs, and the textfile."""
from __future__ import annotations

import re
import threading
import time
import urllib.request

from _train_helpers import TINY

from ldisc.train import pretrain
from ldisc.train.env import free_port

NAMES = ("ldisc_train_step_seconds_bucket", "ldisc_train_images_per_second", "ldisc_train_loss",
         "ldisc_train_data_wait_seconds_count", "ldisc_train_bank_fill_ratio",
         "ldisc_train_checkpoint_save_seconds_count", "ldisc_train_checkpoint_step", "ldisc_process_resident_memory_bytes",
         "ldisc_process_max_resident_memory_bytes", "ldisc_train_stage")


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
                  "train.checkpoint_every=3", f"metrics.port={port}", "metrics.linger_s=1"])
    finally:
        done.set()
        t.join()
    last = scrapes[-1]
    for name in NAMES:
        assert re.search(name + r'\{[^}]*rank="0"', last), name
    assert 'ldisc_train_steps_total{rank="0"} 3.0' in last
    assert 'ldisc_train_checkpoint_step{rank="0"} 3.0' in last
    assert 'ldisc_train_loss{rank="0",term="patch"}' in last
    assert 'ldisc_train_bank_fill_ratio{rank="0"} 1.0' in last     # 3 steps x 2 x 64 vectors > 128
    text = (tmp_path / "metrics.rank0.prom").read_text()
    assert 'ldisc_train_steps_total{rank="0"} 3.0' in text
