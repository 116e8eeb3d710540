"""Region discrimination, entropy and cluster masks behave as their equations say."""
import math

import pytest
import torch
import torch.nn.functional as F

from ldisc.dist import Collective
from ldisc.objectives.region import cluster_centres, entropy_loss, region_features, region_loss


def test_entropy_zero_for_crisp_and_one_bit_for_half():
    crisp = F.one_hot(torch.randint(0, 4, (2, 8, 8)), 4).permute(0, 3, 1, 2).float()
    assert entropy_loss(crisp).item() == pytest.approx(0.0, abs=1e-4)
    assert entropy_loss(torch.full((1, 2, 4, 4), 0.5)).item() == pytest.approx(1.0, rel=1e-6)           # bits
    assert entropy_loss(torch.full((1, 2, 4, 4), 0.5), math.e).item() == pytest.approx(math.log(2), rel=1e-6)


def test_entropy_gradient_pushes_masks_to_be_crisp():
    m = torch.tensor([0.3, 0.7, 0.5]).view(1, 3, 1, 1).requires_grad_()
    entropy_loss(m).backward()
    # descent direction −grad: values below 0.5 go down, above go up, 0.5 is stationary
    assert m.grad[0, 0] > 0 and m.grad[0, 1] < 0 and m.grad[0, 2].abs() < 1e-6


def test_region_features_are_masked_means():
    emb = F.normalize(torch.randn(2, 3, 4, 4), dim=1)
    masks = torch.zeros(2, 2, 4, 4)
    masks[:, 0, :2] = 1
    masks[:, 1, 2:] = 1
    r = region_features(emb, masks)
    expect = F.normalize(emb[:, :, :2].sum((2, 3)), dim=1)
    torch.testing.assert_close(r[:, 0], expect)


def test_region_loss_low_when_regions_match_their_centres():
    k, d = 4, 8
    centres = torch.eye(k, d)
    r_good = centres.expand(3, k, d)
    r_bad = centres.roll(1, 0).expand(3, k, d)
    good, bad = region_loss(r_good, centres), region_loss(r_bad, centres)
    expect = -math.log(math.exp(5) / (math.exp(5) + 3))      # cos 1 vs 0 at τ = 0.2
    assert good.item() == pytest.approx(expect, rel=1e-5)
    assert bad.item() > good.item() + 4


def test_cluster_centres_are_normalised_batch_means_with_optional_ema():
    r = F.normalize(torch.randn(5, 3, 4), dim=2)
    c = cluster_centres(r, Collective())
    torch.testing.assert_close(c, F.normalize(r.mean(0), dim=1))
    proto = F.normalize(torch.randn(3, 4), dim=1)
    c_ema = cluster_centres(r, Collective(), proto, momentum=0.9)
    torch.testing.assert_close(c_ema, F.normalize(0.9 * proto + 0.1 * r.mean(0), dim=1))


def test_region_loss_gradient_separates_regions():
    r = F.normalize(torch.randn(4, 3, 6), dim=2).requires_grad_()
    centres = cluster_centres(r, Collective())
    loss = region_loss(r, centres)
    loss.backward()
    with torch.no_grad():
        stepped = F.normalize(r - 0.5 * r.grad, dim=2)
    assert region_loss(stepped, cluster_centres(stepped, Collective())).item() < loss.item()
