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


# -- center-sensitive averaging (one-shot landmarks, the paper's application) ---------------------
POOLINGS = ("mean", "center")


def center_weights(height: int, width: int, sigma: float) -> torch.Tensor:
    """(height, width) weights of one patch cell for center-sensitive averaging; they sum to 1.

    w(u, v) ∝ exp(−[(u − c_h)² / (σ·height)² + (v − c_w)² / (σ·width)²] / 2) for pixel row u and
    column v of the cell, c = (side − 1) / 2 the cell centre (between pixels for even sides), σ in
    units of the cell side (``objective.center_sigma``). σ → ∞ gives the flat average; σ = 0.25 puts
    ≈ 95% of the weight on the central half of the cell. The weight is separable:
    w = outer(g_h, g_w) with g the normalised 1-D Gaussian of each axis (:func:`center_profile`).
    """
    return torch.outer(center_profile(height, sigma), center_profile(width, sigma))


def center_profile(side: int, sigma: float) -> torch.Tensor:
    """1-D factor of :func:`center_weights`: a Gaussian over ``side`` pixels, σ·side wide, summing to 1."""
    if side < 1 or not sigma > 0:
        raise ValueError(f"center weights need side >= 1 and sigma > 0, got side={side}, sigma={sigma}")
    u = torch.arange(side, dtype=torch.float64) - (side - 1) / 2
    g = torch.exp(-0.5 * (u / (sigma * side)) ** 2)
    return (g / g.sum()).float()


def center_patch_grid(embedding: torch.Tensor, grid: int = 8, sigma: float = 0.25) -> torch.Tensor:
    """(B, D, H, W) → (B, D, G, G): per cell of the G×G grid, the :func:`center_weights` average of
    the pixel embeddings, then L2-normalised. H and W must be multiples of G (cells of equal size)."""
    b, d, h, w = embedding.shape
    if h % grid or w % grid:
        raise ValueError(f"center pooling needs H and W divisible by the grid {grid}, got {h}×{w}")
    ch, cw = h // grid, w // grid
    weights = center_weights(ch, cw, sigma).to(embedding)
    cells = embedding.reshape(b, d, grid, ch, grid, cw)
    return F.normalize(torch.einsum("bdiujv,uv->bdij", cells, weights), dim=1)


def pool_patches(embedding: torch.Tensor, grid: int = 8, pooling: str = "mean", sigma: float = 0.25) -> torch.Tensor:
    """The patch grid of ``objective.patch_pooling``: ``mean`` (the paper's LD) or ``center``."""
    if pooling == "mean":
        return patch_grid(embedding, grid)
    if pooling == "center":
        return center_patch_grid(embedding, grid, sigma)
    raise ValueError(f"objective.patch_pooling must be one of {POOLINGS}, got {pooling!r}")
