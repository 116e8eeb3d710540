"""The report's charts: grouped Dice bars per task, and test Dice against the pretraining step."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

if TYPE_CHECKING:
    from ldisc.eval.report import Summary

DPI = 120


def _label(m: tuple[str, str]) -> str:
    return f"{m[0]} · {m[1]}"


def bar_chart(s: "Summary", path: Path) -> Path:
    """One group of bars per task, one bar per (checkpoint, protocol): mean ± std over seeds."""
    fig, ax = plt.subplots(figsize=(min(16, max(6, 1.1 * len(s.tasks) + 2)), 4.5))
    width = 0.8 / max(1, len(s.methods))
    x = np.arange(len(s.tasks))
    for i, m in enumerate(s.methods):
        means = [s.cells[(t, m)].mean if (t, m) in s.cells else np.nan for t in s.tasks]
        stds = [s.cells[(t, m)].std if (t, m) in s.cells else 0 for t in s.tasks]
        ax.bar(x + (i - (len(s.methods) - 1) / 2) * width, means, width, yerr=stds, capsize=2, label=_label(m))
    ax.set_xticks(x, s.tasks, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("test Dice (mean ± std over seeds)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def curve_chart(s: "Summary", path: Path) -> Path | None:
    """Test Dice vs. pretraining step per (task, protocol), the baseline as a dashed line named in the
    legend. With one checkpoint the chart says that it shows one point per task, not a curve."""
    stepped = [m for m in s.methods if m[0] in s.steps]
    if not stepped:
        return None
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for task in s.tasks:
        for proto in sorted({m[1] for m in stepped}):
            pts = sorted((s.steps[m[0]], s.cells[(task, m)].mean) for m in stepped
                         if m[1] == proto and (task, m) in s.cells)
            if pts:
                line, = ax.plot(*zip(*pts), marker="o", label=f"{task} · {proto}")
                base = s.cells.get((task, (s.baseline, proto)))
                if base is not None:
                    ax.axhline(base.mean, color=line.get_color(), linestyle="--", linewidth=0.8,
                               label=f"{task} · {proto} · {s.baseline} (baseline)")
    steps = sorted({s.steps[m[0]] for m in stepped})
    title = "test Dice vs. pretraining step (dashed: baseline)"
    if len(steps) == 1:
        title = f"one checkpoint (step {steps[0]}): one point per task, no curve yet (dashed: baseline)"
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("pretraining step")
    ax.set_ylabel("test Dice (mean over seeds)")
    ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path
