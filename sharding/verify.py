"""``ldisc-shard verify`` and ``ldisc-shard stats``: check and describe a dataset."""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections import Counter

from ldisc.data.manifest import list_versions, read_manifest
from ldisc.data.store import Store


def verify(store: Store, version: int | str = "latest") -> tuple[list[str], dict]:
    """Re-check every shard of ``version`` (size, sha256, members vs. index) and that every
    committed version is readable. Returns (problems, counts); no problems means valid."""
    problems: list[str] = []
    for v in list_versions(store):
        try:
            read_manifest(store, v)
        except Exception as e:
            problems.append(f"version {v} unreadable: {e}")
    manifest = read_manifest(store, version)
    by_shard: dict[str, list[dict]] = {}
    for row in manifest.samples.to_pylist():
        by_shard.setdefault(row["shard"], []).append(row)
    checked_samples = 0
    for shard in manifest.shards.to_pylist():
        key = shard["shard"]
        try:
            data = store.get_bytes(key)
        except Exception as e:
            problems.append(f"{key}: missing ({e})")
            continue
        if len(data) != shard["bytes"]:
            problems.append(f"{key}: {len(data)} bytes, manifest says {shard['bytes']}")
        if hashlib.sha256(data).hexdigest() != shard["sha256"]:
            problems.append(f"{key}: sha256 mismatch")
            continue
        rows = by_shard.get(key, [])
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            members = {m.name: m for m in tar.getmembers()}
        pngs = sum(1 for name in members if name.endswith(".png"))
        if not pngs == len(rows) == shard["samples"]:
            problems.append(f"{key}: {pngs} images in tar, {len(rows)} in index, {shard['samples']} in shard table")
        for row in rows:
            member = members.get(f"{row['sample_id']}.png")
            if member is None or member.offset_data != row["png_offset"] or member.size != row["png_size"]:
                problems.append(f"{key}: sample {row['sample_id'][:12]} not where the index says")
        checked_samples += len(rows)
    referenced = set(manifest.shards.column("shard").to_pylist())
    orphans = [k for k in store.list("shards/") if k.endswith(".tar") and k not in referenced]
    counts = {"version": manifest.version, "shards": manifest.shards.num_rows,
              "samples": checked_samples, "unreferenced_shards": len(orphans)}
    return problems, counts


def _histogram(values: list[int], edges: list[int], unit: str) -> list[str]:
    counts = Counter()
    for v in values:
        i = sum(1 for e in edges if v >= e)
        counts[i] += 1
    labels = [f"< {edges[0]}"] + [f"{a}-{b - 1}" for a, b in zip(edges, edges[1:])] + [f">= {edges[-1]}"]
    peak = max(counts.values(), default=1)
    return [f"  {label:>14} {unit}  {counts[i]:>8}  {'#' * round(40 * counts[i] / peak)}"
            for i, label in enumerate(labels)]


def stats_lines(store: Store, version: int | str = "latest") -> list[str]:
    """Counts per site/modality and per version, and histograms of image and shard sizes."""
    manifest = read_manifest(store, version)
    samples = manifest.samples.to_pylist()
    shards = manifest.shards.to_pylist()
    lines = [f"dataset {store.url}  version {manifest.version} of {list_versions(store)}",
             f"samples {len(samples)}  shards {len(shards)}  bytes {sum(s['bytes'] for s in shards)}",
             "per site/modality:"]
    for (site, modality), n in sorted(Counter((r["site"], r["modality"]) for r in samples).items()):
        lines.append(f"  {site}/{modality}: {n}")
    lines.append("added per version:")
    per_version = Counter()
    for s in shards:
        per_version[s["version_added"]] += s["samples"]
    lines += [f"  v{v}: {n}" for v, n in sorted(per_version.items())]
    lines.append("original image size (longest side) histogram:")
    lines += _histogram([max(r["width"], r["height"]) for r in samples], [256, 512, 1024, 2048, 4096], "px")
    lines.append("shard size histogram:")
    lines += _histogram([s["bytes"] for s in shards], [1 << 20, 16 << 20, 64 << 20, 256 << 20], "B")
    return lines
