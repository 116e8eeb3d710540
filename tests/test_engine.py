"""The DeepSpeed engine: the generated config, ZeRO stages and precisions, gradient accumulation,
the shape prior's own optimiser, and batch norm over the global batch with real processes."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from _train_helpers import TINY, sample_log
from _dist_helpers import run_ranks

from ldisc.config import compose
from ldisc.train import pretrain
from ldisc.train.ds_config import build_ds_config
from ldisc.train.validate import check_pretrain_config
from ldisc.train.sync_bn import GlobalBatchNorm2d, convert_sync_batchnorm


def _cfg(*overrides: str):
    return compose("pretrain", ["run_dir=/unused", *overrides])


def _ds_config(*overrides: str, world_size: int) -> dict:
    sections = check_pretrain_config(_cfg(*overrides))
    return build_ds_config(sections.engine, sections.train, world_size)


def test_ds_config_from_hydra():
    c = _ds_config("engine.zero_stage=2", "engine.precision=bf16", "engine.gradient_accumulation=4",
                   "engine.grad_clip=1.5", "train.batch_size=3", "train.lr=2e-3",
                   "train.lr_halve_every=7", "+engine.extra.zero_optimization.overlap_comm=true", world_size=8)
    assert c["train_batch_size"] == 3 * 4 * 8 and c["train_micro_batch_size_per_gpu"] == 3
    assert c["gradient_accumulation_steps"] == 4 and c["gradient_clipping"] == 1.5
    assert c["zero_optimization"] == {"stage": 2, "overlap_comm": True}
    assert c["bf16"]["enabled"] and not c["fp16"]["enabled"]
    assert c["optimizer"] == {"type": "Adam", "params": {"lr": 2e-3, "betas": [0.9, 0.999], "eps": 1e-8,
                              "weight_decay": 0.0, "torch_adam": True, "adam_w_mode": False}}
    assert c["scheduler"] == {"type": "StepLR", "params": {"step_size": 7, "gamma": 0.5}}
    assert _ds_config("engine.precision=bf16-autocast", world_size=1)["torch_autocast"]["dtype"] == "bfloat16"
    with pytest.raises(ValueError, match="gradient_accumulation"):
        _ds_config("engine.gradient_accumulation=0", world_size=1)


@pytest.mark.parametrize("zero, precision", [(0, "bf16"), (1, "fp32"), (2, "bf16-autocast"), (3, "fp32"),
                                             (3, "bf16")])
def test_zero_stages_and_precisions_train_and_export(tmp_path, zero, precision):
    result = pretrain([*TINY, f"run_dir={tmp_path}", "train.stage1_steps=2", "train.stage2_steps=1",
                       "train.checkpoint_every=3", f"engine.zero_stage={zero}", f"engine.precision={precision}",
                       "engine.grad_clip=1.0"])
    assert [r["stage"] for r in result.losses] == [1, 1, 2]
    assert all(np.isfinite(r["total"]) for r in result.losses)
    full = torch.load(result.checkpoint / "model.pt", weights_only=True)
    assert all(v.dtype != torch.bfloat16 for v in full.values())
    assert any(k.startswith("cluster.") for k in full)


def test_gradient_accumulation_reads_micro_batches(tmp_path):
    result = pretrain([*TINY, f"run_dir={tmp_path}", "train.stage1_steps=2", "train.stage2_steps=0",
                       "train.checkpoint_every=2", "engine.gradient_accumulation=3"])
    assert [r["step"] for r in result.losses] == [1, 2]
    assert [len(r["sample_ids"]) for r in sample_log(tmp_path, 0)] == [6, 6]      # 3 micro-batches x 1 pair


@pytest.mark.parametrize("checkpointing", ["none", "selective"])
def test_shape_prior_discriminator_has_its_own_adam(tmp_path, checkpointing):
    """Also under selective checkpointing: mask 0 (with gradient) and the detached masks for the
    discriminator step come out of the chunked heads."""
    masks = tmp_path / "masks"
    masks.mkdir()
    for i in range(3):
        m = np.zeros((40, 40), np.uint8)
        m[5 + i:30, 10:12 + 3 * i] = 255
        Image.fromarray(m).save(masks / f"m{i}.png")
    result = pretrain([*TINY, "data.source=synthetic", f"run_dir={tmp_path}/run", "train.stage1_steps=1",
                       "train.stage2_steps=2", "train.checkpoint_every=3", "objective.w_adversarial=0.5",
                       f"shape_prior.source={masks}", "train.lr=1e-3",
                       f"engine.activation_checkpointing={checkpointing}"])
    last = result.losses[-1]
    assert last["adversarial"] > 0 and last["discriminator"] > 0
    state = torch.load(result.checkpoint / "trainer.pt", weights_only=False)["shape_prior"]
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-3 * 0.05)
    with pytest.raises(FileNotFoundError, match="shape_prior.source"):
        pretrain([*TINY, f"run_dir={tmp_path}/bad", "train.stage1_steps=0", "train.stage2_steps=1",
                  "objective.w_adversarial=0.5", f"shape_prior.source={tmp_path}/none"])


def _bn_rank(rank: int, world: int, x: torch.Tensor):
    torch.manual_seed(0)
    bn = convert_sync_batchnorm(torch.nn.Sequential(torch.nn.BatchNorm2d(3)), torch.device("cpu"))
    assert isinstance(bn[0], GlobalBatchNorm2d)
    part = x.chunk(world)[rank].clone().requires_grad_(True)
    weights = torch.arange(part.numel(), dtype=torch.float32).view_as(part) + rank * part.numel()
    (bn(part) * weights).sum().backward()
    return bn(part).detach(), part.grad, bn[0].running_var.clone()


def test_global_batchnorm_two_ranks_equals_one():
    x = torch.randn(4, 3, 5, 5, generator=torch.Generator().manual_seed(1)) * 3 + 1
    single = _bn_rank(0, 1, x)
    ref = torch.nn.BatchNorm2d(3)
    assert torch.allclose(single[0], ref(x).detach(), atol=1e-5)
    two = run_ranks(_bn_rank, world_size=2, args=(x,))
    assert torch.allclose(torch.cat([two[0][0], two[1][0]]), single[0], atol=1e-5)
    assert torch.allclose(torch.cat([two[0][1], two[1][1]]), single[1], atol=1e-4)
    assert torch.allclose(two[0][2], single[2], atol=1e-5)


def test_config_composes_with_bank_and_engine_groups(tmp_path):
    cfg = _cfg("engine.zero_stage=3", "bank.entries=65536", "objective.stage=2")
    assert OmegaConf.select(cfg, "engine.name") == "deepspeed" and cfg.bank.entries == 65536
    result = pretrain([*TINY, f"run_dir={tmp_path}", "objective.stage=2", "train.stage2_steps=1",
                       "train.checkpoint_every=1"])
    assert [r["stage"] for r in result.losses] == [2]
