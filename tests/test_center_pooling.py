"""Center-sensitive averaging and the landmark argmax, exact on hand-built maps."""
import math

import pytest
import torch
import torch.nn.functional as F

from ldisc.apps.landmarks import argmax_xy, kernel_profile, pooled_map, similarity, vectors_at
from ldisc.objectives.patches import center_patch_grid, center_weights, patch_grid, pool_patches


def _position_code_map(grid: int, cell: int) -> torch.Tensor:
    """(1, cell², grid·cell, grid·cell): pixel (u, v) of every cell is the one-hot vector of u·cell + v,
    so a cell's pooled (unnormalised) vector is exactly its weight table, flattened."""
    side = grid * cell
    u = torch.arange(side) % cell
    code = (u[:, None] * cell + u[None, :])
    return F.one_hot(code, cell * cell).permute(2, 0, 1)[None].float()


def test_center_weights_are_the_documented_gaussian():
    w = center_weights(4, 4, 0.5)
    # pixel offsets from the centre: ±0.5, ±1.5; σ·side = 2
    g = torch.tensor([math.exp(-0.5 * (d / 2) ** 2) for d in (-1.5, -0.5, 0.5, 1.5)])
    expected = torch.outer(g, g) / torch.outer(g, g).sum()
    torch.testing.assert_close(w, expected, rtol=1e-6, atol=1e-7)
    assert float(w.sum()) == pytest.approx(1.0, abs=1e-6)
    assert w[1, 1] == w.max() and w[0, 0] == w.min()


def test_center_pooling_of_a_position_code_map_returns_the_weights():
    grid, cell, sigma = 2, 4, 0.3
    emb = _position_code_map(grid, cell)
    pooled = center_patch_grid(emb, grid, sigma)
    weights = center_weights(cell, cell, sigma).flatten()
    for i in range(grid):
        for j in range(grid):
            torch.testing.assert_close(pooled[0, :, i, j], weights / weights.norm())
    flat = patch_grid(emb, grid)
    torch.testing.assert_close(flat[0, :, 0, 0], torch.full((cell * cell,), 1.0 / cell))  # uniform, unit norm


