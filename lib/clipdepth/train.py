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
run key (method + weights + data kind + sizes + epochs) and not repeated unless forced.
"""

from __future__ import annotations

import copy
import csv
import functools
import json
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
from tqdm.auto import tqdm

from . import experiments
from .backbone import load_clip, weights_id
from .data.profile_data import open_split
from .data.transforms import TrainTransform, to_tensor
from .evaluate import EvalResult, evaluate, flip_average
from .experiments import ResolvedExperiment
from .features import CachedFeatures, FeatureCache, FeatureKey, split_fingerprint
from .heads import BinPromptDepth
from .losses import silog_loss, upsample
from .methods import build_bin_prompt_model
from .metrics import average_metrics, compute_metrics

CHECKPOINT_FORMAT = 1


@dataclass
class RunResult:
    """What a finished run leaves behind (also written to ``result.json`` in its folder)."""

    name: str
    run_key: str
    run_dir: Path
    metrics: dict[str, float]
    per_image: list[dict[str, float]]
    history: list[dict[str, float]]
    train_seconds: float
    eval_seconds: float
    mode: str
    examples: list[dict[str, Any]] = field(default_factory=list)
    reused: bool = False


def build_model(resolved: ResolvedExperiment, clip_model: open_clip.CLIP) -> BinPromptDepth:
    """The bin-prompt model an experiment describes (untrained tokens drawn from its seed)."""
    return build_bin_prompt_model(
        clip_model, resolved.words, resolved.template, resolved.bins, resolved.min_depth, resolved.max_depth,
        text_norm=resolved.text_norm, logit_scale=resolved.logit_scale, seed=resolved.train.seed,
        dense_mode=resolved.dense_mode, image_norm=resolved.image_norm, bn=resolved.train.bn,
    )


def _atomic_save(obj: Any, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix="partial-", suffix=".pt", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _bn_buffers(model: BinPromptDepth) -> dict[str, torch.Tensor]:
    """BatchNorm running statistics: they change under ``bn=adapt`` and belong in a checkpoint."""
    return {k: v.detach().clone() for k, v in model.clip.visual.state_dict().items()
            if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}


def batch_order(seed: int, epoch: int, n: int, batch_size: int) -> list[list[int]]:
    """Shuffled batches of one epoch, derived from (seed, epoch) only (no global RNG)."""
    order = np.random.default_rng([seed, epoch, 0x5EED]).permutation(n)
    return [order[i : i + batch_size].tolist() for i in range(0, n, batch_size)]


class Trainer:
    """Train and evaluate one resolved experiment (see module docstring)."""

    def __init__(
        self,
        resolved: ResolvedExperiment,
        runs_dir: str | os.PathLike[str] = "runs",
        cache_dir: str | os.PathLike[str] = "cache/features",
        device: str | torch.device = "cpu",
        views: int = 4,
        autocast_bf16: bool = False,
        progress: bool = True,
        clip_model: open_clip.CLIP | None = None,
        n_train: int | None = None,
        n_test: int | None = None,
    ) -> None:
        self.resolved = resolved
        self.train_cfg = resolved.train
        self.device = torch.device(device)
        self.views = int(views)
        if self.views < 1:
            raise ValueError(f"views must be >= 1, got {views}")
        self.autocast_bf16 = autocast_bf16
        self.progress = progress
        self.runs_dir = Path(runs_dir)
        self.cache = FeatureCache(cache_dir)
        self._clip = clip_model
        self._counts = {k: v for k, v in (("n_train", n_train), ("n_test", n_test)) if v is not None}

    @functools.cached_property
    def run_dir(self) -> Path:
        """``runs/<run key>-<data>[-k<views>]``: the method and run settings (run key), the exact train
        and test samples (a fingerprint of their names, so other frame counts never reuse a result)
        and, for cached runs, the number of augmented views -- everything a result depends on."""
        data = split_fingerprint([*self.split("train").names(), "|", *self.split("test").names()])
        suffix = f"-k{self.views}" if self.train_cfg.mode == "cached" and self.resolved.epochs > 0 else ""
        return self.runs_dir / f"{self.resolved.run_key[:16]}-{data[:8]}{suffix}"

    # -- data and model -------------------------------------------------------------------------
    @property
    def clip(self) -> open_clip.CLIP:
        if self._clip is None:
            self._clip = load_clip(self.resolved.arch, self.resolved.weights, seed=0, device=self.device)
        return self._clip

    def split(self, name: str):
        return open_split(self.resolved, name, **self._counts)

    def transform(self) -> TrainTransform:
        return TrainTransform(self.resolved.dataset, crop=tuple(self.resolved.train_size), seed=self.train_cfg.seed)

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
        enabled = self.autocast_bf16 and self.device.type == "cuda"
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=enabled)

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
    def step_loss(self, model: BinPromptDepth, feats: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        """SILog of the prediction from dense features; the text encoder runs once for all N prompts."""
        with self._autocast():
            depth = model.forward_features(feats)
        return silog_loss(depth.float(), gt, self.resolved.min_depth, self.train_cfg.loss_alpha,
                          self.train_cfg.loss_lambda)

    def _optimiser(self, model: BinPromptDepth, steps: int):
        cfg = self.train_cfg
        params = model.trainable_parameters()
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=cfg.lr, total_steps=max(steps, 1), pct_start=cfg.pct_start,
            anneal_strategy=cfg.anneal_strategy, div_factor=cfg.div_factor, final_div_factor=cfg.final_div_factor,
            base_momentum=cfg.base_momentum, max_momentum=cfg.max_momentum,
        )
        return params, opt, sched

    def _batches(self, model: BinPromptDepth, epoch: int, train_ds, views) -> Iterator[tuple[torch.Tensor, ...]]:
        n = len(train_ds) if train_ds is not None else len(views[0])
        for idx in batch_order(self.train_cfg.seed, epoch, n, self.train_cfg.batch_size):
            if self.train_cfg.mode == "cached":
                yield views[epoch % len(views)].batch(idx, self.device)
            else:
                tf = self.transform()
                images, depth = self._image_batch([tf(train_ds[i], epoch, i) for i in idx])
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

    def run(self, force: bool = False, stop_after: int | None = None, keep_examples: int = 3) -> RunResult:
        """Train (if the experiment trains), evaluate the final tokens, write ``result.json``.

        ``stop_after`` ends training after that many epochs without evaluating (to test resuming).
        """
        result_path = self.run_dir / "result.json"
        if result_path.is_file() and not force and stop_after is None:
            return self._load_result(result_path)
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
            for epoch in tqdm(range(start, epochs), desc=self.resolved.name, disable=not self.progress,
                              initial=start, total=epochs):
                model.train()
                losses = []
                batches = tqdm(self._batches(model, epoch, train_ds, views), total=steps_per_epoch, leave=False,
                               desc=f"epoch {epoch + 1}", disable=not self.progress)
                for feats, gt in batches:
                    loss = self.step_loss(model, feats, gt)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(params, self.train_cfg.grad_clip)
                    opt.step()
                    sched.step()
                    losses.append(loss.item())
                history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)),
                                "lr": float(sched.get_last_lr()[0])})
                self._write_log(history)
                _atomic_save({"format": CHECKPOINT_FORMAT, "run_key": self.resolved.run_key, "epoch": epoch + 1,
                              "prompts": model.prompts.state_dict(), "optimizer": opt.state_dict(),
                              "scheduler": sched.state_dict(),
                              "bn_buffers": _bn_buffers(model) if self.train_cfg.bn == "adapt" else {},
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
        result = RunResult(self.resolved.name, self.resolved.run_key, self.run_dir, evaluation.mean,
                           evaluation.per_image, history, train_seconds, time.perf_counter() - t1,
                           self.train_cfg.mode, evaluation.examples)
        self._save_result(result, model)
        return result

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
            return evaluate(model, ds, r.min_depth, r.max_depth, crop, protocol=protocol, device=self.device,
                            keep_examples=keep_examples, progress=self.progress)
        plain, flipped = self.test_views(model)
        text = model.text_features()
        rows, names, examples = [], [], []
        for i in range(len(ds)):
            f, _ = plain.batch([i], self.device)
            ff, _ = flipped.batch([i], self.device)
            low = flip_average(model.forward_features(f, text), model.forward_features(ff, text),
                               r.min_depth, r.max_depth)
            sample = ds[i]
            full = upsample(low, sample.depth.shape)
            rows.append(compute_metrics(full, sample.depth, crop, r.min_depth, r.max_depth))
            names.append(sample.name)
            if len(examples) < keep_examples:
                examples.append({"name": sample.name, "image": sample.image, "depth": sample.depth,
                                 "pred": full.squeeze().cpu().numpy()})
        return EvalResult(rows, names, average_metrics(rows), examples)

    # -- files ----------------------------------------------------------------------------------
    def _write_log(self, history: list[dict[str, float]]) -> None:
        path = self.run_dir / "log.csv"
        with path.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(history[0]))
            writer.writeheader()
            writer.writerows(history)

    def _save_result(self, result: RunResult, model: BinPromptDepth) -> None:
        _atomic_save(model.prompts.state_dict(), self.run_dir / "prompts.pt")
        if result.examples:
            arrays = {f"{k}_{i}": np.asarray(ex[k]) for i, ex in enumerate(result.examples)
                      for k in ("image", "depth", "pred")}
            names = np.array([ex["name"] for ex in result.examples])
            np.savez_compressed(self.run_dir / "examples.npz", **arrays, names=names)
        payload = {"name": result.name, "run_key": result.run_key, "mode": result.mode,
                   "experiment": self.resolved.to_dict(), "metrics": result.metrics,
                   "per_image": result.per_image, "history": result.history,
                   "train_seconds": result.train_seconds, "eval_seconds": result.eval_seconds}
        tmp = self.run_dir / ".result.json.tmp"
        tmp.write_text(json.dumps(payload, indent=2, default=str))
        os.replace(tmp, self.run_dir / "result.json")

    def _load_result(self, path: Path) -> RunResult:
        data = json.loads(path.read_text())
        examples = []
        ex_path = self.run_dir / "examples.npz"
        if ex_path.is_file():
            with np.load(ex_path) as z:
                for i, name in enumerate(z["names"]):
                    examples.append({"name": str(name), **{k: z[f"{k}_{i}"] for k in ("image", "depth", "pred")}})
        return RunResult(self.resolved.name, data["run_key"], self.run_dir, data["metrics"], data["per_image"],
                         data["history"], data["train_seconds"], data["eval_seconds"], data["mode"], examples,
                         reused=True)

    def trained_prompts(self) -> dict[str, torch.Tensor]:
        """The final tokens of a finished run (for the nearest-neighbour analysis)."""
        return torch.load(self.run_dir / "prompts.pt", map_location="cpu", weights_only=True)


TRAIN_MODES: tuple[str, ...] = ("cached", "faithful")


def resolve_row(
    name: str,
    profile: str = "demo",
    mode: str = "cached",
    epochs: int | None = None,
    weights: str | None = None,
    seed: int | None = None,
) -> ResolvedExperiment:
    """A registry row bound to a profile, in the requested training mode, with run overrides.

    ``cached`` means cached features and BN ``frozen``; ``faithful`` keeps the registry's BN policy
    (``adapt``, the authors' behaviour). Untrained rows in ``cached`` mode are evaluated on the cached
    test features too: such a row never updates BatchNorm statistics, so ``frozen`` and ``adapt`` are
    the same network and its method hash ignores the training mode; only the fp16 storage of the
    cached features differs, and it saves a live image-encoder pass per row. ``weights`` and ``seed``
    override the profile's weights and the authors' seed.
    """
    if mode not in TRAIN_MODES:
        raise ValueError(f"unknown training mode {mode!r}; valid: {', '.join(TRAIN_MODES)}")
    exp = experiments.get(name)
    changes: dict[str, Any] = {}
    if seed is not None and int(seed) != exp.train.seed:
        changes["seed"] = int(seed)
    if mode == "cached" and exp.eval_protocol != "depthclip":
        changes.update(mode="cached", bn="frozen")
    elif mode == "faithful" and exp.trained and exp.train.mode != "faithful":
        changes.update(mode="faithful")
    if changes:
        exp = experiments.variant(exp, **changes)
    overrides: dict[str, Any] = {}
    if epochs is not None:
        overrides["epochs"] = int(epochs)
    if weights is not None:
        overrides["weights"] = weights
    return experiments.resolve(exp, profile, **overrides)


def run_table_row(name: str, profile: str = "demo", mode: str = "cached", epochs: int | None = None,
                  force: bool = False, keep_examples: int = 3, **trainer_kwargs: Any) -> RunResult:
    """Train (when the row trains) and evaluate one paper-table row; reuse a finished identical run."""
    resolved = resolve_row(name, profile, mode, epochs)
    result = Trainer(resolved, **trainer_kwargs).run(force=force, keep_examples=keep_examples)
    result.name = name
    return result
