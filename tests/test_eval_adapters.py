"""Each dataset adapter reads a tiny fixture written here in the dataset's published layout."""
from __future__ import annotations

import gzip
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ldisc.eval import get_task, load_task_data
from ldisc.eval.adapters_xray import is_siim_test
from ldisc.eval.dataio import read_jsrt, rle_decode
from ldisc.eval.taskdata import ADAPTERS

RNG = np.random.default_rng(0)


def rle_encode(mask: np.ndarray, relative: bool) -> str:
    """Inverse of :func:`ldisc.eval.dataio.rle_decode`: writes the fixtures and checks round trips."""
    flat = np.asarray(mask, dtype=bool).T.reshape(-1)
    padded = np.concatenate([[False], flat, [False]])
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    starts, ends = edges[0::2], edges[1::2]
    if starts.size == 0:
        return "-1"
    lengths = ends - starts
    if relative:
        prev_end = np.concatenate([[0], ends[:-1]])
        starts = starts - prev_end
    else:
        starts = starts + 1
    return " ".join(f"{s} {n}" for s, n in zip(starts, lengths))


def _mask(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = rng.integers(2, h // 2), rng.integers(2, w // 2)
    m = np.zeros((h, w), dtype=bool)
    m[y:y + h // 3, x:x + w // 4] = True
    return m


def _write_image(path: Path, h: int = 40, w: int = 48) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(RNG.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)


def _write_mask(path: Path, mask: np.ndarray, style: str = "L") -> None:
    """style: L (0/255 grey), red (IDRiD: red on black RGB), gif (palette GIF), soft (Drishti soft map)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if style == "red":
        rgb = np.zeros(mask.shape + (3,), np.uint8)
        rgb[mask] = (255, 0, 0)
        Image.fromarray(rgb).save(path)
    elif style == "soft":  # 0.5 agreement and below is background
        soft = np.where(mask, 200, 100).astype(np.uint8)
        soft[0, 0] = 0
        Image.fromarray(soft).save(path)
    else:
        img = Image.fromarray(mask.astype(np.uint8) * 255)
        (img.convert("P") if style == "gif" else img).save(path)


def _check(items: dict, expected: dict[str, dict[str, np.ndarray]]) -> None:
    """Adapter output has exactly the expected names per split, and each mask equals the written one."""
    for split, masks in expected.items():
        assert sorted(i.name for i in items[split]) == sorted(masks), split
        for item in items[split]:
            image, mask = item.load()
            assert image.dtype == np.uint8 and image.shape[:2] == mask.shape
            np.testing.assert_array_equal(mask, masks[item.name], err_msg=item.name)


def test_idrid_disc_and_exudates(tmp_path):
    seg = tmp_path / "A. Segmentation"
    truth = {"disc": {"train": {}, "test": {}}, "exudate": {"train": {}, "test": {}}}
    for n, split, sub in [(1, "train", "a. Training Set"), (2, "train", "a. Training Set"), (3, "train", "a. Training Set"),
                          (55, "test", "b. Testing Set"), (56, "test", "b. Testing Set")]:
        name = f"IDRiD_{n:02d}"
        _write_image(seg / "1. Original Images" / sub / f"{name}.jpg")
        gt = seg / "2. All Segmentation Groundtruths" / sub
        truth["disc"][split][name] = _mask(40, 48, n)
        _write_mask(gt / "5. Optic Disc" / f"{name}_OD.tif", truth["disc"][split][name], "red")
        truth["exudate"][split][name] = _mask(40, 48, 100 + n) if n != 2 else np.zeros((40, 48), bool)
        if n != 2:  # IDRiD_02 has no exudate file: no exudates
            _write_mask(gt / "3. Hard Exudates" / f"{name}_EX.tif", truth["exudate"][split][name], "red")
    for structure in ("disc", "exudate"):
        _check(ADAPTERS["idrid"](tmp_path, structure, splits="ldisc"), truth[structure])
    # the authors list only the images that have an exudate mask
    del truth["exudate"]["train"]["IDRiD_02"]
    _check(ADAPTERS["idrid"](tmp_path, "exudate", splits="paper"), truth["exudate"])
    data = load_task_data(get_task("idrid_disc"), {"idrid": str(tmp_path)}, size=32)
    assert (len(data.train), len(data.val), len(data.test)) == (2, 1, 2)
    assert data.train.x.shape == (2, 3, 32, 32) and set(data.train.y.unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("layout", ["RITE", "DRIVE"])
def test_rite_and_drive_vessels(tmp_path, layout):
    truth = {"train": {}, "test": {}}
    for num, split, sub in [(21, "train", "training"), (22, "train", "training"), (1, "test", "test")]:
        stem = f"{num:02d}_{sub}"
        _write_image(tmp_path / sub / "images" / f"{stem}.tif")
        truth[split][stem] = _mask(40, 48, num)
        if layout == "RITE":
            _write_mask(tmp_path / sub / "vessel" / f"{stem}.png", truth[split][stem])
        else:
            _write_mask(tmp_path / sub / "1st_manual" / f"{num:02d}_manual1.gif", truth[split][stem], "gif")
            _write_mask(tmp_path / sub / "mask" / f"{stem}_mask.gif", np.ones((40, 48), bool), "gif")
    _check(ADAPTERS["rite"](tmp_path, "vessel"), truth)


def _ppm_gz(path: Path, array: np.ndarray) -> None:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PPM")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(buf.getvalue()))


def test_stare_gzipped_ppm(tmp_path):
    truth = {"train": {}, "test": {}}
    for i, num in enumerate([1, 2, 44, 77]):
        name = f"im{num:04d}"
        _ppm_gz(tmp_path / "stare-images" / f"{name}.ppm.gz", RNG.integers(0, 255, (40, 48, 3), dtype=np.uint8))
        truth["train" if i < 2 else "test"][name] = m = _mask(40, 48, num)
        _ppm_gz(tmp_path / "labels-ah" / f"{name}.ah.ppm.gz", np.repeat(m[..., None] * np.uint8(255), 3, -1))
        _ppm_gz(tmp_path / "labels-vk" / f"{name}.vk.ppm.gz", np.zeros((40, 48, 3), np.uint8))
    _ppm_gz(tmp_path / "stare-images" / "im0005.ppm.gz", np.zeros((40, 48, 3), np.uint8))  # unlabelled: ignored
    _check(ADAPTERS["stare"](tmp_path, "vessel"), truth)


def test_chase_db1(tmp_path):
    truth = {"train": {}, "test": {}}
    for child, split in [(1, "train"), (11, "test")]:
        for eye in "LR":
            name = f"Image_{child:02d}{eye}"
            _write_image(tmp_path / f"{name}.jpg")
            truth[split][name] = _mask(40, 48, child * 2 + (eye == "R"))
            _write_mask(tmp_path / f"{name}_1stHO.png", truth[split][name])
            _write_mask(tmp_path / f"{name}_2ndHO.png", ~truth[split][name])
    _check(ADAPTERS["chase"](tmp_path, "vessel"), truth)


def test_hrf_paper_split_is_25_train_20_test_in_name_order(tmp_path):
    stems = [f"{n:02d}_{kind}" for n in range(1, 16) for kind in ("dr", "g", "h")]  # HRF's 45 images
    masks = {}
    for i, stem in enumerate(stems):
        _write_image(tmp_path / "images" / f"{stem}.{'JPG' if i % 7 == 0 else 'jpg'}", 12, 16)
        masks[stem] = _mask(12, 16, i)
        _write_mask(tmp_path / "manual1" / f"{stem}.tif", masks[stem])
        _write_mask(tmp_path / "mask" / f"{stem}_mask.tif", np.ones((12, 16), bool))
    paper = ADAPTERS["hrf"](tmp_path, "vessel", splits="paper")
    assert (len(paper["train"]), len(paper["test"])) == (25, 20)
    _check(paper, {"train": {s: masks[s] for s in stems[:25]}, "test": {s: masks[s] for s in stems[25:]}})
    ldisc = ADAPTERS["hrf"](tmp_path, "vessel", splits="ldisc")
    assert (len(ldisc["train"]), len(ldisc["test"])) == (15, 30)
    assert all(int(i.name[:2]) <= 5 for i in ldisc["train"])


def test_drishti_soft_maps(tmp_path):
    base = tmp_path / "Drishti-GS1_files"
    truth = {s: {"train": {}, "test": {}} for s in ("disc", "cup")}
    for num, split, sub, gt in [(2, "train", "Training", "GT"), (4, "train", "Training", "GT"),
                                (1, "test", "Test", "Test_GT")]:
        name = f"drishtiGS_{num:03d}"
        _write_image(base / sub / "Images" / f"{name}.png")
        for structure, kind in (("disc", "ODseg"), ("cup", "cupseg")):
            truth[structure][split][name] = m = _mask(40, 48, num * 7 + len(kind))
            _write_mask(base / sub / gt / name / "SoftMap" / f"{name}_{kind}Softmap.png", m, "soft")
    for structure in ("disc", "cup"):
        _check(ADAPTERS["drishti"](tmp_path, structure), truth[structure])


def test_rle_decoding_matches_hand_computed_masks():
    expected = np.zeros((4, 3), bool)  # column-major pixels 1, 2 and 6 of a 4-high, 3-wide image
    expected[1, 0] = expected[2, 0] = expected[2, 1] = True
    np.testing.assert_array_equal(rle_decode("1 2 3 1", 4, 3, relative=True), expected)
    np.testing.assert_array_equal(rle_decode("2 2 7 1", 4, 3, relative=False), expected)
    assert not rle_decode(" -1", 4, 3, relative=True).any()
    for relative in (True, False):
        m = _mask(30, 20, 3) | _mask(30, 20, 4)
        np.testing.assert_array_equal(rle_decode(rle_encode(m, relative), 30, 20, relative), m)
    with pytest.raises(ValueError):
        rle_decode("5 100", 4, 3, relative=False)


def _write_dicom(path: Path, pixels: np.ndarray) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PhotometricInterpretation, ds.SamplesPerPixel = "CR", "MONOCHROME2", 1
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = pixels.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


@pytest.mark.parametrize("labels,relative", [("train-rle.csv", True), ("stage_2_train.csv", False)])
def test_siim_dicom_and_run_length_masks(tmp_path, labels, relative):
    ids = [f"1.2.276.0.7230010.3.1.4.{i}" for i in range(40)]
    chosen = [i for i in ids if not is_siim_test(i)][:5] + [i for i in ids if is_siim_test(i)][:4]
    lines, truth = ["ImageId, EncodedPixels"], {}
    for k, image_id in enumerate(chosen):
        _write_dicom(tmp_path / "dicom-images-train" / f"1.2.{k}" / f"1.3.{k}" / f"{image_id}.dcm",
                     RNG.integers(0, 255, (32, 32)))
        a, b = _mask(32, 32, k), _mask(32, 32, 50 + k)
        if k in (0, 5):  # no pneumothorax
            lines.append(f"{image_id}, -1")
            m = np.zeros((32, 32), bool)
        else:  # two regions, one row each
            lines += [f"{image_id}, {rle_encode(a, relative)}", f"{image_id}, {rle_encode(b & ~a, relative)}"]
            m = a | b
        truth[image_id] = m
    (tmp_path / labels).write_text("\n".join(lines) + "\n")
    ldisc = {"train": {i: m for i, m in truth.items() if not is_siim_test(i)},
             "test": {i: m for i, m in truth.items() if is_siim_test(i)}}
    _check(ADAPTERS["siim"](tmp_path, "pneumothorax", splits="ldisc"), ldisc)
    # the authors': positives only, in ImageId order, first half train (as 1334 of 2669), the rest test
    positive = sorted(i for i, m in truth.items() if m.any())
    assert len(positive) == 7
    paper = ADAPTERS["siim"](tmp_path, "pneumothorax", splits="paper")
    assert (len(paper["train"]), len(paper["test"])) == (3, 4)
    _check(paper, {"train": {i: truth[i] for i in positive[:3]}, "test": {i: truth[i] for i in positive[3:]}})


def test_jsrt_images_with_scr_masks(tmp_path):
    names = {"fold1": ["JPCLN001", "JPCNN001"], "fold2": ["JPCLN002"]}
    parts = ("left lung", "right lung", "heart", "left clavicle", "right clavicle")
    truth = {s: {"train": {}, "test": {}} for s in ("lung", "heart", "clavicle")}
    for fold, split in (("fold1", "train"), ("fold2", "test")):
        for k, name in enumerate(names[fold]):
            raw = np.full((2048, 2048), 4095 * (k % 2), dtype=">u2")
            raw[:, :1024] = 1000
            (tmp_path / "All247images").mkdir(exist_ok=True)
            raw.tofile(tmp_path / "All247images" / f"{name}.IMG")
            masks = {p: _mask(1024, 1024, 10 * k + i + len(fold)) for i, p in enumerate(parts)}
            for p, m in masks.items():
                _write_mask(tmp_path / "scr" / fold / "masks" / p / f"{name}.gif", m, "gif")
            truth["lung"][split][name] = masks["left lung"] | masks["right lung"]
            truth["heart"][split][name] = masks["heart"]
            truth["clavicle"][split][name] = masks["left clavicle"] | masks["right clavicle"]
    for structure in ("lung", "heart", "clavicle"):
        _check(ADAPTERS["jsrt_scr"](tmp_path, structure), truth[structure])
    img = read_jsrt(tmp_path / "All247images" / "JPCLN001.IMG")
    assert img.shape == (2048, 2048) and img[0, 2000] == 255 and img[0, 0] == round(255 * (1 - 1000 / 4095))


def test_missing_dataset_folders_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="data.roots.rite"):
        load_task_data(get_task("rite_vessel"), {}, size=32)
    with pytest.raises(FileNotFoundError, match="RITE/DRIVE: found 0 training"):
        load_task_data(get_task("rite_vessel"), {"rite": str(tmp_path)}, size=32)
