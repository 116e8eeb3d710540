"""The allocator a launcher gives CPU training processes (ldisc.malloc.cpu_malloc_env): tcmalloc
where it is installed, glibc told to keep freed blocks otherwise, chosen by $LDISC_MALLOC."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from launcher.local import launch_env
from ldisc.malloc import GLIBC_KEEP_ENV, cpu_malloc_env, find_tcmalloc


def _fake_lib(tmp_path, name: str = "libtcmalloc_minimal.so.4") -> str:
    path = tmp_path / name
    path.write_bytes(b"\x7fELF")
    return str(path)


def test_auto_prefers_tcmalloc_and_falls_back_to_glibc_kept(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cpu_malloc_env("auto", (str(empty),)) == GLIBC_KEEP_ENV
    lib = _fake_lib(tmp_path)
    assert cpu_malloc_env("auto", (str(empty), str(tmp_path))) == {"LD_PRELOAD": lib}
    assert cpu_malloc_env("glibc", (str(tmp_path),)) == GLIBC_KEEP_ENV
    assert cpu_malloc_env("system", (str(tmp_path),)) == {}
    with pytest.raises(ValueError, match="libtcmalloc-minimal4"):
        cpu_malloc_env("tcmalloc", (str(empty),))
    with pytest.raises(ValueError, match="LDISC_MALLOC"):
        cpu_malloc_env("jemalloc", (str(tmp_path),))


def test_the_environment_variable_chooses_and_the_caller_setting_stays(monkeypatch):
    monkeypatch.setenv("LDISC_MALLOC", "glibc")
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    env = launch_env(threads=3)
    assert {k: env[k] for k in GLIBC_KEEP_ENV} == GLIBC_KEEP_ENV and "LD_PRELOAD" not in env
    assert env["OMP_NUM_THREADS"] == "3"
    monkeypatch.setenv("LDISC_MALLOC", "system")
    monkeypatch.setenv("MALLOC_TOP_PAD_", "4096")
    env = launch_env()
    assert env["MALLOC_TOP_PAD_"] == "4096" and "MALLOC_MMAP_THRESHOLD_" not in env


@pytest.mark.skipif(find_tcmalloc() is None, reason="tcmalloc is not installed here "
                    "(Debian/Ubuntu: apt-get install libtcmalloc-minimal4; .ci/run tries to)")
def test_a_launched_process_runs_on_tcmalloc():
    env = {**launch_env(allocator="tcmalloc"), "PYTHONPATH": os.pathsep.join(sys.path)}
    code = ("import torch; x = torch.ones(1 << 26); del x; "
            "print(any('tcmalloc' in line for line in open('/proc/self/maps')))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-500:]
    assert out.stdout.strip() == "True"
