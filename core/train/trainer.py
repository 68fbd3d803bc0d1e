"""The training loop of ``core train`` (one process: a torchrun worker or the only one).

A raw PyTorch loop, readable top to bottom: :class:`Trainer` builds its parts in a fixed order
(process group, seed, model, freezing, gradient checkpointing, DDP/FSDP wrapping, loss, optimizer,
data, schedule, checkpoints, validation) and runs small step methods. Outputs go to
``<results_dir>/train``: checkpoints (``epoch_N.pth`` / ``step_N.pth``, ``latest.pth``,
``best.pth``), ``config.toml`` (the resolved spec), ``metrics.jsonl``, what the loggers write,
``logs/rank<r>.log`` and ``training_curves.png``.
"""

from __future__ import annotations

import copy
import math
import time
import tomllib
import warnings
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from core.train.accumulate import accumulated_step
from core.backbone import ClipModel
from core.bad_samples import BadSampleLog
from core.batching import MATCH_KINDS
from core.runtime.build import build_model, with_loss_logit_init
from core.runtime.checkpoint import CheckpointManager, remove_stale_temp_files
from core.runtime.compile import compile_blocks
from core.runtime.lora import add_adapters, adapter_state, base_reference, has_adapters
from core.train.rng import preserved_rng, rng_state, set_rng_state
from core.weights import FORMAT, VERSION, load_checkpoint
from core.spec.config import ExperimentConfig
from core.data import BatchLoader, DataRequest
from core.runtime.distributed import (World, all_ranks, all_true, from_main, init_world, mean_over_ranks,
                                      sync_replicated_grads, wrap_model)
from core.errors import ClipcoreError, ConfigError
from core.loss import clamp_logit_scale
from core.train.optim import build_optimizer, build_scheduler
from core.train.regularize import RegularizedLoss, teacher_features
from core.registry import get_registry
from core.tracking import METRICS_FILE, Run
from core.train.log import CURVES_FILE, TrainLog, plot_curves

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class NonFiniteLoss(ClipcoreError):
    """The training loss became NaN or infinite."""


