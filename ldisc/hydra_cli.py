"""How the Hydra apps (``ldisc-pretrain``, ``ldisc-eval``) start.

1. ``--version`` is answered before Hydra sees ``argv`` (Hydra has no such flag).
2. The ``key=value`` overrides are composed once before Hydra starts: a bad key or value is one line on
   stderr and exit status 2 (Hydra itself prints a stack hint and exits 1). In a multirun (``-m``) the
   first value of every sweep is checked. ``--config-name/-path/-dir`` skip the check.
3. Hydra runs the app as usual: ``--help``, ``--cfg job``, ``-m`` sweeps, ``hydra.*`` overrides.
"""
from __future__ import annotations

import sys
from typing import Callable

from omegaconf import DictConfig

from ldisc.cli_args import exit_on_version
from ldisc.cli_errors import usage_error

OTHER_CONFIG = ("--config-name", "-cn", "--config-path", "-cp", "--config-dir", "-cd", "--experimental-rerun")
FLAGS_WITH_VALUE = ("--cfg", "-c", "--package", "-p", "--info", "-i", "--shell-completion", "-sc", *OTHER_CONFIG)
MULTIRUN = ("-m", "--multirun")


def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """→ (Hydra flags with their values, ``key=value`` overrides)."""
    flags, overrides, i = [], [], 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("-") and not arg.startswith("~"):
            flags.append(arg)
            name = arg.partition("=")[0]
            if name in FLAGS_WITH_VALUE and "=" not in arg and i + 1 < len(argv) and "=" not in argv[i + 1]:
                flags.append(argv[i + 1])
                i += 1
        else:
            overrides.append(arg)
        i += 1
    return flags, overrides


def first_of_each_sweep(overrides: list[str]) -> list[str]:
    """``a=1,2 b=x`` → ``a=1 b=x``: one job of a multirun, for checking keys and values."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    out = []
    for o in OverridesParser.create().parse_overrides(overrides):
        if o.is_sweep_override():
            out.append(f"{o.get_key_element()}={next(iter(o.sweep_string_iterator()))}")
        else:
            out.append(o.input_line)
    return out


def precheck(prog: str, config_name: str, argv: list[str],
             check: Callable[[DictConfig], None] | None = None) -> None:
    """Compose ``argv``'s overrides as Hydra will and run ``check`` on the result (plain runs only)."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from ldisc.config import compose

    flags, overrides = split_argv(argv)
    if any(f.partition("=")[0] in OTHER_CONFIG for f in flags):
        return
    try:
        if any(f in MULTIRUN for f in flags):
            overrides = first_of_each_sweep(overrides)
        cfg = compose(config_name, overrides)
        if check is not None and not [f for f in flags if f not in MULTIRUN]:
            check(cfg)
    except (HydraException, OmegaConfBaseException, ValueError) as err:
        usage_error(prog, err)


def start(prog: str, config_name: str, task: Callable[[DictConfig], None], argv: list[str] | None = None,
          check: Callable[[DictConfig], None] | None = None) -> None:
    """Run ``task`` as the Hydra app ``prog`` over ``configs/<config_name>.yaml`` with ``argv``."""
    import hydra

    from ldisc.config import config_dir

    argv = sys.argv[1:] if argv is None else list(argv)
    exit_on_version(prog, argv)
    precheck(prog, config_name, argv, check)
    saved = sys.argv
    sys.argv = [prog, *argv]           # Hydra reads sys.argv; its messages name the program
    try:
        hydra.main(config_path=str(config_dir()), config_name=config_name, version_base="1.3")(task)()
    finally:
        sys.argv = saved
