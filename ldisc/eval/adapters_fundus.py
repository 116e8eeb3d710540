"""Adapters for the fundus datasets, each reading the dataset's published folder layout.

Every adapter takes the dataset root, the structure to segment and ``splits`` (``paper``: the authors'
train/test lists; ``ldisc``: this project's earlier choices where they differ) and returns
``{"train": [Item], "test": [Item]}``. Layouts (``root`` is the folder given in ``data.roots``):

- IDRiD: ``A. Segmentation/1. Original Images/{a. Training Set,b. Testing Set}/IDRiD_NN.jpg`` and
  ``A. Segmentation/2. All Segmentation Groundtruths/{a. Training Set,b. Testing Set}/
  {5. Optic Disc/IDRiD_NN_OD.tif, 3. Hard Exudates/IDRiD_NN_EX.tif}`` (``root`` may also be the
  ``A. Segmentation`` folder itself). Exudates: ``paper`` keeps the images that have an exudate mask (the
  authors' lists); ``ldisc`` keeps every image, a missing mask meaning no exudates (empty mask).
- RITE: ``{training,test}/images/NN_{training,test}.tif`` with ``{training,test}/vessel/NN_*.png``;
  the DRIVE layout (``{training,test}/1st_manual/NN_manual1.gif``) is read as well.
- STARE: ``stare-images/imNNNN.ppm[.gz]`` with Hoover's labels ``labels-ah/imNNNN.ah.ppm[.gz]``;
  the 20 labelled images sorted by number, first 10 train, last 10 test.
- CHASE-DB1: ``Image_NN{L,R}.jpg`` with ``Image_NN{L,R}_1stHO.png``; children 01–10 train (20), 11–14 test (8).
- HRF: ``images/NN_{h,g,dr}.{jpg,JPG}`` with ``manual1/NN_{h,g,dr}.tif``; ``paper``: the first 25 in name
  order train, the last 20 test (the authors'); ``ldisc``: NN 01–05 train (15), 06–15 test (30).
- Drishti-GS1: ``Training/Images/drishtiGS_NNN.png`` with
  ``Training/GT/drishtiGS_NNN/SoftMap/drishtiGS_NNN_{ODseg,cupseg}Softmap.png``, and ``Test/Images`` with
  ``Test/Test_GT/…`` (or ``Test/GT/…``); soft maps are thresholded at 0.5 (annotator majority).
  ``root`` may also be the parent holding ``Drishti-GS1_files``.
"""
from __future__ import annotations

import re
from functools import partial
from pathlib import Path

import numpy as np

from ldisc.eval.dataio import Item, read_mask, read_rgb

HRF_PAPER_TRAIN = 25  # the authors' HRF split: 25 train, 20 test
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".gif", ".ppm", ".ppm.gz", ".bmp")


def _files(folder: Path, pattern: str) -> list[Path]:
    """Files in ``folder`` whose name matches the regular expression ``pattern`` (case-insensitive), sorted."""
    if not folder.is_dir():
        return []
    rx = re.compile(pattern, re.IGNORECASE)
    return sorted(p for p in folder.iterdir() if p.is_file() and rx.fullmatch(p.name))


def _find(folder: Path, stem: str) -> Path | None:
    """The file ``stem`` + any image suffix in ``folder`` (case-insensitive), or None."""
    hits = _files(folder, re.escape(stem) + "(" + "|".join(re.escape(s) for s in IMAGE_SUFFIXES) + ")")
    return hits[0] if hits else None


def _load_pair(image_path: Path, mask_path: Path | None, level: float = 0) -> tuple[np.ndarray, np.ndarray]:
    image = read_rgb(image_path)
    if mask_path is None:
        return image, np.zeros(image.shape[:2], dtype=bool)
    return image, read_mask(mask_path, level)


def _items(pairs: list[tuple[Path, Path | None]], level: float = 0) -> list[Item]:
    return [Item(img.name.split(".")[0], partial(_load_pair, img, mask, level)) for img, mask in pairs]


def _require(items: dict[str, list[Item]], dataset: str, root: Path, layout: str) -> dict[str, list[Item]]:
    if not items["train"] or not items["test"]:
        raise FileNotFoundError(f"{dataset}: found {len(items['train'])} training and {len(items['test'])} test "
                                f"images with masks under {root}; expected {layout}")
    return items


def read_idrid(root: Path, structure: str, splits: str = "paper") -> dict[str, list[Item]]:
    """IDRiD segmentation part: optic disc (``disc``) or hard exudates (``exudate``)."""
    seg = root / "A. Segmentation" if (root / "A. Segmentation").is_dir() else root
    folder, suffix = {"disc": ("5. Optic Disc", "OD"), "exudate": ("3. Hard Exudates", "EX")}[structure]
    out = {}
    for split, sub in (("train", "a. Training Set"), ("test", "b. Testing Set")):
        images = _files(seg / "1. Original Images" / sub, r"IDRiD_\d+\.jpe?g")
        mask_dir = seg / "2. All Segmentation Groundtruths" / sub / folder
        pairs = [(p, _find(mask_dir, f"{p.stem}_{suffix}")) for p in images]
        if structure == "disc" or splits == "paper":  # the authors list only images with the mask
            pairs = [(p, m) for p, m in pairs if m is not None]
        out[split] = _items(pairs)
    return _require(out, "IDRiD", root, "'A. Segmentation/1. Original Images/a. Training Set/IDRiD_01.jpg' …")


