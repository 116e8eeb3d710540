"""How every console script reports misuse: one line on stderr naming what to change, exit status 2.

A traceback is for bugs only; a bad value, a missing dataset or a missing checkpoint is the user's to fix.
"""
from __future__ import annotations

import importlib
import sys
from types import ModuleType
from typing import NoReturn

USAGE_EXIT = 2


class MissingExtra(ValueError):
    """A package of an optional role (``pip install 'ldisc[ROLE]'``) is not installed: the user's to fix."""


def require(module: str, extra: str) -> ModuleType:
    """``import module``, or :class:`MissingExtra` naming the extra that brings it (pyproject's roles)."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name != module.split(".")[0]:
            raise
        raise MissingExtra(f"{module} is not installed; pip install 'ldisc[{extra}]'") from None


def run_or_report(prog: str, run, *args, errors=(FileNotFoundError, ValueError, KeyError)):
    """``run(*args)``; a user's error (a missing file, a bad value, an unknown name) is one line on stderr
    and None comes back, for the caller to exit with :data:`USAGE_EXIT`."""
    try:
        return run(*args)
    except errors as err:
        print(f"{prog}: {err.args[0] if isinstance(err, KeyError) else err}", file=sys.stderr, flush=True)
        return None


def usage_error(prog: str, err: BaseException | str) -> NoReturn:
    message = " ".join(str(err).split()) if str(err) else type(err).__name__
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
    sys.exit(USAGE_EXIT)
