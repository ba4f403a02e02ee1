"""A plain training loop with hooks (detectron2-style lifecycle).

Hook lifecycle, each called with the trainer:
    before_train -> [before_step -> (forward, backward, optimizer step) -> after_step]* ->
    after_epoch (at each epoch end) -> after_train
and, when the job is being preempted, before_preemption_exit after the checkpoint is written
(the process exits after it; after_train is not called).
The trainer state that a checkpoint holds: method weights, optimizer, global step, RNG
states, the loss history, and the data-order position (epoch and offset; the order itself
is a pure function of the seed, see harness.data.loading).
"""
from __future__ import annotations

import contextlib
import math
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from harness import checkpoint, ddp, preemption, seeding, tags
from harness.data.loading import EpochSampler, RankSliceSampler, SeededTransformDataset
from harness.progress import progress
from harness.optim import build_optimizer, lr_schedule, param_groups_no_decay, set_lr


class NonFiniteLoss(RuntimeError):
    pass


class HookBase:
    def before_train(self, trainer): ...
    def before_step(self, trainer): ...
    def after_step(self, trainer, logs: dict): ...
    def after_epoch(self, trainer): ...
    def after_train(self, trainer): ...
    def before_preemption_exit(self, trainer): ...


class Trainer:
    def __init__(self, method, dataset: SeededTransformDataset, train: dict, seed: int, ckpt_dir: Path,
                 device: torch.device, hooks: list[HookBase] = (), num_workers: int = 0):
        self.method = method.to(device)
        self.dataset = dataset
        self.cfg = train
        self.seed = seed
        self.ckpt_dir = Path(ckpt_dir)
        self.device = device
        self.hooks = list(hooks)
        self.num_workers = num_workers
        self.batch_size = int(train["batch_size"])
        if len(dataset) < self.batch_size:
            from harness.errors import UsageError
            raise UsageError(
                f"train.batch_size={self.batch_size} exceeds the {len(dataset)} training images; lower it"
            )
        # Data parallel: train.batch_size is the global batch, split evenly over the processes.
        self.rank, self.world = ddp.rank(), ddp.world_size()
        if self.batch_size % self.world:
            from harness.errors import UsageError
            raise UsageError(f"train.batch_size={self.batch_size} (the global batch) is not divisible by the "
                             f"{self.world} processes; choose a multiple of {self.world}")
        self.local_batch = self.batch_size // self.world
        self.steps_per_epoch = len(dataset) // self.batch_size
        self.epochs = int(train["epochs"])
        self.total_steps = self.epochs * self.steps_per_epoch
        self.lr_schedule = lr_schedule(train, self.steps_per_epoch)
        self.base_lr = float(train["lr"])
        self.optimizer = build_optimizer(
            param_groups_no_decay(self.method, float(train["weight_decay"]), self.method.fixed_lr_parameters()), train
        )
        self.use_amp = bool(train["amp"]) and device.type == "cuda"
        self.step = 0
        self.history: list[float] = []
        self.resumed_from: int | None = None

    # -- checkpoint ----------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "method": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "epoch": self.step // max(self.steps_per_epoch, 1),
            "data_position": self.step % max(self.steps_per_epoch, 1) * self.batch_size,
            "data_seed": self.seed,
            "history": torch.tensor(self.history, dtype=torch.float64),
            "rng": seeding.rng_state(),
            "world_size": self.world,
        }

    def save_checkpoint(self) -> None:
        """Every process calls this (it gathers each one's RNG state); rank 0 writes."""
        state = self.state_dict()
        rngs = ddp.gather_objects(state["rng"])
        if self.world > 1:
            state["rng_ranks"] = rngs
        if self.rank == 0:
            checkpoint.save_atomic(state, checkpoint.last_path(self.ckpt_dir))
        ddp.barrier()  # no process runs ahead of a checkpoint that may be the one it resumes from

    def maybe_resume(self) -> bool:
        path = checkpoint.latest(self.ckpt_dir)
        if path is None:
            return False
        state = checkpoint.load(path)
        self.method.load_state_dict(state["method"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        self.history = state["history"].tolist()
        ranks = state.get("rng_ranks")
        if ranks is not None and len(ranks) == self.world:
            seeding.set_rng_state(ranks[self.rank])
        else:
            seeding.set_rng_state(state["rng"])
        self.resumed_from = self.step
        return True

    # -- loop ----------------------------------------------------------------------------
    def _loader(self, epoch: int, start: int) -> DataLoader:
        self.dataset.set_epoch(epoch)
        sampler = EpochSampler(len(self.dataset), self.seed, epoch, start=start)
        if self.world > 1:
            sampler = RankSliceSampler(sampler, self.batch_size, self.rank, self.world)
        return DataLoader(
            self.dataset, batch_size=self.local_batch, sampler=sampler, drop_last=True,
            num_workers=self.num_workers, worker_init_fn=seeding.worker_init_fn,
            generator=torch.Generator().manual_seed(seeding.derive_seed(self.seed, 4, epoch)),
            pin_memory=self.device.type == "cuda", persistent_workers=False,
        )

    def _to_device(self, batch):
        if isinstance(batch, torch.Tensor):
            return batch.to(self.device, non_blocking=True)
        if isinstance(batch, (list, tuple)):
            return type(batch)(self._to_device(b) for b in batch)
        if isinstance(batch, dict):
            return {k: self._to_device(v) for k, v in batch.items()}
        return batch

    def _autocast(self):
        if self.use_amp:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def fit(self) -> list[float]:
        if not self.maybe_resume():
            self.method.prepare(self.dataset)
        self.method.train()
        for h in self.hooks:
            h.before_train(self)
        with preemption.training():
            self._loop()
        for h in self.hooks:
            h.after_train(self)
        return self.history

    def _loop(self) -> None:
        while self.step < self.total_steps:
            epoch = self.step // self.steps_per_epoch
            start = (self.step % self.steps_per_epoch) * self.batch_size
            for batch in self._loader(epoch, start):
                for h in self.hooks:
                    h.before_step(self)
                set_lr(self.optimizer, float(self.lr_schedule[self.step]), self.base_lr)
                batch = self._to_device(batch)
                with self._autocast():
                    out = self.method.training_step(batch)
                loss = out["loss"]
                if not torch.isfinite(loss):
                    raise NonFiniteLoss(f"loss became {loss.item()} at step {self.step}; lower train.lr or check the recipe")
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                ddp.average_gradients(self.method.parameters())
                self.method.before_optimizer_step(self.step, self.total_steps, self.steps_per_epoch)
                if self.cfg.get("grad_clip", 0) > 0:
                    torch.nn.utils.clip_grad_norm_(self.method.parameters(), float(self.cfg["grad_clip"]))
                self.optimizer.step()
                self.method.on_step_end(self.step, self.total_steps)
                self.step += 1
                logs = ddp.mean_over_ranks({k: float(v.detach()) for k, v in out.items()})
                logs["lr"] = float(self.lr_schedule[self.step - 1])
                self.history.append(logs["loss"])
                for h in self.hooks:
                    h.after_step(self, logs)
                if ddp.any_rank(preemption.pending()):
                    # Slurm's warning (USR2) arrived during this step: save the state at this
                    # step boundary, then let the launcher requeue the job.
                    self.save_checkpoint()
                    for h in self.hooks:
                        h.before_preemption_exit(self)
                    preemption.proceed()
                if self.step >= self.total_steps:
                    break
            for h in self.hooks:
                h.after_epoch(self)


class CheckpointHook(HookBase):
    """Writes the latest checkpoint every ``every`` steps and at the end of training."""

    def __init__(self, every: int):
        self.every = max(int(every), 1)

    def after_step(self, trainer, logs):
        if trainer.step % self.every == 0 and trainer.step < trainer.total_steps:
            trainer.save_checkpoint()

    def after_train(self, trainer):
        trainer.save_checkpoint()


class ProgressHook(HookBase):
    """A tqdm bar over the whole run with the running loss and lr."""

    def __init__(self, desc: str = "pretrain", disable: bool = False):
        self.desc, self.disable, self.bar = desc, disable, None

    def before_train(self, trainer):
        self.bar = progress(total=trainer.total_steps, initial=trainer.step, desc=self.desc, unit="step", disable=self.disable)

    def after_step(self, trainer, logs):
        self.bar.update(1)
        if trainer.step % 5 == 0 or trainer.step == trainer.total_steps:
            self.bar.set_postfix(loss=f"{logs['loss']:.4f}", lr=f"{logs['lr']:.3g}",
                                 epoch=f"{trainer.step / trainer.steps_per_epoch:.1f}", refresh=False)

    def after_train(self, trainer):
        if self.bar is not None:
            self.bar.close()


class MetricsHook(HookBase):
    """Buffers step metrics and hands them to ``log_fn(metrics_by_step)`` in batches."""

    def __init__(self, log_fn, every: int):
        self.log_fn, self.every, self.buffer = log_fn, max(int(every), 1), []

    def after_step(self, trainer, logs):
        self.buffer.append((trainer.step, {f"{tags.TRAIN_PREFIX}{k}": v for k, v in logs.items() if math.isfinite(v)}))
        if trainer.step % self.every == 0:
            self.flush()

    def after_epoch(self, trainer):
        self.flush()

    def after_train(self, trainer):
        self.flush()

    def before_preemption_exit(self, trainer):
        self.flush()  # steps before the checkpoint are not redone after the requeue

    def flush(self):
        if self.buffer:
            self.log_fn(self.buffer)
            self.buffer = []


__all__ = ["Trainer", "HookBase", "CheckpointHook", "ProgressHook", "MetricsHook", "NonFiniteLoss"]
