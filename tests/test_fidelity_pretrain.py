"""ldisc's pretraining defaults against reference implementations of the authors' method, written
from the equations in DESIGN.md ("The method, exactly"), in fp64:

- L_rd, its centres and L_ent on the four augmented views (4B), L_ent in bits;
- the second-view set (flip of both axes + rot90: the four rotations, no mirror) and its exact
  inversion on patch grids, on the tensor and the PIL path;
- the network: parameter count, output shapes, nearest upsampling, 3×3 head convs, conv bias,
  Kaiming-normal (fan_out) init, X-ray input (1 channel, (x − 0.5)/0.5).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from ldisc.model import LDNet, UNetDecoder, VGGEncoder, load_encoder, save_encoder
from ldisc.objectives.objective import LDObjective, ObjectiveConfig
from ldisc.objectives.patches import patch_grid, undo_dihedral_grid
from ldisc.views import (VIEW_KEYS, ViewConfig, apply_dihedral, input_normalization, make_views,
                         make_views_batch, normalize)

B, K, SIZE = 2, 4, 32


# -- reference formulas (from the equations) -------------------------------------------------------
def ref_region_entropy(emb: torch.Tensor, masks: torch.Tensor, tau: float = 0.2) -> tuple[float, float]:
    """r_bk = normalise(mean_pixels emb_b · m_bk); c_k = normalise(mean_b r_bk);
    L_rd = −mean_bk log softmax_j(r_bk · c_j / τ)[k]; L_ent = −mean m log2 m + (1 − m) log2(1 − m)."""
    n, k = masks.shape[:2]
    r = torch.zeros(n, k, emb.shape[1], dtype=torch.float64)
    for b in range(n):
        for j in range(k):
            v = (emb[b] * masks[b, j]).mean((1, 2))
            r[b, j] = v / v.norm()
    c = r.mean(0)
    c = c / c.norm(dim=1, keepdim=True)
    lrd = 0.0
    for b in range(n):
        for j in range(k):
            logits = torch.stack([r[b, j] @ c[i] / tau for i in range(k)])
            lrd -= float(logits[j] - torch.logsumexp(logits, 0))
    m = masks.double()
    ent = -(m * torch.log2(m) + (1 - m) * torch.log2(1 - m)).mean()
    return lrd / (n * k), float(ent)


def ref_second_view(x: torch.Tensor, flip_both: bool, k: int) -> torch.Tensor:
    """The authors' second view: flip(dims=(H, W)) with p = 0.5, then rot90 by k."""
    return torch.rot90(x.flip(-2, -1) if flip_both else x, k, dims=(-2, -1))


def ref_parameter_count(k: int = 16, in_channels: int = 3) -> int:
    """DESIGN.md's network counted by hand: VGG16-bn tiny (conv bias), U-Net stages
    256→128→64, 128→64→32, 64→32→16 (conv-BN-ReLU each), heads conv3×3-BN-ReLU-conv3×3 on the
    32-channel concat: embedding 32→32→32, clustering 32→K→K."""
    conv = lambda ci, co: 9 * ci * co + co        # noqa: E731  weight + bias
    bn = lambda c: 2 * c                          # noqa: E731
    total, ci = 0, in_channels
    for c, n in ((16, 2), (32, 2), (64, 3), (128, 3), (128, 3)):
        for _ in range(n):
            total, ci = total + conv(ci, c) + bn(c), c
    for c_in, mid, out in ((256, 128, 64), (128, 64, 32), (64, 32, 16)):
        total += conv(c_in, mid) + bn(mid) + conv(mid, out) + bn(out)
    total += conv(32, 32) + bn(32) + conv(32, 32)
    total += conv(32, k) + bn(k) + conv(k, k)
    return total


