"""The authors' optimisation protocol as plain functions: batch order, optimiser, one step, precision.

Why apart from the trainer: a row trained alone (:class:`clipdepth.train.trainer.Trainer`), rows trained in
lockstep (:mod:`clipdepth.train.lockstep`) and ``clipdepth bench`` must run literally the same step; the
lockstep exactness tests rest on it.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from clipdepth.model.head import BinPromptDepth, normalise_text
from clipdepth.model.prompt_learner import encode_prompts
from clipdepth.study.experiments import TrainConfig
from clipdepth.train.losses import SILogTarget

__all__ = ["PRECISIONS", "batch_order", "bn_buffers", "check_precision", "make_optimiser", "optimiser_step",
           "optimiser_steps", "precision_context"]

#: Numerical precision of the image and text encoders: ``fp32`` (the authors', the default), ``tf32``
#: (CUDA matmuls and convolutions in TensorFloat-32) and ``bf16`` (CUDA autocast). Part of the run key.
PRECISIONS: tuple[str, ...] = ("fp32", "tf32", "bf16")


def check_precision(precision: str, device: torch.device | str) -> str:
    """Validate a precision for a device (TF32 and bf16 autocast are CUDA features here)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "fp32" and torch.device(device).type != "cuda":
        raise ValueError(f"precision {precision!r} needs a CUDA device; on {device} use 'fp32'")
    return precision


@contextlib.contextmanager
def precision_context(precision: str, device: torch.device) -> Iterator[None]:
    """Run the block in ``precision`` (see :data:`PRECISIONS`); fp32 changes nothing."""
    if precision == "bf16":
        with torch.autocast(device.type, dtype=torch.bfloat16):
            yield
    elif precision == "tf32":
        old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old
    else:
        yield


def bn_buffers(model: BinPromptDepth) -> dict[str, torch.Tensor]:
    """BatchNorm running statistics: they change under ``bn=adapt`` and belong in a checkpoint."""
    return {k: v.detach().clone() for k, v in model.clip.visual.state_dict().items()
            if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}


def make_optimiser(model: BinPromptDepth, cfg: TrainConfig, steps: int) -> tuple[list, Any, Any]:
    """The authors' optimiser: AdamW on the tokens and OneCycleLR over ``steps`` optimiser steps."""
    params = model.trainable_parameters()
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.lr, total_steps=max(steps, 1), pct_start=cfg.pct_start,
        anneal_strategy=cfg.anneal_strategy, div_factor=cfg.div_factor, final_div_factor=cfg.final_div_factor,
        base_momentum=cfg.base_momentum, max_momentum=cfg.max_momentum,
    )
    return params, opt, sched


def optimiser_step(model: BinPromptDepth, params: list, opt, sched, feats: torch.Tensor, target: SILogTarget,
                   grad_clip: float, forward_context: Callable[[], Any] = contextlib.nullcontext) -> float:
    """One step of the authors' Lightning loop on precomputed dense features: text encoder + head, SILog
    (the forward inside ``forward_context``, e.g. bf16 autocast), backward, grad-norm clip, AdamW step,
    OneCycle step. Returns the loss. A row trained alone is a lockstep step of one row."""
    return optimiser_steps([model], [(params, opt, sched)], feats, [target], [grad_clip], forward_context)[0]


def optimiser_steps(models: Sequence[BinPromptDepth], optimisers: Sequence[tuple], feats: torch.Tensor,
                    targets: Sequence[SILogTarget], grad_clips: Sequence[float],
                    forward_context: Callable[[], Any] = contextlib.nullcontext) -> list[float]:
    """:func:`optimiser_step` for several rows on the same features (a lockstep step), as one graph.

    Every row's prompts go through the text encoder in one pass (:func:`clipdepth.model.prompt_learner.encode_prompts`),
    each row computes its head and SILog, one backward runs on the sum of the losses -- each row's tokens
    depend on their own loss only, so each receives exactly its own gradient -- and then each row clips
    its gradient norm and takes its AdamW and OneCycle steps. Each row's result is bit-identical to the
    same step of that row alone (:func:`clipdepth.model.text_encoder.encode_prompt_groups` says why; tested).
    Returns the rows' losses.
    """
    # channel-major memory once for all rows: each head's product then reads it without a copy of its own
    feats = feats.transpose(0, 1).contiguous().transpose(0, 1)
    with forward_context():
        texts = encode_prompts([m.prompts for m in models])
        depths = [m.forward_features(feats, normalise_text(t, m.text_norm)) for m, t in zip(models, texts, strict=True)]
    losses = [target(d.float()) for d, target in zip(depths, targets, strict=True)]
    for _, opt, _ in optimisers:
        opt.zero_grad(set_to_none=True)
    torch.stack(losses).sum().backward()
    for (params, opt, sched), clip in zip(optimisers, grad_clips, strict=True):
        torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        sched.step()
    return [loss.item() for loss in losses]


def batch_order(seed: int, epoch: int, n: int, batch_size: int) -> list[list[int]]:
    """Shuffled batches of one epoch, derived from (seed, epoch) only (no global RNG)."""
    order = np.random.default_rng([seed, epoch, 0x5EED]).permutation(n)
    return [order[i : i + batch_size].tolist() for i in range(0, n, batch_size)]


def say_resumed(what: str, epoch: int, epochs: int, checkpoint: Path) -> None:
    """One line on stderr (above any progress bar): a rerun after a kill continues from ``checkpoint``."""
    tqdm.write(f"{what}: resumed from the checkpoint of epoch {epoch} of {epochs} ({checkpoint})", file=sys.stderr)
