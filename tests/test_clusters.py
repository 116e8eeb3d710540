"""Cluster diagnostics give the known values on hand-built masks; the crisp options do what their
equations say; a stage-2 run logs, exports and draws its clusters."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from ldisc.objectives.crisp import area_loss, region_views, sharpen
from ldisc.objectives.diagnostics import best_match_dice, cluster_stats, effective_count
from ldisc.train.clusters import cluster_picture, cluster_section, palette, write_cluster_picture


def hand_built() -> torch.Tensor:
    """4×4 image, K = 4: cluster 0 = left half, 1 = top-right quarter, 2 = bottom-right quarter, 3 = empty."""
    m = torch.zeros(1, 4, 4, 4)
    m[0, 0, :, :2] = 1
    m[0, 1, :2, 2:] = 1
    m[0, 2, 2:, 2:] = 1
    return m


def test_crisp_masks_known_crispness_shares_and_effective_count():
    s = cluster_stats(hand_built())
    assert s.crispness == pytest.approx(1.0)
    assert s.area_share == pytest.approx([0.5, 0.25, 0.25, 0.0])
    assert s.effective_count == pytest.approx(2 ** 1.5, rel=1e-6)     # exp(1.5 ln 2)


def test_uniform_and_soft_masks():
    uniform = cluster_stats(torch.full((2, 16, 8, 8), 1 / 16))
    assert uniform.crispness == pytest.approx(1 / 16)
    assert uniform.effective_count == pytest.approx(16.0, rel=1e-5)
    soft = 0.6 * hand_built() + 0.1                          # max 0.7 at every pixel, sums to 1
    assert cluster_stats(soft).crispness == pytest.approx(0.7)
    assert effective_count(torch.tensor([1.0, 0.0, 0.0])) == pytest.approx(1.0)


def test_best_match_dice_known_values():
    truth = {"disc": torch.zeros(1, 4, 4, dtype=torch.bool), "vessel": torch.zeros(1, 4, 4, dtype=torch.bool),
             "exudate": torch.zeros(1, 4, 4, dtype=torch.bool)}
    truth["disc"][0, :2, 2:] = True        # exactly cluster 1
    truth["vessel"][0, 0, :] = True        # top row: 2 px of cluster 0 (8 px), 2 px of cluster 1 (4 px)
    dice, best = best_match_dice(hand_built().argmax(1), truth, 4)
    assert dice == pytest.approx({"disc": 1.0, "vessel": 0.5})   # 2·2/(4+4) beats 2·2/(8+4); exudate absent
    assert best == {"disc": 1, "vessel": 1}
    assert cluster_stats(hand_built(), truth).dice == pytest.approx(dice)


def test_sharpen_and_area_loss_and_region_views():
    m = torch.tensor([0.5, 0.25, 0.25]).view(1, 3, 1, 1)
    assert sharpen(m, 1.0) is m
    assert sharpen(m, 2.0).flatten().tolist() == pytest.approx([2 / 3, 1 / 6, 1 / 6])
    assert area_loss(torch.full((2, 4, 3, 3), 0.25)).item() == pytest.approx(0.0)
    collapsed = torch.zeros(2, 4, 3, 3)
    collapsed[:, 0] = 1
    assert area_loss(collapsed).item() == pytest.approx(3.0)             # K − 1
    emb, masks = torch.randn(10, 2, 4, 4), torch.rand(10, 3, 4, 4)
    e4, m4 = region_views(emb, masks, pairs=2, which="augmented")
    assert e4.shape[0] == m4.shape[0] == 8 and torch.equal(m4, masks[:8])
    with pytest.raises(ValueError, match="region_views"):
        region_views(emb, masks, pairs=2, which="three")


def test_picture_has_one_row_per_image_and_k_plus_2_columns(tmp_path):
    images = torch.rand(2, 3, 8, 8)
    masks = torch.softmax(torch.randn(2, 3, 8, 8), 1)
    path = write_cluster_picture(images, masks, tmp_path / "sub" / "c.png")
    pic = Image.open(path)
    assert pic.size == (5 * 8, 2 * 8) and pic.mode == "RGB"
    arr = np.asarray(pic)
    hard = masks.argmax(1)
    assert arr[3, 8 + 5].tolist() == palette(3)[int(hard[0, 3, 5])].tolist()   # argmax tile, fixed palette
    assert int(arr[8 + 2, 16 + 4, 0]) == round(float(masks[1, 0, 2, 4]) * 255)  # soft mask 0 of image 1
    assert len({tuple(c) for c in palette(16).tolist()}) == 16
    assert cluster_picture(images, masks).size == pic.size
    gray = np.asarray(cluster_picture(images[:, :1], masks))                   # X-ray inputs: 1 channel
    assert gray.shape == arr.shape and (gray[:8, :8, 0] == gray[:8, :8, 2]).all()
    assert int(gray[1, 2, 1]) == round(float(images[0, 0, 1, 2]) * 255)


def test_stage2_run_logs_exports_and_draws_clusters(tmp_path):
    from ldisc.train import pretrain

    run = tmp_path / "run"
    pretrain(["data.source=synthetic", "data.modality=fundus", "data.view_side=32", "data.image_side=40", "data.pool=2", "train.val_fraction=0",
              "train.batch_size=1", "model.clusters=4", "train.progress=false", "threads=1",
              "train.stage1_steps=1", "train.stage2_steps=2", "train.cluster_image_every=1",
              "train.cluster_probe_images=2", "objective.w_area=1", f"run_dir={run}"])
    records = [json.loads(x) for x in (run / "clusters.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 3]
    for r in records:
        assert 0.25 <= r["crispness"] <= 1 and 1 <= r["effective_count"] <= 4
        assert sum(r["area_share"]) == pytest.approx(1.0, abs=1e-4)
        assert {"vessel", "disc"} <= set(r["dice"]) and all(0 <= d <= 1 for d in r["dice"].values())
    assert Image.open(run / "clusters" / "step_0000003.png").size == (6 * 32, 2 * 32)
    prom = (run / "metrics.rank0.prom").read_text()
    for name in ("ldisc_cluster_crispness", "ldisc_cluster_effective_number", 'cluster="3"',
                 'ldisc_cluster_best_match_dice{rank="0",run="run",structure="vessel"}'):
        assert name in prom
    losses = [json.loads(x) for x in (run / "losses.jsonl").read_text().splitlines()]
    assert "cluster_crispness" not in losses[0] and math.isfinite(losses[-1]["cluster_crispness"])
    assert losses[-1]["area"] >= 0
    ckpt = run / "checkpoints" / "step_0000003"
    lines = cluster_section({"run/step_3": str(ckpt), "random": "random"}, tmp_path)
    row = next(x for x in lines if x.startswith("| run/step_3 | 3 |"))
    assert f"{records[-1]['crispness']:.3f}" in row and "vessel" in row
    assert "![clusters of run/step_3](clusters/run_step_3.png)" in lines, "a copy inside the report folder"
    assert (tmp_path / "clusters" / "run_step_3.png").read_bytes() == (run / "clusters" / "step_0000003.png").read_bytes()


def test_crisp_preset_is_the_authors_objective_plus_the_named_options():
    from ldisc.config import compose

    obj = compose("pretrain", ["objective=ld_crisp"]).objective
    default = compose("pretrain", []).objective
    assert (obj.mask_power, obj.w_area, obj.region_views) == (8.0, 1.0, "augmented")
    assert obj.w_entropy == 1.0 and obj.entropy_base == 2.0      # weight 1 on the entropy in bits
    assert (default.mask_power, default.w_area) == (1.0, 0.0)
    assert {k: v for k, v in obj.items() if k not in ("mask_power", "w_area", "region_views", "w_entropy")} == \
        {k: v for k, v in default.items() if k not in ("mask_power", "w_area", "region_views", "w_entropy")}