# -- region + entropy on 4B, in bits ---------------------------------------------------------------
def _stage2_batch(seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    x1, x2 = torch.rand(B, 3, 40, 40, generator=gen), torch.rand(B, 3, 40, 40, generator=gen)
    batch = make_views_batch(x1, x2, ViewConfig(view_side=SIZE), gen)
    return {k: v.double() if v.is_floating_point() else v for k, v in batch.items()}


@pytest.mark.parametrize("region_views,n_views", [("augmented", 4), ("all", 5)])
def test_region_and_entropy_match_reference(region_views, n_views):
    torch.manual_seed(0)
    model = LDNet("tiny", 16, K).double().eval()
    batch = _stage2_batch()
    objective = LDObjective(ObjectiveConfig(stage=2, region_views=region_views))
    terms = objective(model, batch).terms
    with torch.no_grad():
        out = model(torch.cat([batch[k] for k in VIEW_KEYS]))
    n = n_views * B                                 # VIEW_KEYS: x1_1, x1_2, x2_1, x2_2, mix
    lrd, ent = ref_region_entropy(out.embedding[:n], out.masks[:n])
    assert terms["region"].item() == pytest.approx(lrd, rel=1e-12, abs=1e-13)
    assert terms["entropy"].item() == pytest.approx(ent, rel=1e-10)
    if region_views == "augmented":                 # and the default is the authors' 4B
        other = ref_region_entropy(out.embedding, out.masks)
        assert abs(other[0] - lrd) > 1e-6 and ObjectiveConfig().region_views == "augmented"


def test_entropy_base_two_by_default_and_nats_option():
    torch.manual_seed(1)
    model = LDNet("tiny", 16, K).double().eval()
    batch = _stage2_batch(1)
    bits = LDObjective(ObjectiveConfig(stage=2))(model, batch).terms["entropy"].item()
    nats = LDObjective(ObjectiveConfig(stage=2, entropy_base=math.e))(model, batch).terms["entropy"].item()
    assert nats == pytest.approx(bits * math.log(2), rel=1e-12)
    with pytest.raises(ValueError):
        ObjectiveConfig(region_views="mix")


# -- second view: the set and its exact inversion -----------------------------------------------------
def _transform_key(flip: int, rot: int) -> tuple:
    probe = torch.arange(16.0).view(1, 1, 4, 4)
    return tuple(apply_dihedral(probe, torch.tensor([flip]), torch.tensor([rot])).flatten().tolist())


def test_default_second_view_set_is_the_four_rotations_and_matches_reference():
    x = torch.rand(64, 3, 24, 24)
    gen = torch.Generator().manual_seed(3)
    v = make_views_batch(x, x, ViewConfig(view_side=16), gen)
    flips, rots = torch.cat([v["flip1"], v["flip2"]]), torch.cat([v["rot1"], v["rot2"]])
    assert set(flips.tolist()) == {0, 2}            # no horizontal mirror code
    probe = torch.arange(16.0).view(1, 1, 4, 4)
    rotations = {tuple(torch.rot90(probe, k, dims=(-2, -1)).flatten().tolist()) for k in range(4)}
    seen = {_transform_key(int(f), int(r)) for f, r in zip(flips, rots)}
    assert seen == rotations                        # all four turns occur, nothing else
    for f in (0, 2):
        for k in range(4):
            got = apply_dihedral(probe.double(), torch.tensor([f]), torch.tensor([k]))
            assert torch.equal(got, ref_second_view(probe.double(), f == 2, k))
    dihedral = make_views_batch(x, x, ViewConfig(view_side=16, second_view="dihedral"), torch.Generator().manual_seed(3))
    assert set(torch.cat([dihedral["flip1"], dihedral["flip2"]]).tolist()) == {0, 1}
    assert len({_transform_key(f, k) for f in (0, 1) for k in range(4)}) == 8


@pytest.mark.parametrize("second_view", ["rotations", "dihedral"])
def test_second_view_inversion_on_features_is_exact(second_view):
    """Pool the embedding of a turned image, undo on the grid: every patch vector is back in place."""
    code = 2 if second_view == "rotations" else 1
    emb = torch.randn(8, 5, 32, 32, dtype=torch.float64)
    flip = torch.tensor([0, code] * 4)
    rot = torch.arange(8) % 4
    turned = torch.stack([ref_second_view(e, bool(f), int(k)) if code == 2 else apply_dihedral(e[None], f[None], k[None])[0]
                          for e, f, k in zip(emb, flip, rot)])
    undone = undo_dihedral_grid(patch_grid(turned, 8), flip, rot)
    torch.testing.assert_close(undone, patch_grid(emb, 8), rtol=0, atol=1e-13)   # pooling order only
    cells = torch.arange(64.0).view(1, 1, 8, 8).repeat(8, 1, 1, 1)                # the index map: bitwise
    moved = torch.stack([ref_second_view(c, bool(f), int(k)) if code == 2 else apply_dihedral(c[None], f[None], k[None])[0]
                         for c, f, k in zip(cells, flip, rot)])
    assert torch.equal(undo_dihedral_grid(moved, flip, rot), cells)


@pytest.mark.parametrize("second_view", ["rotations", "dihedral"])
def test_pil_path_second_view_undoes_to_first_view(second_view):
    rng = np.random.default_rng(0)
    a = Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8), "RGB")
    cfg = ViewConfig(view_side=24, view_rotation_deg=0, brightness=0, contrast=0, saturation=0, hue=0,
                     grayscale_p=0, second_view=second_view, second_flip_p=1.0)
    v = make_views(a, a, cfg, torch.Generator().manual_seed(5))
    assert int(v["flip1"]) == (2 if second_view == "rotations" else 1)
    grids = {k: patch_grid(v[k][None], 4) for k in ("x1_1", "x1_2")}
    back = undo_dihedral_grid(grids["x1_2"], v["flip1"][None], v["rot1"][None])
    torch.testing.assert_close(back, grids["x1_1"], atol=1e-6, rtol=0)


