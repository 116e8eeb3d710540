"""Undoing the second view's flip/rot90 on patch grids, and the views that produce them."""
import pytest
import torch

from ldisc.objectives.patches import grid_vectors, patch_grid, undo_dihedral_grid
from ldisc.views import apply_dihedral, undo_dihedral

CASES = [(f, k) for f in (0, 1) for k in range(4)]            # the dihedral set (flip code 1: mirror)
ROTATIONS = [(f, k) for f in (0, 2) for k in range(4)]        # the authors' set (flip code 2: both axes)


@pytest.mark.parametrize("flip,rot", CASES + ROTATIONS[4:])
def test_undo_maps_every_patch_back(flip, rot):
    grid = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    f, r = torch.tensor([flip, flip]), torch.tensor([rot, rot])
    transformed = apply_dihedral(grid, f, r)
    assert torch.equal(undo_dihedral_grid(transformed, f, r), grid)
    assert torch.equal(undo_dihedral(transformed, f, r), grid)


def test_all_eight_cases_are_distinct_and_batched_in_one_call():
    grid = torch.arange(8 * 8, dtype=torch.float32).view(1, 1, 8, 8).repeat(8, 1, 1, 1)
    f = torch.tensor([c[0] for c in CASES])
    r = torch.tensor([c[1] for c in CASES])
    transformed = apply_dihedral(grid, f, r)
    assert len({tuple(t.flatten().tolist()) for t in transformed}) == 8
    assert torch.equal(undo_dihedral_grid(transformed, f, r), grid)


def test_pooled_grid_of_transformed_image_is_transformed_grid():
    """Pooling commutes with flip/rot90 on grids that divide the image: patch (i, j) ↔ (i, j)."""
    emb = torch.randn(8, 4, 32, 32)
    f = torch.tensor([c[0] for c in CASES])
    r = torch.tensor([c[1] for c in CASES])
    g_view = patch_grid(apply_dihedral(emb, f, r), 8)
    torch.testing.assert_close(undo_dihedral_grid(g_view, f, r), patch_grid(emb, 8))


def test_grid_vectors_are_unit_and_ordered():
    g = patch_grid(torch.randn(2, 5, 16, 16), 4)
    v = grid_vectors(g)
    assert v.shape == (2 * 16, 5)
    torch.testing.assert_close(v.norm(dim=1), torch.ones(32))
    torch.testing.assert_close(v[16 + 4 * 1 + 2], g[1, :, 1, 2])
