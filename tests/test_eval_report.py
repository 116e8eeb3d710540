"""The report from a results store, and ``mode=watch`` following a run's checkpoints as they appear."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import pyarrow.parquet as pq
from PIL import Image

from ldisc.eval.overlays import save_overlays
from ldisc.eval.report import summarise, write_report
from ldisc.eval.store import ResultsStore
from ldisc.model import LDNet, save_encoder

REPO = Path(__file__).resolve().parents[1]

# task → checkpoint → protocol → Dice of seeds 0, 1, 2
DICE = {
    "synth_rite_vessel": {"random": {"frozen": [0.20, 0.30, 0.25]}, "ld/step_100": {"frozen": [0.40, 0.50, 0.45]}},
    "synth_jsrt_heart": {"random": {"frozen": [0.80, 0.82, 0.84]}, "ld/step_100": {"frozen": [0.70, 0.71, 0.72]}},
    "synth_idrid_disc": {"random": {"frozen": [0.50, 0.50, 0.50]}, "ld/step_100": {"frozen": [0.60, 0.70, 0.80]}},
}


def _fill(store: ResultsStore) -> None:
    n = 0
    for task, by_ck in DICE.items():
        for ck, by_proto in by_ck.items():
            for proto, values in by_proto.items():
                for seed, d in enumerate(values):
                    n += 1
                    run_id = f"run{n:03d}"
                    store.write({"run_id": run_id, "checkpoint": ck, "task": task, "protocol": proto, "seed": seed,
                                 "status": "ok", "attempt": 1, "dice_mean": d, "dice_per_image": [d, d],
                                 "checkpoint_step": 100 if ck != "random" else None})
                    img = np.full((16, 16, 3), 90, np.uint8)
                    truth = np.zeros((16, 16), bool)
                    truth[4:12, 4:12] = True
                    save_overlays(store.dir / "overlays" / run_id,
                                  [{"name": f"seed{seed}", "image": img, "truth": truth,
                                    "prob": (truth * 255).astype(np.uint8)}])
    store.write({"run_id": "broken", "checkpoint": "ld/step_100", "task": "synth_jsrt_heart", "protocol": "frozen",
                 "seed": 9, "status": "failed", "attempt": 3, "error": "boom"})


def test_report_table_differences_wins_chart_and_overlays(tmp_path):
    store = ResultsStore(tmp_path)
    _fill(store)
    assert pq.read_table(tmp_path / "results.parquet").num_rows == 19
    paths = write_report(tmp_path)
    md = paths["markdown"].read_text()
    assert "| synth_rite_vessel | 0.250 ± 0.050 | **0.450 ± 0.050 (+0.200)** |" in md
    assert "| synth_jsrt_heart | **0.820 ± 0.020** | 0.710 ± 0.010 (-0.110) |" in md
    assert "| synth_idrid_disc | 0.500 ± 0.000 | **0.700 ± 0.100 (+0.200)** |" in md
    assert "frozen: ld/step_100 wins 2 of 3; random wins 1 of 3" in md
    assert "1 run(s) failed" in md
    html = paths["html"].read_text()
    assert "<table>" in html and "0.450 ± 0.050 (+0.200)" in html
    for key in ("bars", "curve"):
        with Image.open(paths[key]) as im:
            assert im.format == "PNG" and im.width > 300
    # overlays of the first seed, linked relative to the report
    assert "](../overlays/run001/0_seed0.png)" in md and (tmp_path / "overlays/run001/0_seed0.png").is_file()
    with Image.open(tmp_path / "overlays/run001/0_seed0.png") as im:
        px = np.asarray(im.convert("RGB"))
    assert tuple(px[8 * 2, 4 * 2]) == (40, 255, 40) and px[16, 16, 0] > px[16, 16, 1], "truth outline, red prediction"
    s = summarise(tmp_path)
    assert s.steps == {"ld/step_100": 100} and s.n_failed == 1


def _save_checkpoint(run_dir: Path, step: int) -> None:
    """Like the trainer: write into a temporary dir, then rename it into place."""
    tmp = run_dir / "checkpoints" / f".tmp-step_{step:07d}"
    torch.manual_seed(step)
    save_encoder(LDNet("tiny"), tmp / "encoder.pt")
    os.replace(tmp, run_dir / "checkpoints" / f"step_{step:07d}")


def test_watch_evaluates_new_checkpoints_as_they_appear(tmp_path):
    run_dir, out = tmp_path / "pretrain-run", tmp_path / "eval"
    _save_checkpoint(run_dir, 10)
    cmd = [sys.executable, "-m", "ldisc.eval.cli", "mode=watch", f"watch.dir={run_dir}", "fleet.mode=serial", "watch.interval_s=0.3",
           "watch.idle_timeout_s=6", "tasks=[synth_idrid_disc@8]", "protocols=[frozen]", "seeds=[0]",
           "protocol=smoke", "data.max_test=4", "fleet.progress=false", f"out_dir={out}"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if any(r["checkpoint_step"] == 10 for r in ResultsStore(out).rows("ok")):
            break
        time.sleep(0.2)
    _save_checkpoint(run_dir, 20)
    stdout, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, stdout
    rows = ResultsStore(out).rows("ok")
    assert sorted((r["checkpoint"], r["checkpoint_step"]) for r in rows) == [
        ("pretrain-run/step_10", 10), ("pretrain-run/step_20", 20), ("random", None)]
    assert (out / "snapshots" / "pretrain-run" / "step_0000020" / "encoder.pt").is_file()
    assert (out / "report" / "curve.png").is_file()
    assert "pretrain-run/step_20 · frozen" in (out / "report" / "report.md").read_text()
