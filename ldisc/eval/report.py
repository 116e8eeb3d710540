"""The report: tasks × (checkpoint, protocol) Dice table, differences to random init, wins, charts, overlays.

``write_report(results_dir)`` reads ``results.parquet`` (rows with status ``ok``) and writes into
``<results_dir>/report/``: ``report.md``, ``report.html``, ``dice.png`` (grouped bars, mean ± std over
seeds) and, when checkpoints carry training steps, ``curve.png`` (test Dice vs. pretraining step).
Cells are mean ± sample standard deviation over seeds; Δ is the difference of means to the baseline
(random init) under the same protocol; a task's winner is the checkpoint with the highest mean.
"""
from __future__ import annotations

import html
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ldisc.eval.store import ResultsStore  # noqa: E402
from ldisc.train.clusters import cluster_section  # noqa: E402

Method = tuple[str, str]  # (checkpoint label, protocol)


@dataclass
class Cell:
    values: list[float]

    @property
    def mean(self) -> float:
        return float(np.mean(self.values))

    @property
    def std(self) -> float:
        return float(np.std(self.values, ddof=1)) if len(self.values) > 1 else 0.0


@dataclass
class Summary:
    tasks: list[str]
    methods: list[Method]
    cells: dict[tuple[str, Method], Cell]
    baseline: str
    wins: dict[str, dict[str, list[str]]]  # protocol → checkpoint → tasks won
    steps: dict[str, int]                  # checkpoint label → step, where known
    overlays: dict[tuple[str, Method], list[Path]]
    n_failed: int


def _method_order(methods: set[Method], baseline: str, steps: dict[str, int]) -> list[Method]:
    return sorted(methods, key=lambda m: (m[1] != "frozen", m[0] != baseline, steps.get(m[0], -1), m[0], m[1]))


def summarise(results_dir: str | Path, baseline: str = "random", overlays_per_task: int = 3) -> Summary:
    """Collect per-seed test Dice into cells and work out differences, winners and overlay files."""
    store = ResultsStore(results_dir)
    rows = store.rows()
    ok = [r for r in rows if r["status"] == "ok" and r["dice_mean"] is not None]  # landmark rows: landmark_table
    cells: dict[tuple[str, Method], Cell] = {}
    steps: dict[str, int] = {}
    first_run: dict[tuple[str, Method], tuple[int, str]] = {}
    for r in ok:
        key = (r["task"], (r["checkpoint"], r["protocol"]))
        cells.setdefault(key, Cell([])).values.append(r["dice_mean"])
        if r["checkpoint_step"] is not None:
            steps[r["checkpoint"]] = int(r["checkpoint_step"])
        first_run[key] = min(first_run.get(key, (r["seed"], r["run_id"])), (r["seed"], r["run_id"]))
    tasks = sorted({t for t, _ in cells})
    methods = _method_order({m for _, m in cells}, baseline, steps)
    wins: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for proto in sorted({m[1] for m in methods}):
        for task in tasks:
            scored = [(cells[(task, m)].mean, m[0]) for m in methods if m[1] == proto and (task, m) in cells]
            if len(scored) > 1:
                wins[proto][max(scored)[1]].append(task)
    overlays = {key: sorted((store.dir / "overlays" / run_id).glob("*.png"))[:overlays_per_task]
                for key, (_, run_id) in first_run.items()}
    return Summary(tasks, methods, cells, baseline, {p: dict(w) for p, w in wins.items()}, steps, overlays,
                   sum(r["status"] == "failed" for r in rows))


def _cell_text(s: Summary, task: str, m: Method) -> str:
    cell = s.cells.get((task, m))
    if cell is None:
        return "—"
    text = f"{cell.mean:.3f} ± {cell.std:.3f}"
    base = s.cells.get((task, (s.baseline, m[1])))
    if base is not None and m[0] != s.baseline:
        text += f" ({cell.mean - base.mean:+.3f})"
    return text


def _header(m: Method) -> str:
    return f"{m[0]} · {m[1]}"


