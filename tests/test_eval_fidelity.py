"""The paper protocol against the authors' definitions, each written here from its equation or rule:
the batch-level Dice loss, the augmentation, the splits and data fractions, the shared preprocessing
and the X-ray input."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import ldisc.eval.dataio as dataio
import ldisc.preprocess as prep
import sharding.decode as decode
import sharding.preprocess as ingest
from ldisc.eval import get_task, load_task_data
from ldisc.eval.augment import PAPER_AUGMENTATION, Augmentation, augment_batch
from ldisc.eval.protocol import SegmentationNet, encoder_in_channels
from ldisc.eval.runs import RANDOM, RunSpec, build_encoder, resolve_checkpoint
from ldisc.eval.scores import batch_dice_loss, soft_dice_loss
from ldisc.eval.taskdata import split_train_val
from ldisc.eval.cli import protocol_config
from ldisc.eval.dataio import Item
from ldisc.eval.tasks import TASK_SETS, expand_tasks
from ldisc.model import VGGEncoder
from ldisc.synth import generate

PAPER, LDISC = protocol_config("paper"), protocol_config("ldisc")

# ---- the Dice loss forms -------------------------------------------------------------------------

def _reference_batch_dice(p: np.ndarray, y: np.ndarray, smooth: float = 1.0) -> float:
    """L = 1 − 2 Σ_i p_i y_i / (Σ_i p_i + Σ_i y_i + 1) over every pixel of the batch; complements if Σ y = 0."""
    p, y = p.ravel().tolist(), y.ravel().tolist()
    if max(y) == 0:
        p, y = [1 - v for v in p], [1 - v for v in y]
    inter = math.fsum(a * b for a, b in zip(p, y))
    return 1 - 2 * inter / (math.fsum(p) + math.fsum(y) + smooth)


def _reference_image_dice(p: np.ndarray, y: np.ndarray, eps: float = 1.0) -> float:
    """L = 1 − mean_b (2 Σ p y + 1)/(Σ p + Σ y + 1), each image on its own."""
    out = [(2 * math.fsum((a * b).ravel()) + eps) / (math.fsum(a.ravel()) + math.fsum(b.ravel()) + eps)
           for a, b in zip(p, y)]
    return 1 - math.fsum(out) / len(out)


def test_batch_dice_loss_is_the_authors_form_and_differs_from_per_image():
    g = torch.Generator().manual_seed(0)
    p = torch.rand(3, 1, 9, 7, generator=g, dtype=torch.float64)
    y = torch.zeros(3, 1, 9, 7, dtype=torch.float64)
    y[0, 0, 2:8, 1:6] = 1          # large structure
    y[1, 0, 4, 3] = 1              # one pixel
    got = batch_dice_loss(p, y)
    assert abs(float(got) - _reference_batch_dice(p.numpy(), y.numpy())) < 1e-13
    per_image = soft_dice_loss(p, y)
    assert abs(float(per_image) - _reference_image_dice(p.numpy(), y.numpy())) < 1e-13
    assert abs(float(got) - float(per_image)) > 0.03, "the two forms weigh small structures differently"
    # a batch without foreground: Dice of the background, as the authors compute it
    empty = torch.zeros_like(y)
    assert abs(float(batch_dice_loss(p, empty)) - _reference_batch_dice(p.numpy(), empty.numpy())) < 1e-13
    # gradients flow through both forms and differ
    q = p.clone().requires_grad_(True)
    batch_dice_loss(q, y).backward()
    g_batch = q.grad.clone()
    q.grad = None
    soft_dice_loss(q, y).backward()
    assert g_batch.abs().sum() > 0 and not torch.allclose(g_batch, q.grad)


# ---- augmentation --------------------------------------------------------------------------------

def _blob_batch(n: int, side: int = 65) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks with one 3x3 blob at distance 20 right of the centre (and a second one up, to see flips)."""
    y = torch.zeros(n, 1, side, side)
    c = side // 2
    y[:, 0, c - 1:c + 2, c + 19:c + 22] = 1
    y[:, 0, c - 12:c - 9, c - 1:c + 2] = 1  # up, closer: tells a flip from a rotation
    return y.repeat(1, 3, 1, 1), y


def _angle_of(mask: torch.Tensor, rows: slice | None = None) -> float:
    """Counter-clockwise angle (screen view, degrees) of the far blob's centroid about the image centre."""
    c = mask.shape[-1] // 2
    ys, xs = torch.nonzero(mask > 0.5, as_tuple=True)
    d = torch.hypot(ys.double() - c, xs.double() - c)
    far = d > 15
    return math.degrees(math.atan2(-(float(ys[far].double().mean()) - c), float(xs[far].double().mean()) - c))


