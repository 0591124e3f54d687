"""Train and score one baseline on one dataset in a profile; reuse a finished identical run.

``run_baseline("clip2depth", "nyu", profile="demo")`` builds the model, trains it with
:func:`clipdepth.baselines.fit.fit` on the profile's training split (the same data root, sizes and
augmentation as the learned-prompt rows: the profile part of the registry row ``t3/<dataset>/learned-7``),
evaluates it in the study's metric protocol (flip TTA, clamp, Eigen/Garg crop, per-image metrics) and,
for LLM-MDE by default, also with its authors' min-max-normalised scoring. Results land in
``<runs_dir>/baselines/<method>-<dataset>-<key>/result.json`` (+ ``examples.npz``); the key hashes every
setting that changes the numbers, so a second call with the same settings loads instead of retraining.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clipdepth._files import atomic_write, atomic_write_text
from clipdepth.baselines import clip2depth, llm_mde
from clipdepth.baselines.fit import FitConfig, TrainBatches, fit, probe_loss
from clipdepth.baselines.weights import bert_files_id
from clipdepth.data.profile_data import open_split
from clipdepth.eval.protocols import evaluate
from clipdepth.model.checkpoints import weights_id
from clipdepth.study import experiments

METHODS: tuple[str, ...] = ("clip2depth", "llm-mde")
RESULT_VERSION = 1
_TRAIN_DEFAULTS = {"clip2depth": clip2depth.TRAIN_DEFAULTS, "llm-mde": llm_mde.TRAIN_DEFAULTS}


@dataclass
class BaselineResult:
    """What one baseline run leaves behind (``result.json`` holds all but ``examples``)."""

    method: str
    dataset: str
    profile: str
    metrics: dict[str, float]
    normalised_metrics: dict[str, float] | None
    history: list[dict[str, float]]
    epoch_losses: list[float]
    probe_loss_before: float
    probe_loss_after: float
    train_seconds: float
    eval_seconds: float
    n_trainable: int
    n_parameters: int
    parameter_groups: dict[str, int]
    config: dict[str, Any]
    run_dir: Path
    examples: list[dict[str, Any]] = field(default_factory=list)
    reused: bool = False

    @property
    def name(self) -> str:
        return f"{self.method}/{self.dataset}"

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.pop("examples")
        out["run_dir"] = str(self.run_dir)
        return out


def fit_config(method: str, profile: str, **overrides: Any) -> FitConfig:
    """The method's training defaults (paper profile) or the profile's epoch count (demo), overridden."""
    if method not in METHODS:
        raise ValueError(f"unknown baseline {method!r}; valid: {', '.join(METHODS)}")
    defaults = dict(_TRAIN_DEFAULTS[method])
    profile_epochs = experiments.PROFILES[profile].epochs if profile in experiments.PROFILES else None
    if profile_epochs is not None:
        defaults["epochs"] = profile_epochs
    defaults.update({k: v for k, v in overrides.items() if v is not None})
    return FitConfig(**defaults)


def build_model(method: str, dataset: str, weights: str | None, seed: int, device: str | torch.device,
                clip_model: Any | None = None, files: dict[str, str] | None = None, **options: Any) -> torch.nn.Module:
    """CLIP2Depth on CLIP ``weights`` (None = random; or an already loaded, frozen ``clip_model`` of the
    configured arch), or LLM-MDE (pretrained towers iff weights given; ``files`` = ``{"vit": file,
    "bert": folder}`` loads either from local files)."""
    if method == "clip2depth":
        return clip2depth.build_clip2depth(dataset, weights=weights, seed=seed, device=device, clip_model=clip_model,
                                           **options)
    if method == "llm-mde":
        files = files or {}
        return llm_mde.build_llm_mde(dataset, pretrained=weights is not None, seed=seed, device=device,
                                     vit_file=files.get("vit"), bert_folder=files.get("bert"), **options)
    raise ValueError(f"unknown baseline {method!r}; valid: {', '.join(METHODS)}")


def _model_config(method: str, model: torch.nn.Module) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(model.config).items()}


def run_baseline(
    method: str,
    dataset: str = "nyu",
    profile: str = "demo",
    weights: str | None = None,
    epochs: int | None = None,
    max_steps: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    seed: int = 42,
    device: str | torch.device = "cpu",
    runs_dir: str | os.PathLike[str] = "runs",
    n_train: int | None = None,
    n_test: int | None = None,
    subset: int | None = None,
    keep_examples: int = 3,
    normalised: bool | None = None,
    force: bool = False,
    progress: bool = True,
    model_options: dict[str, Any] | None = None,
    clip_model: Any | None = None,
    files: dict[str, str] | None = None,
    data_dir: str | os.PathLike[str] | None = None,
) -> BaselineResult:
    """Train ``method`` on ``dataset`` in ``profile`` and evaluate it (see the module docstring).

    ``weights``: None = the profile's (demo: random-init CLIP / ViT / BERT; paper: OpenAI CLIP for
    CLIP2Depth and the cached ImageNet ViT + bert-base-uncased for LLM-MDE). ``epochs``, ``batch_size``,
    ``lr`` override the method's training defaults; ``max_steps`` caps a demo run. ``normalised``: also
    score with LLM-MDE's min-max normalisation (default: for LLM-MDE only). ``model_options`` override
    the model's config fields (e.g. ``{"image_size": 64}``). ``subset``: only the first N lines of each
    split list (a rehearsal; part of the run's key). ``clip_model``: CLIP2Depth only, a loaded
    CLIP of the configured arch and the same ``weights`` (saves loading it again; it is not modified).
    ``files``: LLM-MDE's towers from local files, ``{"vit": timm ViT-B/16 weights file, "bert": Hugging Face
    BERT folder}`` (either may be left out); each file's content hash enters the run key. ``data_dir``:
    the root the profile's data lives under (None: :func:`clipdepth.study.experiments.default_data_dir`).
    """
    overrides = {"weights": weights} if weights is not None else {}
    resolved = experiments.resolve(f"t3/{dataset}/learned-7", profile, data_dir=data_dir, **overrides)
    weights = resolved.weights
    cfg = fit_config(method, profile, epochs=epochs, batch_size=batch_size, lr=lr, max_steps=max_steps, seed=seed)
    normalised = (method == "llm-mde") if normalised is None else bool(normalised)
    counts = {k: v for k, v in (("n_train", n_train), ("n_test", n_test), ("subset", subset)) if v is not None}
    options = dict(model_options or {})
    key_payload = {
        "version": RESULT_VERSION, "method": method, "dataset": dataset, "profile": profile, "weights": weights,
        "data_root": resolved.data_root, "synthetic": resolved.synthetic, "train_size": list(resolved.train_size),
        "test_size": list(resolved.test_size), "counts": counts, "fit": dataclasses.asdict(cfg),
        "options": options, "normalised": normalised,
        "bert_tokenizer": llm_mde.bert_tokenizer_cached() if method == "llm-mde" else None,
    }
    files = {k: str(v) for k, v in (files or {}).items() if v is not None}
    if files:  # the content of each file, not its path (only then: earlier keys stay valid)
        key_payload["files"] = {k: (bert_files_id(v) if k == "bert" else weights_id(v)) for k, v in files.items()}
    key = hashlib.sha256(json.dumps(key_payload, sort_keys=True, default=str).encode()).hexdigest()[:12]
    run_dir = Path(runs_dir) / "baselines" / f"{method}-{dataset}-{key}"
    if (run_dir / "result.json").is_file() and not force:
        return _load(run_dir)

    model = build_model(method, dataset, weights, seed, device, clip_model=clip_model, files=files, **options)
    batches = TrainBatches(resolved, cfg.batch_size, seed=seed, device=device, **counts)
    probe = batches.batch(list(range(min(4, len(batches.dataset)))), epoch=0)
    before = probe_loss(model, *probe)
    result = fit(model, batches, cfg, progress=progress, desc=f"{method}/{dataset}")
    after = probe_loss(model, *probe)

    model.eval()
    test = open_split(resolved, "test", **counts)
    t0 = time.perf_counter()
    norm = None
    if normalised:  # one pass, both scorings (the metric one is identical to evaluate()'s)
        scored, norm_result = llm_mde.evaluate_normalised(model, test, resolved.min_depth, resolved.max_depth,
                                                          test.spec.eval_crop, device=device,
                                                          keep_examples=keep_examples)
        norm = norm_result.mean
    else:
        scored = evaluate(model, test, resolved.min_depth, resolved.max_depth, test.spec.eval_crop,
                          protocol="authors", device=device, keep_examples=keep_examples, progress=progress)
    eval_seconds = time.perf_counter() - t0
    out = BaselineResult(
        method=method, dataset=dataset, profile=profile, metrics=scored.mean, normalised_metrics=norm,
        history=result.history, epoch_losses=result.epoch_losses, probe_loss_before=before, probe_loss_after=after,
        train_seconds=result.train_seconds, eval_seconds=eval_seconds,
        n_trainable=sum(p.numel() for p in model.trainable_parameters()),
        n_parameters=sum(p.numel() for p in model.parameters()), parameter_groups=model.parameter_groups(),
        config={"model": _model_config(method, model), "fit": dataclasses.asdict(cfg), "weights": weights,
                "tokenizer": llm_mde.tokenizer_source(model.tokenizer) if method == "llm-mde" else None,
                "train_size": list(resolved.train_size), "test_size": list(resolved.test_size), **counts},
        run_dir=run_dir, examples=scored.examples,
    )
    _save(out)
    return out


def _save(result: BaselineResult) -> None:
    result.run_dir.mkdir(parents=True, exist_ok=True)
    if result.examples:
        arrays = {f"{k}_{i}": np.asarray(ex[k]) for i, ex in enumerate(result.examples)
                  for k in ("image", "depth", "pred")}
        names = np.array([ex["name"] for ex in result.examples])

        def write_examples(tmp: Path) -> None:
            with tmp.open("wb") as fh:  # a file object: np.savez would append ".npz" to a temporary's name
                np.savez_compressed(fh, **arrays, names=names)

        atomic_write(result.run_dir / "examples.npz", write_examples)
    atomic_write_text(result.run_dir / "result.json", json.dumps(result.to_json(), indent=2, default=str))


def _load(run_dir: Path) -> BaselineResult:
    data = json.loads((run_dir / "result.json").read_text())
    data["run_dir"] = run_dir
    data.pop("reused", None)
    examples = []
    if (run_dir / "examples.npz").is_file():
        with np.load(run_dir / "examples.npz") as z:
            for i, name in enumerate(z["names"]):
                examples.append({"name": str(name), **{k: z[f"{k}_{i}"] for k in ("image", "depth", "pred")}})
    return BaselineResult(**data, examples=examples, reused=True)
