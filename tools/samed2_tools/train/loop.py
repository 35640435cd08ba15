"""The training loop: AdamW with warm-up + cosine decay, gradient accumulation and clipping, bf16 autocast on
CUDA, DistributedDataParallel under torchrun, validation, metrics, atomic checkpoints, the bank and the export.

Randomness is tied to the data, not to the process: each clip carries a seed (from the run seed, the
epoch and the clip's index) that drives its prompts and augmentation, and torch's generator is
re-seeded from it before each forward pass (dropout). So a resumed run repeats exactly what the
interrupted one would have done, and N processes with batch B train on the same clips, with the
same randomness, as one process accumulating N batches of B.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Optional

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from samed2.bank import ConfidenceBank
from samed2.errors import InputError
from samed2.model import SAM2Model, build_model
from samed2.weights import load_weights
from samed2_tools.train.assemble import assemble
from samed2_tools.train.checkpoint import (
    bank_from_state,
    bank_state,
    capture_rng,
    checkpoint_path,
    export_model,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)
from samed2_tools.train.clip import ClipTrainer, PromptSettings
from samed2_tools.train.data import ClipSampler
from samed2_tools.train.distributed import Process, end_process, start_process
from samed2_tools.train.lite import EmbeddingCache, LiteTrainer, lite_validation_dice
from samed2_tools.train.losses import LossWeights, SegmentationLoss
from samed2_tools.train.options import RUNTIME_FIELDS, TrainOptions
from samed2_tools.train.prompts import scaled_jitter
from samed2_tools.train.registration import check_free, register
from samed2_tools.train.report import MetricsLog
from samed2_tools.train.startpoint import check_lr_scales, initial_model, lr_factor, set_trainable

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    run_dir: Path
    weights: Optional[Path]  # the exported {"model": state_dict} file (main process only)
    bank: Optional[Path]
    config: dict
    steps: int
    last_metrics: dict


def train(options: TrainOptions) -> TrainResult:
    """Run (or resume) a training run; under torchrun every process calls this."""
    process = start_process(options.device)
    try:
        return TrainingRun(options, process).run()
    finally:
        end_process(process)


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Learning-rate factor: linear warm-up to 1 over `warmup` steps, then cosine decay to `min_ratio`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class TrainingRun:
    def __init__(self, options: TrainOptions, process: Process):
        self.process = process
        if not options.out:
            raise InputError("--out is required: the run folder")
        self.run_dir = Path(options.out).expanduser()
        payload = self._resume_payload(options)
        self.options = _effective_options(options, payload).check()
        _configure_torch(self.options)
        if self.options.register:
            check_free(self.options.register, self.options.cache_dir, self.options.replace)
        self.model, self.config = self._model(payload)
        self.lite = not getattr(self.model, "has_memory", True)
        frozen_encoder = not any(p.requires_grad for p in self.model.image_encoder.parameters())
        self.embeddings = EmbeddingCache(self.model, keep=frozen_encoder) if self.lite else None
        self.data = assemble(self.options, self.model)
        self.sampler = ClipSampler(len(self.data.clips), self.options.seed, process.rank, process.world)
        self.optimizer = torch.optim.AdamW(_parameter_groups(self.model, self.options), foreach=True)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, partial(
            warmup_cosine, warmup=self.options.warmup_steps, total=self.options.steps,
            min_ratio=self.options.min_lr_ratio))
        self.bank = self._new_bank() if self.options.bank_size > 0 and not self.lite else None
        self.metrics = MetricsLog(self.data.values)
        self.step = 0
        if payload is not None:
            self._restore(payload)
        self.forward = self._wrapped_trainer()

    # ---- set-up -----------------------------------------------------------------------------

    def _resume_payload(self, options: TrainOptions) -> Optional[dict]:
        path = checkpoint_path(self.run_dir)
        if options.resume:
            return load_checkpoint(path)
        if path.exists():
            raise InputError(f"{self.run_dir} already holds a training run: continue it with --resume, "
                             "or choose another --out")
        return None

    def _model(self, payload: Optional[dict]) -> tuple[SAM2Model, dict]:
        if payload is not None:
            model, config = build_model(payload["config"]), payload["config"]
            load_weights(model, payload["model"], label="the training checkpoint's model")
        else:
            model, config, source = initial_model(self.options.init, self.options.config, self.options.cache_dir,
                                                  self.options.seed)
            log.info("model: %s", source)
        self._parts = self.options.parts_for(model)
        trainable = set_trainable(model, self._parts)
        count = sum(p.numel() for p in model.parameters() if p.requires_grad)
        log.info("training %s: %d tensors, %.2fM parameters", ",".join(self._parts), len(trainable), count / 1e6)
        return model.to(self.process.device).train(), config

    def _new_bank(self) -> ConfidenceBank:
        side = self.model.embedding_size
        return ConfidenceBank.empty(self.model.hidden_dim * side * side, (self.model.mem_dim, side, side),
                                    self.options.bank_size)

    def _wrapped_trainer(self):
        o = self.options
        settings = PromptSettings(o.box_prob, o.correct_prob, o.correct_rounds,
                                  scaled_jitter(o.box_jitter, self.model.image_size), o.image_mode_prob, o.bank_prob,
                                  o.bank_min_iou if self.bank is not None else math.inf)
        weights = LossWeights(o.dice_weight, o.focal_weight, o.iou_weight, o.score_weight)
        if self.lite:
            trainer = LiteTrainer(self.model, SegmentationLoss(weights), self.embeddings,
                                  scaled_jitter(o.box_jitter, self.model.image_size))
            return _distributed(trainer, self.process)
        train_encoder = any(p.requires_grad for p in self.model.image_encoder.parameters())
        return _distributed(ClipTrainer(self.model, SegmentationLoss(weights), settings, train_encoder, self.bank),
                            self.process)

    # ---- checkpoints --------------------------------------------------------------------------

    def _restore(self, payload: dict) -> None:
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        self.sampler.load_state_dict(payload["sampler"])
        self.step = int(payload["step"])
        self.metrics = MetricsLog(self.data.values, payload["history"])
        if self.bank is not None:
            self.bank = bank_from_state(payload["bank"]) or self.bank
        restore_rng(payload["rng"])
        log.info("resumed %s at step %d of %d", self.run_dir, self.step, self.options.steps)

    def _save_checkpoint(self) -> None:
        save_checkpoint(checkpoint_path(self.run_dir), {
            "model": self.model.state_dict(), "config": self.config, "options": self.options.to_dict(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "step": self.step, "sampler": self.sampler.state_dict(), "rng": capture_rng(),
            "history": self.metrics.rows, "bank": bank_state(self.bank)})

    # ---- the loop -----------------------------------------------------------------------------

    def run(self) -> TrainResult:
        o = self.options
        bar = tqdm(total=o.steps, initial=self.step, unit="step", dynamic_ncols=True,
                   disable=not (o.progress and self.process.is_main))
        interval_slices, interval_start = 0, time.perf_counter()
        with bar:
            while self.step < o.steps:
                stats, slices = self._train_step()
                interval_slices += slices
                elapsed = time.perf_counter() - interval_start
                bar.update(1)
                bar.set_postfix(loss=f"{stats['loss']:.4f}", dice=f"{stats['train_dice']:.3f}",
                                slices_s=f"{interval_slices / max(elapsed, 1e-9):.1f}")
                if self._row_due():
                    self._close_row(interval_slices / max(elapsed, 1e-9))
                    interval_slices, interval_start = 0, time.perf_counter()
        return self._finish()

    def _train_step(self) -> tuple[dict, int]:
        o = self.options
        collected, offers, slices = [], [], 0
        for micro in range(o.accumulate):
            clips = [self.data.clips.clip(*self.sampler.next()) for _ in range(o.batch_size)]
            slices += sum(len(clip.slices) for clip in clips) * self.process.world
            torch.manual_seed(clips[0].seed)
            with self._gradient_sync(micro == o.accumulate - 1):
                with self._autocast():
                    loss, stats, candidates = self.forward(clips)
                (loss / o.accumulate).backward()
            collected.append({"loss": float(loss.detach()), **stats})
            offers.append(candidates.best())
        if o.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], o.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self._offer_to_bank(offers)
        stats = self.process.mean({name: _nan_mean([c[name] for c in collected]) for name in collected[0]})
        self.metrics.add_step(stats)
        return stats, slices

    def _gradient_sync(self, sync: bool):
        if sync or not self.process.distributed:
            return contextlib.nullcontext()
        return self.forward.no_sync()

    def _autocast(self):
        if self.process.device.type == "cuda" and self.options.amp in ("auto", "on"):
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _offer_to_bank(self, offers: list) -> None:
        """Each micro-batch's most confident prediction, from every process in rank order, goes to the bank
        (which keeps the better of similar entries): every process holds the same bank."""
        if self.bank is None:
            return
        side, count = self.model.embedding_size, len(offers)
        packed = [torch.zeros(count, self.model.mem_dim, side, side),
                  torch.zeros(count, self.model.mem_dim, side, side),
                  torch.full((count,), -1.0),
                  torch.zeros(count, self.model.hidden_dim, side, side)]
        for slot, offer in enumerate(offers):
            for part, value in zip(packed, offer or ()):
                part[slot] = value[0]
        features, pos, ious, image_features = self.process.gather(packed)
        for i in torch.nonzero(ious >= 0)[:, 0].tolist():
            self.bank.update(features[i: i + 1], pos[i: i + 1], ious[i: i + 1], image_features[i: i + 1])

    def _row_due(self) -> bool:
        o = self.options
        return (self.step % o.log_every == 0 or self.step % o.checkpoint_every == 0 or self.step == o.steps
                or self._validation_due())

    def _validation_due(self) -> bool:
        o = self.options
        if not self.data.validation:
            return False
        periodic = self.step % o.val_every == 0 if o.val_every > 0 else self.sampler.epoch_finished
        return periodic or self.step == o.steps

    def _close_row(self, slices_per_s: float) -> None:
        validation = self._validate() if self._validation_due() else None
        row = self.metrics.row(self.step, self.sampler.epoch, self.scheduler.get_last_lr()[0], slices_per_s, validation)
        if validation is not None:
            log.info("step %d: validation Dice %.4f", self.step, row["val_dice"])
        if self.process.is_main:
            self.metrics.write(self.run_dir)
            if self.step % self.options.checkpoint_every == 0 or self.step == self.options.steps:
                self._save_checkpoint()
        self.process.barrier()

    def _validate(self) -> Optional[dict]:
        from samed2_tools.train.validate import validation_dice

        if not self.process.is_main:
            return None
        if self.lite:
            return lite_validation_dice(self.model, self.data.validation, self.embeddings)
        return validation_dice(self.model, self.data.validation, _normalization(self.model))

    def _finish(self) -> TrainResult:
        weights = bank = None
        if self.process.is_main:
            weights = export_model(self.run_dir, self._export_name(), self.model.state_dict(), self.config, self.bank)
            bank_file = weights.with_name(weights.stem + ".bank.safetensors")
            bank = bank_file if bank_file.exists() else None
            log.info("exported %s%s", weights, f" and {bank}" if bank else "")
            if self.options.register:
                cases = sorted({case.name for case in self.data.clips.cases})
                register(weights, self.options, self.config, cases, self.data.values, self._parts, self.step)
                log.info("registered %s in the weights cache", self.options.register)
        last = self.metrics.rows[-1] if self.metrics.rows else {}
        return TrainResult(self.run_dir, weights, bank, self.config, self.step, last)

    def _export_name(self) -> str:
        return self.options.name or self.run_dir.resolve().name


def _distributed(trainer: torch.nn.Module, process: Process) -> torch.nn.Module:
    if not process.distributed:
        return trainer
    device_ids = [process.device] if process.device.type == "cuda" else None
    return DistributedDataParallel(trainer, device_ids=device_ids, find_unused_parameters=True)


def _effective_options(given: TrainOptions, payload: Optional[dict]) -> TrainOptions:
    """The given options, or on resume the run's stored options with the given runtime options."""
    if payload is None:
        return given
    stored = TrainOptions.from_dict(payload["options"])
    for name in RUNTIME_FIELDS:
        setattr(stored, name, getattr(given, name))
    return stored


def _configure_torch(options: TrainOptions) -> None:
    if options.num_threads > 0:
        torch.set_num_threads(options.num_threads)
    if options.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def _normalization(model: SAM2Model) -> str:
    return "imagenet" if model.preprocess == "imagenet" else "none"


def _parameter_groups(model: SAM2Model, options: TrainOptions) -> list[dict]:
    """One group per learning-rate factor and decay: weight decay on matrices and kernels, none on biases,
    norms and vectors."""
    check_lr_scales(model, options.lr_scales)
    groups = {}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            key = (lr_factor(name, options.lr_scales), parameter.dim() >= 2)
            groups.setdefault(key, []).append(parameter)
    return [{"params": params, "lr": options.lr * factor, "weight_decay": options.weight_decay if decay else 0.0}
            for (factor, decay), params in groups.items()]


def _nan_mean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan
