"""The console scripts of ``pyproject.toml``: each answers ``--version`` before it imports its program
(torch, Ray and DeepSpeed take seconds to import), then runs the program's ``main``."""
from __future__ import annotations

import importlib
import sys

from ldisc.cli_args import exit_on_version

PROGRAMS = {
    "ldisc-synth": "ldisc.synth.cli",
    "ldisc-pretrain": "ldisc.train.cli",
    "ldisc-shard": "sharding.cli",
    "ldisc-eval": "ldisc.eval.cli",
    "ldisc-launch": "launcher.cli",
    "ldisc-localize": "ldisc.apps.localize_cli",
    "ldisc-segment": "ldisc.apps.segment_cli",
    "ldisc-export": "ldisc.export",
}


def run(prog: str):
    exit_on_version(prog, sys.argv[1:])
    return importlib.import_module(PROGRAMS[prog]).main()


def synth(): return run("ldisc-synth")            # noqa: E704
def pretrain(): return run("ldisc-pretrain")      # noqa: E704
def shard(): return run("ldisc-shard")            # noqa: E704
def evaluate(): return run("ldisc-eval")          # noqa: E704
def launch(): return run("ldisc-launch")          # noqa: E704
def localize(): return run("ldisc-localize")      # noqa: E704
def segment(): return run("ldisc-segment")        # noqa: E704
def export(): return run("ldisc-export")          # noqa: E704
