"""Tests of the procedural data generator (ldisc.synth): API, image/mask consistency, CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from ldisc.synth import LANDMARKS, MASKS, SITES, SynthSample, generate, generate_many, to_pil

SIZE = 256
SEEDS = range(6)


def _ring(mask: np.ndarray, width: int) -> np.ndarray:
    """Pixels within ``width`` of ``mask`` but outside it (a cheap dilation by shifting)."""
    grown = mask.copy()
    for shift in range(1, width + 1):
        for axis in (0, 1):
            grown |= np.roll(mask, shift, axis) | np.roll(mask, -shift, axis)
    return grown & ~mask


@pytest.fixture(scope="module")
def fundus_samples() -> list[SynthSample]:
    return [generate("fundus", seed, SIZE, lesions=True) for seed in SEEDS]


@pytest.fixture(scope="module")
def xray_samples() -> list[SynthSample]:
    return [generate("xray", seed, SIZE, pneumothorax=True) for seed in SEEDS]


@pytest.mark.parametrize("modality", ["fundus", "xray"])
def test_sample_format(modality):
    sample = generate(modality, 1, 96)
    channels = (96, 96, 3) if modality == "fundus" else (96, 96)
    assert sample.image.shape == channels and sample.image.dtype == np.uint8
    assert sample.modality == modality and sample.seed == 1
    assert set(sample.masks) == set(MASKS[modality])
    for mask in sample.masks.values():
        assert mask.shape == (96, 96) and mask.dtype == bool
    assert set(sample.landmarks) == set(LANDMARKS[modality])
    for x, y in sample.landmarks.values():
        assert isinstance(x, float) and isinstance(y, float)
    assert 0 <= sample.site < len(SITES[modality])
    assert to_pil(sample).mode == ("RGB" if modality == "fundus" else "L")


@pytest.mark.parametrize("modality", ["fundus", "xray"])
def test_same_seed_same_bytes_and_different_seeds_differ(modality):
    first, again, other = (generate(modality, s, 128) for s in (7, 7, 8))
    assert first.image.tobytes() == again.image.tobytes()
    for name in MASKS[modality]:
        assert np.array_equal(first.masks[name], again.masks[name])
    assert first.landmarks == again.landmarks
    assert first.image.tobytes() != other.image.tobytes()


def test_generate_many_is_independent_of_n():
    short = [s.image.tobytes() for s in generate_many("xray", 2, 64, seed=5)]
    long = [s.image.tobytes() for s in generate_many("xray", 4, 64, seed=5)]
    assert short == long[:2] and len(set(long)) == 4
    regenerated = generate("xray", next(iter(generate_many("xray", 1, 64, seed=5))).seed, 64)
    assert regenerated.image.tobytes() == short[0]


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: generate("mri", 0), "unknown modality"),
        (lambda: generate("fundus", 0, size=8), "size"),
        (lambda: generate("fundus", 0, size=100.0), "size"),
        (lambda: generate("xray", -1), "seed"),
        (lambda: generate("xray", 0, site=99), "site"),
        (lambda: list(generate_many("fundus", -2)), "n must"),
    ],
)
def test_bad_arguments_raise_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_fundus_vessels_darker_than_their_surroundings(fundus_samples):
    for sample in fundus_samples:
        green = sample.image[..., 1].astype(float)
        vessel = sample.masks["vessel"]
        others = vessel | sample.masks["disc"] | sample.masks["exudate"] | sample.masks["haemorrhage"]
        around = _ring(vessel, 3) & ~others & (green > 0)
        assert vessel.sum() > 0.01 * vessel.size
        assert green[vessel].mean() < 0.92 * green[around].mean()


def test_fundus_disc_brighter_and_cup_inside(fundus_samples):
    for sample in fundus_samples:
        disc, cup = sample.masks["disc"], sample.masks["cup"]
        brightness = sample.image.astype(float).mean(axis=2)
        around = _ring(disc, 15) & (brightness > 0)
        assert brightness[disc & ~sample.masks["vessel"]].mean() > brightness[around].mean() + 15
        assert cup.any() and not (cup & ~disc).any()
        assert brightness[cup].mean() > brightness[disc & ~cup].mean()


def test_fundus_lesions_look_like_lesions(fundus_samples):
    for sample in fundus_samples:
        image = sample.image.astype(float)
        exudate, haemorrhage = sample.masks["exudate"], sample.masks["haemorrhage"]
        background = (image[..., 0] > 0) & ~exudate & ~haemorrhage & ~sample.masks["disc"]
        assert exudate.sum() > 5 and haemorrhage.sum() > 5      # lesions=True: every seed here has both
        assert image[exudate][:, 1].mean() > image[background][:, 1].mean()
        assert image[haemorrhage][:, 1].mean() < image[background][:, 1].mean()
    assert not generate("fundus", 0, 128, lesions=False).masks["exudate"].any()


def test_fundus_landmarks_and_disc_fovea_distance(fundus_samples):
    for sample in fundus_samples:
        fov = sample.image.max(axis=2) > 10
        disc_diameter = 2 * np.sqrt(sample.masks["disc"].sum() / np.pi)
        (dx, dy), (fx, fy) = sample.landmarks["disc_center"], sample.landmarks["fovea"]
        for x, y in ((dx, dy), (fx, fy)):
            assert fov[int(y), int(x)]
        assert 2.1 < np.hypot(fx - dx, fy - dy) / disc_diameter < 2.9
        ys, xs = np.nonzero(sample.masks["disc"])
        assert abs(xs.mean() - dx) < 2 and abs(ys.mean() - dy) < 2
    sides = {np.sign(s.landmarks["fovea"][0] - s.landmarks["disc_center"][0]) for s in fundus_samples}
    assert sides == {-1.0, 1.0}, "both left and right eyes should occur"


def test_xray_intensity_ordering(xray_samples):
    for sample in xray_samples:
        image = sample.image.astype(float)
        lung = sample.masks["lung"] & ~sample.masks["clavicle"]
        assert lung.sum() > 0.1 * lung.size
        assert image[lung].mean() + 30 < image[sample.masks["heart"]].mean()
        assert image[lung].mean() + 20 < image[sample.masks["clavicle"]].mean()
        assert not (sample.masks["lung"] & sample.masks["heart"]).any()


def test_xray_pneumothorax_inside_lung_and_without_markings(xray_samples):
    for sample in xray_samples:
        ptx, lung = sample.masks["pneumothorax"], sample.masks["lung"]
        assert ptx.sum() > 0.005 * ptx.size
        assert not (ptx & ~lung).any()
        image = sample.image.astype(float)
        aerated = lung & ~ptx & ~sample.masks["clavicle"]
        assert image[ptx & ~sample.masks["clavicle"]].mean() < image[aerated].mean()
    assert not generate("xray", 0, 128, pneumothorax=False).masks["pneumothorax"].any()


def test_xray_landmarks_inside_image_and_anatomical(xray_samples):
    for sample in xray_samples:
        points = sample.landmarks
        for x, y in points.values():
            assert 0 <= x < SIZE and 0 <= y < SIZE
        assert points["lung_apex_right"][0] < points["carina"][0] < points["lung_apex_left"][0]
        for side in ("left", "right"):
            assert points[f"lung_apex_{side}"][1] < points["carina"][1]
            assert points[f"costophrenic_{side}"][1] > points["carina"][1]


@pytest.mark.parametrize("size", [64, 333])
def test_other_sizes(size):
    for modality in ("fundus", "xray"):
        sample = generate(modality, 3, size)
        assert sample.image.shape[:2] == (size, size)
        assert sample.masks[MASKS[modality][0]].any()


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ldisc.synth.cli", *args],
                          capture_output=True, text=True, timeout=120)


def test_cli_writes_promised_files(tmp_path):
    out = tmp_path / "synth"
    result = _run_cli("--modality", "fundus", "--n", "3", "--size", "64", "--seed", "4",
                      "--out", str(out), "--workers", "2")
    assert result.returncode == 0, result.stderr
    assert "3 fundus images" in result.stdout and "images/s" in result.stdout
    ids = [f"fundus_{i:06d}" for i in range(3)]
    assert sorted(p.stem for p in (out / "images").glob("*.png")) == ids
    for name in MASKS["fundus"]:
        for sample_id in ids:
            mask = np.asarray(Image.open(out / "masks" / name / f"{sample_id}.png"))
            assert mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 255}
    landmarks = json.loads((out / "landmarks.json").read_text())
    assert sorted(landmarks) == ids and set(landmarks[ids[0]]) == set(LANDMARKS["fundus"])
    image = np.asarray(Image.open(out / "images" / f"{ids[1]}.png"))
    assert image.shape == (64, 64, 3)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--modality", "mri", "--n", "1"], "invalid choice"),
        (["--modality", "xray", "--n", "0"], "--n"),
        (["--modality", "xray", "--n", "1", "--size", "big"], "--size"),
        (["--modality", "xray", "--n", "1", "--size", "4"], "--size"),
    ],
)
def test_cli_bad_arguments(tmp_path, args, message):
    result = _run_cli(*args, "--out", str(tmp_path / "o"))
    assert result.returncode != 0
    assert message in result.stderr
