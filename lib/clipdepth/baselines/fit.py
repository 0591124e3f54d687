"""A small, seeded fitting loop shared by the trained baselines (CLIP2Depth, LLM-MDE).

Why not :class:`clipdepth.train.trainer.Trainer`: that trainer is built around the bin-prompt model (cached CLIP
features, only prompt tokens trainable). The baselines train decoders and adapters on live images, so
they need only the plain loop here: AdamW, a per-step learning-rate schedule, optional gradient
clipping, tqdm, CPU or CUDA. Batches come from the study's own readers and AdaBins augmentation, with
every random draw derived from (seed, epoch, index) exactly as in the trainer (``batch_order``,
``TrainTransform``), so a baseline sees the same augmented images as the learned-prompt rows.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from clipdepth.data.profile_data import open_split
from clipdepth.data.transforms import TrainTransform, to_tensor
from clipdepth.train.trainer import batch_order

SCHEDULES: tuple[str, ...] = ("constant", "cosine", "poly")


class Trainable(Protocol):
    """What :func:`fit` needs of a model."""

    def trainable_parameters(self) -> list[torch.nn.Parameter]: ...

    def loss(self, images: torch.Tensor, depth: torch.Tensor) -> torch.Tensor: ...

    def train(self, mode: bool = True) -> Any: ...


@dataclass(frozen=True)
class FitConfig:
    """Optimiser and schedule. ``max_steps`` caps the run (demo); the schedule spans the capped run.

    ``poly``: lr_t = (lr - end) (1 - t/T)^power + end with end = ``end_lr_factor`` x lr (BTS / LLM-MDE);
    ``cosine``: end + (lr - end) (1 + cos(pi t/T)) / 2; ``constant``: lr.
    """

    epochs: int = 1
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-2
    adam_eps: float = 1e-8
    schedule: str = "cosine"
    poly_power: float = 0.9
    end_lr_factor: float = 0.0
    grad_clip: float | None = None
    max_steps: int | None = None
    seed: int = 42

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; valid: {', '.join(SCHEDULES)}")
        if self.epochs < 0 or self.batch_size < 1:
            raise ValueError(f"epochs must be >= 0 and batch_size >= 1, got {self.epochs}, {self.batch_size}")

    def lr_factor(self, step: int, total: int) -> float:
        """Multiplier of ``lr`` at optimiser step ``step`` (0-based) of ``total``."""
        t = min(step / max(total, 1), 1.0)
        end = self.end_lr_factor
        if self.schedule == "poly":
            return (1 - end) * (1 - t) ** self.poly_power + end
        if self.schedule == "cosine":
            return end + (1 - end) * 0.5 * (1 + math.cos(math.pi * t))
        return 1.0


@dataclass
class FitResult:
    """Per-step history, per-epoch mean losses and wall time of one fit."""

    history: list[dict[str, float]]
    epoch_losses: list[float]
    train_seconds: float
    steps: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def first_loss(self) -> float:
        return self.history[0]["loss"] if self.history else float("nan")

    @property
    def last_loss(self) -> float:
        return self.history[-1]["loss"] if self.history else float("nan")


class TrainBatches:
    """Augmented training batches of one dataset split, epoch by epoch, from (seed, epoch, index).

    ``resolved`` is anything :func:`clipdepth.data.profile_data.open_split` accepts (a resolved registry
    row gives the profile's data root, sizes and dataset). Each sample is augmented with the dataset's
    AdaBins ``TrainTransform`` at ``resolved.train_size``.
    """

    def __init__(self, resolved: Any, batch_size: int, seed: int = 42, device: str | torch.device = "cpu",
                 **split_counts: int) -> None:
        self.dataset = open_split(resolved, "train", **split_counts)
        self.transform = TrainTransform(resolved.dataset, crop=tuple(resolved.train_size), seed=seed)
        self.batch_size, self.seed, self.device = int(batch_size), int(seed), torch.device(device)

    def __len__(self) -> int:
        return -(-len(self.dataset) // self.batch_size)

    def batch(self, indices: list[int], epoch: int = 0, augment: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        samples = [self.transform(self.dataset[i], epoch, i) if augment else self.dataset[i] for i in indices]
        pairs = [to_tensor(s) for s in samples]
        return (torch.stack([p[0] for p in pairs]).to(self.device),
                torch.stack([p[1] for p in pairs]).to(self.device))

    def __call__(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for idx in batch_order(self.seed, epoch, len(self.dataset), self.batch_size):
            yield self.batch(idx, epoch)


def optimiser(model: Trainable, config: FitConfig) -> tuple[list[torch.nn.Parameter], torch.optim.AdamW]:
    params = list(model.trainable_parameters())
    if not params:
        raise ValueError("the model has no trainable parameters")
    return params, torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, eps=config.adam_eps)


def fit(model: Trainable, batches: TrainBatches, config: FitConfig, progress: bool = True,
        desc: str = "fit") -> FitResult:
    """Train ``model`` on ``batches`` for ``config.epochs`` (at most ``config.max_steps`` steps).

    Seeds torch's generator (dropout) from ``config.seed`` first, so a run is repeatable on one device.
    """
    torch.manual_seed(config.seed)
    params, opt = optimiser(model, config)
    total = config.epochs * len(batches)
    if config.max_steps is not None:
        total = min(total, int(config.max_steps))
    history: list[dict[str, float]] = []
    epoch_losses: list[float] = []
    step = 0
    t0 = time.perf_counter()
    bar = tqdm(total=total, desc=desc, disable=not progress, leave=False)
    epoch = 0
    while step < total:
        model.train()
        losses = []
        for images, depth in batches(epoch):
            if step >= total:
                break
            lr = config.lr * config.lr_factor(step, total)
            for group in opt.param_groups:
                group["lr"] = lr
            loss = model.loss(images, depth)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            opt.step()
            value = float(loss.detach())
            if not math.isfinite(value):
                raise FloatingPointError(f"{desc}: loss became {value} at step {step}")
            losses.append(value)
            history.append({"step": step + 1, "epoch": epoch + 1, "loss": value, "lr": lr})
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{value:.3f}")
        if losses:
            epoch_losses.append(float(np.mean(losses)))
        epoch += 1
    bar.close()
    model.eval()
    return FitResult(history, epoch_losses, time.perf_counter() - t0, step)


def probe_loss(model: Trainable, images: torch.Tensor, depth: torch.Tensor, seed: int = 0) -> float:
    """Training-mode loss on a fixed batch, without side effects.

    Training mode (batch statistics, dropout with a fixed seed) is what the optimiser minimises; the
    BatchNorm running statistics the forward pass would update are restored afterwards, so probing
    before and after training measures the fit alone.
    """
    module = model if isinstance(model, torch.nn.Module) else None
    buffers = {k: v.clone() for k, v in module.state_dict().items() if "running_" in k or "num_batches" in k} \
        if module is not None else {}
    was_training = bool(getattr(model, "training", False))
    model.train()
    try:
        with torch.no_grad(), torch.random.fork_rng():
            torch.manual_seed(seed)
            value = float(model.loss(images, depth))
    finally:
        if module is not None and buffers:
            module.load_state_dict(buffers, strict=False)
        model.train(was_training)
    return value