def read_rite(root: Path, structure: str = "vessel", splits: str = "paper") -> dict[str, list[Item]]:
    """RITE vessel masks (``vessel/NN_split.png``), or DRIVE's first observer (``1st_manual/NN_manual1.gif``)."""
    out = {}
    for split, sub in (("train", "training"), ("test", "test")):
        pairs = []
        for img in _files(root / sub / "images", r"\d+_(training|test)\.(tif|tiff|png)"):
            num = img.name.split("_")[0]
            mask = _find(root / sub / "vessel", img.stem) or _find(root / sub / "1st_manual", f"{num}_manual1")
            if mask is not None:
                pairs.append((img, mask))
        out[split] = _items(pairs)
    return _require(out, "RITE/DRIVE", root, "'training/images/21_training.tif' + 'training/vessel/21_training.png' "
                    "(or DRIVE's 'training/1st_manual/21_manual1.gif'), and the same under 'test/'")


def read_stare(root: Path, structure: str = "vessel", splits: str = "paper") -> dict[str, list[Item]]:
    """STARE: the 20 images with Hoover's (``ah``) vessel labels; first 10 train, last 10 test."""
    image_dir = root / "stare-images" if (root / "stare-images").is_dir() else root
    label_dir = root / "labels-ah" if (root / "labels-ah").is_dir() else root
    pairs = []
    for img in _files(image_dir, r"im\d{4}\.ppm(\.gz)?"):
        stem = img.name.split(".")[0]
        mask = _find(label_dir, f"{stem}.ah")
        if mask is not None:
            pairs.append((img, mask))
    half = len(pairs) // 2
    return _require({"train": _items(pairs[:half]), "test": _items(pairs[half:])}, "STARE", root,
                    "'stare-images/im0001.ppm[.gz]' and 'labels-ah/im0001.ah.ppm[.gz]'")


def read_chase(root: Path, structure: str = "vessel", splits: str = "paper") -> dict[str, list[Item]]:
    """CHASE-DB1 with the first observer's labels; children 01–10 train, 11–14 test."""
    out = {"train": [], "test": []}
    for img in _files(root, r"Image_\d{2}[LR]\.jpe?g"):
        mask = _find(root, f"{img.stem}_1stHO")
        if mask is not None:
            child = int(img.stem[6:8])
            out["train" if child <= 10 else "test"] += _items([(img, mask)])
    return _require(out, "CHASE-DB1", root, "'Image_01L.jpg' with 'Image_01L_1stHO.png' in one folder")


def read_hrf(root: Path, structure: str = "vessel", splits: str = "paper") -> dict[str, list[Item]]:
    """HRF: healthy, glaucoma and diabetic retinopathy images. ``paper``: the first 25 in name order train,
    the rest (20) test; ``ldisc``: numbers 01–05 train, 06–15 test."""
    pairs = [(img, _find(root / "manual1", img.stem)) for img in _files(root / "images", r"\d{2}_(h|g|dr)\.(jpe?g|tif)")]
    pairs = [(img, mask) for img, mask in pairs if mask is not None]
    if splits == "paper":
        out = {"train": _items(pairs[:HRF_PAPER_TRAIN]), "test": _items(pairs[HRF_PAPER_TRAIN:])}
    else:
        out = {"train": _items([p for p in pairs if int(p[0].stem[:2]) <= 5]),
               "test": _items([p for p in pairs if int(p[0].stem[:2]) > 5])}
    return _require(out, "HRF", root, "'images/01_h.jpg' with 'manual1/01_h.tif'")


def read_drishti(root: Path, structure: str, splits: str = "paper") -> dict[str, list[Item]]:
    """Drishti-GS1 optic disc (``disc``) or cup (``cup``) from the soft maps, thresholded at 0.5."""
    base = root / "Drishti-GS1_files" if (root / "Drishti-GS1_files").is_dir() else root
    kind = {"disc": "ODseg", "cup": "cupseg"}[structure]
    out = {}
    for split, sub, gt_dirs in (("train", "Training", ("GT",)), ("test", "Test", ("Test_GT", "GT"))):
        pairs = []
        for img in _files(base / sub / "Images", r"drishtiGS_\d{3}\.png"):
            for gt in gt_dirs:
                mask = _find(base / sub / gt / img.stem / "SoftMap", f"{img.stem}_{kind}Softmap")
                if mask is not None:
                    pairs.append((img, mask))
                    break
        out[split] = _items(pairs, level=127)
    return _require(out, "Drishti-GS1", root, "'Training/Images/drishtiGS_002.png' with "
                    "'Training/GT/drishtiGS_002/SoftMap/drishtiGS_002_ODsegSoftmap.png', and 'Test/…/Test_GT/…'")
