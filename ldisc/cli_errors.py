"""How every console script reports misuse: one line on stderr naming what to change, exit status 2.

A traceback is for bugs only; a bad value, a missing dataset or a missing checkpoint is the user's to fix.
"""
from __future__ import annotations

import sys
from typing import NoReturn

USAGE_EXIT = 2


def usage_error(prog: str, err: BaseException | str) -> NoReturn:
    message = " ".join(str(err).split()) if str(err) else type(err).__name__
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
    sys.exit(USAGE_EXIT)
