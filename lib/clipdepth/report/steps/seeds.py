"""Notebook steps of the seed study that need the notebook's context or a CLIP model.

Why here and not in :mod:`clipdepth.study.seeds`: that module only reads result rows (intervals,
claims, the forest plot). What is left needs the notebook: whether it may draw verdicts (profile and
subset), and a text tower to build prompt encoders for the ``token_init`` comparison, which trains
nothing and reads no run:

- :func:`verdict_options` -- ``verdicts`` and the words shown instead, for ``seed_table``/``claims_table``;
- :func:`token_init_table` -- how far the initial tokens of a row (random-7: the whole method) move
  between our draw (``token_init="ours"``) and the authors' (``"authors"``), and across seeds.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import pandas as pd
import torch

from clipdepth.model.factory import model_for_experiment
from clipdepth.model.prompt_learner import TOKEN_INIT_STD, token_distance
from clipdepth.report.provenance import resolve_device
from clipdepth.report.session import NotebookContext, verdicts_for
from clipdepth.study import experiments
from clipdepth.study.seeds import NA_DEMO
from clipdepth.train import plan

__all__ = ["NA_SUBSET", "TOKEN_INIT_COLUMNS", "TOKEN_INIT_SEEDS", "initial_tokens", "token_init_table",
           "verdict_options"]

#: Verdict text of a paper-profile run on a ``subset`` of the split lists.
NA_SUBSET = "n/a (subset)"

#: Seeds of the token-init comparison when none are given: drawing initial tokens trains nothing, so
#: every profile shows the demo's three seeds.
TOKEN_INIT_SEEDS: tuple[int, ...] = (42, 1, 2)

TOKEN_INIT_COLUMNS: tuple[str, ...] = ("row", "kind", "pair", "n_tokens", "mean_l2", "max_l2", "mean_cosine")


def verdict_options(ctx: NotebookContext) -> dict[str, Any]:
    """``verdicts`` and ``na_text`` for :func:`clipdepth.study.seeds.seed_table` / ``claims_table``.

    Verdicts only on the paper profile with the full lists (:func:`clipdepth.report.session.verdicts_for`);
    otherwise the verdict columns say why: "n/a (demo)" for the demo (random weights, synthetic scenes)
    and "n/a (subset)" for a rehearsal on the first lines of the split lists.
    """
    allowed = verdicts_for(ctx)
    na_text = NA_DEMO if ctx.profile != "paper" else NA_SUBSET
    return {"verdicts": allowed, "na_text": na_text}


def initial_tokens(clip_model: Any, name: str | experiments.Experiment, seed: int, token_init: str) -> torch.Tensor:
    """The initial vector tokens of row ``name`` for one seed and token initialisation, ``N x width``.

    Built by :func:`clipdepth.model.factory.model_for_experiment` (the door every run goes through), so this
    is exactly what training would start from: context, depth (learned or frozen random) and object
    tokens, stacked in that order. Raises ValueError for a row without vector tokens (human words).
    """
    exp = experiments.variant(name, seed=int(seed), token_init=token_init)
    tokens = model_for_experiment(exp, clip_model).prompts.tokens()
    parts = [tokens[k] for k in ("ctx", "depth", "object") if k in tokens]
    if not parts:
        raise ValueError(f"{exp.name} has no vector tokens (its prompts are human words); pick e.g. t3/nyu/random-7")
    return torch.cat(parts)


def token_init_table(
    ctx: NotebookContext | None,
    names: str | Sequence[str] = "t3/nyu/random-7",
    seeds: Sequence[int] = TOKEN_INIT_SEEDS,
    clip_model: Any | None = None,
) -> pd.DataFrame:
    """How far the initial tokens of row(s) ``names`` move between the two initialisations and across seeds.

    One line per pair, token i against token i (:func:`clipdepth.model.prompt_learner.token_distance`): ``kind``
    "ours vs authors" (same seed, our private-generator draw against the authors' draw sequence,
    :func:`clipdepth.model.prompt_learner.authors_initial_tokens`), then "seed vs seed (ours)" and "seed vs seed
    (authors)" for every pair of seeds. Columns :data:`TOKEN_INIT_COLUMNS`. For scale: two independent
    N(0, 0.02^2) vectors of width 512 lie about 0.02 * sqrt(2 * 512) = 0.64 apart with cosine near 0,
    and the table's ``attrs["independent_l2"]`` holds that number for the row's width. Nothing is
    trained; the CLIP model is the notebook's (``ctx.clip`` for the row's arch and weights) unless
    ``clip_model`` is given, and only its text tower's shape matters.
    """
    seeds = [int(s) for s in seeds]
    if len(seeds) != len(set(seeds)) or not seeds:
        raise ValueError(f"seeds must be a non-empty list of distinct integers, got {seeds!r}")
    names = [names] if isinstance(names, str) else list(names)
    out, width = [], 512
    for name in names:
        model = clip_model if clip_model is not None else _notebook_clip(ctx, name)
        draws = {(init, s): initial_tokens(model, name, s, init) for init in ("ours", "authors") for s in seeds}
        pairs = [("ours vs authors", ("ours", s), ("authors", s)) for s in seeds]
        for init in ("ours", "authors"):
            pairs += [(f"seed vs seed ({init})", (init, a), (init, b)) for a, b in itertools.combinations(seeds, 2)]
        for kind, a, b in pairs:
            dist = token_distance(draws[a], draws[b])
            out.append({"row": str(name), "kind": kind, "pair": f"{a[0]}({a[1]}) vs {b[0]}({b[1]})",
                        "n_tokens": int(draws[a].shape[0]), **dist})
        width = int(draws["ours", seeds[0]].shape[1])
    table = pd.DataFrame(out, columns=list(TOKEN_INIT_COLUMNS))
    table.attrs["independent_l2"] = TOKEN_INIT_STD * math.sqrt(2 * width)
    return table


def _notebook_clip(ctx: NotebookContext | None, name: str) -> Any:
    """The notebook's CLIP for row ``name`` (its arch and the notebook's weights), loaded once per notebook."""
    if ctx is None:
        raise ValueError("token_init_table needs a notebook context or a clip_model")
    (resolved,) = plan.resolve_rows([name], ctx.profile, {**ctx.params, "seeds": [42]})
    return ctx.clip(resolved.arch, resolved.weights, resolve_device(ctx.params.get("device", "cpu")))
