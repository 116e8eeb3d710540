"""The allocator of CPU training processes, chosen at their start (no torch import: launchers and
manifest renderers use it). Owner of the setting; ``launcher.local.launch_env`` applies it."""
from __future__ import annotations

import os
import sys

# The allocator of a CPU training process (``cpu_malloc_env``). A stage-2 step frees and allocates
# tensors of hundreds of MB; glibc returns each to the kernel (munmap) and faults its pages in again
# next step, which made the 448 px step 2.7x slower. Read only at process start, so launchers put it
# into the environment of the processes they start (bench/step.py measures each):
# - tcmalloc (preloaded where the library is installed, e.g. Debian's libtcmalloc-minimal4): keeps
#   freed spans and reuses them with little fragmentation — the fastest step and the lowest peak;
# - glibc kept: glibc told to keep freed large blocks (no unmapping) — as fast, but fragmentation
#   adds ~40% to the peak RSS.
GLIBC_KEEP_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 34), "MALLOC_TRIM_THRESHOLD_": str(1 << 34),
                  "MALLOC_TOP_PAD_": str(1 << 30)}
ALLOCATORS = ("auto", "tcmalloc", "glibc", "system")
TCMALLOC_NAMES = ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4")
LIBRARY_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib",
                "/usr/local/lib", os.path.join(sys.prefix, "lib"))


def find_tcmalloc(dirs: tuple[str, ...] = LIBRARY_DIRS) -> str | None:
    for d in dirs:
        for name in TCMALLOC_NAMES:
            path = os.path.join(d, name)
            if os.path.isfile(path):
                return path
    return None


def cpu_malloc_env(allocator: str | None = None, dirs: tuple[str, ...] = LIBRARY_DIRS) -> dict[str, str]:
    """Environment entries that select the allocator of a CPU training process.

    ``allocator`` (default: ``$LDISC_MALLOC``, else ``auto``): ``auto`` — tcmalloc where installed,
    else glibc kept; ``tcmalloc`` (an error where it is not installed); ``glibc`` (kept); ``system``
    (nothing changed)."""
    allocator = allocator or os.environ.get("LDISC_MALLOC", "auto")
    if allocator not in ALLOCATORS:
        raise ValueError(f"unknown allocator {allocator!r} (LDISC_MALLOC); one of {ALLOCATORS}")
    if allocator == "system":
        return {}
    path = find_tcmalloc(dirs) if allocator in ("auto", "tcmalloc") else None
    if path:
        return {"LD_PRELOAD": path}
    if allocator == "tcmalloc":
        raise ValueError(f"LDISC_MALLOC=tcmalloc, but none of {TCMALLOC_NAMES} is in {list(dirs)} "
                         "(Debian/Ubuntu: apt-get install libtcmalloc-minimal4)")
    return dict(GLIBC_KEEP_ENV)