class Trainer:
    """One training run on this process (one rank of a torchrun job, or the only process)."""

    # -- configuration
    cfg: ExperimentConfig
    out_dir: Path
    # -- distributed
    world: World
    # -- components
    clip: ClipModel                     # the model itself (sharded in place under FSDP)
    model: nn.Module                    # what a step calls: ``clip``, or its DDP wrapper
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    train_loader: BatchLoader
    checkpoints: CheckpointManager
    log: TrainLog
    # -- training state (what a checkpoint restores)
    epoch: int = 0                      # epochs completed
    step: int = 0                       # optimizer steps completed
    step_in_epoch: int = 0              # optimizer steps completed in the current epoch
    samples_seen: int = 0
    _saved_step: int | None = None      # the step of the newest checkpoint written or loaded
    _resume_data: dict[str, Any] | None = None

    def __init__(self, cfg: ExperimentConfig):
        loss_spec = get_registry().get("losses", cfg.train.loss_type, key="train.loss_type")
        self.cfg = cfg = with_loss_logit_init(cfg, loss_spec)
        train = cfg.train
        self.accum_steps = train.accum_steps
        self.autocast_dtype = PRECISIONS[train.precision]

        # 1. process group, device, output folder and logs
        self.world = init_world(train)
        if train.precision == "fp16" and self.world.device.type == "cpu":
            raise ConfigError("fp16 training needs a CUDA GPU, and this process runs on the CPU",
                              where="train.precision", fix='set train.precision = "bf16" (or "fp32")')
        self.out_dir = train_dir(cfg)
        if self.world.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            save_resolved_config(cfg, self.out_dir)
        self._barrier()
        self.log = TrainLog(self.out_dir, rank=self.world.rank, main=self.world.is_main)
        self.log.info(f"rank {self.world.rank}/{self.world.size} on {self.world.device}; output in {self.out_dir}")

        # 2. seed: the same on every rank for the model build, then per rank
        seed_everything(train.seed)

        # 3. model (+ pretrained_model_path weights, + LoRA adapters)
        path = train.pretrained_model_path
        self.clip = build_model(cfg, checkpoint=path, key="train.pretrained_model_path", loss=loss_spec)
        if path:
            self.log.info(f"model weights from train.pretrained_model_path = {path}")
        self.teacher = None  # the forgetting regularizer's frozen copy of the starting model
        if cfg.model.regularization.enabled:
            self.teacher = copy.deepcopy(self.clip).eval().requires_grad_(False)
        if cfg.model.peft.enabled and not has_adapters(self.clip):  # a LoRA checkpoint brings its own
            add_adapters(self.clip, cfg.model.peft)  # before the per-rank seed: every rank inits them alike
        if train.seed >= 0:
            seed_everything(train.seed + self.world.rank)

        # 4. freezing and partial unlocking
        self._freeze()

        # 5. gradient checkpointing, compilation
        if train.grad_checkpointing:
            self.clip.set_grad_checkpointing(True)
        if train.compile:
            compiled, why_not = compile_blocks(self.clip, self.world.device)
            if why_not:
                self.log.warning(f"train.compile: training runs eager: {why_not}")
            else:
                self.log.info(f"train.compile: {compiled} blocks compiled (torch.compile, per block)")

        # 6. device and DDP / FSDP wrapping
        self.clip.to(self.world.device)
        self.model = wrap_model(self.clip, train.distributed_strategy, self.world)
        if self.teacher is not None:
            self.teacher.to(self.world.device)

        # 7. loss (+ the forgetting regularizer)
        self.loss_fn = loss_spec.build(cfg).to(self.world.device)
        if self.teacher is not None:
            self.loss_fn = RegularizedLoss(self.loss_fn, cfg.model.regularization)

        # 8. optimizer and gradient scaler
        self.optimizer = build_optimizer(self.clip, train.optim)
        self.scaler = torch.amp.GradScaler(self.world.device.type, enabled=train.precision == "fp16")

        # 9. data
        self.bad_samples = BadSampleLog(cfg.dataset.on_bad_sample, self.out_dir, self.world.rank, phase="train")
        self.train_loader = self._build_train_loader()
        self.steps_per_epoch = len(self.train_loader) // self.accum_steps
        if self.steps_per_epoch < 1:
            raise ConfigError(
                f"train.accum_steps = {self.accum_steps} is larger than the {len(self.train_loader)} batches "
                "of an epoch", where="train.accum_steps",
                fix="lower train.accum_steps or dataset.train.batch_size, or add training data")
        self.total_steps = train.num_epochs * self.steps_per_epoch

        # 10. schedule over the exact number of optimizer steps
        self.scheduler = build_scheduler(self.optimizer, train.optim, self.total_steps)

        # 11. checkpoints, and resuming
        self.checkpoints = CheckpointManager(self.out_dir, interval=train.checkpoint_interval,
                                             unit=train.checkpoint_interval_unit, keep_last=train.keep_last,
                                             best_metric=train.best_metric)
        if self.world.is_main:
            for stale in remove_stale_temp_files(self.out_dir):
                self.log.info(f"removed {stale.name}, left by an interrupted checkpoint save")
        self.reference_baseline: dict[str, float] | None = None  # the guard set before training
        resume = self._resume_path()
        if resume is not None:
            self.load_state(resume)
        self.log.open_trackers(Run(cfg=cfg, config=tomllib.loads(resolved_spec(cfg)), out_dir=self.out_dir,
                                   name=self.out_dir.parent.name, resumed=resume is not None))

        # 12. validation
        self.validator = self._build_validator()
        self.log.info(self._summary())

    # ------------------------------------------------------------------ building
    def _freeze(self) -> None:
        m = self.cfg.model
        if m.peft.enabled:  # the adapters alone train (step 3)
            return
        if m.freeze_vision_encoder:
            self.clip.lock_image_tower(m.vision_unlocked_layers, freeze_bn_stats=True)  # frozen means frozen
        if m.freeze_text_encoder:
            self.clip.lock_text_tower(m.text_unlocked_layers)
        if (m.freeze_vision_encoder and m.freeze_text_encoder
                and not m.vision_unlocked_layers and not m.text_unlocked_layers):
            self.log.warning("both towers are frozen: only the logit scale/bias will train")

    def _build_train_loader(self) -> BatchLoader:
        from core.runtime.transforms import train_transform

        data = self.cfg.dataset
        fmt = get_registry().get("dataset_formats", data.train.type, key="dataset.train.type")
        request = DataRequest(
            config=self.cfg, transform=train_transform(self.clip.preprocess, data.augmentation),
            tokenizer=self.clip.tokenizer, batch_size=data.train.batch_size, rank=self.world.rank,
            world_size=self.world.size, seed=data.seed, num_workers=data.train.num_workers,
            bad_samples=self.bad_samples, results_dir=str(self.out_dir))
        return fmt.build(request)

    def _build_validator(self):
        ref = self.cfg.dataset.reference
        if not (self.cfg.dataset.val.datasets or ref.datasets or ref.classification_dir):
            self.log.info("no dataset.val.datasets: validation is off")
            return None
        from core.train.validation import Validator

        return Validator(self.cfg, self.clip, self.world, self.out_dir, self.bad_samples)

    def _summary(self) -> str:
        trainable = sum(p.numel() for p in self.clip.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.clip.parameters())
        global_batch = self.cfg.dataset.train.batch_size * self.world.size * self.accum_steps
        processes = (f"{self.world.size} processes ({self.cfg.train.distributed_strategy})" if self.world.distributed
                     else f"1 process on {self.world.device}")
        return (f"model {self.clip.model_type}: {trainable:,} of {total:,} parameters trainable; "
                f"{processes}, {self.cfg.train.precision}; "
                f"global batch {global_batch}; {self.steps_per_epoch} steps/epoch × {self.cfg.train.num_epochs} "
                f"epochs = {self.total_steps} steps")

    # ------------------------------------------------------------------ the loop
    @property
    def epoch_number(self) -> int:
        """The 1-based epoch the last step belongs to (for logs)."""
        return self.epoch + (self.step_in_epoch > 0)

    def train(self) -> None:
        """Run the remaining epochs, then write the final checkpoint and the curves."""
        self.log.start(total_steps=self.total_steps, done_steps=self.step, samples_seen=self.samples_seen)
        try:
            if self.reference_baseline is None and self.validator is not None and self._has_reference():
                self.reference_baseline = self.validate(target=False)  # what the model knew, at step 0
                self._eligible(self.reference_baseline)  # a reference_metric the run does not measure fails now
            while self.epoch < self.cfg.train.num_epochs:
                self.train_epoch()
            if self._saved_step != self.step:
                self.save(self.checkpoints.periodic_name(epoch=self.epoch, step=self.step))
            if self.world.is_main:
                self.log.trackers.log_file(plot_curves(self.out_dir / METRICS_FILE, self.out_dir / CURVES_FILE))
        except BaseException as exc:
            self.log.failed(exc)
            self.log.close(failed=True)
            raise
        self.log.close()
        self._barrier()

    def train_epoch(self) -> None:
        self.model.train()
        for batches in self.batch_groups():
            metrics = self.train_step(batches)
            self.step += 1
            self.step_in_epoch += 1
            self.samples_seen += len(batches[0]["input_ids"]) * len(batches) * self.world.size
            self.after_step(metrics)
        self.epoch += 1
        self.step_in_epoch = 0
        self.after_epoch()

    def batch_groups(self) -> Iterator[list[dict[str, Any]]]:
        """This epoch's remaining optimizer steps, each a list of ``accum_steps`` batches."""
        self.train_loader.set_epoch(self.epoch)
        if self._resume_data is not None:
            self.train_loader.load_state_dict(self._resume_data)
            self._resume_data = None
        with preserved_rng():  # creating the iterator must not shift the training RNG streams
            batches = iter(self.train_loader)
        while self.step_in_epoch < self.steps_per_epoch:
            yield [next(batches) for _ in range(self.accum_steps)]

    def train_step(self, batches: list[dict[str, Any]]) -> dict[str, Any]:
        """One optimizer step over ``accum_steps`` batches; returns this rank's loss, the gradient
        norm (when measured) and the learning rates the step used. Out of memory anywhere in the
        step becomes one message with the levers that reduce memory."""
        try:
            return self._optimizer_step(batches)
        except (RuntimeError, MemoryError) as exc:
            if is_out_of_memory(exc):
                raise out_of_memory_error(self.cfg, self.world, self.step) from None
            raise

    def _optimizer_step(self, batches: list[dict[str, Any]]) -> dict[str, Any]:
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.forward_backward(batches)
        sync_replicated_grads(self.model, self.cfg.train.distributed_strategy, self.world)
        if not all_true(bool(torch.isfinite(loss)), self.world):
            raise non_finite_loss_error(self.cfg, self.step, self.checkpoints.latest())
        self.scaler.unscale_(self.optimizer)
        grad_norm = self.clip_gradients(measure=self._log_due(self.step + 1))
        lrs = {group["name"].removesuffix("_no_decay"): group["lr"] for group in self.optimizer.param_groups}
        self.scaler.step(self.optimizer)
        self.scaler.update()
        with warnings.catch_warnings():  # fp16: a step the scaler skipped (inf gradients) still counts
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step()`")
            self.scheduler.step()
        clamp_logit_scale(self.clip)
        return {"loss": loss, "grad_norm": grad_norm, "lr": lrs}

    def forward_backward(self, batches: list[dict[str, Any]]) -> torch.Tensor:
        """Forward and backward of one step, exact over ``accum_steps`` micro-batches; returns this
        rank's loss (detached)."""
        device = self.world.device
        micro_batches = [{"image": b["image"].to(device, non_blocking=True),
                          "input_ids": b["input_ids"].to(device, non_blocking=True),
                          "match_keys": self.compatible_keys(b)} for b in batches]
        if self.teacher is not None:
            self.loss_fn.teacher = teacher_features(self.teacher, micro_batches, self.autocast)
        return accumulated_step(self.model, self.loss_fn, micro_batches, autocast=self.autocast,
                                backward=lambda loss: self.scaler.scale(loss).backward())

    def compatible_keys(self, batch: dict[str, Any]) -> torch.Tensor | None:
        """The batch's match keys of the kinds ``train.compatible_positives`` names, or ``None``."""
        kinds = self.cfg.train.compatible_positives
        if not kinds or "match_keys" not in batch:
            return None
        return batch["match_keys"][:, [MATCH_KINDS.index(kind) for kind in kinds]].to(self.world.device)

    def autocast(self):
        return torch.autocast(self.world.device.type, dtype=self.autocast_dtype or torch.float32,
                              enabled=self.autocast_dtype is not None)

    def clip_gradients(self, *, measure: bool) -> torch.Tensor | None:
        """Clip to ``train.grad_clip_norm``; the global norm before clipping, when clipping or
        ``measure`` (a logging step) asks for it, else ``None``."""
        max_norm = self.cfg.train.grad_clip_norm
        if not (max_norm or measure):
            return None
        params = [p for p in self.clip.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm else math.inf)
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm

    def _log_due(self, step: int) -> bool:
        return step % self.cfg.train.log_every_n_steps == 0 or step == self.total_steps

    def after_step(self, metrics: dict[str, Any]) -> None:
        train = self.cfg.train
        self.log.advance(step=self.step, epoch=self.epoch_number)
        if self._log_due(self.step):
            self.log_train_metrics(metrics)
        val_metrics = None
        if train.val_check_interval and self.step % train.val_check_interval == 0:
            val_metrics = self.validate()
        if self.checkpoints.due(epoch=self.epoch, step=self.step, epoch_end=False):
            self.save(self.checkpoints.periodic_name(epoch=self.epoch, step=self.step), val_metrics)
        elif val_metrics is not None:
            self.save_best(val_metrics)

    def after_epoch(self) -> None:
        train = self.cfg.train
        val_metrics = None
        if not train.val_check_interval and self.epoch % train.validation_interval == 0:
            val_metrics = self.validate()
        if self.checkpoints.due(epoch=self.epoch, step=self.step, epoch_end=True):
            self.save(self.checkpoints.periodic_name(epoch=self.epoch, step=self.step), val_metrics)
        elif val_metrics is not None:
            self.save_best(val_metrics)

    def log_train_metrics(self, metrics: dict[str, Any]) -> None:
        self.log.rank_loss(step=self.step, loss=metrics["loss"].item())
        loss = mean_over_ranks(metrics["loss"], self.world).item()
        record = {"train/loss": loss, "train/grad_norm": float(metrics["grad_norm"]),
                  "train/logit_scale": self.clip.logit_scale.detach().exp().item(),
                  "train/samples_per_s": self.log.samples_per_second(self.samples_seen)}
        if self.clip.logit_bias is not None:
            record["train/logit_bias"] = self.clip.logit_bias.detach().item()
        record.update({f"train/lr/{name}": lr for name, lr in metrics["lr"].items()})
        if self.teacher is not None:
            record.update({f"train/{k}": mean_over_ranks(v, self.world).item() for k, v in self.loss_fn.terms.items()})
        self.log.train_metrics(step=self.step, epoch=self.epoch_number, metrics=record)

    def validate(self, *, target: bool = True) -> dict[str, float] | None:
        """Retrieval metrics on ``dataset.val`` and the guard set (every rank takes part; RNG streams
        untouched); only the guard set without ``target``."""
        if self.validator is None:
            return None
        start = time.perf_counter()
        with preserved_rng():
            metrics = from_main(self.validator.run(target=target), self.world)
        self.model.train()
        self.log.write(step=self.step, epoch=self.epoch_number, metrics=metrics)
        shown = ", ".join(f"{k.removeprefix('val/')} {v:.4f}" for k, v in metrics.items()
                          if k.endswith(("_R@1", "_R@5", "_mAP", "top1")))
        self.log.info(f"validation at epoch {self.epoch_number} step {self.step} ({time.perf_counter() - start:.1f}s): {shown}")
        return metrics

    # ------------------------------------------------------------------ checkpoints
    def _has_reference(self) -> bool:
        ref = self.cfg.dataset.reference
        return bool(ref.datasets or ref.classification_dir)

    def _eligible(self, metrics: dict[str, float]) -> bool:
        """Whether a validation may give the best checkpoint: its guard-set metric stays within
        ``train.reference_max_drop`` of the value before training."""
        train = self.cfg.train
        if train.reference_max_drop is None or not self.reference_baseline:
            return True
        name = train.reference_metric
        if name not in metrics or name not in self.reference_baseline:
            raise ConfigError(f"{name} is not a guard-set metric of this run", where="train.reference_metric",
                              fix="choose one of: " + ", ".join(sorted(k for k in self.reference_baseline)))
        drop = self.reference_baseline[name] - metrics[name]
        if drop > train.reference_max_drop:
            self.log.info(f"{name} dropped {drop:.4f} (> train.reference_max_drop {train.reference_max_drop}): "
                          "not a candidate for the best checkpoint")
            return False
        return True

    def save(self, name: str, val_metrics: dict[str, float] | None = None) -> None:
        """Write a periodic checkpoint (and ``best.pth`` when ``val_metrics`` improved)."""
        improved = val_metrics is not None and self._eligible(val_metrics) and self.checkpoints.improved(val_metrics)
        state = self.state_dict()
        if self.world.is_main:
            path = self.checkpoints.save(state, name)
            if improved:
                self.log.trackers.log_checkpoint(self.checkpoints.save_best(None, path), val_metrics)
            self.log.info(f"saved {path}" + (" (new best)" if improved else ""))
        self._saved_step = self.step
        self._barrier()

    def save_best(self, val_metrics: dict[str, float]) -> None:
        if not (self._eligible(val_metrics) and self.checkpoints.improved(val_metrics)):
            return
        state = self.state_dict()
        if self.world.is_main:
            path = self.checkpoints.save_best(state, None)
            self.log.trackers.log_checkpoint(path, val_metrics)
            self.log.info(f"saved {path} ({self.cfg.train.best_metric} = {self.checkpoints.best_value:.4f})")
        self._barrier()

    def state_dict(self) -> dict[str, Any] | None:
        """The full training state on rank 0 (``None`` elsewhere); a collective call.

        Model and optimizer state are gathered full state dicts keyed by parameter names, so they
        load into any world size, strategy, or a single process (evaluate, export). A LoRA run
        whose base weights can be found again keeps only the adapters and the logit scale / bias,
        with ``base``: where the base weights come from (:func:`core.runtime.lora.base_reference`).
        """
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        model_state, optim_state = get_state_dict(
            self.model, self.optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        rng = all_ranks(rng_state(), self.world)
        data = all_ranks(self.train_loader.state_dict(), self.world)
        if not self.world.is_main:
            return None
        base = base_reference(self.cfg) if has_adapters(self.clip) else None
        return {
            "format": FORMAT, "version": VERSION, "model_type": self.clip.model_type,
            "model": model_state if base is None else adapter_state(model_state), "optimizer": optim_state,
            **({"base": base} if base is not None else {}),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
            "train_state": {"epoch": self.epoch, "step": self.step, "step_in_epoch": self.step_in_epoch,
                            "samples_seen": self.samples_seen, "best_value": self.checkpoints.best_value,
                            "reference_baseline": self.reference_baseline,
                            "world_size": self.world.size},
            "data": data, "rng": rng,
        }

    def load_state(self, path: Path) -> None:
        """Restore everything :meth:`state_dict` saved (every rank reads the file)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        key = "train.resume_training_checkpoint_path"
        ckpt = load_checkpoint(path, key=key)
        if "optimizer" not in ckpt or "train_state" not in ckpt:
            raise ClipcoreError(f"{path} holds model weights only, not a training state", where=key,
                                fix="to start from these weights use train.pretrained_model_path instead")
        if ckpt.get("model_type") != self.clip.model_type:
            raise ClipcoreError(f"{path} was saved for model type {ckpt.get('model_type')!r}, "
                                f"but model.type is {self.clip.model_type!r}", where=key,
                                fix="resume with the same model.type, or start a new results_dir")
        set_state_dict(self.model, self.optimizer, model_state_dict=ckpt["model"], optim_state_dict=ckpt["optimizer"],
                       options=StateDictOptions(full_state_dict=True, strict="base" not in ckpt))
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        state = ckpt["train_state"]
        self.epoch, self.step, self.step_in_epoch = state["epoch"], state["step"], state["step_in_epoch"]
        self.samples_seen = state["samples_seen"]
        self.checkpoints.best_value = state["best_value"]
        self.reference_baseline = state.get("reference_baseline")
        self._saved_step = self.step
        rank = self.world.rank
        if len(ckpt["rng"]) == self.world.size:
            set_rng_state(ckpt["rng"][rank])
        else:
            self.log.warning(f"{path} was written by {len(ckpt['rng'])} processes, this run has {self.world.size}: "
                             "random streams restart from the seed (the run is not bit-exact)")
        if self.step_in_epoch:
            self._resume_data = ckpt["data"][min(rank, len(ckpt["data"]) - 1)]
        self.log.warning(f"RESUMED from {path}: epoch {self.epoch}, step {self.step} "
                         f"({self.step_in_epoch} steps into the epoch)")

    def _resume_path(self) -> Path | None:
        value = self.cfg.train.resume_training_checkpoint_path
        if not value:
            return None
        if value not in ("auto", "latest"):
            return Path(value)
        latest = from_main(self.checkpoints.latest(), self.world)
        if latest is None:
            self.log.warning(f"resume_training_checkpoint_path = {value!r}: no latest.pth in {self.out_dir}; "
                             "STARTING FROM SCRATCH")
        else:
            self.log.warning(f"resume_training_checkpoint_path = {value!r}: RESUMING from {latest}")
        return latest

    def _barrier(self) -> None:
        if self.world.distributed:
            torch.distributed.barrier()


# ---------------------------------------------------------------------- helpers
def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy and python; a negative seed leaves them unseeded."""
    if seed < 0:
        return
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def train_dir(cfg: ExperimentConfig) -> Path:
    """``train.results_dir``, or ``<results_dir>/train``."""
    from core.spec.load import action_dir

    return action_dir(cfg, "train")


def save_resolved_config(cfg: ExperimentConfig, out_dir: Path) -> Path:
    """The resolved spec as ``config.toml`` beside the checkpoints (re-runnable with ``-c``)."""
    from core.runtime.checkpoint import write_text_atomic

    return write_text_atomic(resolved_spec(cfg), out_dir / "config.toml")


def resolved_spec(cfg: ExperimentConfig) -> str:
    """The resolved spec as TOML text, plugin tables included."""
    from core.spec.render import render

    sections = {path: section.cls for path, section in get_registry().config_sections().items()}
    return render(cfg, sections, header=["# resolved spec of this training run"])


def is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, (torch.OutOfMemoryError, MemoryError)) or "out of memory" in str(exc).lower()


def out_of_memory_error(cfg: ExperimentConfig, world: World, step: int) -> ClipcoreError:
    """The message for an OOM: where it happened and the levers that reduce memory."""
    t, m = cfg.train, cfg.model
    batch = cfg.dataset.train.batch_size
    levers = [f"lower dataset.train.batch_size (now {batch}) and raise train.accum_steps (now {t.accum_steps}) "
              "to keep the same effective contrastive batch"]
    if not t.grad_checkpointing:
        levers.append("set train.grad_checkpointing = true")
    if t.precision == "fp32":
        levers.append("set train.precision = \"bf16\"")
    if not (m.freeze_vision_encoder or m.freeze_text_encoder):
        levers.append("freeze a tower (model.freeze_vision_encoder = true, optionally with vision_unlocked_layers)")
    if t.distributed_strategy == "ddp" and world.device.type == "cuda":
        levers.append("shard the model with train.distributed_strategy = \"fsdp\" over several GPUs")
    where = "GPU" if world.device.type == "cuda" else "host"
    return ClipcoreError(f"out of {where} memory at step {step + 1} on {world.device} "
                         f"(batch size {batch}, precision {t.precision})", where="train",
                         fix="; or ".join(levers))


def non_finite_loss_error(cfg: ExperimentConfig, step: int, last_good: Path | None) -> NonFiniteLoss:
    t = cfg.train
    causes = [f"learning rate too high (vision_lr {t.optim.vision_lr}, text_lr {t.optim.text_lr})",
              f"too short a warmup (warmup_steps {t.optim.warmup_steps})",
              "empty or garbage captions / corrupt images in the batch"]
    if t.precision == "fp16":
        causes.append("fp16 overflow (use train.precision = \"bf16\")")
    if not t.grad_clip_norm:
        causes.append("no gradient clipping (set train.grad_clip_norm = 1.0)")
    kept = f"the last good checkpoint is {last_good}" if last_good else "no checkpoint had been written yet"
    return NonFiniteLoss(f"the training loss is NaN or infinite at step {step + 1}; the weights were not updated "
                         f"with it and {kept}", where="train",
                         fix="likely causes: " + "; ".join(causes))
