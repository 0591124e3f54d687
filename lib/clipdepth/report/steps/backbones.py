"""Notebook 06's steps: learned-7 tokens vs depth-7 words across a list of open_clip backbones.

Why here and not in :mod:`clipdepth.model.towers`: that module turns ``(architecture, pretrained tag)``
pairs into experiment variants and describes a tower; this one wires them to the notebook's
parameters and to the report layer -- it decides per backbone whether the method runs on it today
(prompt encoder, dense features, input sizes), trains and evaluates the rows through
:func:`clipdepth.report.session.run_rows` (so rows sharing an architecture and data stream are lockstep-trained
like every other row), and builds the notebook's table and figure.

A backbone the method cannot run yet is not dropped: it gets a table line saying "not supported yet"
and why (for example a Hugging Face text tower, which has no input-embedding path for vector slots).
Patch-14 towers (ViT-L/14) see the profile's sizes rounded to the nearest multiple of 14
(:func:`clipdepth.model.backbone.stride_size`); SigLIP towers write their prompts with their own tokenizer
(:func:`clipdepth.model.text_encoder.prompt_tokenizer_for`); timm ViT towers (EVA02, SigLIP) give per-patch
features from their patch tokens.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import open_clip
import pandas as pd
import torch

from clipdepth.model.backbone import dense_features, feature_stride, load_clip, resolve_device, stride_size
from clipdepth.model.prompt_learner import PromptEncoder
from clipdepth.model.towers import backbone_experiments, describe_backbone, image_family
from clipdepth.report.session import NotebookContext, run_rows
from clipdepth.study.experiments import Experiment
from clipdepth.train import plan

__all__ = [
    "DEMO_BACKBONES",
    "DEMO_SETTINGS",
    "PAPER_BACKBONES",
    "ROWS",
    "BackbonePlan",
    "backbone_label",
    "backbone_table",
    "check_backbone",
    "plan_backbones",
    "plot_backbones",
]

#: The two registry rows compared on every backbone (Table 3's human depth words and learned tokens).
ROWS: tuple[str, str] = ("depth-7", "learned-7")
WORDS, LEARNED = ROWS

#: The demo's backbones, random init (offline, CPU): every image-tower family (ResNet, open_clip ViT, timm
#: ConvNeXt, timm ViT) and the towers researchers reach for first -- ViT-L/14 (patch 14, sizes rounded),
#: SigLIP (its own tokenizer, last-token pooling, attention-pool image head) and EVA02 (RoPE, class token).
DEMO_BACKBONES: list[list[str | None]] = [
    ["RN50-quickgelu", None], ["ViT-B-32-quickgelu", None], ["convnext_tiny", None],
    ["ViT-L-14-quickgelu", None], ["ViT-B-16-SigLIP", None], ["EVA02-B-16", None],
]

#: Demo-profile settings where the notebook leaves ``subset`` / ``epochs`` at None: the demo's six towers
#: (ViT-L/14 has 300 M parameters) on the first 4 lines of each list for one epoch keep notebook 06 within
#: minutes on a 2-core CPU. The paper profile keeps the whole lists and the paper's epochs.
DEMO_SETTINGS: dict[str, int] = {"subset": 4, "epochs": 1}

#: The study's list on real weights: OpenAI's CLIP family, a LAION ConvNeXt, one SigLIP and one EVA-CLIP tag.
PAPER_BACKBONES: list[list[str | None]] = [
    ["RN50-quickgelu", "openai"], ["RN101-quickgelu", "openai"], ["ViT-B-32-quickgelu", "openai"],
    ["ViT-B-16-quickgelu", "openai"], ["ViT-L-14-quickgelu", "openai"], ["convnext_base", "laion400m_s13b_b51k"],
    ["ViT-B-16-SigLIP", "webli"],
    ["EVA02-B-16", "merged2b_s8b_b131k"],
]


def backbone_label(arch: str, tag: str | None) -> str:
    """``arch (tag)``, ``arch (random)`` for random init: how a backbone is named in tables and figures."""
    return f"{arch} ({tag if tag is not None else 'random'})"


def _pairs(backbones: Sequence[Sequence[str | None]]) -> list[tuple[str, str | None]]:
    if isinstance(backbones, str) or not backbones:
        raise ValueError(f"parameter 'backbones': expected a non-empty list of [architecture, tag] pairs, "
                         f"got {backbones!r}")
    out = []
    for pair in backbones:
        if isinstance(pair, str) or not isinstance(pair, Sequence) or len(pair) != 2:
            raise ValueError(f"parameter 'backbones': {pair!r} is not an [architecture, pretrained tag] pair")
        out.append((str(pair[0]), None if pair[1] is None else str(pair[1])))
    if len(set(out)) != len(out):
        raise ValueError(f"parameter 'backbones': repeated entries in {backbones!r}")
    return out


def _image_size(arch: str) -> tuple[int, int]:
    size = (open_clip.get_model_config(arch) or {}).get("vision_cfg", {}).get("image_size", 224)
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def check_backbone(model: torch.nn.Module, arch: str, dense_mode: str,
                   sizes: Mapping[str, Sequence[tuple[int, int]]]) -> str | None:
    """Why the method cannot run on this backbone today, or None when it can.

    Tried, not guessed: the prompt encoder is built for depth-7 words and learned-7 tokens, dense
    features are computed for one image at the tower's native size in ``dense_mode``, and every size of
    ``sizes`` (dataset -> train/test sizes, height x width) must hold a feature cell. Sizes the stride
    does not divide (patch-14 towers) are rounded to the nearest multiple by the model
    (:func:`clipdepth.model.backbone.fit_to_stride`); the table reports the size each tower saw.
    Only the refusals those steps raise by design (ValueError, TypeError) count as "not supported".
    """
    for words in ROWS:
        try:
            PromptEncoder(model, words=words)
        except (TypeError, ValueError) as exc:
            return f"prompt encoder: {exc}"
    try:
        stride = feature_stride(model)
        with torch.no_grad():
            dense_features(model, torch.zeros(1, 3, *_image_size(arch), device=_device_of(model)), dense_mode)
    except (TypeError, ValueError) as exc:
        return f"dense features: {exc}"
    for dataset, pairs in sizes.items():
        for h, w in pairs:
            if h < stride or w < stride:
                return f"{dataset} input size {h}x{w} is smaller than one feature cell (stride {stride})"
    return None


def _describe(model: torch.nn.Module, arch: str, train_size: tuple[int, int]) -> dict[str, Any]:
    """:func:`describe_backbone` at the train size; for a backbone it refuses, what can still be said
    (stride, and the grid where the size divides), with the refusal under ``error``."""
    try:
        return describe_backbone(arch, train_size, model=model)
    except (TypeError, ValueError) as exc:
        out: dict[str, Any] = {"arch": arch, "input_size": tuple(train_size), "error": str(exc)}
        try:
            stride = feature_stride(model)
        except TypeError:
            return out
        out["feature_stride"] = stride
        h, w = stride_size(train_size, stride)
        out.update(input_size=(h, w), feature_grid=(h // stride, w // stride))
        return out


def _device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@dataclass
class BackbonePlan:
    """What notebook 06 will run: the row specs for :func:`run_rows` and one line per backbone."""

    specs: list[tuple[Experiment, str | None]]
    #: per requested (arch, tag), in order: label, arch, weights, image family, status (None = runs),
    #: and per dataset the description at its train size (:func:`clipdepth.model.towers.describe_backbone`)
    backbones: list[dict[str, Any]] = field(default_factory=list)
    #: per spec (same order): (backbone label, dataset, row) so result rows map back without name parsing
    keys: list[tuple[str, str, str]] = field(default_factory=list)


def plan_backbones(ctx: NotebookContext, backbones: Sequence[Sequence[str | None]]) -> BackbonePlan:
    """Row specs (depth-7 and learned-7 per supported backbone and dataset) and each backbone's facts.

    The support check runs on the random-init architecture (the structure does not depend on the
    weights, and nothing is downloaded for a backbone that cannot run); with ``weights=None`` it is the
    same model the rows then use (:meth:`NotebookContext.clip`). In the demo profile ``subset`` and ``epochs``
    left at None take :data:`DEMO_SETTINGS` (written into ``ctx.params``). Unknown architectures or tags are
    bad input and raise a one-line ValueError (:func:`clipdepth.model.towers.backbone_experiments`); a tower
    with real weights whose own tokenizer is not on this machine (SigLIP offline) raises a one-line
    :class:`clipdepth.model.checkpoints.WeightsUnavailableError` before any row runs.
    """
    pairs = _pairs(backbones)
    if ctx.profile == "demo":  # recorded in results.json's parameters like any other value
        for name, value in DEMO_SETTINGS.items():
            if ctx.params.get(name) is None:
                ctx.params[name] = value
    device = resolve_device(ctx.params.get("device", "cpu"))
    datasets = ctx.datasets
    out = BackbonePlan(specs=[])
    for arch, tag in pairs:
        label = backbone_label(arch, tag)
        per_dataset = {d: backbone_experiments(f"t3/{d}/{row}", [(arch, tag)])[0] for d in datasets for row in ROWS}
        resolved = {d: plan.resolve_rows([backbone_experiments(f"t3/{d}/{LEARNED}", [(arch, tag)])[0]], ctx.profile,
                                         {**ctx.params, "seeds": [42]})[0] for d in datasets}
        sizes = {d: [r.train_size, r.test_size] for d, r in resolved.items()}
        model = ctx.clip(arch, None, device) if tag is None else load_clip(arch, None)
        if tag is not None:  # its tokenizer is the real one: missing tokenizer files stop here, in one line
            model.clipdepth_weights = str(tag)
        mode = next(iter(per_dataset.values()))[0].dense_mode
        reason = check_backbone(model, arch, mode, sizes)
        entry: dict[str, Any] = {"backbone": label, "arch": arch, "weights": tag, "image_family": image_family(arch),
                                 "dense_mode": mode, "status": reason, "datasets": {}}
        for d, r in resolved.items():
            entry["datasets"][d] = _describe(model, arch, r.train_size)
        out.backbones.append(entry)
        if reason is not None:
            print(f"{label}: not supported yet -- {reason}")
            continue
        for d in datasets:
            for row in ROWS:
                out.specs.append(backbone_experiments(f"t3/{d}/{row}", [(arch, tag)])[0])
                out.keys.append((label, d, row))
    return out


def run_backbones(ctx: NotebookContext, backbone_plan: BackbonePlan) -> list[dict[str, Any]]:
    """Train and evaluate the plan's rows (lockstep groups per architecture and data stream); each row
    dict gains ``backbone`` and ``weights`` so tables can tell two tags of one architecture apart."""
    if not backbone_plan.specs:
        return []
    rows = run_rows(ctx, backbone_plan.specs)
    n = len(backbone_plan.specs)
    for i, row in enumerate(rows):
        exp, weights = backbone_plan.specs[i % n]  # run_rows returns seed-major, specs in order
        if row["experiment"] != exp.name:
            raise RuntimeError(f"row {i} is {row['experiment']}, expected {exp.name}")
        label, dataset, kind = backbone_plan.keys[i % n]
        row.update(backbone=label, weights=weights, backbone_row=kind)
    return rows


def _mean(rows: Sequence[Mapping[str, Any]], metric: str) -> float:
    values = [float(r[metric]) for r in rows if not math.isnan(float(r[metric]))]
    return float(np.mean(values)) if values else math.nan


TABLE_COLUMNS: tuple[str, ...] = (
    "backbone", "arch", "weights", "image_family", "dataset", "status", "feature_stride", "train_size",
    "feature_grid", "trainable_params_learned7", "words_abs_rel", "learned_abs_rel", "words_d1", "learned_d1",
    "seeds",
)


def _size_text(crop: Sequence[int] | None, size: Sequence[int] | None) -> str | None:
    """``420x546`` or, where the tower's stride made the model round the crop, ``416x544 -> 420x546``."""
    if not size:
        return None
    seen = f"{size[0]}x{size[1]}"
    return seen if not crop or tuple(crop) == tuple(size) else f"{crop[0]}x{crop[1]} -> {seen}"


def backbone_table(backbone_plan: BackbonePlan, rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One line per backbone and dataset: words vs learned AbsRel and delta1 (mean over seeds), the
    feature stride, the feature grid at the train size, learned-7's trainable parameters, and
    ``status`` ("runs" or "not supported yet: why"; such lines have no metrics)."""
    lines = []
    for entry in backbone_plan.backbones:
        for dataset, desc in entry["datasets"].items():
            mine = [r for r in rows if r.get("backbone") == entry["backbone"] and r["dataset"] == dataset]
            words = [r for r in mine if r["backbone_row"] == WORDS]
            learned = [r for r in mine if r["backbone_row"] == LEARNED]
            grid = desc.get("feature_grid")
            size = desc.get("input_size")
            lines.append({
                "backbone": entry["backbone"],
                "arch": entry["arch"],
                "weights": entry["weights"] if entry["weights"] is not None else "random",
                "image_family": entry["image_family"],
                "dataset": dataset,
                "status": "runs" if entry["status"] is None else f"not supported yet: {entry['status']}",
                "feature_stride": desc.get("feature_stride"),
                "train_size": _size_text(desc.get("crop_size"), size),
                "feature_grid": f"{grid[0]}x{grid[1]}" if grid else None,
                "trainable_params_learned7": desc.get("trainable_params_learned7"),
                "words_abs_rel": _mean(words, "abs_rel") if words else math.nan,
                "learned_abs_rel": _mean(learned, "abs_rel") if learned else math.nan,
                "words_d1": _mean(words, "d1") if words else math.nan,
                "learned_d1": _mean(learned, "d1") if learned else math.nan,
                "seeds": len(learned),
            })
    return pd.DataFrame(lines, columns=list(TABLE_COLUMNS))


def plot_backbones(table: pd.DataFrame, title: str | None = None):
    """AbsRel and delta1 per backbone, depth-7 words beside learned-7 tokens; one row of panels per
    dataset. Backbones that do not run yet are left out of the figure (the table lists them)."""
    import matplotlib.pyplot as plt

    data = table[table["status"] == "runs"]
    if data.empty:
        raise ValueError("no backbone ran: nothing to plot (see the table's status column)")
    datasets = list(dict.fromkeys(data["dataset"]))
    n = max(len(data[data["dataset"] == d]) for d in datasets)
    fig, axes = plt.subplots(len(datasets), 2, figsize=(4 + 1.3 * n, 3.2 * len(datasets)), squeeze=False)
    for i, dataset in enumerate(datasets):
        part = data[data["dataset"] == dataset]
        x = np.arange(len(part))
        for j, (metric, label, better) in enumerate((("abs_rel", "AbsRel", "lower"), ("d1", "delta1", "higher"))):
            ax = axes[i, j]
            ax.bar(x - 0.2, part[f"words_{metric}"], 0.4, label="depth-7 words", color="#9aa5b1")
            ax.bar(x + 0.2, part[f"learned_{metric}"], 0.4, label="learned-7 tokens", color="#1f6feb")
            ax.set_xticks(x, [b.replace(" (", "\n(") for b in part["backbone"]], fontsize=7)
            ax.set_title(f"{dataset}: {label} ({better} is better)", fontsize=9)
            ax.grid(axis="y", alpha=0.3)
            if i == 0 and j == 0:
                ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def backbone_extra(backbone_plan: BackbonePlan, table: pd.DataFrame) -> dict[str, Any]:
    """What notebook 06 stores in ``results.json``'s ``extra``: the table and each backbone's facts."""
    return {"backbone_table": table.to_dict(orient="records"),
            "backbones": [{k: v for k, v in e.items()} for e in backbone_plan.backbones]}