# -- the network ------------------------------------------------------------------------------------
def test_parameter_count_and_output_shapes_match_design():
    model = LDNet("tiny", 32, 16)
    assert sum(p.numel() for p in model.parameters()) == ref_parameter_count(16) == 1_433_280
    assert sum(p.numel() for p in LDNet("tiny", 32, 16, in_channels=1).parameters()) == ref_parameter_count(16, 1)
    enc_feats = model.encoder(torch.randn(2, 3, 64, 64))
    h = model.decoder(enc_feats)
    assert h.shape == (2, 32, 64, 64) and model.decoder.out_channels == 32
    torch.testing.assert_close(h[:, 16:], enc_feats[0])        # the full-resolution concat feeds the heads
    out = model(torch.randn(2, 3, 64, 64))
    assert out.embedding.shape == (2, 32, 64, 64) and out.masks.shape == (2, 16, 64, 64)
    for head in (model.embed.net, model.cluster.net):
        assert head[-1].kernel_size == (3, 3)
    assert all(m.bias is not None for m in model.modules() if isinstance(m, torch.nn.Conv2d))


def test_decoder_upsamples_nearest():
    """The first decoder stage reads [nearest ×2 copy of f5, f4]."""
    dec = UNetDecoder((16, 32, 64, 128, 128)).eval()
    seen = {}
    dec.ups[0].convs.register_forward_hook(lambda m, i, o: seen.update(inp=i[0]))
    feats = [torch.randn(1, c, 32 // 2 ** i, 32 // 2 ** i) for i, c in enumerate((16, 32, 64, 128, 128))]
    dec(feats)
    deep = feats[-1].repeat_interleave(2, -1).repeat_interleave(2, -2)
    assert torch.equal(seen["inp"][:, :128], deep) and torch.equal(seen["inp"][:, 128:], feats[-2])


def test_kaiming_normal_fan_out_init():
    torch.manual_seed(0)
    enc = VGGEncoder("tiny")
    conv = enc.blocks[3][0][0]                                  # 64 → 128, 3×3
    fan_out = conv.out_channels * 9
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / fan_out), rel=0.03)
    assert torch.equal(conv.bias, torch.zeros_like(conv.bias))
    default = VGGEncoder("tiny", init="torch").blocks[3][0][0]
    assert default.weight.std().item() < 0.6 * math.sqrt(2 / fan_out)


def test_xray_input_one_channel_half_normalisation(tmp_path):
    assert input_normalization("xray") == (1, (0.5,), (0.5,))
    x = torch.rand(2, 3, 40, 40)
    x[:, 1:] = x[:, :1]                                          # gray replicated, as decoded
    v = make_views_batch(x, x, ViewConfig(view_side=24, modality="xray"), torch.Generator().manual_seed(0))
    assert v["x1_1"].shape == (2, 1, 24, 24)
    assert v["x1_1"].min() >= -1 - 1e-6 and v["x1_1"].max() <= 1 + 1e-6
    torch.testing.assert_close(normalize(torch.full((1, 1, 2, 2), 0.75), "xray"), torch.full((1, 1, 2, 2), 0.5))
    model = LDNet("tiny", 32, 0, in_channels=1).eval()
    assert model(v["x1_1"]).embedding.shape == (2, 32, 24, 24)
    for suffix in (".pt", ".safetensors"):
        enc = load_encoder(save_encoder(model, tmp_path / f"enc{suffix}")).eval()
        assert enc.in_channels == 1
        torch.testing.assert_close(enc(v["x1_1"])[-1], model.encoder(v["x1_1"])[-1])
