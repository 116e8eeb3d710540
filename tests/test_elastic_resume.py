"""Resume at another world size under ZeRO 0–3: 2 ranks → 1 and 1 → 2, the 2-rank side a real torchrun job.

What "continue the curve" means. Each rank keeps ``train.batch_size`` pairs, so the global batch
follows the world size (2 pairs on 2 ranks, 1 pair on 1 rank): the steps after a resume at another
world size are not those of the old job but those of a job at the NEW world size that starts from the
same weights, Adam moments, schedule position, data position and memory bank. The reference for
that is the same job under ZeRO 0: its checkpoint holds the whole torch Adam state, which loads at
any world size without re-sharding. In fp32 on CPU, ZeRO 0–3 train bitwise alike (asserted for the
steps before the resume), so a ZeRO-k resume through the universal checkpoint must give

* directly after the resume: the same fp32 master weights and Adam ``exp_avg``/``exp_avg_sq`` per
  parameter as the ZeRO-0 resume (asserted to rel 1e-6, abs 0; observed bitwise equal), and fp32
  masters exactly equal to the saved partitions consolidated by DeepSpeed's ``zero_to_fp32`` (a
  reader independent of the universal conversion);
* the same losses as the ZeRO-0 resume at every step, before and after the resume (asserted to
  rel 1e-6; observed bitwise equal).

bf16 (slow): the bf16 ZeRO-0 path is DeepSpeed's other optimizer wrapper (not bitwise alike), so
there: masters after the resume = the consolidated saved ones, bf16 weights = the masters rounded,
and ZeRO 2 and ZeRO 3 (different partition layouts) resumed 2 → 1 give the same losses (rel 1e-6).
Default run: 2 → 1 under ZeRO 2 and 1 → 2 under ZeRO 3 (ZeRO 0 the reference of both); the other
combinations are marked slow.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from _train_helpers import TINY, cli_env, finish, losses_without_timing, start_torchrun

from ldisc.config import compose
from ldisc.train.checkpoint import latest_checkpoint
from ldisc.train.env import DistInfo, free_port, init_distributed, single_process_env
from ldisc.train.loop import Trainer
from ldisc.train.reshard import TMP_UNIVERSAL, UNIVERSAL, needs_universal, saved_layout, universal_for

SAVED, TOTAL = 3, 5          # steps before the checkpoint the resume starts from; steps in all
LOSS_KEYS = ("patch", "mix", "total")


def _run(run_dir: Path, zero: int, steps: int, *extra: str) -> list[str]:
    return [*TINY, f"run_dir={run_dir}", f"train.stage1_steps={steps}", "train.stage2_steps=0",
            f"train.checkpoint_every={SAVED}", "train.keep_checkpoints=5", "bank.entries=256",
            f"engine.zero_stage={zero}", "train.resume=auto", *extra]


def _torchrun_all(jobs: list[tuple[list[str], int]]) -> None:
    """Run torchrun jobs ``(overrides, nproc)`` at once and wait for all of them."""
    procs = [start_torchrun(overrides, free_port(), nproc=n, env=cli_env()) for overrides, n in jobs]
    for p in procs:
        finish(p)


def _in_process(overrides: list[str]) -> Trainer:
    """One rank in this process (as ``ldisc.train.pretrain``), keeping the trainer to inspect its engine."""
    with single_process_env():
        trainer = Trainer(compose("pretrain", overrides), init_distributed("auto"))
        trainer.run()
    return trainer


def full_adam_state(trainer: Trainer) -> dict[str, tuple[torch.Tensor, ...]]:
    """Per parameter: (fp32 master weights, exp_avg, exp_avg_sq), whole, on CPU (one rank)."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    engine = trainer.engine
    out = {}
    for name, p in engine.module.named_parameters():
        if engine.zero_stage == 0:
            state = engine.optimizer.state[p]
            parts = (p.detach().float(), state["exp_avg"], state["exp_avg_sq"])
        else:
            parts = (safe_get_full_fp32_param(p), safe_get_full_optimizer_state(p, "exp_avg"),
                     safe_get_full_optimizer_state(p, "exp_avg_sq"))
        out[name] = tuple(t.detach().float().cpu().clone().view(p.ds_shape if hasattr(p, "ds_shape") else p.shape)
                          for t in parts)
    return out


def _losses(run_dir: Path) -> list[dict]:
    return [{k: r[k] for k in ("step", *LOSS_KEYS)} for r in losses_without_timing(run_dir)]


def _assert_same_curve(run_dir: Path, ref_dir: Path, rel: float = 1e-6) -> None:
    got, ref = _losses(run_dir), _losses(ref_dir)
    assert [r["step"] for r in got] == list(range(1, TOTAL + 1)) == [r["step"] for r in ref]
    for g, r in zip(got, ref):
        for k in LOSS_KEYS:
            assert g[k] == pytest.approx(r[k], rel=rel), (g["step"], k)


