"""Patch grids: pool pixel embeddings to a G×G grid of unit vectors, and undo flip/rot90 on grids."""
from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F

from ldisc.views import undo_dihedral


def patch_grid(embedding: torch.Tensor, grid: int = 8) -> torch.Tensor:
    """(B, D, H, W) → (B, D, G, G): adaptive average pool, then L2-normalise every patch vector."""
    return F.normalize(F.adaptive_avg_pool2d(embedding, grid), dim=1)


@lru_cache(maxsize=16)
def _undo_tables(grid: int) -> torch.Tensor:
    """(12, G·G) gather indices: row 4·flip + k undoes ``rot90(flip_f(·), k)`` on a flat grid, for the
    flip codes of :mod:`ldisc.views` (0 none, 1 horizontal mirror, 2 both axes)."""
    cells = torch.arange(grid * grid).view(1, grid, grid)
    return torch.stack([undo_dihedral(cells, torch.tensor([f]), torch.tensor([k])).reshape(-1)
                        for f in (0, 1, 2) for k in range(4)])


def undo_dihedral_grid(grids: torch.Tensor, flip: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
    """Undo per-sample flip/rot90 on (B, D, G, G) grids with one gather (no loop over the batch).

    Output cell (i, j) of sample b is the cell of the transformed grid that came from (i, j).
    """
    b, d, g, _ = grids.shape
    table = _undo_tables(g).to(grids.device)
    index = table[(4 * flip + rot).to(grids.device)]              # (B, G·G)
    flat = grids.reshape(b, d, g * g)
    return flat.gather(2, index[:, None, :].expand(b, d, g * g)).view(b, d, g, g)


def grid_vectors(grids: torch.Tensor) -> torch.Tensor:
    """(B, D, G, G) → (B·G·G, D), sample-major then row-major cells."""
    b, d, g, _ = grids.shape
    return grids.permute(0, 2, 3, 1).reshape(b * g * g, d)


# the L_pd vectors: first views of both images, then their second views (positive = row + N/2)
PATCH_ORDER = ("x1_1", "x2_1", "x1_2", "x2_2")
_UNDO = {"x1_2": ("flip1", "rot1"), "x2_2": ("flip2", "rot2")}


def align_second_views(grids: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Grids by view name with the second views' flip/rot90 undone (cell (i, j) ↔ cell (i, j))."""
    return {k: undo_dihedral_grid(g, batch[_UNDO[k][0]], batch[_UNDO[k][1]]) if k in _UNDO else g
            for k, g in grids.items()}


def patch_vectors(aligned: dict[str, torch.Tensor]) -> torch.Tensor:
    """(4·B·G², D) L_pd vectors of aligned grids, in :data:`PATCH_ORDER`."""
    return torch.cat([grid_vectors(aligned[k]) for k in PATCH_ORDER])
