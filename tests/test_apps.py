"""The applications end to end: a shape-guided stage 2 on CPU, ldisc-segment and ldisc-localize on its
checkpoint (real files, real subprocesses), the cross-modality shape source and its augmentation."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ldisc.apps.localize_cli import main as localize_main
from ldisc.apps.segment_cli import main as segment_main
from ldisc.config import compose
from ldisc.synth import generate
from ldisc.synth.vessels import vessel_masks
from ldisc.train import pretrain
from ldisc.train.shape_prior import augment_masks, load_shape_masks

REPO = Path(__file__).resolve().parents[1]
SG_STEPS = 12
# shape-guided at 32 px; the discriminator at the generator's lr (lr_scale 1) so that it moves in 12 steps
SHAPE_GUIDED = ["objective=shape_guided", "objective.stage=2", f"train.stage2_steps={SG_STEPS}",
                "data.source=noise", "data.view_side=32", "data.image_side=48", "data.pool=8", "train.batch_size=1",
                "shape_prior.pool=8", "shape_prior.lr_scale=1", f"train.checkpoint_every={SG_STEPS}",
                "train.progress=false", "threads=1"]


def _cli(module: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=300)


@pytest.fixture(scope="module")
def shape_guided_run(tmp_path_factory):
    return pretrain([*SHAPE_GUIDED, f"run_dir={tmp_path_factory.mktemp('sg')}"])


def test_preset_is_the_authors_shape_guided_stage_2():
    cfg = compose("pretrain", ["run_dir=/unused", "objective=shape_guided"])
    assert cfg.objective.w_adversarial == 1.0 and cfg.model.clusters == 8 and cfg.train.batch_size == 4
    assert cfg.shape_prior.source == "cross_modality" and cfg.shape_prior.lr_scale == 0.05
    assert cfg.objective.w_region == 10.0 and cfg.objective.w_entropy == 0.1      # the rest is stage-2 LD
    plain = compose("pretrain", ["run_dir=/unused"])
    assert plain.objective.w_adversarial == 0.0 and plain.model.clusters == 16 and plain.train.batch_size == 2


def test_cross_modality_vessels_differ_from_the_fundus_tree():
    from scipy import ndimage

    def calibre(mask: np.ndarray) -> float:   # 90th percentile of the width (2 × distance to background on ridges)
        dist = ndimage.distance_transform_edt(mask)
        ridge = mask & (dist >= ndimage.maximum_filter(dist, 3))
        return float(np.percentile(2 * dist[ridge], 90))

    octa, dsa = vessel_masks("octa", 2, 256, 0), vessel_masks("dsa", 2, 256, 0)
    fundus = [generate("fundus", s, 256).masks["vessel"] for s in (1, 2)]
    assert vessel_masks("octa", 2, 256, 0)[1].tolist() == octa[1].tolist()                   # seeded
    for masks in (octa, dsa):
        assert all(0.02 < m.mean() < 0.3 for m in masks)
    octa_w, dsa_w = np.mean([calibre(m) for m in octa]), np.mean([calibre(m) for m in dsa])
    assert dsa_w > 1.5 * octa_w                                                   # trunks vs capillaries
    # OCTA covers the whole field (a mesh); the fundus tree is one arcade system from the disc
    spread = lambda m: np.mean([m[i::4, j::4].any() for i in range(4) for j in range(4)])  # noqa: E731
    coarse = lambda m: np.mean([m[y:y + 32, x:x + 32].any() for y in range(0, 256, 32) for x in range(0, 256, 32)])  # noqa: E731
    assert np.mean([coarse(m) for m in octa]) > np.mean([coarse(m) for m in fundus]) + 0.05
    assert spread(octa[0]) == 1.0
    with pytest.raises(ValueError):
        vessel_masks("fundus", 1, 64)


def test_real_masks_are_augmented_with_flips_rotations_and_crops():
    real = load_shape_masks("cross_modality", 64, 4, seed=0)
    assert real.shape == (4, 1, 64, 64) and set(real.unique().tolist()) <= {0.0, 1.0}
    a = augment_masks(real, torch.Generator().manual_seed(1))
    b = augment_masks(real, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and set(a.unique().tolist()) <= {0.0, 1.0}
    assert all(not torch.equal(a[i], real[i]) for i in range(4))
    # a crop at scale 1, no rotation, is the identity up to the flip: the vessel area is kept
    same = augment_masks(real, torch.Generator().manual_seed(2), crop_scale=(1.0, 1.0))
    assert float(same.sum()) == pytest.approx(float(real.sum()), rel=0.25)


def test_shape_guided_stage2_end_to_end_losses_move_as_an_adversarial_pair(shape_guided_run):
    losses = shape_guided_run.losses
    assert len(losses) == SG_STEPS and all(r["stage"] == 2 for r in losses)
    for r in losses:
        assert all(math.isfinite(r[k]) for k in ("patch", "mix", "region", "entropy", "adversarial", "discriminator"))
    d = np.array([r["discriminator"] for r in losses])
    g = np.array([r["adversarial"] for r in losses])
    # at the start D is at chance (BCE ≈ ln 2 per side); as D learns to tell the clusters from vessel
    # trees its loss falls below chance and the generator's BCE rises above ln 2: the adversarial pair
    assert abs(d[0] - 2 * math.log(2)) < 0.2 and abs(g[0] - math.log(2)) < 0.2
    assert d[-3:].mean() < d[:3].mean() and g[-3:].mean() > g[:3].mean()
    trainer = torch.load(shape_guided_run.checkpoint / "trainer.pt", weights_only=False)
    weights = torch.load(shape_guided_run.checkpoint / "model.pt", weights_only=True)
    assert trainer["shape_prior"]["discriminator"] and any(k.startswith("cluster.") for k in weights)


def test_otsu_readout_is_relative_to_the_field_of_view():
    from ldisc.apps.segment import OTSU, binarize, parse_threshold

    prob = np.full((20, 20), 0.12, np.float32)
    prob[5:15, 8:10] = 0.2                       # a faint "vessel": far below 0.5, above the rest
    prob[0, :] = 0.9                             # bright, but outside the field of view
    inside = np.zeros((20, 20), bool)
    inside[2:18, 2:18] = True
    assert not binarize(prob, inside, 0.5).any()
    otsu = binarize(prob, inside, OTSU)
    assert otsu.sum() == 20 and otsu[5:15, 8:10].all()
    assert not binarize(np.full((20, 20), 0.12), inside, OTSU).any()        # nothing to separate
    assert parse_threshold("otsu") == OTSU and parse_threshold("0.3") == 0.3
    with pytest.raises(ValueError):
        parse_threshold("1.5")


def test_segment_cli_writes_masks_of_the_input_size(shape_guided_run, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    sizes = {"a": (120, 90), "b": (64, 64)}                               # (width, height)
    for seed, (name, wh) in enumerate(sizes.items()):
        Image.fromarray(generate("fundus", seed + 3, 128).image).resize(wh).save(images / f"{name}.png")
    for readout, threshold in (("mask0", "otsu"), ("prototype", "0.5")):
        out = tmp_path / readout
        args = ["--checkpoint", str(shape_guided_run.checkpoint), "--images", str(images), "--out", str(out),
                "--readout", readout, "--threshold", threshold, "--device", "cpu"]
        if readout == "mask0":                     # the console entry point, in its own process
            r = _cli("ldisc.apps.segment_cli", *args)
            assert r.returncode == 0, r.stderr
        else:
            assert segment_main(args) == 0
        for name, wh in sizes.items():
            mask = Image.open(out / "masks" / f"{name}.png")
            assert mask.size == wh and set(np.unique(np.asarray(mask)).tolist()) <= {0, 255}
            assert Image.open(out / "overlays" / f"{name}.png").size == wh
        report = json.loads((out / "segment.json").read_text())
        assert report["readout"] == readout and sorted(report["foreground_fraction"]) == ["a.png", "b.png"]
    otsu = json.loads((tmp_path / "mask0" / "segment.json").read_text())
    assert otsu["threshold"] == "otsu" and all(0 < f < 0.7 for f in otsu["foreground_fraction"].values())
    capsys.readouterr()
    assert segment_main(["--checkpoint", str(tmp_path), "--images", str(images), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ldisc-segment: ") and err.strip().count("\n") == 0 and "model.pt" in err


def test_localize_cli_writes_landmarks_and_overlays(shape_guided_run, tmp_path, capsys):
    template = generate("fundus", 11, 96)
    Image.fromarray(template.image).save(tmp_path / "t.png")
    (tmp_path / "t.json").write_text(json.dumps({k: list(v) for k, v in template.landmarks.items()}))
    queries = tmp_path / "q"
    queries.mkdir()
    for s in (12, 13):
        Image.fromarray(generate("fundus", s, 80).image).save(queries / f"q{s}.png")
    (queries / "broken.png").write_bytes(b"not a png")
    args = ["--checkpoint", str(shape_guided_run.checkpoint), "--template", str(tmp_path / "t.png"),
            "--landmarks", str(tmp_path / "t.json"), "--images", str(queries), "--size", "64", "--device", "cpu"]
    r = _cli("ldisc.apps.localize_cli", *args, "--out", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "out" / "landmarks.json").read_text())
    assert sorted(report["images"]) == ["q12.png", "q13.png"] and list(report["skipped"]) == [str(queries / "broken.png")]
    for name, points in report["images"].items():
        assert sorted(points) == ["disc_center", "fovea"]
        for p in points.values():
            assert 0 <= p["x"] < 80 and 0 <= p["y"] < 80 and -1.0 <= p["score"] <= 1.0 + 1e-6
        assert Image.open(tmp_path / "out" / "overlays" / name).size == (80, 80)
    (tmp_path / "bad.json").write_text('{"fovea": [1]}')
    for bad in (["--landmarks", str(tmp_path / "bad.json")], ["--landmarks", str(tmp_path / "none.json")],
                ["--checkpoint", str(tmp_path)]):
        capsys.readouterr()
        assert localize_main([*args, *bad, "--out", str(tmp_path / "o2")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("ldisc-localize: ") and err.strip().count("\n") == 0


def test_application_tasks_run_in_the_fleet_and_report_next_to_dice(tmp_path):
    from ldisc.eval import evaluate

    table = evaluate(checkpoints=["random"], tasks=["synth_xray_landmarks", "synth_fundus_vessel_unsup"],
                     protocols=["frozen"], seeds=[0], out_dir=str(tmp_path), serial=True,
                     overrides=["data.max_test=3", "data.input_side=64", "fleet.progress=false"]).to_pylist()
    assert all(r["status"] == "ok" for r in table), [r["error"] for r in table]
    methods = {(r["task"], r["protocol"]) for r in table}
    assert methods == {("synth_xray_landmarks", m) for m in ("center", "flat", "mirror", "hypercolumn", "ncc")} | {
        ("synth_fundus_vessel_unsup", m) for m in ("mask0", "prototype", "mask0_otsu", "prototype_otsu", "frangi")}
    landmark_rows = [r for r in table if r["task"] == "synth_xray_landmarks"]
    vessel_rows = [r for r in table if r["task"] == "synth_fundus_vessel_unsup"]
    assert len(landmark_rows) == len(vessel_rows) == 5
    for r in landmark_rows:
        assert r["dice_mean"] is None and 0 <= r["mre_px"] <= 64 * math.sqrt(2)
        assert r["mre_pct"] == pytest.approx(100 * r["mre_px"] / 64)
        assert 0 <= r["sr_2pct"] <= r["sr_4pct"] <= r["sr_8pct"] <= 1
    for r in vessel_rows:
        assert r["mre_px"] is None and 0 <= r["dice_mean"] <= 1 and len(r["dice_per_image"]) == 3
    report = (tmp_path / "report" / "report.md").read_text()
    assert "random · frangi" in report and "| synth_xray_landmarks | random | ncc |" in report


def test_render_examples_writes_a_heat_map_and_a_mask_picture(shape_guided_run, tmp_path):
    from ldisc.apps.examples import render_examples

    paths = render_examples(shape_guided_run.checkpoint, tmp_path, image_size=96)
    assert sorted(paths) == ["landmarks", "mask"]
    assert Image.open(paths["landmarks"]).size == (2 * 256, 256 + 16)
    assert Image.open(paths["mask"]).size == (4 * 256, 256 + 16)
    with pytest.raises(ValueError):
        render_examples(shape_guided_run.checkpoint, tmp_path, panel=128)
