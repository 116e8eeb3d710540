"""Task registry: the paper's 12 downstream segmentation tasks and their synthetic twins.

A task is a name, a modality, the structure to segment, the dataset adapter that reads it, the
config key of the dataset's root folder, a default input size and the metric. Its train/test split
comes from the adapter (the dataset's published split where there is one, a fixed documented one
otherwise); 20% of the training images become the validation split (see ``taskdata``).

Names: ``idrid_disc`` (a real dataset), ``synth_idrid_disc`` (its synthetic twin), and a few-label
regime by suffix: ``synth_rite_vessel@8`` keeps 8 labelled training images (train + validation), and
a data fraction by a percent suffix: ``jsrt_lung@40%`` keeps the first 40% of the training list (the
authors' X-ray sweep, 20/40/60/80/100%). Task sets expand to several tasks: ``paper``, ``synthetic``,
``fundus``, ``xray``, ``synthetic_fundus``, ``synthetic_xray``, ``xray_sweep`` and
``synthetic_xray_sweep`` (every X-ray task at each fraction); a suffix applies to every member
(``synthetic@32``). Split sizes and batch sizes in the registry are the authors' (HRF 25/20, SIIM
positives 1334/1335; batch 2, 8 for SIIM).
"""
from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Task:
    """One downstream segmentation task."""

    name: str
    modality: str              # "fundus" or "xray"
    structure: str             # what is segmented: vessel, disc, cup, exudate, lung, heart, clavicle, pneumothorax
    dataset: str               # human-readable dataset name
    adapter: str               # key of the adapter that reads it (see taskdata.ADAPTERS)
    root_key: str | None       # key under data.roots in the config (None: needs no files)
    input_side: int            # side of the square network input, pixels
    metric: str = "dice"
    n_train: int | None = None  # few-label regime: labelled training images kept (None: all)
    twin_of: str | None = None  # for a synthetic twin, the real task it mirrors
    n_train_full: int = 0       # size of the full training split (for twins: images generated)
    n_test: int = 0             # size of the test split (for twins: images generated)
    batch_size: int = 2         # the authors' batch size for this task (protocol.batch_size=null uses it)
    fraction: float | None = None  # data-fraction variant: the first ``fraction`` of the training list

    @property
    def base_name(self) -> str:
        return self.name.split("@")[0]

    def with_fraction(self, percent: int) -> "Task":
        """The same task trained on the first ``percent``% of its training list (the authors' sweep)."""
        if not 0 < percent <= 100:
            raise ValueError(f"{self.base_name}: a data fraction is 1–100%, got {percent}%")
        return replace(self, name=f"{self.base_name}@{percent}%", n_train=None, fraction=percent / 100)

    def with_labels(self, n_train: int | None) -> "Task":
        """The same task restricted to ``n_train`` labelled training images (None: all)."""
        if n_train is None:
            return replace(self, name=self.base_name, n_train=None, fraction=None)
        if n_train < 2:
            raise ValueError(f"{self.base_name}: a few-label regime needs at least 2 images (train + val), got {n_train}")
        return replace(self, name=f"{self.base_name}@{n_train}", n_train=n_train, fraction=None)


# name, modality, structure, dataset, adapter, root key, input size, n_train, n_test (the authors' splits)
_PAPER = [
    ("idrid_disc", "fundus", "disc", "IDRiD (A. Segmentation, optic disc)", "idrid", "idrid", 512, 54, 27),
    ("rite_vessel", "fundus", "vessel", "RITE / DRIVE", "rite", "rite", 512, 20, 20),
    ("stare_vessel", "fundus", "vessel", "STARE", "stare", "stare", 512, 10, 10),
    ("chase_vessel", "fundus", "vessel", "CHASE-DB1", "chase", "chase", 512, 20, 8),
    ("hrf_vessel", "fundus", "vessel", "HRF", "hrf", "hrf", 512, 25, 20),
    ("drishti_disc", "fundus", "disc", "Drishti-GS1 (optic disc)", "drishti", "drishti", 512, 50, 51),
    ("drishti_cup", "fundus", "cup", "Drishti-GS1 (optic cup)", "drishti", "drishti", 512, 50, 51),
    ("idrid_exudate", "fundus", "exudate", "IDRiD (A. Segmentation, hard exudates)", "idrid", "idrid", 512, 54, 27),
    ("siim_pneumothorax", "xray", "pneumothorax", "SIIM-ACR Pneumothorax", "siim", "siim", 512, 1334, 1335),
    ("jsrt_lung", "xray", "lung", "JSRT images + SCR masks (lungs)", "jsrt_scr", "jsrt", 512, 124, 123),
    ("jsrt_heart", "xray", "heart", "JSRT images + SCR masks (heart)", "jsrt_scr", "jsrt", 512, 124, 123),
    ("jsrt_clavicle", "xray", "clavicle", "JSRT images + SCR masks (clavicles)", "jsrt_scr", "jsrt", 512, 124, 123),
]
TWIN_INPUT_SIZE = 64
BATCH_SIZES = {"siim_pneumothorax": 8}   # the authors' batch sizes: 8 for SIIM, 2 for every other task
SWEEP_PERCENTS = (20, 40, 60, 80, 100)   # the authors' X-ray data-fraction sweep