def test_pool_patches_dispatch_and_wide_sigma_is_the_flat_average():
    emb = F.normalize(torch.randn(2, 8, 32, 32, generator=torch.Generator().manual_seed(0)), dim=1)
    torch.testing.assert_close(pool_patches(emb, 8, "mean"), patch_grid(emb, 8))
    torch.testing.assert_close(pool_patches(emb, 8, "center", 1e4), patch_grid(emb, 8), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(pool_patches(emb, 8, "center", 0.25), patch_grid(emb, 8), atol=1e-3)
    with pytest.raises(ValueError):
        pool_patches(emb, 8, "max")
    with pytest.raises(ValueError):
        center_patch_grid(emb[..., :30, :30], 8)


def test_pooled_map_at_a_pixel_equals_the_weighted_window():
    emb = F.normalize(torch.randn(1, 4, 21, 21, generator=torch.Generator().manual_seed(1)), dim=1)
    profile = kernel_profile(7, "center", 0.25)
    maps = pooled_map(emb, profile)
    window = emb[0, :, 10 - 3:10 + 4, 12 - 3:12 + 4]
    by_hand = F.normalize((window * torch.outer(profile, profile)).sum((1, 2)), dim=0)
    torch.testing.assert_close(maps[0, :, 10, 12], by_hand, rtol=1e-5, atol=1e-6)


def test_argmax_finds_a_shifted_template_exactly():
    gen = torch.Generator().manual_seed(2)
    template = F.normalize(torch.randn(1, 16, 48, 48, generator=gen), dim=1)
    shift = (5, -7)  # (dy, dx)
    query = torch.roll(template, shifts=shift, dims=(2, 3))
    profile = kernel_profile(5, "center", 0.25)
    points = torch.tensor([[20.0, 15.0], [30.0, 33.0]])               # (x, y)
    vectors = vectors_at(pooled_map(template, profile), points)
    xy, score = argmax_xy(similarity(pooled_map(query, profile), vectors))
    assert xy[0].tolist() == [[20 + shift[1], 15 + shift[0]], [30 + shift[1], 33 + shift[0]]]
    torch.testing.assert_close(score, torch.ones_like(score), rtol=1e-5, atol=1e-5)


def test_argmax_window_restricts_the_search():
    sim = torch.zeros(1, 1, 10, 10)
    sim[0, 0, 1, 1], sim[0, 0, 7, 8] = 0.9, 0.5
    xy, score = argmax_xy(sim)
    assert xy[0, 0].tolist() == [1, 1] and float(score) == pytest.approx(0.9)
    xy, score = argmax_xy(sim, centre=torch.tensor([[[8.0, 6.0]]]), radius=2)
    assert xy[0, 0].tolist() == [8, 7] and float(score) == pytest.approx(0.5)


def test_ema_key_encoder_pools_like_the_objective():
    """The bank's EMA keys honour objective.patch_pooling: with the online weights they equal the
    objective's center-pooled L_pd vectors (and differ from flat-pooled ones)."""
    from ldisc.bank import build_key_encoder
    from ldisc.model import LDNet
    from ldisc.objectives.objective import LDObjective, ObjectiveConfig

    torch.manual_seed(0)
    model = LDNet("tiny", 8).eval()
    g = torch.Generator().manual_seed(1)
    batch = {k: torch.randn(2, 3, 32, 32, generator=g) for k in ("x1_1", "x2_1", "x1_2", "x2_2", "mix")}
    batch |= {"flip1": torch.tensor([0, 2]), "rot1": torch.tensor([1, 3]), "flip2": torch.tensor([2, 0]),
              "rot2": torch.tensor([0, 2]), "mix_w": torch.tensor([0.3, 0.6])}
    keys = build_key_encoder({"entries": 64, "ema_momentum": 0.9}, model, 8, "center", 0.25)
    assert (keys.pooling, keys.sigma) == ("center", 0.25)
    center = LDObjective(ObjectiveConfig(patch_pooling="center"))(model, batch).patch_vectors
    flat = LDObjective(ObjectiveConfig())(model, batch).patch_vectors
    got = keys.encode_patches(batch)
    torch.testing.assert_close(got, center, rtol=1e-5, atol=1e-6)
    assert (got - flat).abs().max() > 1e-3


def test_mirror_option_finds_the_landmark_in_a_mirrored_image_exactly():
    """A query that is the template's mirror image: its mirror IS the template, so with ``mirror`` the
    similarity at the mirrored landmark is exactly 1 and the argmax lands there."""
    import numpy as np

    from ldisc.apps.landmarks import LocalizeConfig, Localizer
    from ldisc.apps.model_io import random_ld_model

    rng = np.random.default_rng(0)
    template = (rng.random((32, 32, 3)) * 255).astype(np.uint8)
    query = template[:, ::-1].copy()
    marks = {"a": (5.0, 9.0), "b": (20.0, 26.0)}
    cfg = LocalizeConfig(size=32, grid=4, levels=2, mirror=True)
    pred = Localizer(random_ld_model(), template, marks, cfg).predict([query])[0]
    assert pred.xy.tolist() == [[31 - 5, 9], [31 - 20, 26]]
    np.testing.assert_allclose(pred.score, 1.0, atol=1e-5)
    same = Localizer(random_ld_model(), template, marks, LocalizeConfig(size=32, grid=4)).predict([template])[0]
    assert same.xy.tolist() == [[5, 9], [20, 26]]


def test_hypercolumn_maps_are_every_encoder_level_and_decoder_stage():
    from ldisc.apps.model_io import embed, feature_maps, random_ld_model

    net = random_ld_model()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    maps = feature_maps(net, x, "hypercolumn", batch=1)
    widths = {k: (v.shape[1], v.shape[-1]) for k, v in maps.items()}
    assert widths == {"enc0": (16, 32), "enc1": (32, 16), "enc2": (64, 8), "enc3": (128, 4), "enc4": (128, 2),
                      "dec0": (64, 4), "dec1": (32, 8), "dec2": (16, 16), "embedding": (32, 32)}
    torch.testing.assert_close(maps["embedding"], embed(net, x)[0])
    assert list(feature_maps(net, x)) == ["embedding"] and not net.encoder._forward_hooks
