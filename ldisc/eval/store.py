"""Results store: one Parquet file per finished run, plus a compacted table, all written by the driver.

Layout of ``results_dir``::

    runs/<run_id>.parquet   one row, written atomically (temp file + rename) when the run ends
    results.parquet         every run's latest row, rewritten after each finished run
    overlays/<run_id>/…     prediction overlays (see ``overlays``)
    running/<run_id>.json   written by the worker while a run is in flight
    metrics.prom            Prometheus text file (see ``monitor``)

A crash of the driver or of a worker loses nothing that had finished: the per-run files are the
source of truth and the table can always be rebuilt from them (``compact``).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

SCHEMA = pa.schema([
    ("run_id", pa.string()), ("checkpoint", pa.string()), ("checkpoint_spec", pa.string()),
    ("checkpoint_digest", pa.string()), ("checkpoint_step", pa.int64()), ("task", pa.string()),
    ("task_base", pa.string()), ("n_labelled", pa.int64()), ("modality", pa.string()), ("structure", pa.string()),
    ("protocol", pa.string()), ("seed", pa.int64()), ("status", pa.string()), ("attempt", pa.int64()),
    ("dice_mean", pa.float64()), ("dice_per_image", pa.list_(pa.float64())), ("iou_mean", pa.float64()),
    ("iou_per_image", pa.list_(pa.float64())), ("val_dice", pa.float64()), ("best_epoch", pa.int64()),
    ("epochs_frozen", pa.int64()), ("epochs_finetune", pa.int64()), ("n_train", pa.int64()), ("n_val", pa.int64()),
    ("n_test", pa.int64()), ("n_skipped", pa.int64()), ("test_names", pa.list_(pa.string())),
    ("input_size", pa.int64()), ("batch_size", pa.int64()), ("wall_s", pa.float64()), ("train_s", pa.float64()),
    ("host", pa.string()), ("pid", pa.int64()), ("device", pa.string()), ("versions", pa.string()),
    ("started_at", pa.timestamp("ms", tz="UTC")), ("finished_at", pa.timestamp("ms", tz="UTC")),
    ("history", pa.string()), ("error", pa.string()),
    # landmark tasks: mean radial error (px, % of image width), success rates within 2/4/8 % of the width
    ("mre_px", pa.float64()), ("mre_pct", pa.float64()), ("sr_2pct", pa.float64()), ("sr_4pct", pa.float64()),
    ("sr_8pct", pa.float64()),
    # the protocol's parameters: the two learning rates and the prediction threshold as columns, and every
    # setting of the protocol (``ldisc.eval.protocol.ProtocolConfig``, or an application's method) as JSON
    ("lr", pa.float64()), ("finetune_lr", pa.float64()), ("threshold", pa.float64()), ("protocol_params", pa.string()),
])
JSON_COLUMNS = {  # string columns that hold JSON (documented in docs/eval.md, "results.parquet")
    "versions": "object: package → version of the process that ran the evaluation (python, torch, ldisc, ray)",
    "history": "list of per-epoch records {phase, epoch, train_loss, val_loss, val_dice}",
    "protocol_params": "object: every protocol setting of the run (ProtocolConfig fields, or an application's method)",
}
RESULTS_FILE = "results.parquet"


def conform(table: pa.Table) -> pa.Table:
    """A table of an older layout in today's ``SCHEMA``: missing columns become nulls, and ISO-8601 text
    timestamps (written before they were real timestamps) are parsed."""
    columns = []
    for field in SCHEMA:
        if field.name not in table.column_names:
            columns.append(pa.nulls(table.num_rows, field.type))
            continue
        col = table.column(field.name)
        if pa.types.is_timestamp(field.type) and pa.types.is_string(col.type):
            col = pc.strptime(col, format="%Y-%m-%dT%H:%M:%S%z", unit="ms")
        columns.append(col.cast(field.type))
    return pa.Table.from_arrays(columns, schema=SCHEMA)


def _atomic_write(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class ResultsStore:
    """Rows of finished runs (status ``ok`` or ``failed``) under ``results_dir``.

    The per-run files are read once and then kept in memory, so that refreshing the table after each
    run costs one write, not a re-read of every file (one driver writes a store at a time).
    """

    def __init__(self, results_dir: str | Path):
        self.dir = Path(results_dir).expanduser()
        self.runs_dir = self.dir / "runs"
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self.table_path = self.dir / RESULTS_FILE
        self._rows: dict[str, dict] | None = None

    def _cache(self) -> dict[str, dict]:
        if self._rows is None:
            self._rows = {}
            for f in sorted(self.runs_dir.glob("*.parquet")):
                for row in conform(pq.read_table(f)).to_pylist():
                    self._rows[row["run_id"]] = row
        return self._rows

    def write(self, row: dict, compact: bool = True) -> None:
        """Persist one run's row (replacing an earlier row of the same run), then refresh the table."""
        unknown = set(row) - set(SCHEMA.names)
        if unknown:
            raise ValueError(f"row has columns outside the results schema: {sorted(unknown)}")
        full = {name: row.get(name) for name in SCHEMA.names}
        table = pa.Table.from_pylist([full], schema=SCHEMA)
        _atomic_write(table, self.runs_dir / f"{row['run_id']}.parquet")
        self._cache()[row["run_id"]] = table.to_pylist()[0]
        if compact:
            self.compact()

    def table(self) -> pa.Table:
        """Every run's latest row."""
        rows = self._cache()
        return pa.Table.from_pylist([rows[k] for k in sorted(rows)], schema=SCHEMA) if rows else SCHEMA.empty_table()

    def compact(self) -> pa.Table:
        """Rewrite ``results.parquet`` from the rows; returns the table."""
        table = self.table()
        _atomic_write(table, self.table_path)
        return table

    def rows(self, status: str | None = None) -> list[dict]:
        return [dict(r) for k, r in sorted(self._cache().items()) if status is None or r["status"] == status]

    def done_ids(self) -> set[str]:
        """Runs that finished successfully: a rerun skips them."""
        return {k for k, r in self._cache().items() if r["status"] == "ok"}

    def failed_attempts(self, run_id: str) -> int:
        """How many attempts an earlier invocation spent on a run that ended failed (0 if none)."""
        row = self._cache().get(run_id)
        return int(row["attempt"] or 0) if row is not None and row["status"] == "failed" else 0