PAPER_TASKS: tuple[str, ...] = tuple(row[0] for row in _PAPER)
TWIN_TASKS: tuple[str, ...] = tuple(f"synth_{name}" for name in PAPER_TASKS)

REGISTRY: dict[str, Task] = {}


def register(task: Task) -> Task:
    """Add a task to the registry (names are unique)."""
    if task.name in REGISTRY:
        raise ValueError(f"task {task.name!r} is already registered")
    if "@" in task.name:
        raise ValueError(f"task names may not contain '@' (reserved for the few-label suffix): {task.name!r}")
    REGISTRY[task.name] = task
    return task


for _name, _mod, _struct, _ds, _adapter, _root, _size, _ntr, _nte in _PAPER:
    _bs = BATCH_SIZES.get(_name, 2)
    register(Task(_name, _mod, _struct, _ds, _adapter, _root, _size, n_train_full=_ntr, n_test=_nte, batch_size=_bs))
    # twins mirror the real split sizes, capped so that a twin stays cheap to generate
    register(Task(f"synth_{_name}", _mod, _struct, f"synthetic twin of {_ds}", "synthetic", None, TWIN_INPUT_SIZE,
                  twin_of=_name, n_train_full=min(_ntr, 64), n_test=min(_nte, 32), batch_size=_bs))

TASK_SETS: dict[str, tuple[str, ...]] = {
    "paper": PAPER_TASKS,
    "synthetic": TWIN_TASKS,
    "fundus": tuple(n for n in PAPER_TASKS if REGISTRY[n].modality == "fundus"),
    "xray": tuple(n for n in PAPER_TASKS if REGISTRY[n].modality == "xray"),
    "synthetic_fundus": tuple(n for n in TWIN_TASKS if REGISTRY[n].modality == "fundus"),
    "synthetic_xray": tuple(n for n in TWIN_TASKS if REGISTRY[n].modality == "xray"),
}
TASK_SETS["xray_sweep"] = tuple(f"{n}@{p}%" for n in TASK_SETS["xray"] for p in SWEEP_PERCENTS)
TASK_SETS["synthetic_xray_sweep"] = tuple(f"{n}@{p}%" for n in TASK_SETS["synthetic_xray"] for p in SWEEP_PERCENTS)


def _split_suffix(name: str) -> tuple[str, str | None]:
    base, sep, suffix = str(name).partition("@")
    if not sep:
        return base, None
    if not (suffix.isdigit() or (suffix.endswith("%") and suffix[:-1].isdigit())):
        raise ValueError(f"bad few-label suffix in {name!r}: expected NAME@<number of labelled images> or NAME@<percent>%")
    return base, suffix


def get_task(name: str) -> Task:
    """Look a task up by name, with an optional ``@N`` few-label or ``@P%`` data-fraction suffix."""
    base, suffix = _split_suffix(name)
    if base not in REGISTRY:
        raise KeyError(f"unknown task {base!r}; known tasks: {', '.join(sorted(REGISTRY))}; "
                       f"task sets: {', '.join(sorted(TASK_SETS))}")
    if suffix is None:
        return REGISTRY[base]
    if suffix.endswith("%"):
        return REGISTRY[base].with_fraction(int(suffix[:-1]))
    return REGISTRY[base].with_labels(int(suffix))


def expand_tasks(names) -> list[Task]:
    """Task names and task-set names (each with an optional suffix) → tasks, without duplicates."""
    out: dict[str, Task] = {}
    for entry in names:
        base, suffix = _split_suffix(entry)
        members = TASK_SETS.get(base, (base,))
        for member in members:
            task = get_task(member if suffix is None else f"{member.split('@')[0]}@{suffix}")
            out.setdefault(task.name, task)
    if not out:
        raise ValueError("no tasks selected")
    return list(out.values())


# -- application tasks: read out of the LD network itself, no downstream training (ldisc.eval.apptasks) --
# Their "protocols" are the methods compared: landmarks by mean radial error, segmentation by Dice.
APP_METHODS: dict[str, tuple[str, ...]] = {"mre": ("center", "flat", "mirror", "hypercolumn", "ncc"),
                                           "dice": ("mask0", "prototype", "mask0_otsu", "prototype_otsu", "frangi")}
_APPS = [
    ("synth_fundus_landmarks", "fundus", "landmarks", "synthetic fundus: disc centre, fovea (one template)", "mre"),
    ("synth_xray_landmarks", "xray", "landmarks", "synthetic chest X-ray: apices, costophrenic angles, carina", "mre"),
    ("synth_fundus_vessel_unsup", "fundus", "vessel", "synthetic fundus vessels, no fundus labels (shape-guided)", "dice"),
]
APP_TASKS: tuple[str, ...] = tuple(row[0] for row in _APPS)
for _name, _mod, _struct, _ds, _metric in _APPS:
    register(Task(_name, _mod, _struct, _ds, "application", None, 128, metric=_metric, n_test=32))
TASK_SETS["applications"] = APP_TASKS


def task_methods(task: Task, protocols: list[str]) -> list[str]:
    """What a run of ``task`` varies: the protocols for downstream tasks, the methods for application tasks."""
    return list(APP_METHODS[task.metric]) if task.adapter == "application" else list(protocols)
