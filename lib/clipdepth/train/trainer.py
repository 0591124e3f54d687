"""Training and evaluation of one experiment: the authors' protocol, faithful or cached.

Only the prompt tokens are optimised (AdamW, OneCycleLR stepped per batch, grad-norm clip, SILog on
the upsampled prediction). Two modes share one loop:

- ``faithful``: every step augments its batch live and runs the image encoder (BN policy ``adapt`` by
  default, as the authors' Lightning code effectively did);
- ``cached``: the dense features of K pre-drawn augmented views per training image come from the
  feature cache (view ``v`` is exactly the augmentation faithful mode draws in epoch ``v``; epoch ``e``
  uses view ``e mod K``), BN ``frozen``, so a step is one text-encoder pass and a matmul.

All randomness is derived from (seed, epoch, index) -- batch order, augmentation -- so a run resumed
from its epoch-k checkpoint ends bit-identical to an uninterrupted one. A finished run is found by its
run folder, whose name covers the run key (method + weights + data kind + sizes + epochs), the weights'
content, the precision, the exact samples and the fingerprint of the computing code
(:mod:`clipdepth.train._codeid`); it is not repeated unless forced. A run computed by other code is *stale*:
it is recomputed, or reused and labelled stale with ``allow_stale``.

Rows that share a data stream are trained together by :mod:`clipdepth.train.lockstep`, which reuses this
module's pieces (model building, optimiser, loss, result files) so a lockstep row and a row trained
alone here are the same computation.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
from tqdm.auto import tqdm

from clipdepth._files import file_lock
from clipdepth.data.pipeline import InputPipeline, check_workers, prefetched
from clipdepth.data.profile_data import open_split
from clipdepth.data.transforms import TrainTransform, to_tensor
from clipdepth.data.validate import validate_once
from clipdepth.eval.protocols import EvalResult, Scores, evaluate, flip_average, upsample
from clipdepth.model.backbone import load_clip, weights_id
from clipdepth.model.factory import model_for_experiment
from clipdepth.model.head import BinPromptDepth
from clipdepth.study import experiments
from clipdepth.study.experiments import ResolvedExperiment
from clipdepth.train._codeid import code_fingerprint, git_state
from clipdepth.train.feature_cache import CachedFeatures, FeatureCache, FeatureKey, split_fingerprint
from clipdepth.train.losses import SILogTarget
from clipdepth.train.run_files import (
    CHECKPOINT_FORMAT,
    DamagedResultWarning,
    RunResult,
    atomic_save,
    load_result,
    save_result,
    write_log,
)
from clipdepth.train.step import (
    PRECISIONS,
    batch_order,
    bn_buffers,
    check_precision,
    make_optimiser,
    optimiser_step,
    precision_context,
    say_resumed,
)

__all__ = ["CHECKPOINT_FORMAT", "PRECISIONS", "DamagedResultWarning", "RunResult", "Trainer",
           "batch_order", "build_model", "make_optimiser", "optimiser_step", "run_table_row"]


def build_model(resolved: ResolvedExperiment, clip_model: open_clip.CLIP) -> BinPromptDepth:
    """The bin-prompt model an experiment describes (untrained tokens drawn from its seed and token init)."""
    return model_for_experiment(resolved, clip_model)


class Trainer:
    """Train and evaluate one resolved experiment (see module docstring)."""

    def __init__(
        self,
        resolved: ResolvedExperiment,
        runs_dir: str | os.PathLike[str] = "runs",
        cache_dir: str | os.PathLike[str] = "cache/features",
        device: str | torch.device = "cpu",
        views: int = 4,
        precision: str = "fp32",
        progress: bool = True,
        clip_model: open_clip.CLIP | None = None,
        n_train: int | None = None,
        n_test: int | None = None,
        subset: int | None = None,
        allow_stale: bool = False,
        num_workers: int | None = None,
    ) -> None:
        self.resolved = resolved
        self.num_workers = check_workers(num_workers)  # input pipeline processes; results do not depend on it
        self.train_cfg = resolved.train
        self.device = torch.device(device)
        self.views = int(views)
        if self.views < 1:
            raise ValueError(f"views must be >= 1, got {views}")
        self.precision = check_precision(precision, self.device)
        self.allow_stale = allow_stale
        self.progress = progress
        self.runs_dir = Path(runs_dir)
        self.cache = FeatureCache(cache_dir)
        self._clip = clip_model
        self.subset = subset
        self._splits: dict[str, Any] = {}
        self._counts = {k: v for k, v in (("n_train", n_train), ("n_test", n_test), ("subset", subset))
                        if v is not None}

    @functools.cached_property
    def data_fingerprint(self) -> str:
        """Fingerprint of the exact train and test sample names (other frame counts or subsets differ)."""
        return split_fingerprint([*self.split("train").names(), "|", *self.split("test").names()])

    @functools.cached_property
    def identity(self) -> str:
        """Hash of everything but the code a result depends on: the run key (method, weights choice,
        data kind, sizes, epochs), the weights' *content* (a file replaced at the same path is another
        run) and the precision."""
        payload = {"run_key": self.resolved.run_key, "weights_id": weights_id(self.resolved.weights),
                   "precision": self.precision}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def _dir_name(self, code: str) -> str:
        suffix = f"-k{self.views}" if self.train_cfg.mode == "cached" and self.resolved.epochs > 0 else ""
        return f"{self.identity[:16]}-{self.data_fingerprint[:8]}-c{code}{suffix}"

    @functools.cached_property
    def run_dir(self) -> Path:
        """``runs/<identity>-<data>-c<code>[-k<views>]``: :attr:`identity`, the exact samples, the
        fingerprint of the computing code and, for cached runs, the number of augmented views --
        everything a result depends on."""
        return self.runs_dir / self._dir_name(code_fingerprint()[:12])

    def stale_result(self) -> Path | None:
        """The newest finished result of this run computed by *other* code, if any."""
        pattern = self._dir_name("*")
        found = [p / "result.json" for p in self.runs_dir.glob(pattern) if p != self.run_dir]
        found = [p for p in found if p.is_file()]
        return max(found, key=lambda p: p.stat().st_mtime) if found else None

    def finished(self) -> RunResult | None:
        """The finished result of this run, if there is a readable one (or a stale one when allowed).

        A damaged ``result.json`` is reported by path (a warning) and treated as missing.
        """
        path = self.run_dir / "result.json"
        if path.is_file():
            result = self._load_result(path)
            if result is not None:
                return result
        if self.allow_stale:
            stale = self.stale_result()
            if stale is not None:
                result = self._load_result(stale)
                if result is not None:
                    result.stale = True
                    return result
        return None

    def protocol(self) -> dict[str, Any]:
        """How this row is trained and evaluated, as every results file and scorecard row states it."""
        cfg, r = self.train_cfg, self.resolved
        trained = r.epochs > 0
        return {"mode": cfg.mode if trained else "untrained", "bn": cfg.bn,
                "views": self.views if trained and cfg.mode == "cached" else None,
                "precision": self.precision, "features": "float16 cache" if trained and cfg.mode == "cached"
                else "live " + ("bf16" if self.precision == "bf16" else "float32"),
                "seed": cfg.seed, "epochs": r.epochs, "batch_size": cfg.batch_size,
                "eval_protocol": r.eval_protocol, "subset": self.subset, "num_workers": self.num_workers}

    # -- data and model -------------------------------------------------------------------------
    @property
    def clip(self) -> open_clip.CLIP:
        if self._clip is None:
            self._clip = load_clip(self.resolved.arch, self.resolved.weights, seed=0, device=self.device)
        return self._clip

    def split(self, name: str):
        """The reader of split ``name``, opened once per trainer: the run folder, validation, training and
        evaluation all ask for it, and opening means parsing the list (24k lines at paper size)."""
        if name not in self._splits:
            self._splits[name] = open_split(self.resolved, name, **self._counts)
        return self._splits[name]

    def validate_data(self) -> None:
        """Decode every file this run will read (train when it trains, and test) before the first step, so
        a corrupt or all-zero frame stops the run at once, naming the file, not after training."""
        splits = ("train", "test") if self.resolved.epochs > 0 else ("test",)
        for name in splits:
            validate_once(self.split(name), self.runs_dir / "validated", progress=self.progress)

    def transform(self) -> TrainTransform:
        return TrainTransform(self.resolved.dataset, crop=tuple(self.resolved.train_size), seed=self.train_cfg.seed)

    def input_pipeline(self, train_ds) -> InputPipeline:
        """The augmented training batches of ``train_ds``, built ahead by :attr:`num_workers` processes."""
        return InputPipeline(train_ds, self.transform(), self.num_workers, self.device)

    def test_samples(self):
        """The test split's samples in order, decoded ahead by :attr:`num_workers` processes."""
        return prefetched(self.split("test"), self.num_workers)

    def model(self) -> BinPromptDepth:
        """A fresh model; under ``bn=adapt`` on a private copy of CLIP, since training then changes its
        BatchNorm statistics and a CLIP shared with other runs must not inherit them."""
        clip_model = copy.deepcopy(self.clip) if self.train_cfg.bn == "adapt" else self.clip
        return build_model(self.resolved, clip_model).to(self.device)

    def _feature_key(self, split_names: list[str], view: str, size: tuple[int, int]) -> FeatureKey:
        r = self.resolved
        scale = 1000.0 if r.dataset == "nyu" else 256.0
        return FeatureKey(r.arch, weights_id(r.weights), r.dense_mode, r.image_norm, tuple(size),
                          split_fingerprint(split_names), view, depth_scale=scale)

    def _image_batch(self, samples: list) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = [to_tensor(s) for s in samples]
        images = torch.stack([p[0] for p in pairs]).to(self.device)
        depth = torch.stack([p[1] for p in pairs]).to(self.device)
        return images, depth

    @torch.no_grad()
    def _features(self, model: BinPromptDepth, images: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            return model.image_features(images).float()

    def _autocast(self):
        return precision_context(self.precision, self.device)

    def train_views(self, model: BinPromptDepth) -> list[CachedFeatures]:
        """The K cached augmented views of the training split (built on first use)."""
        ds, tf = self.split("train"), self.transform()
        model.eval()  # features for the cache come from the frozen encoder (BN in eval mode)
        out = []
        for v in range(self.views):
            key = self._feature_key(ds.names(), f"train-aug{self.train_cfg.seed}-{v}", self.resolved.train_size)

            def compute(idx: list[int], v: int = v) -> tuple[torch.Tensor, np.ndarray]:
                images, depth = self._image_batch([tf(ds[i], v, i) for i in idx])
                return self._features(model, images), depth[:, 0].cpu().numpy()

            out.append(self.cache.get_or_build(key, len(ds), compute, progress=self.progress))
        return out

    def test_views(self, model: BinPromptDepth) -> tuple[CachedFeatures, CachedFeatures]:
        """Cached test features of the images and of their mirrors (flip TTA)."""
        ds = self.split("test")
        model.eval()
        out = []
        for view in ("test", "test-flip"):
            key = self._feature_key(ds.names(), view, self.resolved.test_size)

            def compute(idx: list[int], flip: bool = view == "test-flip") -> tuple[torch.Tensor, np.ndarray]:
                images, depth = self._image_batch([ds[i] for i in idx])
                return self._features(model, images.flip(-1) if flip else images), depth[:, 0].cpu().numpy()

            out.append(self.cache.get_or_build(key, len(ds), compute, progress=self.progress))
        return out[0], out[1]

    # -- one optimisation step ------------------------------------------------------------------
    def loss_target(self, gt: torch.Tensor, feats: torch.Tensor) -> SILogTarget:
        """The batch's SILog target (mask, log depth, upsampling), shared by every row of a lockstep step."""
        return SILogTarget(gt, tuple(feats.shape[-2:]), self.resolved.min_depth, self.train_cfg.loss_alpha,
                           self.train_cfg.loss_lambda)

    def step_loss(self, model: BinPromptDepth, feats: torch.Tensor, gt: torch.Tensor | SILogTarget) -> torch.Tensor:
        """SILog of the prediction from dense features; the text encoder runs once for all N prompts."""
        target = gt if isinstance(gt, SILogTarget) else self.loss_target(gt, feats)
        with self._autocast():
            depth = model.forward_features(feats)
        return target(depth.float())

    def optimiser_step(self, model: BinPromptDepth, params: list, opt, sched, feats: torch.Tensor,
                       target: torch.Tensor | SILogTarget) -> float:
        """One step of the authors' loop on precomputed features (see :func:`optimiser_step`)."""
        target = target if isinstance(target, SILogTarget) else self.loss_target(target, feats)
        return optimiser_step(model, params, opt, sched, feats, target, self.train_cfg.grad_clip, self._autocast)

    def _optimiser(self, model: BinPromptDepth, steps: int):
        return make_optimiser(model, self.train_cfg, steps)

    def _batches(self, model: BinPromptDepth, epoch: int, train_ds, views,
                 pipe: InputPipeline | None = None) -> Iterator[tuple[torch.Tensor, ...]]:
        n = len(train_ds) if train_ds is not None else len(views[0])
        order = batch_order(self.train_cfg.seed, epoch, n, self.train_cfg.batch_size)
        if self.train_cfg.mode == "cached":
            for idx in order:
                yield views[epoch % len(views)].batch(idx, self.device)
            return
        for images, depth in pipe.epoch(epoch, order):
            yield self._features(model, images), depth

    # -- the run --------------------------------------------------------------------------------
    def _checkpoint_path(self, epoch: int) -> Path:
        return self.run_dir / f"epoch_{epoch:03d}.pt"

    def _latest_checkpoint(self) -> tuple[int, Path] | None:
        found = sorted(self.run_dir.glob("epoch_*.pt"))
        return (int(found[-1].stem.split("_")[1]), found[-1]) if found else None

    def load_checkpoint(self, path: Path, model: BinPromptDepth, opt=None, sched=None) -> dict:
        """Restore tokens (and optimiser, schedule, BN statistics); refuse another config's file."""
        state = torch.load(path, map_location=self.device, weights_only=True)
        if state.get("run_key") != self.resolved.run_key:
            raise ValueError(
                f"{path} belongs to another configuration (run key {str(state.get('run_key'))[:16]}, "
                f"expected {self.resolved.run_key[:16]} for {self.resolved.name}); use another runs folder"
            )
        model.prompts.load_state_dict(state["prompts"])
        if state.get("bn_buffers"):
            model.clip.visual.load_state_dict(state["bn_buffers"], strict=False)
        if opt is not None:
            opt.load_state_dict(state["optimizer"])
        if sched is not None:
            sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        return state

    def run(self, force: bool = False, stop_after: int | None = None, keep_examples: int = 3,
            on_step: Callable[[int, int], None] | None = None) -> RunResult:
        """Train (if the experiment trains), evaluate the final tokens, write ``result.json``.

        The run folder is locked for the whole run, so a second process asking for the same row waits,
        then reuses this one's result. ``stop_after`` ends training after that many epochs without
        evaluating (to test resuming); ``on_step(epoch, step)`` is called after every optimiser step.
        """
        if not force and stop_after is None:
            done = self.finished()
            if done is not None:
                return done
        with file_lock(self.run_dir, what=f"run folder of {self.resolved.name}"):
            if not force and stop_after is None:
                done = self.finished()  # another process may have finished it while we waited
                if done is not None:
                    return done
            return self._run_locked(force, stop_after, keep_examples, on_step)

    def _run_locked(self, force: bool, stop_after: int | None, keep_examples: int,
                    on_step: Callable[[int, int], None] | None) -> RunResult:
        self.validate_data()
        if force and self.run_dir.exists():
            for f in self.run_dir.glob("epoch_*.pt"):
                f.unlink()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(self.train_cfg.seed)
        model = self.model()
        cached = self.train_cfg.mode == "cached"
        epochs = self.resolved.epochs
        history: list[dict[str, float]] = []
        t0 = time.perf_counter()
        if epochs > 0:
            train_ds = None if cached else self.split("train")
            views = self.train_views(model) if cached else None
            n = len(views[0]) if cached else len(train_ds)
            steps_per_epoch = -(-n // self.train_cfg.batch_size)
            params, opt, sched = self._optimiser(model, epochs * steps_per_epoch)
            start = 0
            latest = self._latest_checkpoint()
            if latest is not None:
                state = self.load_checkpoint(latest[1], model, opt, sched)
                start, history = latest[0], list(state["history"])
                say_resumed(self.resolved.name, start, epochs, latest[1])
            with contextlib.ExitStack() as stack:
                pipe = None if cached else stack.enter_context(self.input_pipeline(train_ds))
                for epoch in tqdm(range(start, epochs), desc=self.resolved.name, disable=not self.progress,
                                  initial=start, total=epochs):
                    model.train()
                    losses = []
                    batches = tqdm(self._batches(model, epoch, train_ds, views, pipe), total=steps_per_epoch,
                                   leave=False, desc=f"epoch {epoch + 1}", disable=not self.progress)
                    for step, (feats, gt) in enumerate(batches):
                        losses.append(self.optimiser_step(model, params, opt, sched, feats, gt))
                        if on_step is not None:
                            on_step(epoch, step)
                    history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)),
                                    "lr": float(sched.get_last_lr()[0])})
                    self._write_log(history)
                    atomic_save({"format": CHECKPOINT_FORMAT, "run_key": self.resolved.run_key, "epoch": epoch + 1,
                                  "prompts": model.prompts.state_dict(), "optimizer": opt.state_dict(),
                                  "scheduler": sched.state_dict(),
                                  "bn_buffers": bn_buffers(model) if self.train_cfg.bn == "adapt" else {},
                                  "torch_rng": torch.get_rng_state(), "history": history},
                                 self._checkpoint_path(epoch + 1))
                    if stop_after is not None and epoch + 1 >= stop_after:
                        break
        train_seconds = time.perf_counter() - t0
        if stop_after is not None:
            return RunResult(self.resolved.name, self.resolved.run_key, self.run_dir, {}, [], history,
                             train_seconds, 0.0, self.train_cfg.mode)
        t1 = time.perf_counter()
        evaluation = self.evaluate(model, keep_examples=keep_examples)
        return self.finish(model, evaluation, history, train_seconds, time.perf_counter() - t1)

    def finish(self, model: BinPromptDepth, evaluation: EvalResult, history: list[dict[str, float]],
               train_seconds: float, eval_seconds: float, extra: dict[str, Any] | None = None) -> RunResult:
        """Package an evaluated model as this row's result and write its files (also used by lockstep)."""
        result = RunResult(self.resolved.name, self.resolved.run_key, self.run_dir, evaluation.mean,
                           evaluation.per_image, history, train_seconds, eval_seconds,
                           self.train_cfg.mode if self.resolved.epochs > 0 else "untrained", evaluation.examples,
                           pooled=evaluation.pooled, protocol=self.protocol(), provenance=self.provenance(extra))
        self._save_result(result, model, evaluation.names)
        return result

    def provenance(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """What computed this result: code fingerprint, git commit and dirty flag, weights identity, data."""
        return {"code_fingerprint": code_fingerprint(), "git": git_state(), "weights_id": weights_id(
            self.resolved.weights), "data_fingerprint": self.data_fingerprint, "identity": self.identity,
            "device": str(self.device), "torch": torch.__version__, **(extra or {})}

    @torch.no_grad()
    def evaluate(self, model: BinPromptDepth, keep_examples: int = 0) -> EvalResult:
        """The authors' protocol (flip TTA, clamp, upsample, crop) on the test split; cached features
        in cached mode, the live image encoder otherwise."""
        model.eval()
        r = self.resolved
        ds = self.split("test")
        crop = ds.spec.eval_crop
        if r.eval_protocol == "depthclip" or self.train_cfg.mode != "cached":
            protocol = "depthclip" if r.eval_protocol == "depthclip" else "authors"
            return evaluate(model, self.test_samples(), r.min_depth, r.max_depth, crop, protocol=protocol,
                            device=self.device, keep_examples=keep_examples, progress=self.progress, total=len(ds))
        plain, flipped = self.test_views(model)
        text = model.text_features()
        scores = Scores(keep_examples)
        for i, sample in enumerate(self.test_samples()):
            f, _ = plain.batch([i], self.device)
            ff, _ = flipped.batch([i], self.device)
            low = flip_average(model.forward_features(f, text), model.forward_features(ff, text),
                               r.min_depth, r.max_depth)
            scores.add(sample, upsample(low, sample.depth.shape), sample.depth, low, crop=crop,
                       min_depth=r.min_depth, max_depth=r.max_depth)
        return scores.result()

    # -- files ----------------------------------------------------------------------------------
    def _write_log(self, history: list[dict[str, float]]) -> None:
        write_log(self.run_dir, history)

    def _save_result(self, result: RunResult, model: BinPromptDepth, names: list[str] | None = None) -> None:
        save_result(result, model.prompts.state_dict(), self.resolved.to_dict(), names or [])

    def _load_result(self, path: Path) -> RunResult | None:
        return load_result(path, self.resolved.name)

    def trained_prompts(self) -> dict[str, torch.Tensor]:
        """The final tokens of a finished run (for the nearest-neighbour analysis)."""
        return torch.load(self.run_dir / "prompts.pt", map_location="cpu", weights_only=True)


def run_table_row(name: str, profile: str = "demo", mode: str = "faithful", epochs: int | None = None,
                  force: bool = False, keep_examples: int = 3, **trainer_kwargs: Any) -> RunResult:
    """Train (when the row trains) and evaluate one paper-table row; reuse a finished identical run."""
    resolved = experiments.resolve(name, profile, mode, epochs=epochs)
    result = Trainer(resolved, **trainer_kwargs).run(force=force, keep_examples=keep_examples)
    result.name = name
    return result
