"""The pretraining loop: stage 1 (L_pd + L_mix) then stage 2 (+ region, entropy, shape prior).

config → data source → model → DeepSpeed :class:`~ldisc.train.engine.Engine` → steps → checkpoints.
One ``step`` is one optimiser step (``engine.gradient_accumulation`` micro-batches per rank). The
engine owns placement, optimiser and schedule; the data source owns the position; the objective owns
the losses; the bank and the shape prior ride along. Everything needed to continue exactly goes into
each checkpoint (see :meth:`Trainer.save`).
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from ldisc.bank import load_bank, save_bank
from ldisc.bank.build import build_bank, build_key_encoder, feed_bank
from ldisc.config import to_dataclass
from ldisc.config_schema import pretrain_sections
from ldisc.data.build import build_data_source, build_validation_source
from ldisc.data.source import SAMPLE_IDS, DataSource, load_position, save_position
from ldisc.data.store import take_retries
from ldisc.dist import barrier, broadcast_object, default_collective
from ldisc.model import LDNet, load_stage1, save_encoder
from ldisc.objectives.diagnostics import cluster_stats
from ldisc.objectives.objective import LDObjective, ObjectiveConfig
from ldisc.tracking import open_tracker
from ldisc.train import checkpoint as ckpt
from ldisc.train import faults
from ldisc.train.ds_config import build_ds_config
from ldisc.train.engine import Engine
from ldisc.train.clusters import ClusterProbe
from ldisc.train.env import DistInfo
from ldisc.metrics import run_name, textfile_name
from ldisc.train.metrics import TrainMetrics
from ldisc.train.rng import rng_state, set_rng_state
from ldisc.train.runlog import JsonlLog, plot_losses
from ldisc.train.shape_prior import ShapePrior
from ldisc.views import input_normalization


@dataclass
class PretrainResult:
    run_dir: Path
    encoder_path: Path | None
    checkpoint: Path | None
    losses: list[dict] = field(default_factory=list)


class Trainer:
    """Runs both stages in one process of a (possibly one-process) DeepSpeed job."""

    def __init__(self, cfg: DictConfig, info: DistInfo, data=None):
        self.cfg, self.info, self.rank = cfg, info, info.rank
        self.sections = pretrain_sections(cfg)         # typed train, engine, bank, data, shape_prior, metrics
        self.device = info.device
        self.run_dir = Path(cfg.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.collective = default_collective()
        self.data: DataSource = data if data is not None else build_data_source(cfg, info.rank, info.world_size, device=info.device)
        self.val_data: DataSource | None = build_validation_source(cfg, info.rank, info.world_size)  # None unless train.val_fraction > 0
        self.val_start = self.val_data.position() if self.val_data is not None else None
        self.bank = build_bank(self.sections.bank, self.collective, int(cfg.model.embed_dim), info.device)
        self.key_encoder = None
        m = self.sections.metrics
        self.metrics = TrainMetrics(self.rank, m.port, info.local_rank, m.addr, run=m.run or run_name(self.run_dir))
        self.log = JsonlLog(self.run_dir / "losses.jsonl", enabled=self.rank == 0)
        self.samples_log = JsonlLog(self.run_dir / f"samples.rank{self.rank}.jsonl")
        self.tracker = open_tracker(cfg, self.run_dir, self.rank)     # TensorBoard / MLflow, when configured
        self.ds_config = build_ds_config(self.sections.engine, self.sections.train, info.world_size)
        if self.rank == 0:
            (self.run_dir / "ds_config.json").write_text(json.dumps(self.ds_config, indent=1))
        self.engine: Engine | None = None
        self.shape_prior: ShapePrior | None = None
        self.losses: list[dict] = []
        self.step, self.stage = 0, 0
        self.bad_samples = 0           # replaced (undecodable) samples this process has trained on
        self.last_checkpoint: Path | None = None
        self.cluster_log = JsonlLog(self.run_dir / "clusters.jsonl", enabled=self.rank == 0)
        self.cluster_probe: ClusterProbe | None = None
        self._mask_stats = None      # cluster statistics of this rank's last stage-2 micro-batch
        self._data_version = None    # manifest version of the last shard batch (logged when it changes)

    # -- construction ---------------------------------------------------------------------------
    def _model(self, stage: int) -> LDNet:
        """The ``model`` group's network; the input channels come from the data modality, the clustering
        branch only in stage 2."""
        m = self.cfg.model
        channels = input_normalization(self.sections.data.modality)[0]
        return LDNet(str(m.width), int(m.embed_dim), int(m.clusters) if stage == 2 else 0, in_channels=channels,
                     decoder=str(m.decoder), init=str(m.init))

    def _setup_stage(self, stage: int, init_state: dict | None = None) -> None:
        if self.engine is not None:
            self.engine.destroy()
        torch.manual_seed(int(self.cfg.seed) + stage)
        model = self._model(stage)
        if init_state is not None:
            load_stage1(model, init_state)
        self.engine = Engine(model, self.sections.engine, self.ds_config, self.info)
        ocfg = to_dataclass(ObjectiveConfig, self.cfg.objective)
        ocfg.stage = stage
        self.objective = LDObjective(ocfg, self.collective).to(self.device)
        self.key_encoder = build_key_encoder(self.sections.bank, self._key_source(), ocfg.grid, ocfg.patch_pooling,
                                             ocfg.center_sigma)
        self.shape_prior = None
        if stage == 2 and ocfg.w_adversarial > 0:
            t = self.sections.train
            self.shape_prior = ShapePrior(self.sections.shape_prior, int(self.cfg.seed), t.lr, t.lr_halve_every,
                                          self.sections.data.view_side, self.device)
        self.stage = stage
        self.cluster_probe = (ClusterProbe(self.sections.train, self.sections.data, ocfg.mask_power, int(self.cfg.seed),
                                           self.run_dir, self.rank) if stage == 2 else None)

    # -- checkpoints ----------------------------------------------------------------------------
    def save(self) -> Path:
        """Collective. Files: ``ds/`` (DeepSpeed: weights, optimizer partitions, scheduler),
        ``trainer.pt`` (step, stage, config, objective and shape-prior state), ``rank_<r>.pt`` (RNG),
        ``data_rank_<r>.json`` (data position), ``bank/`` (memory-bank shards), ``model.pt`` (full weights),
        ``encoder.pt`` and ``encoder.safetensors`` (the encoder alone); names: :mod:`ldisc.train.checkpoint`."""
        full = self.engine.full_state_dict()

        def write(tmp: Path) -> None:
            faults.maybe_fail_in_save(self.step, self.rank, tmp)
            self.engine.save(tmp)
            save_bank(self.bank, tmp / ckpt.BANK_DIR)
            torch.save(rng_state(), tmp / ckpt.rng_file(self.rank))
            save_position(self.data.position(), tmp / ckpt.position_file(self.rank))
            if self.rank == 0:
                torch.save({"step": self.step, "stage": self.stage, "world_size": self.info.world_size,
                            "config": OmegaConf.to_yaml(self.cfg), "objective": self.objective.state_dict(),
                            "shape_prior": self.shape_prior.state_dict() if self.shape_prior else None,
                            "key_encoder": self.key_encoder.state_dict() if self.key_encoder else None},
                           tmp / ckpt.TRAINER_FILE)
                self._export(full, tmp)
            faults.maybe_kill_in_save(self.step, self.rank)

        path, seconds = ckpt.save_checkpoint(self.run_dir, self.step, write, int(self.cfg.train.keep_checkpoints),
                                             {"stage": self.stage, "world_size": self.info.world_size,
                                              "zero_stage": self.engine.zero_stage},
                                             rank=self.rank, barrier=barrier)
        self.metrics.observe_checkpoint(seconds, self.step)
        self.last_checkpoint = path
        return path

    def _export(self, full: dict, directory: Path) -> None:
        torch.save(full, directory / ckpt.MODEL_FILE)
        model = self._model(self.stage)
        model.load_state_dict(full)
        header = {"step": self.step, "modality": self.sections.data.modality, "cfg": self.cfg}
        for name in ckpt.ENCODER_FILES:
            save_encoder(model, directory / name, **header)

    def _restore(self, path: Path) -> None:
        """Collective: continue exactly from checkpoint ``path``."""
        state = torch.load(path / ckpt.TRAINER_FILE, map_location="cpu", weights_only=False)
        self._setup_stage(int(state["stage"]))
        self.engine.load(path)
        self.objective.load_state_dict(state["objective"])
        if self.shape_prior is not None and state.get("shape_prior"):
            self.shape_prior.load_state_dict(state["shape_prior"])
        if self.key_encoder is not None and state.get("key_encoder"):
            self.key_encoder.load_state_dict(state["key_encoder"])
        own = path / ckpt.position_file(self.rank)     # a new rank of a larger world continues from rank 0's
        self.data.seek(load_position(own if own.exists() else path / ckpt.position_file(0)))
        if (path / ckpt.rng_file(self.rank)).exists():
            set_rng_state(torch.load(path / ckpt.rng_file(self.rank), map_location="cpu", weights_only=True))
        load_bank(self.bank, path / ckpt.BANK_DIR)
        self.step = int(state["step"])
        if self.rank == 0:
            self.log.truncate(self.step)
            self.cluster_log.truncate(self.step)
            JsonlLog(self.run_dir / "resumes.jsonl").append(
                {"step": self.step, "checkpoint": str(path), "world_size": self.info.world_size,
                 "restart_count": int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0) or 0), "time": time.time()})
        self.samples_log.truncate(self.step)
        barrier()
        self.losses = self.log.read() if self.rank == 0 else []
        self.last_checkpoint = path
        self.metrics.set_checkpoint_step(self.step)

    # -- the loop -------------------------------------------------------------------------------
    def _micro_step(self, terms_sum: dict[str, float], sample_ids: list) -> tuple[int, float]:
        """Forward + backward of one micro-batch → (images, seconds waited for data)."""
        t0 = time.perf_counter()
        batch = self.data.next_batch()
        wait = time.perf_counter() - t0
        sample_ids.extend(batch.pop(SAMPLE_IDS))
        self._note_data(batch)
        bad = batch.pop("bad_shards", None)
        if bad:
            self.metrics.observe_bad_samples(bad)
            self.bad_samples += len(bad)
        self.metrics.observe_shard_cache(batch.pop("shard_cache", None))
        batch = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        self.engine.train()
        disc = self.shape_prior.discriminator if self.shape_prior else None
        images = 5 * batch["x1_1"].shape[0]
        if self.cluster_probe is not None:
            self.cluster_probe.remember(batch)
        # the view images are freed once they form the network input, unless a key encoder reads them
        result = self.objective(self.engine, batch, bank_negatives=self.bank.bank_negatives(), discriminator=disc,
                                consume_views=self.key_encoder is None,
                                keep_masks=self.cluster_probe is not None or self.shape_prior is not None)
        if self.cluster_probe is not None:
            self._mask_stats = cluster_stats(result.masks)
        self.engine.backward(result.total)
        terms = {k: v.detach() for k, v in result.terms.items()}
        terms["total"] = result.total.detach()
        if self.shape_prior is not None:
            terms["discriminator"] = torch.tensor(self.shape_prior.step(result.masks, self.step, self.rank))
        for k, v in terms.items():
            terms_sum[k] = terms_sum.get(k, 0.0) + v.float().cpu()
        self.engine.step()
        feed_bank(self.bank, result.patch_vectors, self._key_batch(batch), self.key_encoder, self.engine.module)
        return images, wait

    def _note_data(self, batch: dict) -> None:
        """Shard batches: export the manifest version and store retries; log when the version changes (new
        shards joined at this epoch boundary)."""
        version = batch.pop("version", None)
        samples, retries = batch.pop("version_samples", None), batch.pop("store_retries", 0)
        if version is None:
            return
        self.metrics.observe_data(int(version), int(samples or 0), int(retries) + take_retries())
        if version != self._data_version and self.rank == 0:
            record = {"step": self.step, "epoch": int(batch.get("epoch", 0)), "manifest_version": int(version),
                      "samples": int(samples or 0), "previous_version": self._data_version}
            JsonlLog(self.run_dir / "data_versions.jsonl").append(record)
            print(f"ldisc: step {self.step + 1}, epoch {record['epoch']}: manifest version {version} "
                  f"({record['samples']} samples)" + (f", was {self._data_version}" if self._data_version else ""),
                  file=sys.stderr, flush=True)
        self._data_version = version

    def _key_source(self):
        """What the EMA key encoder copies: the engine's module (ZeRO-3 partitions it: not supported)."""
        if self.engine.zero_stage == 3 and self.sections.bank.ema_momentum > 0:
            raise ValueError("bank.ema_momentum > 0 needs full parameters: use engine.zero_stage ≤ 2")
        return self.engine.module

    def _key_batch(self, batch: dict) -> dict:
        """The batch in the engine's dtype, for the key encoder (a copy of the engine's module)."""
        if self.key_encoder is None:
            return batch
        return {k: v.to(self.engine.dtype) if torch.is_tensor(v) and v.is_floating_point() else v
                for k, v in batch.items()}

    @torch.no_grad()
    def _validate(self) -> float | None:
        """Mean total loss over ``train.val_batches`` held-out batches (the same ones every time), model
        in eval mode, no bank and no discriminator; the global mean over ranks. None without a split."""
        if self.val_data is None:
            return None
        self.val_data.seek(self.val_start)
        prototypes = self.objective.prototypes               # validation must not move the EMA centres
        n, total = self.sections.train.val_batches, 0.0
        self.engine.eval()
        for _ in range(n):
            try:
                batch = self.val_data.next_batch()
            except RuntimeError as err:   # the held-out split of a later epoch/version is below one batch per rank
                if self.rank == 0:        # (every rank plans the same epochs, so every rank ends up here)
                    print(f"ldisc: validation off from step {self.step}: {err}", file=sys.stderr, flush=True)
                self.val_data = None
                self.engine.train()
                self.objective.prototypes = prototypes
                return None
            batch = {k: v.to(self.device) for k, v in batch.items() if torch.is_tensor(v)}
            total += float(self.objective(self.engine, batch).total)
        self.engine.train()
        self.objective.prototypes = prototypes
        return self._global_mean({"val_loss": total}, n)["val_loss"]

    def _track_best(self, val_loss: float, path: Path) -> None:
        """Point ``best`` at ``path`` when its validation loss is the lowest of this stage so far."""
        if self.rank == 0 and ckpt.is_better(self.run_dir, self.stage, val_loss):
            ckpt.mark_best(self.run_dir, path, self.stage, val_loss, self.step)
        record = ckpt.best_record(self.run_dir) if self.rank == 0 else None
        self.metrics.observe_validation(val_loss, float(record["val_loss"]) if record else val_loss)

    def _global_mean(self, terms: dict, micro: int) -> dict[str, float]:
        names = sorted(terms)
        vec = torch.stack([torch.as_tensor(terms[k], dtype=torch.float64) for k in names]).to(self.device)
        vec = self.collective.all_reduce_detached(vec) / (self.info.world_size * micro)
        return {k: float(v) for k, v in zip(names, vec.cpu())}

    def _train_steps(self, until: int, bar: tqdm) -> None:
        t = self.cfg.train
        micro = int(self.cfg.engine.gradient_accumulation)
        while self.step < until:
            faults.maybe_kill_at_step(self.step + 1, self.rank)
            faults.maybe_stop_at_step(self.step + 1, self.rank)
            t0 = time.perf_counter()
            terms_sum, sample_ids, images, wait = {}, [], 0, 0.0
            lr = self.engine.lr            # the rate this step's update uses
            for _ in range(micro):
                n, w = self._micro_step(terms_sum, sample_ids)
                images, wait = images + n, wait + w
            self.step += 1
            seconds = time.perf_counter() - t0
            local = {k: float(v) / micro for k, v in terms_sum.items()}
            self.metrics.observe_step(seconds, wait, images, local, self.stage, self.step)
            self.metrics.set_bank_fill(self.bank.fill_ratio)
            terms = self._global_mean(terms_sum, micro)
            at_checkpoint = self.step % int(t.checkpoint_every) == 0 or self.step == until
            val_loss = self._validate() if at_checkpoint else None
            if val_loss is not None:
                terms["val_loss"] = val_loss
            record = {"step": self.step, "stage": self.stage, "lr": lr, "seconds": round(seconds, 4),
                      "images_per_s": round(images * self.info.world_size / seconds, 3), **terms}
            if self._mask_stats is not None:      # this rank's last micro-batch (all views)
                stats = self._mask_stats
                self.metrics.observe_clusters(stats)
                record.update(cluster_crispness=round(stats.crispness, 5),
                              cluster_effective_count=round(stats.effective_count, 4))
            self.losses.append(record)
            self.log.append(record)
            self.tracker.log_step(record)
            self.samples_log.append({"step": self.step, SAMPLE_IDS: sample_ids})
            bar.update(1)
            bar.set_postfix(stage=self.stage, **{k: f"{v:.3f}" for k, v in terms.items() if k != "discriminator"},
                            **({"bad_samples": self.bad_samples} if self.bad_samples else {}))
            if self.cluster_probe is not None and self.cluster_probe.due(self.step, self.step == until):
                self._probe_clusters(bar)
            if at_checkpoint:
                path = self.save()
                if val_loss is not None:
                    self._track_best(val_loss, path)

    def _probe_clusters(self, bar: tqdm) -> None:
        """Cluster statistics, anatomy Dice and a picture of the fixed probe batch (ldisc.train.clusters)."""
        stats = self.cluster_probe.run(self.engine.module, self.step)
        self.metrics.observe_clusters(stats)
        self.cluster_log.append({"step": self.step, **stats.as_record()})
        if self.rank == 0:
            dice = " ".join(f"{k}={v:.3f}" for k, v in stats.dice.items())
            bar.write(f"step {self.step} clusters: crispness {stats.crispness:.3f}, "
                      f"effective count {stats.effective_count:.2f}/{len(stats.area_share)}; best-match Dice {dice}")

    def run(self) -> PretrainResult:
        t = self.cfg.train
        s1, s2 = self._stage_steps()
        total = s1 + s2
        resume = broadcast_object(ckpt.resolve_resume(t.resume, self.run_dir) if self.rank == 0 else None)
        if resume is not None:
            self._restore(Path(resume))
        elif s1 > 0:
            self._setup_stage(1)
        bar = tqdm(total=total, initial=self.step, desc="ldisc pretrain", dynamic_ncols=True,
                   disable=not t.progress or self.rank != 0)
        if self.step < s1:
            self._train_steps(s1, bar)
        if self.step < total:
            if self.stage != 2:
                self._setup_stage(2, self._stage1_state(t.init_from))
            self._train_steps(total, bar)
        bar.close()
        self.metrics.mark_success()
        self.metrics.write(self.run_dir / f"metrics.rank{self.rank}.prom")
        if self.sections.metrics.textfile_dir:      # a node-exporter folder: one file per run and rank
            self.metrics.write(Path(self.sections.metrics.textfile_dir) / textfile_name("train", self.metrics.run, self.rank))
        if self.rank == 0:
            plot_losses(self.losses, self.run_dir / "loss_curve.png")
        time.sleep(self.sections.metrics.linger_s)
        self.metrics.close()
        self.tracker.close()
        enc = self.last_checkpoint / ckpt.ENCODER_FILE if self.last_checkpoint else None
        return PretrainResult(self.run_dir, enc, self.last_checkpoint, self.losses)

    def _stage_steps(self) -> tuple[int, int]:
        """(stage-1 steps, stage-2 steps): both stages by default; ``objective.stage=1|2`` runs one."""
        t, only = self.cfg.train, self.cfg.objective.stage
        if only not in (None, 1, 2):
            raise ValueError(f"objective.stage must be null (both), 1 or 2, got {only!r}")
        s1 = 0 if t.init_from or only == 2 else int(t.stage1_steps)
        return s1, 0 if only == 1 else int(t.stage2_steps)

    def _stage1_state(self, init_from: str | None) -> dict | None:
        """Stage-1 weights: the full model of checkpoint ``init_from``, or of this run's engine (None
        with ``train.stage1_steps=0`` and no ``init_from``: stage 2 from a random init)."""
        if init_from:
            try:                                               # a checkpoint dir, <run_dir>/best or /latest
                path = ckpt.resolve_checkpoint_spec(init_from)
            except FileNotFoundError as err:
                raise FileNotFoundError(f"train.init_from={init_from}: {err}") from err
            if not (path / ckpt.MODEL_FILE).is_file():
                raise FileNotFoundError(f"train.init_from={init_from}: no {ckpt.MODEL_FILE} (not an ldisc checkpoint)")
            return torch.load(path / ckpt.MODEL_FILE, map_location="cpu", weights_only=True)
        return self.engine.full_state_dict() if self.engine is not None else None
