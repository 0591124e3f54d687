"""Rows that share a data stream, trained in lockstep: one image-encoder pass per batch for all of them.

Why it is exact. In faithful mode the batch order and every augmentation derive from (seed, epoch,
sample index) only, and the image encoder is frozen. With BatchNorm in train mode (``bn="adapt"``, the
authors' behaviour) a batch is normalised with its own statistics, so its dense features depend on its
images alone, never on any row's prompt tokens, and the running statistics depend only on the batches
seen. Every trained row with the same *stream key* (:func:`stream_key`) therefore sees bit-identical
features at every step and ends with identical BatchNorm statistics. A :class:`LockstepGroup` computes
the features once per step and then steps every row as :class:`clipdepth.train.trainer.Trainer` steps it alone
(:func:`clipdepth.train.step.optimiser_steps`): the rows' prompts go through the text encoder in one
pass (:func:`clipdepth.model.text_encoder.encode_prompt_groups`, the same computation per row as encoding it
alone), each row computes its head and SILog, one backward of the summed losses gives each row its own
gradient, and each row clips, takes its AdamW and its OneCycle step. The batch's SILog target (mask, log
depth, upsampling matrices) is shared as well. Evaluation computes each test image's features (and its
mirror's) once with the group's adapted statistics and scores every row on them; untrained rows share
one pass with the original statistics (:class:`SharedEvaluation`).

Units of work. :func:`plan` turns requested rows into units -- lockstep groups, shared evaluations and
single rows (cached mode, DepthCLIP's protocol) -- each a picklable, pure function of its configuration
that writes every row's ``result.json`` into the shared runs folder. They run in this process, in
worker processes or as Slurm jobs (:mod:`clipdepth.run.executors`); a rerun does only what is missing.

Resuming. A group writes one checkpoint per epoch (every row's tokens, optimiser, schedule and history,
the shared BatchNorm statistics and the RNG) under ``<runs>/groups/``; after a kill at any point a rerun
resumes from the last one and ends bit-identical to an uninterrupted run.
"""

from __future__ import annotations

import abc
import contextlib
import copy
import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from clipdepth._files import file_lock
from clipdepth.data.pipeline import InputPipeline
from clipdepth.eval.protocols import EvalResult, Scores, flip_average, sample_tensor, upsample
from clipdepth.model.backbone import load_clip, weights_id
from clipdepth.model.head import BinPromptDepth
from clipdepth.study.experiments import ResolvedExperiment
from clipdepth.train._codeid import code_fingerprint
from clipdepth.train.losses import SILogTarget
from clipdepth.train.run_files import CHECKPOINT_FORMAT, RunResult, atomic_save
from clipdepth.train.step import batch_order, bn_buffers, optimiser_steps, say_resumed
from clipdepth.train.trainer import Trainer, build_model

__all__ = ["LockstepGroup", "RunOptions", "SharedEvaluation", "SingleRow", "Unit", "eval_stream_key", "plan",
           "run_units", "stream_key"]

ClipProvider = Callable[[str, "str | None"], Any]


def _hash(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _image_side(trainer: Trainer) -> dict[str, Any]:
    r = trainer.resolved
    return {"arch": r.arch, "weights": weights_id(r.weights), "dense_mode": r.dense_mode,
            "image_norm": r.image_norm, "dataset": r.dataset, "data": trainer.data_fingerprint,
            "test_size": list(r.test_size), "precision": trainer.precision, "code": code_fingerprint()}


def stream_key(trainer: Trainer) -> str:
    """Everything the image side of a training run depends on: architecture, weights (content), dense
    mode, image normalisation, dataset and its exact train/test samples, sizes, seed, batch size,
    epochs, BN policy, precision and the computing code. Rows with equal keys train in lockstep."""
    r, cfg = trainer.resolved, trainer.train_cfg
    return _hash({**_image_side(trainer), "train_size": list(r.train_size), "seed": cfg.seed,
                  "batch_size": cfg.batch_size, "epochs": r.epochs, "bn": cfg.bn, "mode": cfg.mode})


def eval_stream_key(trainer: Trainer) -> str:
    """What an untrained row's test features depend on: rows with equal keys share one evaluation pass."""
    return _hash(_image_side(trainer))


@dataclass(frozen=True)
class RunOptions:
    """Run settings shared by every row of a notebook or ``run_all.sh`` invocation (picklable)."""

    runs_dir: str = "cache/runs"
    cache_dir: str = "cache/features"
    device: str = "cpu"
    precision: str = "fp32"
    views: int = 4
    n_train: int | None = None
    n_test: int | None = None
    subset: int | None = None
    allow_stale: bool = False
    force: bool = False
    force_since: float | None = None  # with force: results written after this Unix time count as fresh
    keep_examples: int = 3
    progress: bool = False
    num_workers: int | None = None  # input pipeline processes (None: machine default); results do not depend on it

    def trainer(self, resolved: ResolvedExperiment, clip_model: Any | None = None) -> Trainer:
        return Trainer(resolved, runs_dir=self.runs_dir, cache_dir=self.cache_dir, device=self.device,
                       views=self.views, precision=self.precision, progress=self.progress, clip_model=clip_model,
                       n_train=self.n_train, n_test=self.n_test, subset=self.subset, allow_stale=self.allow_stale,
                       num_workers=self.num_workers)

    def done(self, trainer: Trainer) -> RunResult | None:
        """The row's finished result, unless ``force`` asks for it to be recomputed."""
        if self.force:
            path = trainer.run_dir / "result.json"
            fresh = self.force_since is not None and path.is_file() and path.stat().st_mtime >= self.force_since
            if not fresh:
                return None
        return trainer.finished()


@dataclass
class Unit(abc.ABC):
    """A picklable piece of work: rows whose results it writes into the shared runs folder.

    ``rows`` are distinct runs (rows with identical run folders were merged by :func:`plan`).
    """

    kind: str
    key: str
    rows: tuple[ResolvedExperiment, ...]
    options: RunOptions

    @property
    def label(self) -> str:
        names = ", ".join(r.name for r in self.rows[:3]) + (", ..." if len(self.rows) > 3 else "")
        return f"{self.kind} of {len(self.rows)} row(s) [{names}]"

    def trainers(self, clip_model: Any | None = None) -> list[Trainer]:
        return [self.options.trainer(r, clip_model) for r in self.rows]

    def is_done(self) -> bool:
        return all(self.options.done(t) is not None for t in self.trainers())

    def __call__(self, clip_model: Any | None = None) -> list[RunResult]:
        """Compute what is missing (holding every row's run-folder lock) and return all rows' results."""
        if clip_model is None:
            r = self.rows[0]
            clip_model = load_clip(r.arch, r.weights, seed=0, device=self.options.device)
        trainers = self.trainers(clip_model)
        with contextlib.ExitStack() as stack:
            for t in sorted(trainers, key=lambda t: str(t.run_dir)):  # one global order: no deadlock
                stack.enter_context(file_lock(t.run_dir, what=f"run folder of {t.resolved.name}"))
            done = {id(t): self.options.done(t) for t in trainers}
            pending = [t for t in trainers if done[id(t)] is None]
            for t in pending:
                t.validate_data()  # every file decoded before the first step (remembered once passed)
            if pending:
                for t, result in zip(pending, self._compute(pending, clip_model), strict=True):
                    done[id(t)] = result
        return [done[id(t)] for t in trainers]

    @abc.abstractmethod
    def _compute(self, pending: list[Trainer], clip_model: Any) -> list[RunResult]:
        """Compute ``pending`` rows (the unit holds their locks); each kind of unit does it its own way."""


class SingleRow(Unit):
    """One row run alone by :class:`Trainer` (cached mode, or DepthCLIP's evaluation protocol)."""

    def _compute(self, pending: list[Trainer], clip_model: Any) -> list[RunResult]:
        # the unit already holds the run-folder locks (a second flock on them would wait for ourselves)
        # force=True would also drop the epoch checkpoints, so only a forced run starts again from scratch
        return [t._run_locked(self.options.force, None, self.options.keep_examples, None) for t in pending]


@torch.no_grad()
def evaluate_rows(trainers: Sequence[Trainer], models: Sequence[BinPromptDepth], keep_examples: int = 0,
                  progress: bool = False) -> list[EvalResult]:
    """The authors' evaluation protocol for several rows sharing one image side, one encoder pass each.

    Per test image, the dense features of the image and of its mirror are computed once (with the
    shared encoder's BatchNorm statistics, in eval mode); every row then runs its own head on them.
    The arithmetic per row is that of :func:`clipdepth.eval.protocols.evaluate` with the row's model.
    """
    lead = trainers[0]
    ds = lead.split("test")
    crop = ds.spec.eval_crop
    for model in models:
        model.eval()
    texts = [m.text_features() for m in models]
    scores = [Scores(keep_examples) for _ in models]
    for sample in tqdm(lead.test_samples(), total=len(ds), desc="evaluate", disable=not progress, leave=False):
        image = sample_tensor(sample.image, lead.device)
        gt = np.asarray(sample.depth, dtype=np.float64)
        feats, feats_flipped = models[0].image_features(image), models[0].image_features(image.flip(-1))
        for t, model, text, score in zip(trainers, models, texts, scores, strict=True):
            r = t.resolved
            low = flip_average(model.forward_features(feats, text), model.forward_features(feats_flipped, text),
                               r.min_depth, r.max_depth)
            score.add(sample, upsample(low, gt.shape), gt, low, crop=crop, min_depth=r.min_depth,
                      max_depth=r.max_depth)
    return [score.result() for score in scores]


class SharedEvaluation(Unit):
    """Untrained rows with the same image side: one evaluation pass with the original statistics."""

    def _compute(self, pending: list[Trainer], clip_model: Any) -> list[RunResult]:
        clip = copy.deepcopy(clip_model)  # the models set BN modes on it; keep the caller's CLIP untouched
        models = [build_model(t.resolved, clip).to(pending[0].device) for t in pending]
        t0 = time.perf_counter()
        evals = evaluate_rows(pending, models, self.options.keep_examples, self.options.progress)
        seconds = (time.perf_counter() - t0) / len(pending)
        extra = {"shared_evaluation_rows": len(pending)}
        return [t.finish(m, e, [], 0.0, seconds, extra) for t, m, e in zip(pending, models, evals, strict=True)]


class LockstepGroup(Unit):
    """Trained faithful rows with one stream key, stepped together (see the module docstring)."""

    #: called after every step with (epoch, step); tests use it to interrupt a run mid-epoch
    on_step: Callable[[int, int], None] | None = None

    def group_dir(self, pending: Sequence[Trainer]) -> Path:
        rows = sorted(str(t.run_dir.name) for t in pending)
        return Path(self.options.runs_dir) / "groups" / f"{self.key[:16]}-{_hash({'rows': rows})[:8]}"

    def _compute(self, pending: list[Trainer], clip_model: Any) -> list[RunResult]:
        lead = pending[0]
        cfg = lead.train_cfg
        torch.manual_seed(cfg.seed)
        clip = copy.deepcopy(clip_model) if cfg.bn == "adapt" else clip_model
        models = [build_model(t.resolved, clip).to(lead.device) for t in pending]
        train_ds = lead.split("train")
        epochs = lead.resolved.epochs
        steps_per_epoch = -(-len(train_ds) // cfg.batch_size)
        optim = [t._optimiser(m, epochs * steps_per_epoch) for t, m in zip(pending, models, strict=True)]
        histories: list[list[dict[str, float]]] = [[] for _ in pending]
        group_dir = self.group_dir(pending)
        group_dir.mkdir(parents=True, exist_ok=True)
        start = self._resume(group_dir, pending, models, optim, histories)
        t0 = time.perf_counter()
        with lead.input_pipeline(train_ds) as pipe:  # batches built ahead by worker processes
            self._epochs(pending, models, optim, histories, group_dir, pipe, start)
        train_seconds = (time.perf_counter() - t0) / len(pending)
        t1 = time.perf_counter()
        evals = evaluate_rows(pending, models, self.options.keep_examples, self.options.progress)
        eval_seconds = (time.perf_counter() - t1) / len(pending)
        extra = {"stream_key": self.key, "lockstep_rows": len(pending)}
        return [t.finish(m, e, h, train_seconds, eval_seconds, extra)
                for t, m, e, h in zip(pending, models, evals, histories, strict=True)]

    def _epochs(self, pending: list[Trainer], models: list[BinPromptDepth], optim: list[tuple],
                histories: list[list[dict[str, float]]], group_dir: Path, pipe: InputPipeline, start: int) -> None:
        """Train every row from epoch ``start`` to the end, one encoder pass per batch, a checkpoint per epoch."""
        lead = pending[0]
        cfg = lead.train_cfg
        epochs = lead.resolved.epochs
        n_train = len(lead.split("train"))
        for epoch in tqdm(range(start, epochs), desc=f"lockstep x{len(pending)}", disable=not self.options.progress,
                          initial=start, total=epochs):
            for model in models:
                model.train()
            losses: list[list[float]] = [[] for _ in pending]
            order = batch_order(cfg.seed, epoch, n_train, cfg.batch_size)
            for step, (images, depth) in enumerate(tqdm(pipe.epoch(epoch, order), total=len(order), leave=False,
                                                        desc=f"epoch {epoch + 1}", disable=not self.options.progress)):
                feats = lead._features(models[0], images)  # the one encoder pass (BN statistics update once)
                targets: dict[tuple[float, float, float], SILogTarget] = {}  # one per (min depth, alpha, lambda)
                row_targets = []
                for t in pending:
                    key = (t.resolved.min_depth, t.train_cfg.loss_alpha, t.train_cfg.loss_lambda)
                    if key not in targets:
                        targets[key] = t.loss_target(depth, feats)
                    row_targets.append(targets[key])
                step_losses = optimiser_steps(models, optim, feats, row_targets,
                                              [t.train_cfg.grad_clip for t in pending], lead._autocast)
                for k, loss in enumerate(step_losses):
                    losses[k].append(loss)
                if self.on_step is not None:
                    self.on_step(epoch, step)
            for k, (t, (_, _, sched)) in enumerate(zip(pending, optim, strict=True)):
                histories[k].append({"epoch": epoch + 1, "loss": float(np.mean(losses[k])),
                                     "lr": float(sched.get_last_lr()[0])})
                t.run_dir.mkdir(parents=True, exist_ok=True)
                t._write_log(histories[k])
            self._checkpoint(group_dir, epoch + 1, pending, models, optim, histories)

    def _checkpoint(self, group_dir: Path, epoch: int, pending: Sequence[Trainer], models: Sequence[BinPromptDepth],
                    optim: Sequence[tuple], histories: Sequence[list]) -> None:
        state = {"format": CHECKPOINT_FORMAT, "stream_key": self.key, "epoch": epoch,
                 "run_keys": [t.resolved.run_key for t in pending],
                 "rows": [{"prompts": m.prompts.state_dict(), "optimizer": opt.state_dict(),
                           "scheduler": sched.state_dict(), "history": list(h)}
                          for m, (_, opt, sched), h in zip(models, optim, histories, strict=True)],
                 "bn_buffers": bn_buffers(models[0]) if pending[0].train_cfg.bn == "adapt" else {},
                 "torch_rng": torch.get_rng_state()}
        atomic_save(state, group_dir / f"epoch_{epoch:03d}.pt")
        for old in group_dir.glob("epoch_*.pt"):  # keep only the newest: a group checkpoint holds every row
            if old.name != f"epoch_{epoch:03d}.pt":
                old.unlink(missing_ok=True)

    def _resume(self, group_dir: Path, pending: Sequence[Trainer], models: Sequence[BinPromptDepth],
                optim: Sequence[tuple], histories: list[list]) -> int:
        found = sorted(group_dir.glob("epoch_*.pt"))
        if not found:
            return 0
        state = torch.load(found[-1], map_location=pending[0].device, weights_only=True)
        if state.get("stream_key") != self.key or state.get("run_keys") != [t.resolved.run_key for t in pending]:
            raise ValueError(f"{found[-1]} belongs to another lockstep group; remove {group_dir}")
        for k, (model, (_, opt, sched), row) in enumerate(zip(models, optim, state["rows"], strict=True)):
            model.prompts.load_state_dict(row["prompts"])
            opt.load_state_dict(row["optimizer"])
            sched.load_state_dict(row["scheduler"])
            histories[k] = list(row["history"])
        if state["bn_buffers"]:
            models[0].clip.visual.load_state_dict(state["bn_buffers"], strict=False)
        torch.set_rng_state(state["torch_rng"])
        say_resumed(f"lockstep group of {len(pending)} row(s)", int(state["epoch"]), pending[0].resolved.epochs,
                    found[-1])
        return int(state["epoch"])


def plan(rows: Sequence[ResolvedExperiment], options: RunOptions) -> tuple[list[Unit], list[tuple[int, int]]]:
    """Units of work for ``rows``, and for each row (in order) the index of its unit and of its run there.

    Rows with the same run folder (the same method printed in two tables) are computed once. Trained
    faithful rows are grouped by :func:`stream_key`, untrained rows under the authors' protocol by
    :func:`eval_stream_key`; cached-mode rows and DepthCLIP's protocol run alone.
    """
    buckets: dict[tuple[str, str], list[ResolvedExperiment]] = {}
    placed: dict[str, tuple[tuple[str, str], int]] = {}  # run folder -> (bucket, position)
    where: list[str] = []  # per row: its run folder
    for r in rows:
        t = options.trainer(r)
        run_dir = str(t.run_dir)
        where.append(run_dir)
        if run_dir in placed:
            continue
        if r.epochs > 0 and t.train_cfg.mode == "faithful":
            bucket = ("lockstep", stream_key(t))
        elif r.epochs == 0 and r.eval_protocol != "depthclip" and t.train_cfg.mode != "cached":
            bucket = ("shared-eval", eval_stream_key(t))
        else:
            bucket = ("single", _hash({"run_dir": run_dir}))
        members = buckets.setdefault(bucket, [])
        placed[run_dir] = (bucket, len(members))
        members.append(r)
    kinds = {"lockstep": LockstepGroup, "shared-eval": SharedEvaluation, "single": SingleRow}
    units: list[Unit] = []
    index: dict[tuple[str, str], int] = {}
    for (kind, key), members in buckets.items():
        index[(kind, key)] = len(units)
        units.append(kinds[kind](kind, key, tuple(members), options))
    return units, [(index[placed[d][0]], placed[d][1]) for d in where]


def run_units(rows: Sequence[ResolvedExperiment], options: RunOptions,
              clip_provider: ClipProvider | None = None) -> list[RunResult]:
    """Plan and run ``rows`` in this process; returns each row's result, in order (named as the row).

    ``clip_provider(arch, weights)`` supplies a loaded CLIP (notebooks share one per architecture).
    """
    units, where = plan(rows, options)
    results: list[list[RunResult]] = []
    for unit in units:
        r = unit.rows[0]
        results.append(unit(clip_provider(r.arch, r.weights) if clip_provider is not None else None))
    return [dataclasses.replace(results[u][k], name=r.name) for r, (u, k) in zip(rows, where, strict=True)]


def describe_units(units: Sequence[Unit]) -> list[str]:
    """One line per unit, for ``--plan`` and logs."""
    return [f"{u.kind:<11} {u.key[:12]}  {len(u.rows):>2} row(s): " + ", ".join(r.name for r in u.rows)
            for u in units]

