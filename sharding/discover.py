"""Find the source files of an ingest and reject unsafe paths before anything is opened.

A source is a folder tree (walked without following directory links, sorted, so the
order — and therefore the shard layout — is reproducible) or an explicit list of paths
relative to the folder (``--files-from``). Entries that are absolute, contain ``..``, or
are links resolving outside the folder are not read: they go to quarantine as
``unsafe_path``; links that loop go as ``symlink_loop``, and folders that cannot be listed are
reported as ``unreadable_folder`` entries.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath


@dataclass(frozen=True)
class SourceFile:
    """One candidate input: its path relative to the source root, and why it is unsafe."""

    rel: str
    path: Path | None
    problem: str | None = None  # a quarantine reason, or None when the file may be read


def _inside(root: Path, path: Path) -> bool:
    """True if ``path`` resolves inside ``root``."""
    try:
        path.resolve(strict=False).relative_to(root)
        return True
    except ValueError:
        return False


def _loops(path: Path) -> bool:
    """True when following ``path``'s links never ends (ELOOP), e.g. ``a -> b -> a``."""
    try:
        os.stat(path)
    except RuntimeError:
        return True
    except OSError as err:
        return err.errno == errno.ELOOP
    return False


def check_entry(root: Path, rel: str) -> SourceFile:
    """Classify one relative entry of the source as readable or unsafe."""
    pure = PurePosixPath(rel.replace("\\", "/"))
    if pure.is_absolute() or rel.startswith(("/", "\\")) or (len(rel) > 1 and rel[1] == ":"):
        return SourceFile(rel, None, "unsafe_path")
    if any(part == ".." for part in pure.parts):
        return SourceFile(rel, None, "unsafe_path")
    path = root / pure
    if _loops(path):
        return SourceFile(rel, None, "symlink_loop")
    inside = _inside(root, path)
    if not inside:  # a link (file or parent folder) escaping the source
        return SourceFile(rel, None, "unsafe_path")
    return SourceFile(pure.as_posix(), path)


def discover(root: str | os.PathLike, files_from: str | os.PathLike | None = None) -> list[SourceFile]:
    """List the inputs under ``root`` (or those named in ``files_from``), sorted by path."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"source folder {root} does not exist")
    if files_from is not None:
        lines = Path(files_from).read_text().splitlines()
        entries = [check_entry(root, line.strip()) for line in lines if line.strip()]
    else:
        entries = []

        def unreadable(err: OSError) -> None:   # a folder os.walk cannot list: counted, never silent
            rel = Path(err.filename).relative_to(root).as_posix() if err.filename else "?"
            entries.append(SourceFile(rel + "/", None, "unreadable_folder"))

        for dirpath, dirnames, filenames in os.walk(root, followlinks=False, onerror=unreadable):
            dirnames.sort()
            for name in filenames:
                rel = (Path(dirpath) / name).relative_to(root).as_posix()
                entries.append(check_entry(root, rel))
    return sorted(entries, key=lambda e: e.rel)
