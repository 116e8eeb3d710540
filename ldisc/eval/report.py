"""The report: tasks × (checkpoint, protocol) Dice table, differences to random init, wins, charts, overlays.

``write_report(results_dir)`` reads ``results.parquet`` (rows with status ``ok``) and writes
``<results_dir>/report/``, a folder that can be mailed or archived on its own:

- ``report.md``: the Markdown; every picture it shows is a file inside ``report/``;
- ``report.html``: ONE self-contained file, rendered from the same Markdown, every picture embedded;
- ``dice.png`` (grouped bars, mean ± std over seeds), ``curve.png`` (test Dice vs. pretraining step,
  when checkpoints carry steps) and ``overlays/<run>/…`` (copies of the overlays shown).

Cells are the mean over seeds, ± the sample standard deviation when there are two or more seeds; Δ is
the difference of means to the baseline (random init) under the same protocol. A task's winner is the
checkpoint with the highest mean at the shown precision (3 decimals); equal best means are a tie,
counted as a tie and not as a win. A second table gives the spread over test images (median [IQR]).
"""
from __future__ import annotations

import json
import shutil
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ldisc.eval.report_charts import bar_chart, curve_chart
from ldisc.eval.report_html import markdown_to_html
from ldisc.eval.store import RESULTS_FILE, ResultsStore
from ldisc.train.clusters import cluster_section

Method = tuple[str, str]  # (checkpoint label, protocol)
DECIMALS = 3              # the table's precision; means equal at this precision are a tie


@dataclass
class Cell:
    values: list[float]                                  # one score per seed
    images: list[float] = field(default_factory=list)    # per-image Dice, every seed's test images

    @property
    def mean(self) -> float:
        return float(np.mean(self.values))

    @property
    def std(self) -> float:
        return float(np.std(self.values, ddof=1)) if len(self.values) > 1 else 0.0

    def text(self, decimals: int = DECIMALS) -> str:
        """``mean ± std`` over seeds; just the mean with one seed (a spread of one value is not zero)."""
        if len(self.values) == 1:
            return f"{self.mean:.{decimals}f}"
        return f"{self.mean:.{decimals}f} ± {self.std:.{decimals}f}"

    def spread(self) -> str:
        """Per-image Dice: median [first–third quartile] and the number of images."""
        if not self.images:
            return "—"
        q1, med, q3 = np.percentile(self.images, [25, 50, 75])
        return f"{med:.2f} [{q1:.2f}–{q3:.2f}] n={len(self.images)}"


@dataclass
class Summary:
    tasks: list[str]
    methods: list[Method]
    cells: dict[tuple[str, Method], Cell]
    baseline: str
    best: dict[tuple[str, str], list[str]]        # (protocol, task) → checkpoints with the best mean (ties: several)
    steps: dict[str, int]                         # checkpoint label → step, where known
    overlays: dict[tuple[str, Method], list[Path]]
    n_failed: int
    rows: list[dict] = field(default_factory=list)  # the ok rows (provenance)

    def rounded(self, task: str, m: Method) -> float:
        return round(self.cells[(task, m)].mean, DECIMALS)

    def wins(self) -> dict[str, dict[str, list[str]]]:
        """protocol → checkpoint → tasks it won outright (ties excluded)."""
        out: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
        for (proto, task), winners in self.best.items():
            if len(winners) == 1:
                out[proto][winners[0]].append(task)
        return {p: dict(w) for p, w in out.items()}

    def ties(self) -> dict[str, list[str]]:
        """protocol → tasks whose best mean is shared by two or more checkpoints."""
        out: dict[str, list[str]] = defaultdict(list)
        for (proto, task), winners in sorted(self.best.items()):
            if len(winners) > 1:
                out[proto].append(task)
        return dict(out)


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
        cell = cells.setdefault(key, Cell([]))
        cell.values.append(r["dice_mean"])
        cell.images.extend(r["dice_per_image"] or [])
        if r["checkpoint_step"] is not None:
            steps[r["checkpoint"]] = int(r["checkpoint_step"])
        first_run[key] = min(first_run.get(key, (r["seed"], r["run_id"])), (r["seed"], r["run_id"]))
    tasks = sorted({t for t, _ in cells})
    methods = _method_order({m for _, m in cells}, baseline, steps)
    best: dict[tuple[str, str], list[str]] = {}
    for proto in sorted({m[1] for m in methods}):
        for task in tasks:
            scored = {m[0]: round(cells[(task, m)].mean, DECIMALS) for m in methods
                      if m[1] == proto and (task, m) in cells}
            if len(scored) > 1:
                top = max(scored.values())
                best[(proto, task)] = sorted(ck for ck, v in scored.items() if v == top)
    overlays = {key: sorted((store.dir / "overlays" / run_id).glob("*.png"))[:overlays_per_task]
                for key, (_, run_id) in first_run.items()}
    return Summary(tasks, methods, cells, baseline, best, steps, overlays,
                   sum(r["status"] == "failed" for r in rows), [r for r in rows if r["status"] == "ok"])