def _resumes(run_dir: Path) -> list[tuple[int, int]]:
    lines = (run_dir / "resumes.jsonl").read_text().splitlines()
    return [(json.loads(x)["step"], json.loads(x)["world_size"]) for x in lines]


# -- 2 ranks → 1 -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved_on_two(tmp_path_factory):
    """2-rank torchrun jobs that stop at the checkpoint of step ``SAVED``, made on first use (ZeRO 0,
    the reference, together with the first stage asked for)."""
    root = tmp_path_factory.mktemp("two")

    def saved(zero: int) -> Path:
        missing = [z for z in dict.fromkeys((0, zero)) if not (root / f"z{z}").is_dir()]
        _torchrun_all([(_run(root / f"z{z}", z, SAVED), 2) for z in missing])
        return root / f"z{zero}"
    return saved


@pytest.fixture(scope="module")
def zero0_on_one(saved_on_two, tmp_path_factory):
    """The reference: the ZeRO-0 job resumed as 1 rank → (its run dir, its state right after the resume)."""
    made = {}

    def reference() -> tuple[Path, dict]:
        if not made:
            run = tmp_path_factory.mktemp("ref") / "z0"
            shutil.copytree(saved_on_two(0), run)
            made["state"] = full_adam_state(_in_process(_run(run, 0, SAVED)))
            _in_process(_run(run, 0, TOTAL))
            made["run"] = run
        return made["run"], made["state"]
    return reference


def _resume_on_one(saved: Path, run: Path, zero: int, capfd) -> dict:
    shutil.copytree(saved, run)
    state = full_adam_state(_in_process(_run(run, zero, SAVED)))        # resume, no step: the state
    first = capfd.readouterr().err
    _in_process(_run(run, zero, TOTAL))                                  # resume again and continue
    again = capfd.readouterr().err
    ck = run / "checkpoints" / "step_0000003"
    what = f"ldisc: step_0000003 was saved by 2 ranks (ZeRO {zero}); resuming on 1 rank (ZeRO {zero})"
    assert f"{what}: re-sharding the optimizer state through a universal checkpoint" in first
    assert f"{what} from its universal checkpoint {ck / UNIVERSAL}" in again and "re-sharding" not in again
    assert (ck / UNIVERSAL / "ds" / "zero" / "encoder.blocks.0.0.0.weight" / "exp_avg_sq.pt").is_file()
    assert not (ck / TMP_UNIVERSAL).exists()
    return state


@pytest.mark.parametrize("zero", [pytest.param(1, marks=pytest.mark.slow), 2,
                                  pytest.param(3, marks=pytest.mark.slow)])
def test_two_ranks_to_one(saved_on_two, zero0_on_one, tmp_path, zero, capfd):
    saved = saved_on_two(zero)
    assert saved_layout(latest_checkpoint(saved), zero) == (2, zero)
    assert needs_universal(latest_checkpoint(saved), 1, zero)
    assert not needs_universal(latest_checkpoint(saved), 2, zero)           # same world size: as saved
    ref_run, ref_state = zero0_on_one()
    state = _resume_on_one(saved, tmp_path / "run", zero, capfd)
    _assert_masters_are_the_saved_ones(state, latest_checkpoint(saved))
    assert state.keys() == ref_state.keys()
    for name, parts in state.items():
        for what, got, want in zip(("fp32", "exp_avg", "exp_avg_sq"), parts, ref_state[name]):
            assert torch.allclose(got, want, rtol=1e-6, atol=0), (name, what, (got - want).abs().max())
    assert _resumes(tmp_path / "run")[-1] == (SAVED, 1)
    _assert_same_curve(tmp_path / "run", ref_run)
    assert latest_checkpoint(tmp_path / "run").name == "step_0000005"


def _assert_masters_are_the_saved_ones(state: dict, checkpoint: Path) -> None:
    """fp32 master weights after the resume = the saved partitions consolidated by DeepSpeed's
    ``zero_to_fp32`` (a reader independent of the universal conversion), exactly."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    saved = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint), tag="ds")
    for name, (fp32, _, _) in state.items():
        assert torch.equal(fp32, saved[name].float()), name


@pytest.mark.slow
def test_two_ranks_to_one_bf16(tmp_path):
    """bf16 weights, fp32 masters: the masters after the resume are the saved ones, the bf16 weights
    are the masters rounded, and ZeRO 2 and 3 (different partition layouts) continue alike."""
    from deepspeed import zero as ds_zero

    runs = {z: tmp_path / f"z{z}" for z in (2, 3)}
    _torchrun_all([(_run(runs[z], z, SAVED, "engine.precision=bf16"), 2) for z in runs])
    for z, run in runs.items():
        trainer = _in_process(_run(run, z, SAVED, "engine.precision=bf16"))
        state = full_adam_state(trainer)
        _assert_masters_are_the_saved_ones(state, run / "checkpoints" / "step_0000003")
        params = dict(trainer.engine.module.named_parameters())
        with ds_zero.GatheredParameters(list(params.values()), enabled=z == 3):
            for name, p in params.items():
                assert p.dtype == torch.bfloat16 and torch.equal(p.detach(), state[name][0].to(p.dtype)), name
        _in_process(_run(run, z, TOTAL, "engine.precision=bf16"))
        assert _resumes(run)[-1] == (SAVED, 1)
    _assert_same_curve(runs[2], runs[3])
    assert all(torch.isfinite(torch.tensor(r["total"])) for r in _losses(runs[3]))


# -- 1 rank → 2 --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved_on_one(tmp_path_factory):
    """1-rank jobs (in this process) that stop at the checkpoint of step ``SAVED``, made on first use."""
    root = tmp_path_factory.mktemp("one")

    def saved(zero: int) -> Path:
        if not (root / f"z{zero}").is_dir():
            _in_process(_run(root / f"z{zero}", zero, SAVED))
        return root / f"z{zero}"
    return saved


@pytest.mark.parametrize("zero", [pytest.param(1, marks=pytest.mark.slow), pytest.param(2, marks=pytest.mark.slow),
                                  3])
def test_one_rank_to_two(saved_on_one, tmp_path, zero):
    ref, run = tmp_path / "ref", tmp_path / "run"
    shutil.copytree(saved_on_one(0), ref)
    shutil.copytree(saved_on_one(zero), run)
    _torchrun_all([(_run(ref, 0, TOTAL), 2), (_run(run, zero, TOTAL), 2)])
    assert _resumes(run) == [(SAVED, 2)] == _resumes(ref)
    _assert_same_curve(run, ref)
    assert (run / "checkpoints" / "step_0000003" / UNIVERSAL / "ds" / "zero" / "optimizer_state.pt").is_file()
    new = latest_checkpoint(run)
    assert saved_layout(new, zero) == (2, zero) and len(list((new / "ds").glob("*optim_states.pt"))) == 2


# -- checks without a run ----------------------------------------------------------------------------
def test_layout_from_meta_and_stage_mismatch(tmp_path):
    (tmp_path / "meta.json").write_text(json.dumps({"step": 3, "world_size": 2, "zero_stage": 0}))
    assert saved_layout(tmp_path, 2) == (2, 0)
    assert not needs_universal(tmp_path, 1, 0)          # ZeRO 0: the full optimizer state, any world size
    with pytest.raises(ValueError, match="zero_stage=0; resume it with the same stage"):
        needs_universal(tmp_path, 2, 3)
    (tmp_path / "meta.json").write_text(json.dumps({"step": 3, "world_size": 2, "zero_stage": 2}))
    assert needs_universal(tmp_path, 4, 2) and needs_universal(tmp_path, 1, 2)
    assert not needs_universal(tmp_path, 2, 2)
    with pytest.raises(ValueError, match="zero_stage=2; resume it with the same stage"):
        needs_universal(tmp_path, 1, 3)             # ZeRO 2 → 3: DeepSpeed's universal loader cannot
    (tmp_path / "meta.json").write_text(json.dumps({"step": 3, "world_size": 2}))       # before the stage was kept
    assert saved_layout(tmp_path, 2) == (2, 0) and not needs_universal(tmp_path, 1, 0)   # no partitions: ZeRO 0
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"")
    assert saved_layout(tmp_path, 2) == (2, 2) and needs_universal(tmp_path, 1, 2)


def test_failed_conversion_is_one_clear_error_and_leaves_no_universal(tmp_path, capfd):
    (tmp_path / "meta.json").write_text(json.dumps({"step": 3, "world_size": 2, "zero_stage": 2}))
    (tmp_path / "ds").mkdir()                                   # no DeepSpeed files in it
    info = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), owns_group=False)
    with pytest.raises(RuntimeError, match=f"cannot re-shard {tmp_path} for 1 rank: "):
        universal_for(tmp_path, "ds", info, 2)
    assert "re-sharding the optimizer state" in capfd.readouterr().err
    assert not (tmp_path / UNIVERSAL).exists() and not (tmp_path / TMP_UNIVERSAL).exists()
    assert universal_for(tmp_path, "ds", DistInfo(0, 2, 0, torch.device("cpu"), False), 2) is None
