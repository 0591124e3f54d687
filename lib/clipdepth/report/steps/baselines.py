"""The baseline-comparison notebook's steps: run every method, make table rows, put published numbers beside.

Why here and not in the notebook: the notebook must stay a dozen readable calls (DESIGN.md 1-2) and
these steps are tested without Jupyter. Why not in :mod:`clipdepth.baselines`: they run registry rows
through the report layer, which the method package must not depend on. Rows follow
:func:`clipdepth.report.session.run_rows`' conventions (``experiment``,
``table``, ``dataset``, ``row_label``, every metric of :data:`clipdepth.eval.metrics.METRIC_NAMES`, run facts;
a ``reference`` dict where a like-for-like published number exists), so :func:`clipdepth.report.session.finish_notebook`
writes them with the other notebooks' results.

Methods and their rows (one per method and dataset):

- ``DepthCLIP (own protocol)``, NYU: the registry row ``depthclip/nyu/zero-shot`` (fixed input box, zero
  canvas), beside DepthCLIP's published NYU row.
- ``DepthCLIP (metric protocol)``, NYU: the same model in the protocol of every other row. DepthCLIP has no
  KITTI numbers and its bins (1-3 m) were never meant for KITTI, so it is not run there.
- ``learned-7``: the paper's Table 3 row on each dataset, beside the published row.
- ``CLIP2Depth``, ``LLM-MDE``: :func:`clipdepth.baselines.runner.run_baseline`, metric protocol;
  LLM-MDE's row also carries its min-max-normalised scores (``norm_*`` columns).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from clipdepth._files import repo_path
from clipdepth.baselines.clip2depth import CLIP2DepthConfig
from clipdepth.baselines.llm_mde import LLMMDEConfig, expected_trainable_parameters
from clipdepth.baselines.runner import run_baseline
from clipdepth.data.base import subset_label
from clipdepth.data.profile_data import open_split
from clipdepth.eval.metrics import METRIC_NAMES
from clipdepth.eval.protocols import evaluate
from clipdepth.model.backbone import resolve_device
from clipdepth.model.factory import depthclip_zero_shot
from clipdepth.report.session import NotebookContext, run_rows
from clipdepth.study import experiments
from clipdepth.study.reference import reference_for
from clipdepth.study.reference.baselines import PUBLISHED, clip2depth_implied_abs_rel
from clipdepth.train import plan
from clipdepth.vocab import DATASETS

__all__ = [
    "DEMO_SETTINGS",
    "METHOD_LABELS",
    "baseline_rows",
    "check_baseline_files",
    "depthclip_rows",
    "learned_rows",
    "paper_size_parameters",
    "published_beside",
    "qualitative_examples",
    "summary_table",
]

METHOD_LABELS: dict[str, str] = {
    "depthclip-own": "DepthCLIP (own protocol)",
    "depthclip-metric": "DepthCLIP (metric protocol)",
    "learned-7": "learned-7 (Auty & Mikolajczyk)",
    "clip2depth": "CLIP2Depth",
    "llm-mde": "LLM-MDE",
}

#: Demo-profile settings when the notebook leaves a baseline parameter at None: a few optimiser steps on
#: a 2-core CPU. CLIP2Depth runs on the random RN50 the other rows use (its ViT-B/16 default costs about
#: ten times more per image; the tests exercise it). LLM-MDE keeps the real ViT-B/16 and 12-layer BERT
#: with a 64 x 64 ViT input and a smaller reprogramming layer (100 prototypes, 24 heads of width 32),
#: because the authors' 30,522 x 1,000 prototype map and 24 x 768-wide heads alone cost ~250 GFLOP per
#: step. The paper profile uses each method's own settings (``clip2depth.TRAIN_DEFAULTS``,
#: ``llm_mde.TRAIN_DEFAULTS``, ``llm_mde.LLMMDEConfig``).
DEMO_SETTINGS: dict[str, dict[str, Any]] = {
    "clip2depth": {"max_steps": 8, "batch_size": 8, "lr": 3e-3, "model_options": {"arch": "RN50-quickgelu"}},
    "llm-mde": {"max_steps": 4, "batch_size": 2, "lr": 1e-3,
                "model_options": {"image_size": 64, "n_prototypes": 100, "d_keys": 32}},
}
_PARAM_PREFIX = {"clip2depth": "clip2depth", "llm-mde": "llm_mde"}


def _metrics(values: Mapping[str, float]) -> dict[str, float]:
    return {m: float(values.get(m, math.nan)) for m in METRIC_NAMES}


def _device(ctx: NotebookContext) -> str:
    return resolve_device(ctx.params.get("device", "cpu"))


def depthclip_rows(ctx: NotebookContext, keep_examples: int = 3) -> list[dict[str, Any]]:
    """DepthCLIP zero-shot on NYU in its own protocol (registry row) and in the metric protocol."""
    if "nyu" not in ctx.datasets:
        return []
    name = "depthclip/nyu/zero-shot"
    own = run_rows(ctx, [name], keep_examples=keep_examples)[0]
    own.update(method=METHOD_LABELS["depthclip-own"], row_label=METHOD_LABELS["depthclip-own"],
               scoring="DepthCLIP (input box, zero canvas)", n_trainable=0)
    p = ctx.params
    (resolved,) = plan.resolve_rows([name], ctx.profile, p)
    clip = ctx.clip(resolved.arch, resolved.weights, _device(ctx))
    own["n_parameters"] = sum(t.numel() for t in clip.parameters())
    test = open_split(resolved, "test", subset=p.get("subset"))
    scored = evaluate(depthclip_zero_shot(clip), test, resolved.min_depth, resolved.max_depth, test.spec.eval_crop,
                      protocol="authors", device=_device(ctx), keep_examples=keep_examples, progress=False)
    key = "baselines/nyu/depthclip-metric"
    ctx.examples[key] = list(scored.examples)
    metric = {"experiment": key, "table": "baselines", "dataset": "nyu", "subset_label": own.get("subset_label"),
              "row_label": METHOD_LABELS["depthclip-metric"],
              "method": METHOD_LABELS["depthclip-metric"], "scoring": "metric (the authors' protocol)",
              **_metrics(scored.mean), "trained": False, "n_trainable": 0, "n_parameters": own["n_parameters"],
              "train_seconds": 0.0, "reused": False}
    print(f"{key:<28} abs_rel {metric['abs_rel']:.3f}  d1 {metric['d1']:.3f}")
    return [own, metric]


def learned_rows(ctx: NotebookContext, keep_examples: int = 3) -> list[dict[str, Any]]:
    """The paper's learned-7 rows (Table 3) for the notebook's datasets, with its trainer."""
    rows = run_rows(ctx, [f"t3/{d}/learned-7" for d in ctx.datasets], keep_examples=keep_examples)
    for row in rows:
        (resolved,) = plan.resolve_rows([row["experiment"]], ctx.profile, {**ctx.params, "seeds": [row["seed"]]})
        clip = ctx.clip(resolved.arch, resolved.weights, _device(ctx))
        n_tokens = resolved.experiment.n_trainable_tokens
        width = clip.token_embedding.weight.shape[1]
        n_clip = sum(t.numel() for t in clip.parameters())
        row.update(method=METHOD_LABELS["learned-7"], scoring="metric (the authors' protocol)",
                   n_trainable=n_tokens * width, n_parameters=n_clip + n_tokens * width)
    return rows


def _setting(ctx: NotebookContext, method: str, name: str) -> Any:
    value = ctx.params.get(f"{_PARAM_PREFIX[method]}_{name}")
    if value is None and ctx.profile == "demo":
        value = DEMO_SETTINGS[method].get(name)
    return value


def baseline_rows(ctx: NotebookContext, method: str, keep_examples: int = 3) -> list[dict[str, Any]]:
    """Train and score one baseline on every dataset of the notebook (runs are reused by their settings).

    Notebook parameters read: ``<method>_epochs``, ``<method>_max_steps``, ``<method>_batch_size``,
    ``<method>_lr``, ``clip2depth_arch``, ``llm_mde_image_size``, ``llm_mde_options`` (LLM-MDE config fields),
    ``llm_mde_vit`` and ``llm_mde_bert`` (local checkpoint file / folder), with ``<method>`` = ``clip2depth`` or
    ``llm_mde``; None takes :data:`DEMO_SETTINGS` in the demo profile and the method's defaults in the
    paper profile. Also ``weights``, ``seed``, ``device``, ``runs_dir``, ``force``. Call
    :func:`check_baseline_files` first, so a wrong file stops the notebook before any training.
    """
    p = ctx.params
    options = dict(_setting(ctx, method, "model_options") or {})
    if method == "llm-mde":
        options.update(p.get("llm_mde_options") or {})
    if method == "llm-mde" and p.get("llm_mde_image_size") is not None:
        options["image_size"] = int(p["llm_mde_image_size"])
    if method == "clip2depth" and p.get("clip2depth_arch") is not None:
        options["arch"] = str(p["clip2depth_arch"])
    clip = None
    if method == "clip2depth":  # share the notebook's CLIP (frozen, never modified) instead of loading it again
        arch = options.get("arch", CLIP2DepthConfig.arch)
        weights = p.get("weights") if p.get("weights") is not None else experiments.PROFILES[ctx.profile].weights
        clip = ctx.clip(arch, weights, _device(ctx))
    rows = []
    for dataset in ctx.datasets:
        result = run_baseline(
            method, dataset, profile=ctx.profile, weights=p.get("weights"),
            epochs=p.get(f"{_PARAM_PREFIX[method]}_epochs"),
            max_steps=_setting(ctx, method, "max_steps"), batch_size=_setting(ctx, method, "batch_size"),
            lr=_setting(ctx, method, "lr"), seed=int(p.get("seed", 42)), device=_device(ctx), subset=p.get("subset"),
            runs_dir=repo_path(p.get("runs_dir") or "cache/runs"), keep_examples=keep_examples,
            data_dir=repo_path(p["data_dir"]) if p.get("data_dir") else None,
            force=bool(p.get("force", False)), progress=False, model_options=options, clip_model=clip,
            files=_llm_mde_files(p) if method == "llm-mde" else None,
        )
        key = f"baselines/{dataset}/{method}"
        ctx.examples[key] = list(result.examples)
        label = METHOD_LABELS[method]
        row: dict[str, Any] = {
            "experiment": key, "table": "baselines", "dataset": dataset, "row_label": label, "method": label,
            "subset_label": _subset_label(ctx, dataset),
            "scoring": "metric (the authors' protocol)", **_metrics(result.metrics), "trained": True,
            "n_trainable": result.n_trainable, "n_parameters": result.n_parameters,
            "steps": len(result.history), "epochs": len(result.epoch_losses),
            "train_seconds": round(result.train_seconds, 3), "eval_seconds": round(result.eval_seconds, 3),
            "loss_first": result.history[0]["loss"] if result.history else math.nan,
            "loss_last": result.history[-1]["loss"] if result.history else math.nan,
            "probe_loss_before": result.probe_loss_before, "probe_loss_after": result.probe_loss_after,
            "reused": result.reused, "run_dir": str(result.run_dir),
        }
        if result.normalised_metrics:
            row.update({f"norm_{m}": float(v) for m, v in result.normalised_metrics.items()})
        rows.append(row)
        how = "reused" if result.reused else f"{result.train_seconds + result.eval_seconds:.0f} s"
        print(f"{key:<28} abs_rel {row['abs_rel']:.3f}  d1 {row['d1']:.3f}  loss {row['loss_first']:.3f} -> "
              f"{row['loss_last']:.3f}  ({how})")
    return rows


def _subset_label(ctx: NotebookContext, dataset: str) -> str | None:
    """"subset: N of <train> train / <test> test" when the notebook runs a subset (as every row says)."""
    subset = ctx.params.get("subset")
    if subset is None:
        return None
    (resolved,) = plan.resolve_rows([f"t3/{dataset}/learned-7"], ctx.profile, {**ctx.params, "seeds": [42]})
    train, test = (open_split(resolved, split, subset=subset) for split in ("train", "test"))
    return subset_label(subset, train.list_length or len(train), test.list_length or len(test))


def _llm_mde_files(p: Mapping[str, Any]) -> dict[str, str]:
    return {k: str(p[f"llm_mde_{k}"]) for k in ("vit", "bert") if p.get(f"llm_mde_{k}") is not None}


def _clip2depth_arch(ctx: NotebookContext) -> str:
    options = dict(_setting(ctx, "clip2depth", "model_options") or {})
    if ctx.params.get("clip2depth_arch") is not None:
        options["arch"] = str(ctx.params["clip2depth_arch"])
    return str(options.get("arch", CLIP2DepthConfig.arch))


def check_baseline_files(ctx: NotebookContext) -> list[str]:
    """Check every checkpoint notebook 05 will read, before anything trains; one line per problem.

    The CLIP weights (``weights``, or the profile's) are loaded for DepthCLIP / learned-7 (RN50) and for
    CLIP2Depth's ``clip2depth_arch`` (a file of another architecture is refused here, naming the file);
    LLM-MDE's ``llm_mde_vit`` (timm ViT-B/16 weights) and ``llm_mde_bert`` (Hugging Face BERT folder with
    ``vocab.txt``) are read and checked against the configured LLM-MDE (the first problem raises a
    :class:`clipdepth.model.checkpoints.CheckpointError` naming the file and what was expected). Returns what
    will be used, one line per model, for the notebook to print.
    """
    from clipdepth.baselines.weights import check_bert_folder, load_vit_file

    p = ctx.params
    weights = p.get("weights") if p.get("weights") is not None else experiments.PROFILES[ctx.profile].weights
    used = []
    for arch in dict.fromkeys(("RN50-quickgelu", _clip2depth_arch(ctx))):
        ctx.clip(arch, weights, _device(ctx))  # loads (and keeps) it; a wrong file is one line here
        used.append(f"CLIP {arch}: {weights if weights is not None else 'random init'}")
    options = {**dict(_setting(ctx, "llm-mde", "model_options") or {}), **(p.get("llm_mde_options") or {})}
    if p.get("llm_mde_image_size") is not None:
        options["image_size"] = int(p["llm_mde_image_size"])
    cfg = LLMMDEConfig(**options)
    files = _llm_mde_files(p)
    if "vit" in files:
        load_vit_file(files["vit"], cfg.vit_name, cfg.image_size)
    if "bert" in files:
        check_bert_folder(files["bert"], cfg.bert_hidden, cfg.bert_heads, cfg.bert_vocab, cfg.bert_intermediate,
                          cfg.bert_layers)
    default = "random init" if ctx.profile == "demo" else "the local Hugging Face cache"
    used.append(f"LLM-MDE ViT ({cfg.vit_name}): {files.get('vit', default)}")
    used.append(f"LLM-MDE BERT ({cfg.bert_layers} layers): {files.get('bert', default)}")
    return used


def summary_table(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str] = ("abs_rel", "rmse", "log10", "d1"),
                  decimals: int = 3) -> pd.DataFrame:
    """One line per method and dataset: key metrics, parameter counts, training and evaluation time."""
    out = []
    for r in rows:
        out.append({
            "dataset": r["dataset"], "method": r.get("method", r.get("row_label")), "scoring": r.get("scoring", ""),
            **{m: r.get(m) for m in metrics},
            "trainable params": int(r.get("n_trainable") or 0), "total params": int(r.get("n_parameters") or 0),
            "train s": r.get("train_seconds"), "eval s": r.get("eval_seconds"),
            "steps": r.get("steps"), "loss first": r.get("loss_first"), "loss last": r.get("loss_last"),
        })
    return pd.DataFrame(out).round(decimals)


def _row(rows: Sequence[Mapping[str, Any]], experiment: str) -> Mapping[str, Any] | None:
    return next((r for r in rows if r.get("experiment") == experiment), None)


def published_beside(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Every published number we have, with ours beside it and what kind of comparison it is.

    - DepthCLIP NYU and learned-7: published metric rows (like for like).
    - CLIP2Depth: only a relative claim (Abs Rel -68.7 % NYU, -75.6 % KITTI against "Auty et al."); we set
      our CLIP2Depth beside our learned-7 the same way, and show the Abs Rel the claim implies against the
      paper's learned-7 row (inferred, the Auty row they used is not stated).
    - LLM-MDE: published numbers are on min-max-normalised depth; we set our normalised scores beside them.
    """
    lines: list[dict[str, Any]] = []

    def add(method: str, dataset: str, metric: str, ours: Any, published: Any, kind: str, source: str) -> None:
        lines.append({"method": method, "dataset": dataset, "metric": metric, "ours": ours, "published": published,
                      "kind": kind, "source": source})

    own = _row(rows, "depthclip/nyu/zero-shot")
    ref = reference_for("depthclip/nyu/zero-shot") or {}
    if own is not None:
        for m in ("abs_rel", "rmse", "log10", "d1", "d2", "d3"):
            add(METHOD_LABELS["depthclip-own"], "nyu", m, own.get(m), ref.get(m), "metric, its own protocol",
                "clipdepth.study.reference (DepthCLIP Table 1)")
    for dataset in DATASETS:
        learned = _row(rows, f"t3/{dataset}/learned-7")
        paper = reference_for(f"t3/{dataset}/learned-7") or {}
        if learned is not None:
            for m in ("abs_rel", "rmse", "log10", "d1"):
                add(METHOD_LABELS["learned-7"], dataset, m, learned.get(m), paper.get(m), "metric",
                    "clipdepth.study.reference (paper Table 3)")
        c2d = _row(rows, f"baselines/{dataset}/clip2depth")
        if c2d is not None:
            claim = next(p for p in PUBLISHED if p.method == "CLIP2Depth" and p.dataset == dataset)
            ours_rel = (c2d["abs_rel"] / learned["abs_rel"] - 1.0) if learned is not None else math.nan
            add("CLIP2Depth", dataset, "abs_rel change vs learned-7", ours_rel, claim.value,
                "relative (vs 'Auty et al.')", claim.source)
            if paper.get("abs_rel") is not None:
                implied = clip2depth_implied_abs_rel(paper["abs_rel"], dataset)
                add("CLIP2Depth", dataset, "abs_rel", c2d["abs_rel"], implied,
                    "metric, implied from the relative claim vs the paper's learned-7 (inferred)", claim.source)
        llm = _row(rows, f"baselines/{dataset}/llm-mde")
        if llm is not None:
            for p in PUBLISHED:
                if p.method == "LLM-MDE" and p.dataset == dataset:
                    add("LLM-MDE", dataset, f"{p.metric} ({p.regime})", llm.get(f"norm_{p.metric}"), p.value,
                        "min-max-normalised depth (their scoring; confidence U)", p.source)
            for m in ("abs_rel", "rmse"):
                add("LLM-MDE", dataset, m, llm.get(m), None, "metric (no published counterpart)", "")
    if any(r.get("experiment", "").endswith("/llm-mde") for r in rows):
        for p in PUBLISHED:  # their cross-domain numbers: train/test pair unknown, nothing of ours matches
            if p.method == "LLM-MDE" and p.dataset == "unknown":
                add("LLM-MDE", "unknown", f"{p.metric} ({p.regime})", None, p.value,
                    "min-max-normalised depth (their scoring; confidence U); no counterpart run", p.source)
    return pd.DataFrame(lines, columns=["method", "dataset", "metric", "ours", "published", "kind", "source"])


def paper_size_parameters() -> dict[str, int]:
    """LLM-MDE's trainable parameters at the authors' configuration, by formula (96.3 M)."""
    return expected_trainable_parameters(LLMMDEConfig())


def qualitative_examples(ctx: NotebookContext, dataset: str, index: int = 0) -> list[dict[str, Any]]:
    """One test image through every method of ``dataset``, labelled, for
    :func:`clipdepth.report.figures.plot_qualitative`."""
    names = [("depthclip/nyu/zero-shot", "depthclip-own"), ("baselines/nyu/depthclip-metric", "depthclip-metric")] \
        if dataset == "nyu" else []
    names += [(f"t3/{dataset}/learned-7", "learned-7"), (f"baselines/{dataset}/clip2depth", "clip2depth"),
              (f"baselines/{dataset}/llm-mde", "llm-mde")]
    out = []
    for key, method in names:
        kept = ctx.examples.get(key, [])
        if index < len(kept):
            out.append({**kept[index], "label": METHOD_LABELS[method]})
    return out
