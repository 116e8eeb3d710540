"""A non-editable install works from any directory: every console script answers ``--version``,
``ldisc-pretrain --cfg job`` / ``ldisc-eval --cfg job`` find the configs the wheel ships, and the installed
package (not this checkout, not the shared venv's editable install) is what runs.

Default run: the wheel is built from a copy of the checkout and installed with ``--no-deps`` into a fresh
venv whose dependencies come from this interpreter's site-packages (a path line in a ``.pth`` file, so the
editable install's own ``.pth`` hook there is not run). ``slow``: a fresh venv installs the wheel with all
its dependencies (``-c constraints.txt``, ``[all]``) and trains and evaluates for a few steps.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

from ldisc import __version__ as VERSION

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "configs", "ldisc", "sharding", "launcher")
SCRIPTS = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]


def build_wheel(dist: Path, work: Path) -> Path:
    """Build the wheel from a copy of the checkout (setuptools writes build/ and *.egg-info beside it)."""
    src = work / "src"
    src.mkdir(parents=True)
    for name in SOURCES:
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy2
        copy(REPO / name, src / name, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                         if (REPO / name).is_dir() else {}))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    "-w", str(dist), str(src)], check=True, capture_output=True, text=True, timeout=300)
    (wheel,) = dist.glob("ldisc-*.whl")
    return wheel


def clean_env(venv: Path) -> dict[str, str]:
    """No PYTHONPATH, no LDISC_CONFIG_DIR, the venv's bin first: what a user's shell has."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LDISC_CONFIG_DIR", "VIRTUAL_ENV")
           and not k.startswith(("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_"))}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("DS_ACCELERATOR", "cpu")
    return env


def run_script(venv: Path, cwd: Path, *argv: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([str(venv / "bin" / argv[0]), *argv[1:]], cwd=cwd, env=clean_env(venv),
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """(venv, a working directory outside the checkout) with the wheel installed non-editable."""
    work = tmp_path_factory.mktemp("install")
    wheel = build_wheel(work / "dist", work)
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()"
                                "['purelib'])"], capture_output=True, text=True, check=True).stdout.strip())
    (site / "_shared_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                    "--no-deps", "--no-index", str(wheel)], check=True, capture_output=True, text=True, timeout=300)
    elsewhere = work / "elsewhere"
    elsewhere.mkdir()
    return venv, elsewhere


def test_the_installed_package_runs_not_the_checkout(installed):
    venv, cwd = installed
    out = subprocess.run([str(venv / "bin" / "python"), "-c", "import ldisc, ldisc.config as c, importlib.metadata as m;"
                          "print(ldisc.__file__); print(c.config_dir()); print(m.version('ldisc'))"],
                         cwd=cwd, env=clean_env(venv), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    package, configs, version = out.stdout.split()
    assert Path(package).is_relative_to(venv) and Path(configs).is_relative_to(venv), out.stdout
    assert version == VERSION


def test_every_console_script_answers_version(installed):
    venv, cwd = installed
    assert {"ldisc-synth", "ldisc-pretrain", "ldisc-shard", "ldisc-eval", "ldisc-launch", "ldisc-localize",
            "ldisc-segment"} <= set(SCRIPTS)
    for script in SCRIPTS:
        out = run_script(venv, cwd, script, "--version")
        assert out.returncode == 0, (script, out.stderr[-2000:])
        assert out.stdout.strip() == f"{script} {VERSION}", (script, out.stdout)


def test_hydra_apps_print_their_config_from_outside_the_checkout(installed):
    venv, cwd = installed
    pre = run_script(venv, cwd, "ldisc-pretrain", "--cfg", "job", "train.stage1_steps=7")
    assert pre.returncode == 0, pre.stderr[-2000:]
    assert "stage1_steps: 7" in pre.stdout and "logging:" in pre.stdout
    ev = run_script(venv, cwd, "ldisc-eval", "--cfg", "job", "protocol=smoke", "mode=report")
    assert ev.returncode == 0, ev.stderr[-2000:]
    assert "mode: report" in ev.stdout and "epochs_frozen: 2" in ev.stdout
    helped = run_script(venv, cwd, "ldisc-eval", "--help")
    assert helped.returncode == 0 and "mode=run|watch|report" in helped.stdout and "== Config ==" in helped.stdout
    bad = run_script(venv, cwd, "ldisc-eval", "no_such_key=1")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert [line for line in bad.stderr.splitlines() if line.startswith("ldisc-eval: error:")] == \
        [line for line in bad.stderr.splitlines() if line.strip()], bad.stderr
    assert not list(cwd.iterdir())            # --cfg and a bad key write nothing into the working directory


@pytest.mark.slow
def test_fresh_venv_with_all_dependencies_trains_and_evaluates(tmp_path):
    """``pip install -c constraints.txt 'ldisc[all]'`` from the wheel into a new venv (pip's cache and
    PyPI), then a 2-step pretraining and a serial smoke evaluation of its run directory."""
    wheel = build_wheel(tmp_path / "dist", tmp_path)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "-c", str(REPO / "constraints.txt"),
                    f"{wheel}[all]"], check=True, timeout=3000, env=clean_env(venv))
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    for script in SCRIPTS:
        assert run_script(venv, cwd, script, "--version").stdout.strip() == f"{script} {VERSION}"
    run_dir = cwd / "run"
    pre = run_script(venv, cwd, "ldisc-pretrain", "data.source=noise", "data.view_side=32", "data.image_side=48",
                     "train.batch_size=1", "train.stage1_steps=1", "train.stage2_steps=1", "train.progress=false",
                     f"run_dir={run_dir}", timeout=900)
    assert pre.returncode == 0, pre.stderr[-3000:]
    ev = run_script(venv, cwd, "ldisc-eval", f"checkpoints=[{run_dir}]", "tasks=[synth_idrid_disc@8]",
                    "protocols=[frozen]", "seeds=[0]", "protocol=smoke", "data.max_test=4", "fleet.mode=serial",
                    "fleet.progress=false", f"out_dir={cwd / 'eval'}", timeout=900)
    assert ev.returncode == 0, ev.stderr[-3000:]
    assert "1 done, 0 failed" in ev.stdout
