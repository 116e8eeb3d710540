"""The pretraining loop: stage 1 (L_pd + L_mix) then stage 2 (+ region, entropy), engine-agnostic.

config → data source → model → engine → steps → checkpoints. The engine owns placement and the
optimiser; the data source owns the position; :class:`~ldisc.objectives.objective.LDObjective` owns
the losses. Everything needed to continue exactly goes into each checkpoint.
"""
from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from ldisc.config import to_dataclass
from ldisc.model import LDNet, load_stage1, save_encoder
from ldisc.objectives.objective import LDObjective, ObjectiveConfig
from ldisc.train import checkpoint as ckpt
from ldisc.train.engine_local import LocalEngine, pick_device
from ldisc.train.metrics import TrainMetrics
from ldisc.train.synthetic_source import SyntheticPairSource


@dataclass
class PretrainResult:
    run_dir: Path
    encoder_path: Path | None
    checkpoint: Path | None
    losses: list[dict] = field(default_factory=list)


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def build_data_source(cfg: DictConfig, rank: int = 0, device: torch.device | str = "cpu"):
    d = cfg.data
    if d.source == "synthetic":
        return SyntheticPairSource(d.modality, d.image_size, d.size, d.pool, cfg.train.batch_size,
                                   cfg.seed, rank, device)
    raise ValueError(f"unknown data.source {d.source!r}")


class Trainer:
    """Runs both stages for one process. ``make_engine(module, cfg)`` returns a LocalEngine-like object."""

    def __init__(self, cfg: DictConfig, make_engine=None, collective=None, data=None, rank: int = 0):
        self.cfg = cfg
        self.rank = rank
        self.run_dir = Path(cfg.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.device = pick_device(cfg.device)
        self.make_engine = make_engine or (lambda module, c: LocalEngine(
            module, c.train.lr, c.train.lr_halve_every, c.engine.get("grad_clip", 0.0), self.device))
        self.collective = collective
        self.data = data if data is not None else build_data_source(cfg, rank, self.device)
        self.metrics = TrainMetrics(rank, int(cfg.metrics.port))
        self.log_path = self.run_dir / "losses.jsonl"
        self.losses: list[dict] = []
        self.step = 0
        self.last_checkpoint: Path | None = None

    # -- construction ---------------------------------------------------------------------------
    def _objective(self, stage: int) -> LDObjective:
        ocfg = to_dataclass(ObjectiveConfig, self.cfg.objective)
        ocfg.stage = stage
        return LDObjective(ocfg, self.collective).to(self.device)

    def _model(self, stage: int) -> LDNet:
        m = self.cfg.model
        return LDNet(m.width, m.embed_dim, int(m.clusters) if stage == 2 else 0)

    def _setup_stage(self, stage: int, init_state: dict | None = None):
        torch.manual_seed(self.cfg.seed + stage)
        model = self._model(stage)
        if init_state is not None:
            load_stage1(model, init_state)
        self.engine = self.make_engine(model, self.cfg)
        self.objective = self._objective(stage)
        self.stage = stage

    # -- checkpoints ----------------------------------------------------------------------------
    def save(self) -> Path:
        def write(tmp: Path) -> None:
            torch.save({"model": self.engine.module.state_dict(), "engine": self.engine.state_dict(),
                        "objective": self.objective.state_dict(), "data": self.data.state_dict(),
                        "rng": rng_state(), "step": self.step, "stage": self.stage,
                        "config": OmegaConf.to_yaml(self.cfg)}, tmp / "state.pt")
            save_encoder(self.engine.module, tmp / "encoder.pt")

        path, seconds = ckpt.save_checkpoint(self.run_dir, self.step, write, self.cfg.train.keep_checkpoints,
                                             {"stage": self.stage})
        self.metrics.checkpoint_seconds.labels(str(self.rank)).observe(seconds)
        self.last_checkpoint = path
        return path

    def _restore(self, path: Path) -> None:
        state = torch.load(path / "state.pt", map_location="cpu", weights_only=False)
        self._setup_stage(state["stage"])
        self.engine.module.load_state_dict(state["model"])
        self.engine.load_state_dict(state["engine"])
        self.objective.load_state_dict(state["objective"], strict=False)
        self.objective.prototypes = state["objective"].get("prototypes", torch.empty(0)).to(self.device)
        self.data.load_state_dict(state["data"])
        set_rng_state(state["rng"])
        self.step = state["step"]

    # -- the loop -------------------------------------------------------------------------------
    def _train_steps(self, until: int, bar: tqdm) -> None:
        t = self.cfg.train
        while self.step < until:
            t0 = time.perf_counter()
            batch = self.data.next_batch()
            t1 = time.perf_counter()
            self.engine.module.train()
            result = self.objective(self.engine.module, batch)
            self.engine.step(result.total)
            self.step += 1
            seconds = time.perf_counter() - t0
            terms = {k: float(v.detach()) for k, v in result.terms.items()}
            terms["total"] = float(result.total.detach())
            images = 5 * batch["x1_1"].shape[0]
            self.metrics.observe_step(seconds, t1 - t0, images, terms, self.stage)
            record = {"step": self.step, "stage": self.stage, "lr": self.engine.lr,
                      "seconds": round(seconds, 4), **{k: round(v, 6) for k, v in terms.items()}}
            self.losses.append(record)
            with open(self.log_path, "a") as fh:
                fh.write(json.dumps(record) + "\n")
            bar.update(1)
            bar.set_postfix(stage=self.stage, **{k: f"{v:.3f}" for k, v in terms.items()})
            if self.step % t.checkpoint_every == 0 or self.step == until:
                self.save()

    def run(self) -> PretrainResult:
        t = self.cfg.train
        s1 = 0 if t.init_from else int(t.stage1_steps)
        total = s1 + int(t.stage2_steps)
        resume = ckpt.resolve_resume(t.resume, self.run_dir)
        if resume is not None:
            self._restore(resume)
        elif s1 > 0:
            self._setup_stage(1)
        bar = tqdm(total=total, initial=self.step, desc="ldisc pretrain", disable=not t.progress or self.rank != 0,
                   dynamic_ncols=True)
        if self.step < s1:
            self._train_steps(s1, bar)
        if self.step < total:
            if self.step == s1 or getattr(self, "stage", 1) == 1:
                init = self._stage1_state(t.init_from)
                self._setup_stage(2, init)
            self._train_steps(total, bar)
        bar.close()
        self.metrics.write(self.run_dir / "metrics.prom")
        self._plot()
        enc = self.last_checkpoint / "encoder.pt" if self.last_checkpoint else None
        return PretrainResult(self.run_dir, enc, self.last_checkpoint, self.losses)

    def _stage1_state(self, init_from: str | None) -> dict:
        if init_from:
            return torch.load(Path(init_from) / "state.pt", map_location="cpu", weights_only=False)["model"]
        return {k: v.detach().cpu() for k, v in self.engine.module.state_dict().items()}

    def _plot(self) -> None:
        if not self.losses or self.rank != 0:
            return
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(7, 4))
        for term in ("patch", "mix", "region", "entropy", "total"):
            pts = [(r["step"], r[term]) for r in self.losses if term in r]
            if pts:
                ax.plot(*zip(*pts), label=term)
        ax.set_xlabel("step"), ax.set_ylabel("loss"), ax.set_yscale("log"), ax.legend()
        ax.set_title("LD pretraining losses")
        fig.tight_layout()
        fig.savefig(self.run_dir / "loss_curve.png", dpi=90)
        plt.close(fig)
