"""Arguments every console script shares: ``--version`` and byte sizes such as ``512MB``.

``--version`` prints ``<prog> <ldisc version>`` and exits 0. The console scripts (``ldisc.scripts``) answer
it before importing torch; ``python -m`` runs of the argparse programs answer it through
:func:`add_version`, the Hydra apps (``ldisc-pretrain``, ``ldisc-eval``) through :func:`exit_on_version`.
"""
from __future__ import annotations

import argparse
import re
import sys

from ldisc import __version__

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*")


def version_text(prog: str) -> str:
    return f"{prog} {__version__}"


def add_version(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--version", action="version", version=version_text(parser.prog))
    return parser


def exit_on_version(prog: str, argv: list[str]) -> None:
    """``prog --version``: print the version and exit 0 (console scripts before any heavy import; the
    Hydra apps, which have no such flag, before Hydra)."""
    if argv[:1] == ["--version"]:
        print(version_text(prog), flush=True)
        sys.exit(0)


def parse_byte_size(text: str | int) -> int:
    """``512MB`` → 512,000,000; ``256MiB`` → 268,435,456; ``1.5G``, ``1000`` (bytes). Units are
    case-insensitive: B, KB/MB/GB/TB (powers of 1000), KiB/MiB/GiB/TiB (powers of 1024)."""
    if isinstance(text, int):
        value, unit = text, ""
    else:
        m = _SIZE.fullmatch(str(text))
        if not m or m.group(2).lower() not in _UNITS:
            raise ValueError(f"not a byte size: {text!r} (e.g. 512MB, 256MiB, 1GB or a number of bytes)")
        value, unit = float(m.group(1)), m.group(2).lower()
    size = int(value * _UNITS[unit])
    if size <= 0:
        raise ValueError(f"a byte size must be positive, got {text!r}")
    return size


def byte_size(text: str) -> int:
    """argparse ``type=`` for :func:`parse_byte_size`."""
    try:
        return parse_byte_size(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def format_byte_size(n: int) -> str:
    """The shortest exact spelling :func:`parse_byte_size` reads back (``268435456`` → ``256MiB``)."""
    for unit in ("TiB", "GiB", "MiB", "KiB", "TB", "GB", "MB", "KB"):
        factor = _UNITS[unit.lower()]
        if n % factor == 0:
            return f"{n // factor}{unit}"
    return f"{n}B"
