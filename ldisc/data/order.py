"""The global sample order of an epoch, and how it is cut into ranks, steps and workers.

Everything here is a pure function of (the manifest version's sample list, seed, epoch,
weights) — no state, no I/O — which is what makes the data position a few integers.

Global order. Samples are first selected per group (site/modality) according to the
mixing weights (default: every sample exactly once), then shuffled in two levels: the
shards are permuted, samples are permuted within their shard, and the resulting sequence
is permuted again inside windows of ``shuffle_window`` consecutive samples (so that a
batch mixes several shards while reads stay local).

Splitting. With world size W and ``per_rank`` samples per step and rank (2 × batch size
for LD pairs), global step s of an epoch that starts at global offset c takes positions
``[c + s·W·per_rank, c + (s+1)·W·per_rank)`` and rank r gets the r-th block of
``per_rank`` of them. Every rank gets ``(N − c) // (W·per_rank)`` steps (equal on all
ranks); the remainder of the epoch is dropped and counted. Resuming with another world
size keeps c and re-splits what is left: the global sequence is unchanged. Within a rank,
loader worker w produces the rank's steps w, w + nw, w + 2·nw, … which torch's
DataLoader hands out round-robin, i.e. in step order.
"""

from __future__ import annotations

import fnmatch
import hashlib

import numpy as np

SPLITS = ("train", "val", "all")


def holdout_mask(sample_ids, fraction: float) -> np.ndarray:
    """True for the validation samples: those whose id hashes below ``fraction`` (a pure function of
    the id, so a sample keeps its split when later manifest versions append shards)."""
    if fraction <= 0:
        return np.zeros(len(sample_ids), bool)
    cut = int(fraction * 2 ** 64)
    return np.array([int.from_bytes(hashlib.blake2b(str(s).encode(), digest_size=8).digest(), "big") < cut
                     for s in sample_ids], bool)


def _rng(seed: int, epoch: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(epoch), int(stream), 0x1D15C])


def _apportion(total: int, weights: np.ndarray) -> np.ndarray:
    """Integer counts summing to ``total`` proportional to ``weights`` (largest remainder)."""
    exact = total * weights / weights.sum()
    counts = np.floor(exact).astype(np.int64)
    remainder = total - counts.sum()
    counts[np.argsort(-(exact - counts), kind="stable")[:remainder]] += 1
    return counts


def group_weights(groups: list[str], weights: dict[str, float] | None) -> np.ndarray:
    """Weight of each 'site/modality' group: first matching pattern in ``weights`` (fnmatch),
    0 for unmatched groups; all 1 when ``weights`` is None."""
    if not weights:
        return np.ones(len(groups))
    out = np.zeros(len(groups))
    for i, g in enumerate(groups):
        for pattern, w in weights.items():
            if fnmatch.fnmatchcase(g, pattern):
                out[i] = float(w)
                break
    if (out < 0).any() or out.sum() <= 0:
        raise ValueError(f"mixing weights {weights} select no data of groups {groups}")
    return out


def select(group_of_row: np.ndarray, groups: list[str], seed: int, epoch: int,
           weights: dict[str, float] | None = None, epoch_samples: int | None = None) -> np.ndarray:
    """Row indices (with repeats where a group is up-weighted) that make up the epoch.

    Without weights every row appears once. With weights, the epoch has ``epoch_samples``
    samples (default: the rows of all selected groups) split between groups in proportion
    to their weight; a group needing more than it has repeats whole permutations of itself.
    """
    n_rows = len(group_of_row)
    if not weights and epoch_samples is None:
        return np.arange(n_rows, dtype=np.int64)
    w = group_weights(groups, weights)
    members = [np.flatnonzero(group_of_row == g) for g in range(len(groups))]
    total = epoch_samples if epoch_samples is not None else int(sum(len(m) for m, wi in zip(members, w) if wi > 0))
    counts = _apportion(total, w)
    rng = _rng(seed, epoch, 1)
    picked = []
    for m, count in zip(members, counts):
        if count == 0 or len(m) == 0:
            continue
        reps = -(-count // len(m))
        picked.append(np.concatenate([rng.permutation(m) for _ in range(reps)])[:count])
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, np.int64)


def shuffle(rows: np.ndarray, shard_of_row: np.ndarray, seed: int, epoch: int,
            shuffle_window: int) -> np.ndarray:
    """Two-level shuffle of ``rows``: shards, samples within shards, then within windows."""
    if len(rows) == 0:
        return rows
    rng = _rng(seed, epoch, 2)
    n_shards = int(shard_of_row.max()) + 1
    shard_rank = rng.permutation(n_shards)[shard_of_row[rows]]
    order = rows[np.lexsort((rng.random(len(rows)), shard_rank))]
    window = max(1, int(shuffle_window))
    block = np.arange(len(order)) // window
    return order[np.lexsort((rng.random(len(order)), block))]


def steps_in_epoch(n: int, start: int, world_size: int, per_rank: int) -> int:
    """Steps every rank takes from global offset ``start`` to the end of an n-sample epoch."""
    return max(0, (n - start) // (world_size * per_rank))


def rank_step_positions(start: int, step: int, world_size: int, rank: int, per_rank: int) -> np.ndarray:
    """Global positions rank ``rank`` consumes at step ``step`` after offset ``start``."""
    first = start + step * world_size * per_rank + rank * per_rank
    return np.arange(first, first + per_rank, dtype=np.int64)


def worker_steps(n_steps: int, num_workers: int, worker: int) -> range:
    """The steps of a rank that loader worker ``worker`` of ``num_workers`` produces."""
    return range(worker, n_steps, max(1, num_workers))
