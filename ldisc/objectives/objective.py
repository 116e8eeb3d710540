"""All losses of one LD step, from a batch of views — the one function every engine calls.

    stage 1:  L = L_pd + L_mix
    stage 2:  L = L_pd + L_mix + 10·L_rd + 0.1·L_ent  (+ λ_adv·L_adv with a shape prior)

L_pd: instance NCE over the 8×8 patch vectors of the four views (x1_1, x2_1 | x1_2, x2_2; the
positive of a patch is the same patch of the other view, after undoing the second view's flip and
rot90), τ = 0.1, with all ranks' patches (and the bank negatives, if any) as negatives.
L_mix: patches of the mixup image against normalise(w·p(x1_1) + (1 − w)·p(x2_1)), detached.
L_rd / L_ent: see :mod:`ldisc.objectives.region`. ``region_views``: ``augmented`` (default, the
authors'): L_rd, its cluster centres and L_ent see the four augmented views only (4B images);
``all``: the mixup image too (5B; the earlier ldisc behaviour). ``entropy_base``: 2 (bits, the
authors') or e ≈ 2.718 (nats).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ldisc.dist import Collective
from ldisc.objectives.nce import BankNegatives, instance_nce
from ldisc.objectives.crisp import REGION_VIEWS, area_penalty, region_views
from ldisc.objectives.patches import align_second_views, grid_vectors, patch_vectors
from ldisc.objectives.reductions import PixelReductions
from ldisc.objectives.region import adversarial_generator_loss, cluster_centres, entropy_from_per_image, region_loss
from ldisc.views import VIEW_KEYS




@dataclass
class ObjectiveConfig:
    stage: int = 1
    grid: int = 8
    tau_patch: float = 0.1
    tau_region: float = 0.2
    w_patch: float = 1.0
    w_mix: float = 1.0
    w_region: float = 10.0
    w_entropy: float = 0.1
    w_adversarial: float = 0.0
    detach_keys: bool = True
    prototype_momentum: float = 0.0
    chunk: int = 1024                  # NCE tile side (queries × keys per tile): the one tiling setting
    region_views: str = "augmented"    # augmented (4B, the authors') | all (5B, mixup included)
    entropy_base: float = 2.0          # 2: bits (the authors') | 2.718281828459045: nats
    mask_power: float = 1.0            # crisp-cluster options: see ldisc.objectives.crisp
    w_area: float = 0.0
    patch_pooling: str = "mean"            # mean (the paper's LD) | center (center-sensitive averaging)
    center_sigma: float = 0.25             # Gaussian width of center pooling, in units of the cell side

    def __post_init__(self):
        if self.region_views not in REGION_VIEWS:
            raise ValueError(f"unknown objective.region_views {self.region_views!r}; one of {REGION_VIEWS}")
        if not self.entropy_base > 1:
            raise ValueError(f"objective.entropy_base must be > 1, got {self.entropy_base}")


@dataclass
class StepLosses:
    total: torch.Tensor
    terms: dict[str, torch.Tensor]
    patch_vectors: torch.Tensor            # this rank's L_pd query vectors, detached (for a bank)
    masks: torch.Tensor | None = None      # cluster masks of all views, detached, with keep_masks


def _nce_over_ranks(local: torch.Tensor, collective: Collective, cfg: ObjectiveConfig,
                    bank_negatives: BankNegatives | None = None) -> torch.Tensor:
    """Mean NCE of this rank's vectors against every rank's; positive = row + N/2 within a rank."""
    n = local.shape[0]
    keys = collective.gather(local)
    offset = collective.offset(n)
    rows = torch.arange(n, device=local.device)
    self_index = rows + offset
    pos_index = (rows + n // 2) % n + offset
    all_queries = None
    if bank_negatives is not None:
        others = keys.detach()
        all_queries = (torch.cat([others[:offset], local, others[offset + n:]]), slice(offset, offset + n))
    loss = instance_nce(local, keys, self_index, pos_index, cfg.tau_patch, cfg.chunk, cfg.detach_keys,
                        bank_negatives, all_queries)
    return loss.mean()


class LDObjective(nn.Module):
    """Computes :class:`StepLosses` for ``model`` on ``batch`` (a dict from ``ldisc.views``)."""

    def __init__(self, cfg: ObjectiveConfig, collective: Collective | None = None):
        super().__init__()
        self.cfg = cfg
        self.collective = collective or Collective()
        self.register_buffer("prototypes", torch.empty(0), persistent=True)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """The prototypes start empty and take their (K, D) shape from the first step or a checkpoint."""
        saved = state_dict.get(prefix + "prototypes")
        if saved is not None and saved.shape != self.prototypes.shape:
            self.prototypes = torch.empty(saved.shape, dtype=saved.dtype, device=self.prototypes.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, model: nn.Module, batch: dict[str, torch.Tensor],
                bank_negatives: BankNegatives | None = None, discriminator: nn.Module | None = None,
                consume_views: bool = False, keep_masks: bool = False) -> StepLosses:
        """``consume_views``: take the five view images out of ``batch`` once they are concatenated
        into the network input, so that they are freed before the forward pass (the caller does not
        need them after this call). ``keep_masks``: return the cluster masks (detached) in
        :attr:`StepLosses.masks`. ``model(x, reduce=f)`` gives the per-image reductions the losses
        read (:mod:`ldisc.objectives.reductions`)."""
        cfg = self.cfg
        b = batch["x1_1"].shape[0]
        adversarial = discriminator is not None and cfg.w_adversarial > 0
        reduce = PixelReductions(cfg.grid, cfg.patch_pooling, cfg.center_sigma, cfg.stage, cfg.mask_power,
                                 area=cfg.w_area > 0, mask0=adversarial, keep_masks=keep_masks)
        x = torch.cat([batch.pop(k) if consume_views else batch[k] for k in VIEW_KEYS])
        out = model(x, reduce=reduce)
        del x
        grids = align_second_views(dict(zip(VIEW_KEYS, out["grid"].split(b))), batch)
        g11, g21, gmix = grids["x1_1"], grids["x2_1"], grids["mix"]

        patch_local = patch_vectors(grids)
        terms = {"patch": _nce_over_ranks(patch_local, self.collective, cfg, bank_negatives)}

        w = batch["mix_w"].to(g11).view(-1, 1, 1, 1)
        target = F.normalize(w * g11 + (1 - w) * g21, dim=1).detach()
        mix_local = torch.cat([grid_vectors(gmix), grid_vectors(target)])
        terms["mix"] = _nce_over_ranks(mix_local, self.collective, cfg)

        total = cfg.w_patch * terms["patch"] + cfg.w_mix * terms["mix"]
        if cfg.stage >= 2:
            r, entropy = region_views(out["region"], out["entropy"], pairs=b, which=cfg.region_views)
            protos = self.prototypes if self.prototypes.numel() else None
            centres = cluster_centres(r, self.collective, protos, cfg.prototype_momentum)
            if cfg.prototype_momentum > 0:
                self.prototypes = centres.detach().clone()
            terms["region"] = region_loss(r, centres, cfg.tau_region)
            terms["entropy"] = entropy_from_per_image(entropy, cfg.entropy_base)
            total = total + cfg.w_region * terms["region"] + cfg.w_entropy * terms["entropy"]
            if cfg.w_area > 0:
                (shares,) = region_views(out["area"], pairs=b, which=cfg.region_views)
                terms["area"] = area_penalty(shares.mean(0))
                total = total + cfg.w_area * terms["area"]
            if adversarial:
                # mask 0 of the four augmented views (x1_1, x1_2, x2_1, x2_2), never the mixup image
                terms["adversarial"] = adversarial_generator_loss(discriminator(out["mask0"][:4 * b]))
                total = total + cfg.w_adversarial * terms["adversarial"]
        return StepLosses(total, terms, patch_local.detach(), out.get("masks"))
