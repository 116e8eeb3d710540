"""The data-source contract of pretraining: one protocol, one batch schema, one position format.

Every source a trainer reads — procedural pairs (``data.source=synthetic``), smooth noise
(``noise``), the shard stream (``shards``, :class:`ldisc.data.loader.StreamLoader`) — is a
:class:`DataSource`:

- ``next_batch()`` → a batch: the view tensors of :func:`ldisc.views.make_views_batch`
  (``x1_1``, ``x1_2``, ``x2_1``, ``x2_2``, ``mix``, ``mix_w`` and the second views' flip codes),
  ``sample_ids`` (:data:`SAMPLE_IDS`: one string per image drawn, 2 × batch size, naming the sample so
  that a run can show it neither repeats nor skips any) and, from the shard stream only, ``bad_shards``
  (the shard of each image replaced because it could not be decoded) plus its bookkeeping fields.
- ``position()`` → where the source is: a small frozen dataclass holding exactly what ``seek`` reads
  back, saved in a checkpoint as JSON (:func:`position_to_json`, :func:`position_from_json`).
- ``seek(position)`` → continue from there, exactly.

This module imports neither torch nor the sources, so dataset tools can read positions cheaply.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Protocol, Union, runtime_checkable

SAMPLE_IDS = "sample_ids"


@dataclass(frozen=True)
class PairPosition:
    """Position of a pool source (synthetic/noise): a batch is a pure function of the step."""

    step: int = 0
    KIND = "pairs"


@dataclass(frozen=True)
class StreamPosition:
    """Position of the shard stream: ``consumed`` samples of epoch ``epoch``'s global order, taken by all ranks
    together on manifest ``manifest_version`` (None before an epoch's version is resolved). The global order
    does not depend on the world size, so any world size can continue from it. ``seed`` must match the
    loader's. The counters are this rank's: replaced and dropped samples so far, replaced samples of the
    current epoch by shard (what ``data.max_bad_fraction`` is checked against)."""

    seed: int
    epoch: int = 0
    manifest_version: int | None = None
    consumed: int = 0
    corrupt_samples: int = 0
    dropped_samples: int = 0
    epoch_bad_by_shard: dict[str, int] = field(default_factory=dict)
    KIND = "stream"


Position = Union[PairPosition, StreamPosition]
_KINDS = {cls.KIND: cls for cls in (PairPosition, StreamPosition)}


@runtime_checkable
class DataSource(Protocol):
    """What the trainer needs of a data source (see the module docstring for the batch schema)."""

    def next_batch(self) -> dict: ...

    def position(self) -> Position: ...

    def seek(self, position: Position) -> None: ...


def position_to_json(position: Position) -> str:
    return json.dumps({"kind": position.KIND, **asdict(position)}, sort_keys=True)


def position_from_json(text: str) -> Position:
    """The position ``position_to_json`` wrote; a clear error for anything else."""
    try:
        raw = json.loads(text)
        cls = _KINDS[raw.pop("kind")]
    except (ValueError, KeyError, AttributeError) as err:
        raise ValueError(f"not a data position ({type(err).__name__}: {err}); kinds: {sorted(_KINDS)}") from None
    names = {f.name for f in fields(cls)}
    if set(raw) - names:
        raise ValueError(f"{cls.KIND} position has unknown fields {sorted(set(raw) - names)}")
    return cls(**raw)


def save_position(position: Position, path: str | Path) -> None:
    Path(path).write_text(position_to_json(position) + "\n")


def load_position(path: str | Path) -> Position:
    return position_from_json(Path(path).read_text())