def win_lines(s: Summary) -> list[str]:
    """The paper's "wins n of N" view, one line per protocol."""
    lines = []
    for proto, by_ckpt in sorted(s.wins.items()):
        n = sum(len(v) for v in by_ckpt.values())
        parts = [f"{ck} wins {len(t)} of {n}" for ck, t in sorted(by_ckpt.items(), key=lambda kv: -len(kv[1]))]
        lines.append(f"{proto}: " + "; ".join(parts))
    return lines


def markdown_table(s: Summary) -> str:
    """Tasks × (checkpoint · protocol), test Dice mean ± std over seeds (Δ to the baseline)."""
    head = "| task | " + " | ".join(_header(m) for m in s.methods) + " |"
    rule = "|---|" + "---|" * len(s.methods)
    body = []
    for task in s.tasks:
        best = {}
        for m in s.methods:
            if (task, m) in s.cells:
                best[m[1]] = max(best.get(m[1], -1.0), s.cells[(task, m)].mean)
        cells = []
        for m in s.methods:
            text = _cell_text(s, task, m)
            rivals = sum(1 for other in s.methods if other[1] == m[1] and (task, other) in s.cells)
            won = (task, m) in s.cells and s.cells[(task, m)].mean == best[m[1]] and rivals > 1
            cells.append(f"**{text}**" if won else text)
        body.append(f"| {task} | " + " | ".join(cells) + " |")
    return "\n".join([head, rule, *body])


LANDMARK_COLUMNS = (("mre_px", "MRE px"), ("mre_pct", "MRE % width"), ("sr_2pct", "SR 2%"), ("sr_4pct", "SR 4%"),
                    ("sr_8pct", "SR 8%"))


def landmark_table(results_dir: str | Path) -> str:
    """Landmark tasks: one line per (task, checkpoint, method), scores as mean ± std over seeds ("" if none)."""
    groups: dict[tuple[str, str, str], list[dict]] = defaultdict(list)
    for r in ResultsStore(results_dir).rows("ok"):
        if r.get("mre_px") is not None:
            groups[(r["task"], r["checkpoint"], r["protocol"])].append(r)
    if not groups:
        return ""
    lines = ["| landmark task | checkpoint | method | " + " | ".join(h for _, h in LANDMARK_COLUMNS) + " |",
             "|---|---|---|" + "---|" * len(LANDMARK_COLUMNS)]
    for (task, ck, method), rs in sorted(groups.items()):
        cells = [Cell([float(r[k]) for r in rs]) for k, _ in LANDMARK_COLUMNS]
        lines.append(f"| {task} | {ck} | {method} | " + " | ".join(f"{c.mean:.2f} ± {c.std:.2f}" for c in cells) + " |")
    return "\n".join(lines)


