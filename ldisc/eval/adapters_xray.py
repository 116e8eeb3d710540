"""Adapters for the chest X-ray datasets, each reading the dataset's published layout.

- SIIM-ACR Pneumothorax: DICOMs anywhere under ``root`` (``dicom-images-train/<study>/<series>/<ImageId>.dcm``
  or ``stage_2_images/<ImageId>.dcm``) and the labels ``train-rle.csv`` (original relative run-length
  encoding) or ``stage_2_train.csv`` (standard absolute encoding); columns ``ImageId, EncodedPixels``,
  ``-1`` for no pneumothorax, several rows for several regions. The test labels were never released.
  ``paper`` (the authors'): pneumothorax-positive images only, in ImageId order, the first half train and
  the rest test (1334 / 1335 of the 2669 positives of ``train-rle.csv``); ``ldisc``: every labelled
  image, split by a hash of ``ImageId`` (one in five goes to test).
- JSRT + SCR: the 247 JSRT rasters ``JPC{LN,NN}NNN.IMG`` (2048², 12-bit big-endian, no header) and the
  SCR masks ``fold1/masks/{left lung,right lung,heart,left clavicle,right clavicle}/JPCLN001.gif``
  (1024²), both anywhere under ``root`` (e.g. ``root/All247images`` and ``root/scr/fold1``). SCR's
  fold 1 is the training split and fold 2 the test split, as in the SCR paper's two-fold protocol.
  Lungs and clavicles are the union of left and right.
"""
from __future__ import annotations

import csv
import hashlib
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from ldisc.eval.dataio import Item, read_dicom, read_jsrt, read_mask, rle_decode

SCR_PARTS = {"lung": ("left lung", "right lung"), "heart": ("heart",), "clavicle": ("left clavicle", "right clavicle")}
SIIM_LABEL_FILES = (("train-rle.csv", True), ("stage_2_train.csv", False))


def _siim_labels(root: Path) -> tuple[dict[str, list[str]], bool]:
    for name, relative in SIIM_LABEL_FILES:
        hits = sorted(root.rglob(name))
        if hits:
            with open(hits[0], newline="") as f:
                rows = list(csv.DictReader(f, skipinitialspace=True))
            labels: dict[str, list[str]] = {}
            for row in rows:
                row = {k.strip(): v for k, v in row.items()}
                if "ImageId" not in row or "EncodedPixels" not in row:
                    raise ValueError(f"{hits[0]}: expected columns ImageId, EncodedPixels; got {list(row)}")
                labels.setdefault(row["ImageId"].strip(), []).append(row["EncodedPixels"])
            return labels, relative
    raise FileNotFoundError(f"SIIM-ACR: no train-rle.csv or stage_2_train.csv under {root}")


def _load_siim(dicom: Path, rles: list[str], relative: bool) -> tuple[np.ndarray, np.ndarray]:
    image = read_dicom(dicom)
    h, w = image.shape
    mask = np.zeros((h, w), dtype=bool)
    for rle in rles:
        mask |= rle_decode(rle, h, w, relative)
    return image, mask


def is_siim_test(image_id: str) -> bool:
    """The fixed SIIM-ACR test split: one image in five, chosen by a hash of its ImageId."""
    return int(hashlib.sha1(image_id.encode()).hexdigest()[:8], 16) % 5 == 0


def is_siim_positive(rles: list[str]) -> bool:
    """A pneumothorax-positive image: its first label row is not ``-1`` (as the authors select)."""
    return str(rles[0]).strip() not in ("", "-1", "nan")


def read_siim(root: Path, structure: str = "pneumothorax", splits: str = "paper") -> dict[str, list[Item]]:
    """SIIM-ACR pneumothorax masks decoded from run-length encodings, images from DICOM."""
    labels, relative = _siim_labels(root)
    dicoms = {p.stem: p for p in root.rglob("*.dcm")}
    ids = [i for i in sorted(labels) if i in dicoms]
    items = {i: Item(i, partial(_load_siim, dicoms[i], labels[i], relative)) for i in ids}
    if splits == "paper":
        positive = [i for i in ids if is_siim_positive(labels[i])]
        half = len(positive) // 2
        out = {"train": [items[i] for i in positive[:half]], "test": [items[i] for i in positive[half:]]}
    else:
        out = {"train": [items[i] for i in ids if not is_siim_test(i)], "test": [items[i] for i in ids if is_siim_test(i)]}
    if not out["train"] or not out["test"]:
        raise FileNotFoundError(f"SIIM-ACR: {len(labels)} labelled ImageIds, {len(dicoms)} DICOMs under {root}; "
                                f"found {len(out['train'])} train / {len(out['test'])} test images with both")
    return out


def _load_jsrt(img_path: Path, mask_paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    masks = [read_mask(p, level=127) for p in mask_paths]
    mask = np.logical_or.reduce(masks)
    image = read_jsrt(img_path)
    if image.shape != mask.shape:  # SCR masks are at half the JSRT resolution
        image = np.asarray(Image.fromarray(image).resize(mask.shape[::-1], Image.Resampling.BOX))
    return image, mask


def read_jsrt_scr(root: Path, structure: str, splits: str = "paper") -> dict[str, list[Item]]:
    """JSRT radiographs with SCR masks of ``lung``, ``heart`` or ``clavicle``; SCR fold 1 train, fold 2 test."""
    parts = SCR_PARTS[structure]
    images = {p.stem.upper(): p for p in root.rglob("*") if p.suffix.upper() == ".IMG"}
    out = {}
    for split, fold in (("train", "fold1"), ("test", "fold2")):
        items = []
        for masks_dir in sorted(d / "masks" for d in root.rglob(fold) if (d / "masks").is_dir()):
            for first in sorted((masks_dir / parts[0]).glob("*.gif")):
                paths = [masks_dir / part / first.name for part in parts]
                name = first.stem.upper()
                if name in images and all(p.is_file() for p in paths):
                    items.append(Item(name, partial(_load_jsrt, images[name], paths)))
        out[split] = items
    if not out["train"] or not out["test"]:
        raise FileNotFoundError(f"JSRT/SCR: found {len(out['train'])} fold-1 and {len(out['test'])} fold-2 images "
                                f"with {'/'.join(parts)} masks under {root}; expected 'JPCLN001.IMG' files and "
                                f"'fold1/masks/{parts[0]}/JPCLN001.gif' (and fold2) below it")
    return out