@pytest.mark.parametrize("modality", ["fundus", "xray"])
def test_augmentation_moves_mask_with_image_within_the_authors_range(modality):
    aug = PAPER_AUGMENTATION[modality]
    assert (aug.flips, aug.max_degrees) == ({"fundus": (True, 180.0), "xray": (False, 30.0)}[modality])
    x, y = _blob_batch(64)
    gen = torch.Generator().manual_seed(1)
    xa, ya, draws = augment_batch(x, y, aug, gen, image_mode="nearest")
    assert torch.equal(xa[:, :1], ya), "image and mask transformed alike"
    assert set(ya.unique().tolist()) <= {0.0, 1.0}, "masks stay binary (nearest)"
    deg = draws["degrees"]
    assert float(deg.abs().max()) <= aug.max_degrees and float(deg.abs().max()) > 0.6 * aug.max_degrees
    flips = (int(draws["hflip"].sum()), int(draws["vflip"].sum()))
    flip_counts_ok = {"xray": lambda n: n == 0, "fundus": lambda n: 10 < n < 54}[modality]   # of 64 draws
    assert all(flip_counts_ok(n) for n in flips), (modality, flips)
    for i in range(len(ya)):
        start = 180.0 if draws["hflip"][i] else 0.0          # the far blob starts at 0°, at 180° when mirrored
        want = (start + float(deg[i]) + 180) % 360 - 180
        got = _angle_of(ya[i, 0])
        assert abs((got - want + 180) % 360 - 180) < 4.0, (i, got, want)
    # bilinear images stay aligned with nearest masks up to the blob borders
    xb, yb, _ = augment_batch(x, y, aug, torch.Generator().manual_seed(1))
    assert torch.equal(yb, ya)
    assert ((xb[:, 0] > 0.5) != (ya[:, 0] > 0.5)).float().mean() < 0.01


