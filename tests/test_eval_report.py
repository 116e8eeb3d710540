"""The report from a results store, and ``mode=watch`` following a run's checkpoints as they appear."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from ldisc.eval.overlays import save_overlays
from ldisc.eval.report import summarise, write_report
from ldisc.eval.store import ResultsStore
from ldisc.model import LDNet, save_encoder
from ldisc.train.checkpoint import ENCODER_FILE, save_checkpoint

REPO = Path(__file__).resolve().parents[1]

# task → checkpoint → protocol → Dice of seeds 0, 1, 2 (one seed: synth_jsrt_lung, a tie)
DICE = {
    "synth_rite_vessel": {"random": {"frozen": [0.20, 0.30, 0.25]}, "ld/step_100": {"frozen": [0.40, 0.50, 0.45]}},
    "synth_jsrt_heart": {"random": {"frozen": [0.80, 0.82, 0.84]}, "ld/step_100": {"frozen": [0.70, 0.71, 0.72]}},
    "synth_idrid_disc": {"random": {"frozen": [0.50, 0.50, 0.50]}, "ld/step_100": {"frozen": [0.60, 0.70, 0.80]}},
    "synth_jsrt_lung": {"random": {"frozen": [0.9001]}, "ld/step_100": {"frozen": [0.8999]}},
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
                                 "status": "ok", "attempt": 1, "dice_mean": d, "dice_per_image": [d - 0.1, d + 0.1],
                                 "checkpoint_step": 100 if ck != "random" else None, "n_test": 2,
                                 "checkpoint_spec": "runs/x/checkpoints/step_0000100" if ck != "random" else "random",
                                 "checkpoint_digest": "abc123" if ck != "random" else None,
                                 "epochs_frozen": 3, "epochs_finetune": 3, "lr": 1e-3, "finetune_lr": 1e-3,
                                 "threshold": 0.5, "versions": json.dumps({"torch": "2.13.0", "ldisc": "0.2.0"}),
                                 "started_at": datetime(2026, 12, 2, 8, 0, tzinfo=timezone.utc),
                                 "finished_at": datetime(2026, 12, 2, 8, 1, tzinfo=timezone.utc)})
                    img = np.full((16, 16, 3), (200, 90, 40), np.uint8)   # fundus-like orange
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
    table = pq.read_table(tmp_path / "results.parquet")
    assert table.num_rows == 21
    assert pa.types.is_timestamp(table.schema.field("finished_at").type), "real timestamps, not text"
    assert set(table.column("threshold").to_pylist()) == {0.5, None}, "recorded (None: the failed run)"
    paths = write_report(tmp_path)
    md = paths["markdown"].read_text()
    assert "| synth_rite_vessel | 0.250 ± 0.050 | **0.450 ± 0.050 (+0.200)** |" in md
    assert "| synth_jsrt_heart | **0.820 ± 0.020** | 0.710 ± 0.010 (-0.110) |" in md
    assert "| synth_idrid_disc | 0.500 ± 0.000 | **0.700 ± 0.100 (+0.200)** |" in md
    # one seed: no "± 0.000"; 0.9001 vs 0.8999 is 0.900 vs 0.900 at the shown precision: a tie, both bold
    assert "| synth_jsrt_lung | **0.900** | **0.900 (+0.000)** |" in md
    assert "frozen: ld/step_100 wins 2 of 4; random wins 1 of 4; 1 tie(s): synth_jsrt_lung" in md
    assert "frozen: ld/step_100 vs random: better on 2, worse on 1, tied on 1 of 4 tasks" in md
    assert "| synth_rite_vessel | 0.25 [0.16–0.34] n=6 | 0.45 [0.36–0.54] n=6 |" in md, "per-image spread"
    assert "1 run(s) failed" in md
    assert "| ld/step_100 | `runs/x/checkpoints/step_0000100` | `abc123` | 100 |" in md
    assert "| synth_rite_vessel | frozen | 0, 1, 2 | 2 | 3 / 3 | 0.001 / 0.001 | 0.5 |" in md
    assert "Versions: ldisc 0.2.0; torch 2.13.0" in md
    assert "../" not in md, "every picture the Markdown shows lies inside report/"
    html = paths["html"].read_text()
    assert "<b>0.450 ± 0.050 (+0.200)</b>" in html, "bold best in the HTML as in the Markdown"
    srcs = re.findall(r'src="([^"]*)"', html)
    assert srcs and all(src.startswith("data:image/png;base64,") for src in srcs), "one self-contained file"
    assert len(srcs) == 2 + 4 * 2, "dice + curve charts, one overlay per task and checkpoint"
    for key in ("bars", "curve"):
        with Image.open(paths[key]) as im:
            assert im.format == "PNG" and im.width > 300
    # overlays of the first seed, copied into the report folder, at least 256 px
    assert "](overlays/run001/0_seed0.png)" in md and (paths["markdown"].parent / "overlays/run001/0_seed0.png").is_file()
    with Image.open(tmp_path / "overlays/run001/0_seed0.png") as im:
        assert min(im.size) >= 256
        px = np.asarray(im.convert("RGB"))
    scale = im.width // 16
    assert tuple(px[4 * scale, 8 * scale]) == (40, 255, 40), "truth outline in green"
    inside = px[8 * scale, 8 * scale]
    assert inside[2] > inside[0] and inside[2] > inside[1], "prediction in blue, visible on an orange fundus"
    s = summarise(tmp_path)
    assert s.steps == {"ld/step_100": 100} and s.n_failed == 1


def test_results_written_before_timestamps_were_real_still_load(tmp_path):
    store = ResultsStore(tmp_path)
    store.write({"run_id": "new", "checkpoint": "random", "task": "t", "protocol": "frozen", "seed": 0, "status": "ok",
                 "started_at": datetime(2026, 12, 2, 8, 0, tzinfo=timezone.utc)})
    old = pa.table({"run_id": ["old"], "checkpoint": ["random"], "task": ["t"], "protocol": ["frozen"], "seed": [1],
                    "status": ["ok"], "started_at": ["2026-11-30T10:00:00+00:00"]})
    pq.write_table(old, tmp_path / "runs" / "old.parquet")
    rows = {r["run_id"]: r for r in ResultsStore(tmp_path).rows()}
    assert rows["old"]["started_at"] == datetime(2026, 11, 30, 10, 0, tzinfo=timezone.utc)
    assert rows["old"]["threshold"] is None and rows["new"]["seed"] == 0


def test_curve_with_one_checkpoint_says_so(tmp_path):
    from ldisc.eval.report import summarise as summarise_

    store = ResultsStore(tmp_path)
    _fill(store)
    s = summarise_(tmp_path)
    assert sorted(set(s.steps.values())) == [100]
    import matplotlib.pyplot as plt
    from ldisc.eval import report_charts

    captured = {}
    original = plt.Figure.savefig

    def spy(fig, path, **kw):
        captured[Path(path).name] = (fig.axes[0].get_title(), [t.get_text() for t in fig.axes[0].get_legend().get_texts()])
        return original(fig, path, **kw)

    plt.Figure.savefig = spy
    try:
        report_charts.curve_chart(s, tmp_path / "curve.png")
    finally:
        plt.Figure.savefig = original
    title, legend = captured["curve.png"]
    assert title.startswith("one checkpoint (step 100)")
    assert "synth_rite_vessel · frozen · random (baseline)" in legend


def _save_checkpoint(run_dir: Path, step: int) -> None:
    """A checkpoint holding an encoder, written by the trainer's own atomic save."""
    torch.manual_seed(step)
    save_checkpoint(run_dir, step, lambda tmp: save_encoder(LDNet("tiny"), tmp / ENCODER_FILE), keep=0)


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
