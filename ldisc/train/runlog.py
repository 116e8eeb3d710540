"""Run logs: ``losses.jsonl`` (rank 0, one record per optimiser step), ``samples.rank<R>.jsonl``
(the sample ids each rank consumed per step, when the data source names them), the loss curve.

On resume every log is cut back to the checkpoint's step, so a resumed run's logs read exactly like
those of an uninterrupted one.
"""
from __future__ import annotations

import json
from pathlib import Path

CURVE_TERMS = ("patch", "mix", "region", "entropy", "adversarial", "total", "val_loss")


class JsonlLog:
    def __init__(self, path: Path, enabled: bool = True):
        self.path, self.enabled = Path(path), enabled

    def append(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as fh:
                fh.write(json.dumps(record) + "\n")

    def read(self) -> list[dict]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def truncate(self, step: int) -> list[dict]:
        """Keep records with ``step`` ≤ ``step`` (drop those written after the checkpoint)."""
        kept = [r for r in self.read() if r["step"] <= step]
        if self.enabled:
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
            tmp.replace(self.path)
        return kept


def plot_losses(records: list[dict], path: Path) -> None:
    if not records:
        return
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for term in CURVE_TERMS:
        pts = [(r["step"], r[term]) for r in records if term in r and r[term] > 0]
        if pts:
            ax.plot(*zip(*pts), label=term)
    for r0, r1 in zip(records, records[1:]):
        if r1["stage"] != r0["stage"]:
            ax.axvline(r0["step"] + 0.5, color="grey", ls=":", lw=1)
    ax.set_xlabel("optimiser step"), ax.set_ylabel("loss (global batch)"), ax.set_yscale("log"), ax.legend()
    ax.set_title("LD pretraining losses")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
