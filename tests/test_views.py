"""LD views: shapes, determinism, mixup, the kept flip/rot90, and both tensor paths = a numpy reference."""
import numpy as np
import pytest
import torch
from PIL import Image

from ldisc.views import (IMAGENET_MEAN, IMAGENET_STD, ViewConfig, collate_views, make_views,
                         make_views_batch, pil_to_tensor, undo_dihedral)


def _pil(seed, size=(96, 80), mode="RGB"):
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)


def _denorm(x):
    return x * torch.tensor(IMAGENET_STD).view(3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(3, 1, 1)


def test_shapes_and_determinism_any_mode():
    cfg = ViewConfig(view_side=64)
    a, b = _pil(0), _pil(1, (50, 70), "L")
    v1 = make_views(a, b, cfg, torch.Generator().manual_seed(3))
    v2 = make_views(a, b, cfg, torch.Generator().manual_seed(3))
    v3 = make_views(a, b, cfg, torch.Generator().manual_seed(4))
    for k in ("x1_1", "x1_2", "x2_1", "x2_2", "mix"):
        assert v1[k].shape == (3, 64, 64)
        assert torch.equal(v1[k], v2[k])
    assert not torch.equal(v1["x1_1"], v3["x1_1"])
    assert 0.2 <= v1["mix_w"].item() <= 0.8 and v1["rot1"].item() in range(4)


def test_mixup_is_convex_combination_of_first_views():
    v = make_views(_pil(5), _pil(6), ViewConfig(view_side=48), torch.Generator().manual_seed(0))
    w = v["mix_w"]
    torch.testing.assert_close(_denorm(v["mix"]), w * _denorm(v["x1_1"]) + (1 - w) * _denorm(v["x2_1"]))


@pytest.mark.parametrize("second_view", ["rotations", "dihedral"])
def test_second_view_is_dihedral_copy_when_photometric_is_off(second_view):
    """With no jitter and no small rotation, undoing (flip, rot) of x·_2 gives x·_1 back."""
    cfg = ViewConfig(view_side=32, view_rotation_deg=0, brightness=0, contrast=0, saturation=0, hue=0,
                     grayscale_p=0, second_view=second_view)
    x = torch.rand(6, 3, 40, 40)
    v = make_views_batch(x, x.flip(0), cfg, torch.Generator().manual_seed(1))
    torch.testing.assert_close(undo_dihedral(v["x1_2"], v["flip1"], v["rot1"]), v["x1_1"], atol=1e-5, rtol=0)
    torch.testing.assert_close(undo_dihedral(v["x2_2"], v["flip2"], v["rot2"]), v["x2_1"], atol=1e-5, rtol=0)


def test_photometric_views_differ_but_share_geometry():
    cfg = ViewConfig(view_side=48, grayscale_p=0)
    x = torch.rand(1, 3, 48, 48)
    v = make_views_batch(x, x, cfg, torch.Generator().manual_seed(2))
    second = undo_dihedral(v["x1_2"], v["flip1"], v["rot1"])
    assert not torch.allclose(second, v["x1_1"])
    corr = torch.corrcoef(torch.stack([second.mean(1).flatten(), v["x1_1"].mean(1).flatten()]))[0, 1]
    assert corr > 0.6   # same crop and rotation up to ±2°, different colours


def _bilinear(img: np.ndarray, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """(C, H, W) sampled at pixel coordinates (px, py), zeros outside (no torch)."""
    c, h, w = img.shape
    x0, y0 = np.floor(px).astype(int), np.floor(py).astype(int)
    out = np.zeros((c, *px.shape))
    for dy in (0, 1):
        for dx in (0, 1):
            xi, yi = x0 + dx, y0 + dy
            weight = (1 - np.abs(px - xi)) * (1 - np.abs(py - yi))
            inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
            out += np.where(inside, img[:, yi.clip(0, h - 1), xi.clip(0, w - 1)] * weight, 0.0)
    return out


def _reference_views(pils, cfg: ViewConfig, gen: torch.Generator) -> dict[str, np.ndarray]:
    """LD views of PIL pairs computed point by point in numpy: every output pixel's centre mapped through
    the drawn crop/flip/rotation (:func:`ldisc.views._geometry`, the same draws in the same order) into
    the image, bilinear sampling, the second view's flip/rot90 with numpy, mixup, ImageNet normalisation."""
    from ldisc import views

    n, side = len(pils[0]), cfg.view_side
    centres = (2 * np.arange(side) + 1) / side - 1                     # align_corners=False
    u, v = np.meshgrid(centres, centres)                               # u: column, v: row
    first = {}
    for name, imgs in zip(("x1", "x2"), pils):
        arrays = [np.asarray(im.convert("RGB"), dtype=np.float64).transpose(2, 0, 1) / 255 for im in imgs]
        geometry = views._geometry(gen, n, cfg).numpy()
        for which in (1, 2):
            angle = views._photometric(gen, n, cfg)["angle"].numpy()
            out = []
            for i, img in enumerate(arrays):
                h, w = img.shape[1:]
                c, s = np.cos(angle[i]), np.sin(angle[i])
                ru, rv = c * u - s * v, s * u + c * v                 # the small rotation of this view
                x = geometry[i, 0, 0] * ru + geometry[i, 0, 1] * rv + geometry[i, 0, 2]
                y = geometry[i, 1, 0] * ru + geometry[i, 1, 1] * rv + geometry[i, 1, 2]
                x, y = x * max(h, w) / w, y * max(h, w) / h           # square crop frame → image frame
                out.append(_bilinear(img, ((x + 1) * w - 1) / 2, ((y + 1) * h - 1) / 2).clip(0, 1))
            first[f"{name}_{which}"] = np.stack(out)
    code = views.SECOND_VIEWS[cfg.second_view]
    turns = {}
    for k in ("1", "2"):
        flip = (code * views._bernoulli(gen, n, cfg.second_flip_p).long()).numpy()
        rot = torch.randint(0, 4, (n,), generator=gen).numpy()
        turns[k] = (flip, rot)
    mix_w = views._uniform(gen, n, *cfg.mix_range).float().numpy().astype(np.float64)
    for k, (flip, rot) in turns.items():
        second = first[f"x{k}_2"]
        flipped = [x[..., ::-1] if f == 1 else x[..., ::-1, ::-1] if f == 2 else x for x, f in zip(second, flip)]
        first[f"x{k}_2"] = np.stack([np.rot90(x, r, axes=(-2, -1)) for x, r in zip(flipped, rot)])
    w = mix_w[:, None, None, None]
    first["mix"] = w * first["x1_1"] + (1 - w) * first["x2_1"]
    mean, std = np.array(IMAGENET_MEAN)[:, None, None], np.array(IMAGENET_STD)[:, None, None]
    return {k: (x - mean) / std for k, x in first.items()} | {"rot1": turns["1"][1], "rot2": turns["2"][1]}


def test_batched_path_equals_a_pointwise_numpy_reference():
    """The tensor paths (affine_grid + grid_sample, torch flips/rot90) against views computed
    independently, pixel by pixel in numpy: a batch of two same-size pairs (make_views_batch) and one
    non-square pair (make_views: the aspect correction). Photometric jitter is off (tested above)."""
    cfg = ViewConfig(view_side=32, brightness=0, contrast=0, saturation=0, hue=0, grayscale_p=0)
    firsts, seconds = [_pil(7, (40, 40)), _pil(9, (40, 40))], [_pil(8, (40, 40)), _pil(10, (40, 40))]
    batched = make_views_batch(torch.stack([pil_to_tensor(a) for a in firsts]),
                               torch.stack([pil_to_tensor(b) for b in seconds]), cfg, torch.Generator().manual_seed(9))
    ref = _reference_views((firsts, seconds), cfg, torch.Generator().manual_seed(9))
    wide, tall = _pil(11, (52, 40)), _pil(12, (40, 60))
    single = make_views(wide, tall, cfg, torch.Generator().manual_seed(5))
    ref_single = _reference_views(([wide], [tall]), cfg, torch.Generator().manual_seed(5))
    for k in ("x1_1", "x1_2", "x2_1", "x2_2", "mix"):
        np.testing.assert_allclose(batched[k].double().numpy(), ref[k], atol=2e-4, rtol=0)
        np.testing.assert_allclose(single[k].double().numpy(), ref_single[k][0], atol=2e-4, rtol=0)
    assert batched["rot1"].tolist() == ref["rot1"].tolist() and (batched["x1_1"][0] != batched["x1_1"][1]).any()


def test_collate_and_bad_input():
    cfg = ViewConfig(view_side=16)
    vs = [make_views(_pil(i), _pil(i + 1), cfg, torch.Generator().manual_seed(i)) for i in range(3)]
    batch = collate_views(vs)
    assert batch["x1_1"].shape == (3, 3, 16, 16) and batch["rot2"].shape == (3,)
    with pytest.raises(ValueError):
        collate_views([])
    with pytest.raises(ValueError):
        make_views_batch(torch.rand(2, 2, 8, 8), torch.rand(2, 2, 8, 8), cfg, torch.Generator())
