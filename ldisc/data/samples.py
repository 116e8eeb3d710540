"""Random access to the samples of one manifest version, by row of its per-sample index."""

from __future__ import annotations

import io
import os
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .manifest import Manifest
from .store import Store


@dataclass
class SampleTable:
    """The columns of a manifest's sample index the loader needs, as numpy arrays."""

    version: int
    sample_id: np.ndarray      # object array of str
    shard_index: np.ndarray    # int64, into shard_keys
    shard_keys: list[str]
    png_offset: np.ndarray
    png_size: np.ndarray
    group_index: np.ndarray    # int64, into groups
    groups: list[str]          # 'site/modality'

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> "SampleTable":
        t = manifest.samples
        shard_col = np.array(t.column("shard").to_pylist(), dtype=object)
        shard_keys, shard_index = np.unique(shard_col.astype(str), return_inverse=True)
        group_col = np.array([f"{s}/{m}" for s, m in zip(t.column("site").to_pylist(),
                                                         t.column("modality").to_pylist())], dtype=str)
        groups, group_index = np.unique(group_col, return_inverse=True) if len(group_col) else ([], np.zeros(0, int))
        return cls(
            version=manifest.version,
            sample_id=np.array(t.column("sample_id").to_pylist(), dtype=object),
            shard_index=np.asarray(shard_index, np.int64), shard_keys=[str(k) for k in shard_keys],
            png_offset=t.column("png_offset").to_numpy(), png_size=t.column("png_size").to_numpy(),
            group_index=np.asarray(group_index, np.int64), groups=[str(g) for g in groups])

    def __len__(self) -> int:
        return len(self.sample_id)


class SampleReader:
    """Reads and decodes sample images; keeps a few shard files open for local stores."""

    def __init__(self, store: Store, table: SampleTable, max_open: int = 16):
        self.store, self.table, self.max_open = store, table, max_open
        self._fds: OrderedDict[str, int] = OrderedDict()

    def _local_fd(self, key: str) -> int | None:
        if key in self._fds:
            self._fds.move_to_end(key)
            return self._fds[key]
        fd = self._open_fd(key)
        if fd is None:
            return None
        self._fds[key] = fd
        if len(self._fds) > self.max_open:
            os.close(self._fds.popitem(last=False)[1])
        return fd

    def _open_fd(self, key: str) -> int | None:
        """A descriptor of the whole shard ``key`` for direct reads, or None: read by ranged GETs.
        (``ldisc.data.shard_cache.CachedSampleReader`` opens its local copy instead.)"""
        path = self.store.local_path(key)
        return None if path is None else os.open(path, os.O_RDONLY)

    def png_bytes(self, row: int) -> bytes:
        t = self.table
        key = t.shard_keys[t.shard_index[row]]
        offset, size = int(t.png_offset[row]), int(t.png_size[row])
        fd = self._local_fd(key)
        data = os.pread(fd, size, offset) if fd is not None else self.store.get_range(key, offset, size)
        if len(data) != size:
            raise OSError(f"short read in {key}: {len(data)} of {size} bytes")
        return data

    def image(self, row: int) -> Image.Image:
        """The decoded image of ``row``; raises on any read or decode error."""
        with Image.open(io.BytesIO(self.png_bytes(row))) as im:
            if im.format != "PNG":
                raise OSError(f"sample is {im.format}, not PNG")
            im.load()
            return im.copy()

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