def test_augmentation_is_deterministic_given_the_generator():
    x, y = _blob_batch(4)
    a = augment_batch(x, y, Augmentation(True, 180.0), torch.Generator().manual_seed(5))
    b = augment_batch(x, y, Augmentation(True, 180.0), torch.Generator().manual_seed(5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


# ---- splits and data fractions -------------------------------------------------------------------

def _items(n: int) -> list[Item]:
    return [Item(f"img{i:03d}", lambda: None) for i in reversed(range(n))]  # any order in, name order out


def test_paper_validation_is_the_first_20_percent_of_the_training_list():
    train, val = split_train_val(_items(54), None, 0.2, 0, "paper")
    assert [i.name for i in val] == [f"img{i:03d}" for i in range(10)]          # int(0.2 * 54) = 10
    assert [i.name for i in train] == [f"img{i:03d}" for i in range(10, 54)]
    train, val = split_train_val(_items(25), None, 0.2, 0, "paper")             # HRF: 25 → 5 val, 20 train
    assert (len(train), len(val)) == (20, 5) and val[0].name == "img000"
    train, val = split_train_val(_items(4), None, 0.2, 0, "paper")              # int(0.8) = 0 → at least one
    assert (len(train), len(val)) == (3, 1)
    # ldisc: a seeded shuffle
    train, val = split_train_val(_items(54), None, 0.2, 0, "ldisc")
    assert len(val) == 11 and [i.name for i in val] != [f"img{i:03d}" for i in range(11)]


def test_data_fraction_variants_take_the_first_part_of_the_training_list():
    names = [t.name for t in expand_tasks(["xray_sweep"])]
    assert len(names) == 4 * 5 and "jsrt_lung@20%" in names and "siim_pneumothorax@100%" in names
    assert TASK_SETS["synthetic_xray_sweep"][0] == "synth_siim_pneumothorax@20%"
    task = get_task("synth_jsrt_lung@40%")
    assert task.fraction == 0.4 and task.n_train is None and get_task("synth_jsrt_lung@8").n_train == 8
    for percent, n in ((20, 24), (40, 49), (60, 74), (100, 124)):  # the authors' int(rate · 124) for SCR
        train, val = split_train_val(_items(124), None, 0.2, 0, "paper", percent / 100)
        assert len(train) + len(val) == n and len(val) == int(0.2 * n)
        assert [i.name for i in val + train] == [f"img{i:03d}" for i in range(n)]
    with pytest.raises(ValueError, match="1–100%"):
        get_task("jsrt_lung@0%")
    data = load_task_data(get_task("synth_jsrt_heart@20%"), size=32, max_test=2, **PAPER.data_options())
    assert (len(data.train), len(data.val)) == (10, 2)                   # int(0.2 · 64) = 12; int(0.2 · 12) = 2
    assert get_task("synth_siim_pneumothorax").batch_size == 8 and get_task("synth_jsrt_lung").batch_size == 2
    assert (get_task("hrf_vessel").n_train_full, get_task("hrf_vessel").n_test) == (25, 20)
    assert (get_task("siim_pneumothorax").n_train_full, get_task("siim_pneumothorax").n_test) == (1334, 1335)


# ---- one preprocessing module --------------------------------------------------------------------

def test_ingestion_and_evaluation_share_the_preprocessing_functions():
    assert ingest.field_of_view_box is prep.field_of_view_box
    assert ingest.pad_to_square is prep.pad_to_square is dataio.pad_to_square
    assert ingest.window_to_uint8 is prep.window_to_uint8 is dataio.window_to_uint8
    assert decode.dicom_display is prep.dicom_display is dataio.dicom_display
    assert dataio.crop_to_field_of_view is prep.crop_to_field_of_view
    assert not hasattr(dataio, "square_pad")


def test_fov_crop_on_a_synthetic_fundus_keeps_image_and_mask_aligned():
    sample = generate("fundus", 3, size=96)
    rgb, disc = np.asarray(sample.image), np.asarray(sample.masks["disc"], bool)
    canvas = np.zeros((160, 220, 3), np.uint8)
    canvas_mask = np.zeros((160, 220), bool)
    canvas[40:136, 90:186], canvas_mask[40:136, 90:186] = rgb, disc        # the fundus placed off-centre
    (crop, crop_mask), box = prep.crop_to_field_of_view(canvas, canvas_mask)
    x0, y0, x1, y1 = box
    margin = 0.02 * 220 + 2
    assert abs(x0 - 90) <= margin and abs(y0 - 40) <= margin and abs(x1 - 186) <= margin and abs(y1 - 136) <= margin
    assert crop_mask.sum() == disc.sum(), "the disc is inside the field of view"
    x, y = dataio.to_tensors(canvas, canvas_mask, 48, fov_crop=True, mask_threshold=0.3)
    x_pad, _ = dataio.to_tensors(canvas, canvas_mask, 48)
    assert x.shape == (3, 48, 48) and y.shape == (1, 48, 48)
    assert float((x.amax(0) < 12 / 255).float().mean()) < float((x_pad.amax(0) < 12 / 255).float().mean()) - 0.2
    ys, xs = np.nonzero(disc)
    cy, cx = (ys.mean() + 40 - y0) / max(y1 - y0, x1 - x0), (xs.mean() + 90 - x0) / max(y1 - y0, x1 - x0)
    side = max(y1 - y0, x1 - x0)
    cy += ((side - (y1 - y0)) // 2) / side
    cx += ((side - (x1 - x0)) // 2) / side
    my, mx = [float(t.float().mean()) / 48 for t in torch.nonzero(y[0] > 0.5, as_tuple=True)]
    assert abs(my - cy) < 0.04 and abs(mx - cx) < 0.04, "the mask follows the image through crop, pad and resize"
    with pytest.raises(prep.NoFieldOfView):
        prep.field_of_view_box(np.zeros((40, 40, 3), np.uint8))


# ---- X-ray input ---------------------------------------------------------------------------------

def test_xray_input_channels_come_from_the_encoder_weights():
    x = torch.rand(2, 3, 32, 32)
    x[:, 1:] = x[:, :1]  # gray
    one, three = VGGEncoder("tiny", in_channels=1), VGGEncoder("tiny")
    assert encoder_in_channels(one) == 1 and encoder_in_channels(three) == 3
    torch.testing.assert_close(prep.network_input(x, 1), (x[:, :1] - 0.5) / 0.5)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(prep.network_input(x, 3), (x - mean) / std)
    assert SegmentationNet(one, "kaiming", 3)(x).shape == (2, 1, 32, 32)
    # the random-init baseline of the paper protocol: 1-channel X-ray encoder, Kaiming (fan_out) init
    paper = PAPER
    spec = RunSpec(resolve_checkpoint(RANDOM), "synth_jsrt_lung", "frozen", 0, {}, {"random_width": "tiny"})
    enc = build_encoder(spec, get_task("synth_jsrt_lung"), paper)
    w = enc.blocks[0][0][0].weight.detach()
    assert w.shape[1] == 1 and abs(float(w.std()) - math.sqrt(2 / (w.shape[0] * 9))) < 0.25 * math.sqrt(2 / (w.shape[0] * 9))
    assert encoder_in_channels(build_encoder(spec, get_task("synth_jsrt_lung"), LDISC)) == 3
    assert encoder_in_channels(build_encoder(spec, get_task("synth_rite_vessel"), paper)) == 3