def _cell_text(s: Summary, task: str, m: Method) -> str:
    cell = s.cells.get((task, m))
    if cell is None:
        return "—"
    text = cell.text()
    base = s.cells.get((task, (s.baseline, m[1])))
    if base is not None and m[0] != s.baseline:
        text += f" ({round(cell.mean - base.mean, DECIMALS) + 0.0:+.{DECIMALS}f})"   # + 0.0: no "-0.000"
    return f"**{text}**" if m[0] in s.best.get((m[1], task), ()) else text


def _header(m: Method) -> str:
    return f"{m[0]} · {m[1]}"


def win_lines(s: Summary) -> list[str]:
    """The paper's "wins n of N" view, one line per protocol; ties are named, not counted as wins."""
    lines, wins, ties = [], s.wins(), s.ties()
    for proto in sorted({p for p, _ in s.best}):
        n = sum(1 for p, _ in s.best if p == proto)
        by_ckpt = wins.get(proto, {})
        ckpts = sorted({m[0] for m in s.methods if m[1] == proto}, key=lambda ck: (-len(by_ckpt.get(ck, [])), ck))
        parts = [f"{ck} wins {len(by_ckpt.get(ck, []))} of {n}" for ck in ckpts]
        if ties.get(proto):
            parts.append(f"{len(ties[proto])} tie(s): {', '.join(ties[proto])}")
        lines.append(f"{proto}: " + "; ".join(parts))
    return lines


def baseline_lines(s: Summary) -> list[str]:
    """Each checkpoint against the baseline under the same protocol: better / worse / tied task counts."""
    lines = []
    for ck, proto in s.methods:
        if ck == s.baseline:
            continue
        pairs = [(s.rounded(t, (ck, proto)), s.rounded(t, (s.baseline, proto))) for t in s.tasks
                 if (t, (ck, proto)) in s.cells and (t, (s.baseline, proto)) in s.cells]
        if pairs:
            better, worse = sum(a > b for a, b in pairs), sum(a < b for a, b in pairs)
            lines.append(f"{proto}: {ck} vs {s.baseline}: better on {better}, worse on {worse}, "
                         f"tied on {len(pairs) - better - worse} of {len(pairs)} tasks")
    return lines


def _table(s: Summary, cell) -> str:
    head = "| task | " + " | ".join(_header(m) for m in s.methods) + " |"
    rule = "|---|" + "---|" * len(s.methods)
    body = [f"| {task} | " + " | ".join(cell(task, m) for m in s.methods) + " |" for task in s.tasks]
    return "\n".join([head, rule, *body])


def markdown_table(s: Summary) -> str:
    """Tasks × (checkpoint · protocol): test Dice, mean (± std over seeds) (Δ to the baseline); best in bold."""
    return _table(s, lambda task, m: _cell_text(s, task, m))


def spread_table(s: Summary) -> str:
    """Tasks × (checkpoint · protocol): per-image test Dice, median [IQR] over every seed's test images."""
    return _table(s, lambda task, m: s.cells[(task, m)].spread() if (task, m) in s.cells else "—")


LANDMARK_COLUMNS = (("mre_px", "MRE px"), ("mre_pct", "MRE % width"), ("sr_2pct", "SR 2%"), ("sr_4pct", "SR 4%"),
                    ("sr_8pct", "SR 8%"))


