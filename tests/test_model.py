"""Model: encoder widths and skip features, LD heads, stage-1 → stage-2 loading, encoder export."""
import pytest
import torch

from ldisc.model import LDNet, ShapeDiscriminator, VGGEncoder, load_encoder, load_stage1, save_encoder


@pytest.mark.parametrize("width,channels", [("tiny", (16, 32, 64, 128, 128)), ("small", (32, 64, 128, 256, 256)),
                                            ("full", (64, 128, 256, 512, 512))])
def test_encoder_widths_and_five_skips(width, channels):
    enc = VGGEncoder(width)
    feats = enc(torch.randn(1, 3, 32, 32))
    assert tuple(f.shape[1] for f in feats) == channels
    assert [f.shape[-1] for f in feats] == [32, 16, 8, 4, 2]
    assert sum(isinstance(m, torch.nn.Conv2d) for m in enc.modules()) == 13   # VGG16's 13 convs


def test_heads_embedding_unit_and_masks_distribution():
    out = LDNet("tiny", 32, 5)(torch.randn(2, 3, 48, 48))
    assert out.embedding.shape == (2, 32, 48, 48)
    torch.testing.assert_close(out.embedding.norm(dim=1), torch.ones(2, 48, 48))
    assert out.masks.shape == (2, 5, 48, 48) and (out.masks >= 0).all()
    torch.testing.assert_close(out.masks.sum(1), torch.ones(2, 48, 48), atol=1e-4, rtol=0)
    assert LDNet("tiny", 32, 0)(torch.randn(1, 3, 32, 32)).masks is None


def test_stage1_weights_load_into_stage2_by_name():
    s1 = LDNet("tiny", 32, 0)
    s2 = LDNet("tiny", 32, 16)
    fresh = load_stage1(s2, s1.state_dict())
    assert fresh and all(k.startswith("cluster.") for k in fresh)
    for k, v in s1.state_dict().items():
        assert torch.equal(s2.state_dict()[k], v)
    with pytest.raises(ValueError):
        load_stage1(LDNet("small", 32, 16), s1.state_dict())
    partial = {k: v for k, v in s1.state_dict().items() if not k.startswith("embed.")}
    with pytest.raises(ValueError):
        load_stage1(LDNet("tiny", 32, 16), partial)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_encoder_export_round_trip(tmp_path, suffix):
    model = LDNet("tiny", 32, 0).eval()
    path = save_encoder(model, tmp_path / f"enc{suffix}")
    enc = load_encoder(path).eval()
    x = torch.randn(1, 3, 32, 32)
    for a, b in zip(enc(x), model.encoder(x)):
        torch.testing.assert_close(a, b)


def test_discriminator_one_logit_per_mask():
    d = ShapeDiscriminator()
    assert d(torch.rand(3, 1, 64, 64)).shape == (3,)
