"""The demo's building blocks: run one real CLI as a titled, timed step; synthesise the sites; ingest them."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
REALDATA = REPO.parent / "shared" / "realdata"      # optional real images (the demo never needs them)


@dataclass(frozen=True)
class Site:
    name: str           # the dataset's site label
    modality: str       # fundus | xray
    look: str           # ldisc.synth.SITES entry: the device's colour cast / contrast
    seed: int           # synthetic stream seed (different patients at each site)
    px_scale: float     # the device's image side relative to the demo size (a different camera)


HOSPITAL_A = Site("hospital-a", "fundus", "warm", 1, 1.0)
HOSPITAL_B = Site("hospital-b", "fundus", "pale", 2, 1.5)
XRAY_SITE = Site("chest-site", "xray", "high-contrast", 3, 1.0)


def module_argv(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def demo_env(extra: dict | None = None) -> dict:
    from launcher.local import launch_env

    env = launch_env()
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("RAY_raylet_start_wait_time_s", "120")      # a local Ray on a busy machine needs longer than 30 s
    env.update(extra or {})
    return env


RAY_START_TIMEOUT = "The current node timed out during startup"    # Ray's fixed 30 s raylet registration


def run_step(title: str, argv: list[str], env: dict | None = None, capture: bool = False, retry_ray: bool = False) -> str:
    """Run ``argv`` (a real entry point) with its own progress output; stop the demo when it fails.
    With ``capture`` the output is also returned (it is printed as it comes either way); ``retry_ray`` runs it
    once more when a local Ray did not come up in time (a loaded machine), never after a failure of the work."""
    print(f"\n=== {title}\n$ {' '.join(a if ' ' not in a else repr(a) for a in argv[2:])}", flush=True)
    started = time.perf_counter()
    if capture or retry_ray:
        proc = subprocess.Popen(argv, env=env or demo_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        chunks = []
        while chunk := os.read(proc.stdout.fileno(), 4096):     # as it comes: progress bars redraw in place
            sys.stdout.write(chunk.decode(errors="replace"))
            sys.stdout.flush()
            chunks.append(chunk)
        proc.wait()
        output = b"".join(chunks).decode(errors="replace")
    else:
        proc, output = subprocess.run(argv, env=env or demo_env()), ""
    if proc.returncode != 0 and retry_ray and RAY_START_TIMEOUT in output:
        print("--- the local Ray did not start in time (a loaded machine); once more", flush=True)
        return run_step(title, argv, env, capture)
    if proc.returncode != 0:
        raise SystemExit(f"demo step '{title}' failed with exit code {proc.returncode}")
    print(f"--- {title}: {time.perf_counter() - started:.1f} s", flush=True)
    return output


def synthesise(site: Site, out: Path, n: int, px: int) -> Path:
    """``ldisc-synth`` images of one site (its look, its device's image size) → the site's drop folder."""
    side = int(round(px * site.px_scale / 16)) * 16
    run_step(f"synthesise {site.name}: {n} {site.modality} images, {site.look} look, {side} px",
             module_argv("ldisc.synth.cli", "--modality", site.modality, "--n", str(n), "--size", str(side),
                         "--seed", str(site.seed), "--site", site.look, "--out", str(out / site.name)))
    return out / site.name


def add_realdata(drop: Path, modality: str) -> int:
    """Copy the real images of ``../shared/realdata`` of ``modality`` into a site's drop folder (if present)."""
    folder = REALDATA / ("fundus" if modality == "fundus" else "cxr")
    files = sorted(folder.glob("*.*")) if folder.is_dir() else []
    (drop / "real").mkdir(parents=True, exist_ok=True)
    for f in files:
        shutil.copy(f, drop / "real" / f.name)
    return len(files)


def ingest(site: Site, drop: Path, dataset: Path, px: int, title: str, metrics_file: Path) -> dict:
    """``ldisc-launch ingest --target local`` of one site's drop folder → {"added": n, "version": v}."""
    output = run_step(title, module_argv(
        "launcher.cli", "ingest", "--target", "local", f"launch.ingest.source={drop}",
        f"launch.ingest.dataset={dataset}", f"launch.ingest.site={site.name}", f"launch.ingest.modality={site.modality}",
        f"launch.ingest.stored_side={px}", "launch.ingest.workers=1", f"launch.ingest.metrics_file={metrics_file}"),
        capture=True)
    found = re.search(r"added (\d+)\s.*manifest version (\d+)", output)
    if not found:
        raise SystemExit(f"demo: could not read the ingest summary of {site.name}")
    return {"added": int(found.group(1)), "version": int(found.group(2))}


def site_landmarks(drop: Path) -> tuple[Path, Path]:
    """(template image, its landmarks as {name: [x, y]} in a JSON file) of a synthetic site folder."""
    all_points = json.loads((drop / "landmarks.json").read_text())
    first = sorted(all_points)[0]
    path = drop / "template_landmarks.json"
    path.write_text(json.dumps(all_points[first]))
    return drop / "images" / f"{first}.png", path


def patient_key_env() -> dict:
    """A demo-only secret for the pseudonymous patient key; real ingests read theirs from a secret store."""
    import secrets

    return {"LDISC_PATIENT_KEY_SECRET": os.environ.get("LDISC_PATIENT_KEY_SECRET") or secrets.token_hex(16)}
