"""Write WebDataset shards byte-for-byte reproducibly and remember where each member is.

A shard is a POSIX tar of ``<sample_id>.png`` + ``<sample_id>.json`` pairs (WebDataset
convention: members sharing a basename are one sample). Headers carry no time, owner or
host information, so the same samples always give the same bytes (and the same sha256),
which makes re-running an interrupted ingest reproduce the same shards. The offsets of
every member's data go into the manifest's per-sample index for random access.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from dataclasses import dataclass


@dataclass(frozen=True)
class MemberSpan:
    """Where one sample's PNG and JSON bytes are inside a shard."""

    sample_id: str
    index: int
    png_offset: int
    png_size: int
    json_offset: int
    json_size: int


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def build_shard(samples: list[tuple[str, bytes, bytes]]) -> tuple[bytes, list[MemberSpan], str]:
    """Tar bytes for ``[(sample_id, png, json), ...]``, member spans, and sha256 hex."""
    buf = io.BytesIO()
    spans = []
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for index, (sample_id, png, js) in enumerate(samples):
            offsets = []
            for ext, data in (("png", png), ("json", js)):
                info = _tarinfo(f"{sample_id}.{ext}", len(data))
                header = info.tobuf(tar.format, tar.encoding, tar.errors)
                offsets.append(tar.offset + len(header))
                tar.addfile(info, io.BytesIO(data))
            spans.append(MemberSpan(sample_id, index, offsets[0], len(png), offsets[1], len(js)))
    data = buf.getvalue()
    return data, spans, hashlib.sha256(data).hexdigest()