def bar_chart(s: Summary, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(min(16, max(6, 1.1 * len(s.tasks) + 2)), 4.5))
    width = 0.8 / max(1, len(s.methods))
    x = np.arange(len(s.tasks))
    for i, m in enumerate(s.methods):
        means = [s.cells[(t, m)].mean if (t, m) in s.cells else np.nan for t in s.tasks]
        stds = [s.cells[(t, m)].std if (t, m) in s.cells else 0 for t in s.tasks]
        ax.bar(x + (i - (len(s.methods) - 1) / 2) * width, means, width, yerr=stds, capsize=2, label=_header(m))
    ax.set_xticks(x, s.tasks, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("test Dice (mean ± std over seeds)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def curve_chart(s: Summary, path: Path) -> Path | None:
    """Test Dice vs. pretraining step per (task, protocol); the baseline as a dashed line."""
    stepped = [m for m in s.methods if m[0] in s.steps]
    if not stepped:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for task in s.tasks:
        for proto in sorted({m[1] for m in stepped}):
            pts = sorted((s.steps[m[0]], s.cells[(task, m)].mean) for m in stepped
                         if m[1] == proto and (task, m) in s.cells)
            if pts:
                line, = ax.plot(*zip(*pts), marker="o", label=f"{task} · {proto}")
                base = s.cells.get((task, (s.baseline, proto)))
                if base is not None:
                    ax.axhline(base.mean, color=line.get_color(), linestyle="--", linewidth=0.8)
    ax.set_xlabel("pretraining step")
    ax.set_ylabel("test Dice (mean over seeds)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _rel(path: Path, start: Path) -> str:
    return Path(os.path.relpath(path, start)).as_posix()


def write_report(results_dir: str | Path, baseline: str = "random", overlays_per_task: int = 3) -> dict[str, Path]:
    """Write report.md, report.html, dice.png (and curve.png) under ``<results_dir>/report``."""
    s = summarise(results_dir, baseline, overlays_per_task)
    out = Path(results_dir) / "report"
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "report.md", "html": out / "report.html"}
    if s.cells:
        paths["bars"] = bar_chart(s, out / "dice.png")
        curve = curve_chart(s, out / "curve.png")
        if curve is not None:
            paths["curve"] = curve
    specs = {r["checkpoint"]: r["checkpoint_spec"] for r in ResultsStore(results_dir).rows()}
    paths["markdown"].write_text(render_markdown(s, paths, out) + "\n".join(cluster_section(specs, out)))
    paths["html"].write_text(render_html(s, paths, out))
    return paths


def render_markdown(s: Summary, paths: dict[str, Path], out: Path) -> str:
    lines = ["# ldisc downstream evaluation", "",
             f"Test Dice at threshold 0.5, mean ± std over seeds; (Δ) = difference to `{s.baseline}` under the "
             "same protocol; **bold** = best checkpoint for the task and protocol.", "", markdown_table(s), ""]
    lines += [f"- {line}" for line in win_lines(s)]
    landmarks = landmark_table(out.parent)
    if landmarks:
        lines += ["", "Landmarks: mean radial error and success rate within 2/4/8 % of the image width, "
                  "mean ± std over seeds (templates).", "", landmarks]
    if s.n_failed:
        lines.append(f"- {s.n_failed} run(s) failed; see `status`/`error` in results.parquet")
    for key in ("bars", "curve"):
        if key in paths:
            lines += ["", f"![{key}]({paths[key].name})"]
    lines += ["", "## Predictions (red) and ground truth (green outline), first seed", ""]
    for task in s.tasks:
        imgs = [(m, p) for m in s.methods for p in s.overlays.get((task, m), [])]
        if imgs:
            lines.append(f"**{task}**  ")
            lines += [f"![{_header(m)}]({_rel(p, out)}) " for m, p in imgs]
            lines.append("")
    return "\n".join(lines) + "\n"


def render_html(s: Summary, paths: dict[str, Path], out: Path) -> str:
    e = html.escape
    head = "".join(f"<th>{e(_header(m))}</th>" for m in s.methods)
    rows = "".join("<tr><td>" + e(t) + "</td>" + "".join(f"<td>{e(_cell_text(s, t, m))}</td>" for m in s.methods)
                   + "</tr>" for t in s.tasks)
    charts = "".join(f'<img src="{paths[k].name}" alt="{k}">' for k in ("bars", "curve") if k in paths)
    figs = ""
    for task in s.tasks:
        imgs = "".join(f'<figure><img src="{e(_rel(p, out))}"><figcaption>{e(_header(m))}</figcaption></figure>'
                       for m in s.methods for p in s.overlays.get((task, m), []))
        if imgs:
            figs += f"<h3>{e(task)}</h3><div class='row'>{imgs}</div>"
    wins = "".join(f"<li>{e(line)}</li>" for line in win_lines(s))
    return ("<!doctype html><html><head><meta charset='utf-8'><title>ldisc evaluation</title><style>"
            "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
            "padding:4px 8px;text-align:right}td:first-child{text-align:left}.row{display:flex;flex-wrap:wrap}"
            "figure{margin:4px}figcaption{font-size:70%}</style></head><body><h1>ldisc downstream evaluation</h1>"
            f"<p>Test Dice at threshold 0.5, mean ± std over seeds; (Δ) = difference to {e(s.baseline)}.</p>"
            f"<table><tr><th>task</th>{head}</tr>{rows}</table><ul>{wins}</ul>{charts}"
            f"<h2>Predictions (red) and ground truth (green)</h2>{figs}</body></html>\n")
