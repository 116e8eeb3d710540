"""Ingestion: real images, preprocessing, de-identification, bad input, dedup, verify/stats,
metrics — all through the real ``ldisc-shard`` CLI in a subprocess."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from _data_fixtures import (PHI, SECRET, cli_env, fundus_image, gray_image, make_corrupt_corpus,
                            read_dataset_bytes, run_cli, write_dicom, write_image)
from ldisc.data import read_manifest, open_store
from _prom import lint, value
from ldisc.data.samples import SampleReader, SampleTable

def samples_by_format(dataset: Path) -> dict[str, list[tuple[dict, Image.Image]]]:
    """(json record, decoded image) of every sample in the latest version, by source format."""
    store = open_store(dataset)
    manifest = read_manifest(store)
    reader = SampleReader(store, SampleTable.from_manifest(manifest))
    out: dict[str, list] = {}
    for i, row in enumerate(manifest.samples.to_pylist()):
        record = json.loads(store.get_range(row["shard"], row["json_offset"], row["json_size"]))
        out.setdefault(record["source_format"], []).append((record, reader.image(i)))
    return out


def test_real_xrays_and_dicoms(tmp_path, realdata):
    src = tmp_path / "src"
    src.mkdir()
    jpegs = sorted((realdata / "cxr").glob("*.jpeg"))[:3]
    for p in jpegs:
        shutil.copy(p, src / p.name)
    for name in ("RG1_UNCR.dcm", "RG1_J2KR.dcm"):
        shutil.copy(realdata / "cxr_dicom" / name, src / name)
    ds = tmp_path / "ds"
    out = run_cli("ingest", str(src), "--dataset", str(ds), "--site", "kermany", "--modality", "xray",
                  "--stored-side", "128", "--workers", "2", "--no-progress", "--quarantine-report", str(tmp_path / "q.jsonl"))
    # raw and JPEG 2000 DICOM decode to the same pixels: one sample, one duplicate
    assert "added 4  duplicates 1  quarantined 0" in out.stdout
    got = samples_by_format(ds)
    for record, img in got["jpeg"]:
        w, h = record["original_size"]
        assert img.size == (128, 128) and img.mode == "L"
        arr = np.asarray(img)
        resized = record["preprocess"]["resized"]
        assert resized[0] == 128 and abs(resized[1] - round(128 * h / w)) <= 1  # aspect kept (landscape)
        top = record["preprocess"]["pad_offset"][1]
        assert top > 0 and arr[: top - 1].max() == 0 and arr[top + 2: top + resized[1] - 2].mean() > 40
    (record, img), = got["dicom"]
    assert record["preprocess"]["inverted"] and record["preprocess"]["window"] == [15000.0, 30000.0]
    assert record["original_size"] == [1841, 1955]
    # inversion on real pixels: MONOCHROME1 raw values are high where the image is dark
    import pydicom
    raw = pydicom.dcmread(realdata / "cxr_dicom" / "RG1_UNCR.dcm").pixel_array.astype(np.float64)
    arr = np.asarray(img, np.float64)
    p = record["preprocess"]
    x0, y0 = p["pad_offset"]
    content = arr[y0:y0 + p["resized"][1], x0:x0 + p["resized"][0]]
    small = np.asarray(Image.fromarray(raw.astype(np.float32)).resize(content.shape[::-1], Image.BOX))
    expected = 255 - np.clip(((small - 14999.5) / 29999 + 0.5) * 255, 0, 255)
    assert np.corrcoef(content.ravel(), small.ravel())[0, 1] < -0.95
    assert np.abs(content - expected).mean() < 3.0


def test_real_fundus_crop(tmp_path, realdata):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(realdata / "fundus" / "retina.jpg", src / "retina.jpg")
    ds = tmp_path / "ds"
    run_cli("ingest", str(src), "--dataset", str(ds), "--site", "wiki", "--modality", "fundus",
            "--stored-side", "128", "--no-progress", "--quarantine-report", str(tmp_path / "q.jsonl"))
    (record, img), = samples_by_format(ds)["jpeg"]
    original = np.asarray(Image.open(src / "retina.jpg").convert("RGB"))
    x0, y0, x1, y1 = record["preprocess"]["crop_box"]
    bright = np.argwhere(original.max(axis=2) > 30)
    # the box holds the bright field of view and is at most margin + probe cell larger
    slack = 0.02 * 1411 + 2 * 1411 / 128 + 2
    (by0, bx0), (by1, bx1) = bright.min(axis=0), bright.max(axis=0) + 1
    assert bx0 - slack <= x0 <= bx0 + 15 and bx1 - 15 <= x1 <= bx1 + slack
    assert by0 - slack <= y0 <= by0 + 15 and by1 - 15 <= y1 <= by1 + slack
    arr = np.asarray(img)
    assert img.size == (128, 128) and img.mode == "RGB"
    assert arr[60:68, 60:68].mean() > 3 * arr[:4, :4].mean() + 20  # bright centre, dark corner


def test_synthetic_fundus_crop_and_formats(tmp_path):
    src = tmp_path / "src"
    write_image(src / "a.png", fundus_image((200, 150), center=(120, 70), radius=50))
    write_image(src / "b.tif", fundus_image((160, 160), center=(80, 80), radius=70, seed=1), "TIFF")
    ds = tmp_path / "ds"
    run_cli("ingest", str(src), "--dataset", str(ds), "--site", "syn", "--modality", "fundus",
            "--stored-side", "64", "--no-progress", "--quarantine-report", str(tmp_path / "q.jsonl"))
    got = samples_by_format(ds)
    (record, img), = got["png"]
    x0, y0, x1, y1 = record["preprocess"]["crop_box"]
    margin = 0.02 * 200 + 2
    assert abs(x0 - 70) <= margin and abs(x1 - 171) <= margin
    assert abs(y0 - 20) <= margin and abs(y1 - 121) <= margin
    assert img.size == (64, 64) and np.asarray(img)[32, 32, 0] > 150
    assert len(got["tiff"]) == 1


def test_planted_phi_never_reaches_the_dataset(tmp_path):
    src = tmp_path / "src" / "Qwertyson_Zyxabel"  # PHI in the folder name too
    pixels = (gray_image(7, (96, 80)).astype(np.uint16) * 16)
    write_dicom(src / "PID-93127-XYZ.dcm", pixels, phi=PHI)
    write_dicom(src / "other.dcm", pixels[::-1].copy(), phi=PHI)
    ds = tmp_path / "ds"
    run_cli("ingest", str(tmp_path / "src"), "--dataset", str(ds), "--site", "h1", "--modality", "xray",
            "--stored-side", "64", "--no-progress", "--metrics-file", str(tmp_path / "m.prom"),
            "--quarantine-report", str(tmp_path / "q.jsonl"))
    blob = read_dataset_bytes(ds)
    assert len(read_manifest(open_store(ds)).samples) == 2
    for key, value in {**PHI, "folder": "Qwertyson_Zyxabel", "secret": SECRET}.items():
        for variant in {value, value.replace("^", " "), value.split("^")[0]}:
            assert variant.encode() not in blob, f"{key} value leaked into the dataset"
    keys = set(read_manifest(open_store(ds)).samples.column("patient_key").to_pylist())
    assert len(keys) == 1 and len(next(iter(keys))) == 32  # same patient → same pseudonym


def test_missing_secret_is_a_clear_error(tmp_path):
    write_image(tmp_path / "src/a.png", gray_image(1))
    env = cli_env()
    env.pop("LDISC_PATIENT_KEY_SECRET")
    proc = run_cli("ingest", str(tmp_path / "src"), "--dataset", str(tmp_path / "ds"), "--site", "s",
                   "--modality", "xray", env=env, check=False)
    assert proc.returncode == 2 and "LDISC_PATIENT_KEY_SECRET" in proc.stderr
    assert not (tmp_path / "ds").exists()


def test_corrupt_corpus_quarantined_and_good_files_ingested_once(tmp_path):
    src, ds = tmp_path / "src", tmp_path / "ds"
    bad, good = make_corrupt_corpus(src, tmp_path / "outside")
    args = ["--dataset", str(ds), "--site", "s", "--modality", "xray", "--stored-side", "64", "--no-progress",
            "--max-pixels", "1000000", "--workers", "2"]
    out = run_cli("ingest", str(src), *args, "--quarantine-report", str(tmp_path / "q1.jsonl"),
                  "--metrics-file", str(tmp_path / "m1.prom"))
    report = {r["path"]: r["reason"] for r in map(json.loads, (tmp_path / "q1.jsonl").read_text().splitlines())}
    assert report == bad
    assert f"added {len(good)}  duplicates 0  quarantined {len(bad)}" in out.stdout
    for reason in set(bad.values()):
        n = sum(1 for r in bad.values() if r == reason)
        assert f"quarantined {reason}: {n}" in out.stdout
    metrics = (tmp_path / "m1.prom").read_text()
    labels = {"run": "ds-s", "site": "s", "modality": "xray"}       # run: <dataset folder>-<site>
    assert value(metrics, "ldisc_shard_samples_total", **labels) == len(good)
    assert value(metrics, "ldisc_shard_inputs_total", **labels) == len(good) + len(bad)
    assert value(metrics, "ldisc_shard_quarantined_total", reason="corrupt_image", **labels) == 2
    assert lint(metrics) == []
    # explicit file list with traversal and absolute paths; good files again are duplicates
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(["../outside/secret.png", str((tmp_path / "outside/secret.png").resolve()),
                                  "good/../good/g1.png", *good]))
    out = run_cli("ingest", str(src), *args, "--files-from", str(listing),
                  "--quarantine-report", str(tmp_path / "q2.jsonl"))
    assert f"added 0  duplicates {len(good)}  quarantined 3" in out.stdout
    assert "quarantined unsafe_path: 3" in out.stdout
    manifest = read_manifest(open_store(ds))
    assert manifest.version == 1 and manifest.num_samples == len(good)
    assert len(set(manifest.samples.column("sample_id").to_pylist())) == len(good)
    formats = sorted(manifest.samples.column("source_format").to_pylist())
    assert formats == ["dicom", "jpeg", "png", "tiff", "tiff"]


def test_dedup_across_ingests_versions_verify_and_stats(tmp_path):
    src1, src2, ds = tmp_path / "s1", tmp_path / "s2", tmp_path / "ds"
    for i in range(6):
        write_image(src1 / f"{i}.png", gray_image(i))
    for i in range(4, 10):  # 4 and 5 already ingested (as different files)
        write_image(src2 / f"x{i}.jpg" if i > 5 else src2 / f"copy{i}.png", gray_image(i),
                    "JPEG" if i > 5 else "PNG")
    common = ["--dataset", str(ds), "--modality", "xray", "--stored-side", "64", "--no-progress", "--shard-samples", "4"]
    run_cli("ingest", str(src1), "--site", "a", *common, "--quarantine-report", str(tmp_path / "q1"))
    out = run_cli("ingest", str(src2), "--site", "b", *common, "--quarantine-report", str(tmp_path / "q2"))
    assert "added 4  duplicates 2" in out.stdout
    store = open_store(ds)
    v1, v2 = read_manifest(store, 1), read_manifest(store, 2)
    assert (v1.num_samples, v2.num_samples) == (6, 10)
    assert v2.samples.slice(0, 6).equals(v1.samples)  # append-only; the old version stays readable
    verify = run_cli("verify", str(ds))
    assert "10 samples" in verify.stdout and "0 problems" in verify.stdout
    stats = run_cli("stats", str(ds)).stdout
    assert "a/xray: 6" in stats and "b/xray: 4" in stats and "v1: 6" in stats and "v2: 4" in stats
    # a flipped byte in a shard is found by verify
    shard = ds / v2.shards.column("shard")[0].as_py()
    data = bytearray(shard.read_bytes())
    data[700] ^= 0xFF
    shard.write_bytes(bytes(data))
    bad = run_cli("verify", str(ds), check=False)
    assert bad.returncode == 1 and "sha256 mismatch" in bad.stdout
