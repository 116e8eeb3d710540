"""Dataset format (store, versioned manifest) and the streaming loader that feeds pretraining.

Public API: :class:`StreamLoader` (resumable, elastic LD batches), :func:`open_store`,
:func:`read_manifest`, :func:`latest_version`, :func:`list_versions`. The trainer's side:
:mod:`ldisc.data.source` (the ``DataSource`` protocol, batch schema and JSON positions),
:mod:`ldisc.data.pairs` (in-memory synthetic/noise pools), :mod:`ldisc.data.build` (the source of a config).
"""

from .manifest import Manifest, latest_version, list_versions, read_manifest
from .store import LocalStore, S3Store, open_store

__all__ = ["StreamLoader", "Manifest", "latest_version", "list_versions", "read_manifest",
           "LocalStore", "S3Store", "open_store"]


def __getattr__(name: str):
    """``StreamLoader`` on first use: the dataset tools (ldisc-shard) read stores and manifests without torch."""
    if name == "StreamLoader":
        from .loader import StreamLoader

        return StreamLoader
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
