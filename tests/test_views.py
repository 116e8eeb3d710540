"""LD views: shapes, determinism, mixup, the kept flip/rot90, and batched = PIL path."""
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
    cfg = ViewConfig(size=64)
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
    v = make_views(_pil(5), _pil(6), ViewConfig(size=48), torch.Generator().manual_seed(0))
    w = v["mix_w"]
    torch.testing.assert_close(_denorm(v["mix"]), w * _denorm(v["x1_1"]) + (1 - w) * _denorm(v["x2_1"]))


@pytest.mark.parametrize("second_view", ["rotations", "dihedral"])
def test_second_view_is_dihedral_copy_when_photometric_is_off(second_view):
    """With no jitter and no small rotation, undoing (flip, rot) of x·_2 gives x·_1 back."""
    cfg = ViewConfig(size=32, view_rotation_deg=0, brightness=0, contrast=0, saturation=0, hue=0,
                     grayscale_p=0, second_view=second_view)
    x = torch.rand(6, 3, 40, 40)
    v = make_views_batch(x, x.flip(0), cfg, torch.Generator().manual_seed(1))
    torch.testing.assert_close(undo_dihedral(v["x1_2"], v["flip1"], v["rot1"]), v["x1_1"], atol=1e-5, rtol=0)
    torch.testing.assert_close(undo_dihedral(v["x2_2"], v["flip2"], v["rot2"]), v["x2_1"], atol=1e-5, rtol=0)


def test_photometric_views_differ_but_share_geometry():
    cfg = ViewConfig(size=48, grayscale_p=0)
    x = torch.rand(1, 3, 48, 48)
    v = make_views_batch(x, x, cfg, torch.Generator().manual_seed(2))
    second = undo_dihedral(v["x1_2"], v["flip1"], v["rot1"])
    assert not torch.allclose(second, v["x1_1"])
    corr = torch.corrcoef(torch.stack([second.mean(1).flatten(), v["x1_1"].mean(1).flatten()]))[0, 1]
    assert corr > 0.6   # same crop and rotation up to ±2°, different colours


def test_batched_path_equals_pil_path():
    a, b = _pil(7, (40, 40)), _pil(8, (40, 40))
    cfg = ViewConfig(size=32)
    single = make_views(a, b, cfg, torch.Generator().manual_seed(9))
    batched = make_views_batch(pil_to_tensor(a)[None], pil_to_tensor(b)[None], cfg, torch.Generator().manual_seed(9))
    for k, v in single.items():
        torch.testing.assert_close(batched[k][0], v)


def test_collate_and_bad_input():
    cfg = ViewConfig(size=16)
    vs = [make_views(_pil(i), _pil(i + 1), cfg, torch.Generator().manual_seed(i)) for i in range(3)]
    batch = collate_views(vs)
    assert batch["x1_1"].shape == (3, 3, 16, 16) and batch["rot2"].shape == (3,)
    with pytest.raises(ValueError):
        collate_views([])
    with pytest.raises(ValueError):
        make_views_batch(torch.rand(2, 2, 8, 8), torch.rand(2, 2, 8, 8), cfg, torch.Generator())