def landmark_table(results_dir: str | Path) -> str:
    """Landmark tasks: one line per (task, checkpoint, method), scores as mean (± std over seeds) ("" if none)."""
    groups: dict[tuple[str, str, str], list[dict]] = defaultdict(list)
    for r in ResultsStore(results_dir).rows("ok"):
        if r.get("mre_px") is not None:
            groups[(r["task"], r["checkpoint"], r["protocol"])].append(r)
    if not groups:
        return ""
    lines = ["| landmark task | checkpoint | method | " + " | ".join(h for _, h in LANDMARK_COLUMNS) + " |",
             "|---|---|---|" + "---|" * len(LANDMARK_COLUMNS)]
    for (task, ck, method), rs in sorted(groups.items()):
        cells = [Cell([float(r[k]) for r in rs]).text(2) for k, _ in LANDMARK_COLUMNS]
        lines.append(f"| {task} | {ck} | {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _distinct(values) -> str:
    vals = sorted({str(v) for v in values if v is not None})
    return ", ".join(vals) if vals else "—"


def provenance_lines(s: Summary, results_dir: Path) -> list[str]:
    """What produced the numbers: checkpoints (path, digest, step), per-task test images and seeds, the
    protocol parameters, package versions."""
    rows = s.rows
    lines = ["## Provenance", "", f"Every row is in `{RESULTS_FILE}` (one per run; columns in docs/eval.md).", "",
             "| checkpoint | path | digest | step |", "|---|---|---|---|"]
    for ck in sorted({r["checkpoint"] for r in rows}):
        r = next(x for x in rows if x["checkpoint"] == ck)
        lines.append(f"| {ck} | `{r['checkpoint_spec'] or '—'}` | `{r['checkpoint_digest'] or '—'}` | "
                     f"{r['checkpoint_step'] if r['checkpoint_step'] is not None else '—'} |")
    lines += ["", "| task | protocol | seeds | test images | epochs frozen / fine-tune | lr / fine-tune lr | threshold |",
              "|---|---|---|---|---|---|---|"]
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["task"], r["protocol"])].append(r)
    for (task, proto), rs in sorted(groups.items()):
        seeds = ", ".join(str(x) for x in sorted({r["seed"] for r in rs}))
        epochs = f"{_distinct(r['epochs_frozen'] for r in rs)} / {_distinct(r['epochs_finetune'] for r in rs)}"
        lrs = f"{_distinct(r['lr'] for r in rs)} / {_distinct(r['finetune_lr'] for r in rs)}"
        lines.append(f"| {task} | {proto} | {seeds} | {_distinct(r['n_test'] for r in rs)} | {epochs} | {lrs} | "
                     f"{_distinct(r['threshold'] for r in rs)} |")
    versions: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        for pkg, v in json.loads(r["versions"] or "{}").items():
            versions[pkg].add(str(v))
    if versions:
        lines += ["", "Versions: " + "; ".join(f"{pkg} {', '.join(sorted(v))}" for pkg, v in sorted(versions.items()))]
    return lines + [""]


def _bundle(paths: list[Path], out: Path) -> list[Path]:
    """Copies of overlay files inside the report folder (``overlays/<run>/<file>``), so it travels alone."""
    copies = []
    for p in paths:
        dst = out / "overlays" / p.parent.name / p.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, dst)
        copies.append(dst)
    return copies


def write_report(results_dir: str | Path, baseline: str = "random", overlays_per_task: int = 3) -> dict[str, Path]:
    """Write report.md, report.html, dice.png (and curve.png) under ``<results_dir>/report``."""
    s = summarise(results_dir, baseline, overlays_per_task)
    out = Path(results_dir) / "report"
    if (out / "overlays").is_dir():
        shutil.rmtree(out / "overlays")
    out.mkdir(parents=True, exist_ok=True)
    s.overlays = {key: _bundle(paths, out) for key, paths in s.overlays.items()}
    paths = {"markdown": out / "report.md", "html": out / "report.html"}
    if s.cells:
        paths["bars"] = bar_chart(s, out / "dice.png")
        curve = curve_chart(s, out / "curve.png")
        if curve is not None:
            paths["curve"] = curve
    specs = {r["checkpoint"]: r["checkpoint_spec"] for r in ResultsStore(results_dir).rows()}
    markdown = render_markdown(s, paths, out) + "\n".join(cluster_section(specs, out))
    paths["markdown"].write_text(markdown)
    paths["html"].write_text(markdown_to_html(markdown, out, title="ldisc evaluation"))
    return paths


def render_markdown(s: Summary, paths: dict[str, Path], out: Path) -> str:
    thresholds = _distinct(r["threshold"] for r in s.rows)
    lines = ["# ldisc downstream evaluation", "",
             f"Test Dice at prediction threshold {thresholds}, mean over seeds (± sample std with two or more "
             f"seeds); (Δ) = difference to `{s.baseline}` under the same protocol; **bold** = best checkpoint for "
             "the task and protocol (several in bold: a tie, counted as no one's win).", "", markdown_table(s), ""]
    lines += [f"- {line}" for line in win_lines(s) + baseline_lines(s)]
    lines += ["", "Per-image test Dice: median [first–third quartile] over the test images of every seed.", "",
              spread_table(s)]
    landmarks = landmark_table(out.parent)
    if landmarks:
        lines += ["", "Landmarks: mean radial error and success rate within 2/4/8 % of the image width, "
                  "mean (± std over seeds (templates)).", "", landmarks]
    if s.n_failed:
        lines += ["", f"- {s.n_failed} run(s) failed; see `status`/`error` in {RESULTS_FILE}"]
    for key in ("bars", "curve"):
        if key in paths:
            lines += ["", f"![{key}]({paths[key].relative_to(out).as_posix()})"]
    lines += ["", "## Predictions (blue) and ground truth (green outline), first seed", ""]
    for task in s.tasks:
        imgs = [(m, p) for m in s.methods for p in s.overlays.get((task, m), [])]
        if imgs:
            lines += [f"### {task}", "", " ".join(f"![{_header(m)}]({p.relative_to(out).as_posix()})" for m, p in imgs),
                      ""]
    return "\n".join(lines + [""] + provenance_lines(s, Path(out.parent))) + "\n"
