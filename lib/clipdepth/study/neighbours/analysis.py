"""Nearest neighbours of learned depth tokens among vocabulary prompts: the paper's Table 8 method.

The paper's analysis script was never released, so this is the reference implementation of the method
as the paper describes it (``shared/research/learned_prompts.md`` section 9):

- **Prompt space** (the paper's method): each learned prompt is encoded like the vocabulary prompts of
  the sweep (:mod:`clipdepth.study.neighbours.sweep`), L2-normalised; neighbours by Euclidean distance, the
  query excluded, the other learned prompts included (labelled ``{depth_i}``, as in the paper's table).
- **Token space**: the same search among the 512-d input embeddings, raw and L2-normalised (the paper
  mentions it without saying which).

Also the trajectory over training (per-epoch checkpoints) and the paper's table layout.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import pandas as pd
import torch

from clipdepth.model.prompt_learner import PromptEncoder
from clipdepth.study.neighbours.sweep import PromptLayout, VocabSweep, encode_fillings, prompt_layout, token_strings
from clipdepth.study.reference import load_table8

__all__ = [
    "LEARNED_LABEL",
    "PAPER_RANKS",
    "TABLE8_ROW",
    "NeighbourAnalysis",
    "analyse",
    "checked_layout",
    "depth_tokens",
    "initial_prompts",
    "load_prompts",
    "nearest_neighbours",
    "neighbours_over_epochs",
    "paper_format",
    "side_by_side",
    "table_records",
    "unit",
]

LEARNED_LABEL = "{{depth_{}}}"
PAPER_RANKS = 4  # Table 8 as transcribed (clipdepth.study.reference) lists the top 4 of 15 per token
TABLE8_ROW = "t3/nyu/learned-7"  # the paper's analysed tokens: learned-7, NYU, even-7 bins, baseline template



# ---------------------------------------------------------------------------------------------
# Nearest neighbours
# ---------------------------------------------------------------------------------------------


def unit(x: torch.Tensor) -> torch.Tensor:
    """Rows L2-normalised (a zero row stays zero instead of becoming NaN)."""
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def nearest_neighbours(
    queries: torch.Tensor,
    vocab: torch.Tensor,
    vocab_ids: Sequence[int] | np.ndarray,
    top_k: int = 15,
    normalise: bool = True,
    labels: Sequence[str] | None = None,
    include_queries: bool = True,
    space: str = "prompt",
) -> pd.DataFrame:
    """Top-k Euclidean neighbours of each query among the vocabulary and the other queries.

    One row per (query, rank): ``space, query, bin, rank, neighbour, distance, kind, token_id``, where
    ``kind`` is ``vocab`` or ``learned`` (another query, labelled ``{depth_i}``; ``token_id`` -1). The
    query itself is never its own neighbour. With ``normalise`` every vector is L2-normalised first, so
    ``d = sqrt(2 - 2 cos)``. Distances are computed from differences, not from ``2 - 2 cos``, so
    identical prompts are at exactly 0 rather than at the ~3e-4 that cancellation would leave.
    """
    n = queries.shape[0]
    labels = list(labels) if labels is not None else [LEARNED_LABEL.format(i) for i in range(n)]
    q = queries.detach().float().cpu()
    cand = vocab.detach().float().cpu()
    if normalise:
        q, cand = unit(q), unit(cand)
    names = token_strings(vocab_ids)
    ids = [int(i) for i in vocab_ids]
    kinds = ["vocab"] * len(names)
    if include_queries:
        cand = torch.cat([cand, q])
        names, ids, kinds = names + labels, ids + [-1] * n, kinds + ["learned"] * n
    dist = torch.cdist(q[None], cand[None], compute_mode="donot_use_mm_for_euclid_dist")[0].numpy()
    if include_queries:
        dist[np.arange(n), len(vocab_ids) + np.arange(n)] = np.inf
    rows = []
    for i in range(n):
        order = np.argsort(dist[i], kind="stable")[:top_k]  # ties: vocabulary first, in id order
        for rank, j in enumerate(order, start=1):
            rows.append({"space": space, "query": labels[i], "bin": i, "rank": rank, "neighbour": names[j],
                         "distance": float(dist[i, j]), "kind": kinds[j], "token_id": ids[j]})
    return pd.DataFrame(rows)


def load_prompts(run_dir: str | os.PathLike[str], epoch: int | None = None) -> dict[str, torch.Tensor]:
    """A run's final prompt-encoder state (``prompts.pt``) or the one saved after ``epoch``."""
    run_dir = Path(run_dir)
    if epoch is None:
        return torch.load(run_dir / "prompts.pt", map_location="cpu", weights_only=True)
    return torch.load(run_dir / f"epoch_{epoch:03d}.pt", map_location="cpu", weights_only=True)["prompts"]


def depth_tokens(state: Mapping[str, torch.Tensor | None]) -> torch.Tensor:
    """The learned depth tokens (N x width, float32, CPU) of a prompt-encoder state; an error if it has none."""
    tokens = state.get("depth_tokens")
    if tokens is None:
        raise ValueError("prompts state has no learned depth tokens (depth_tokens); only learned-N runs apply")
    return tokens.detach().float().cpu()


def checked_layout(model: open_clip.CLIP, state: Mapping[str, torch.Tensor | None], sweep: VocabSweep) -> PromptLayout:
    """The template layout of ``state``, checked to be the one ``sweep`` was encoded in."""
    layout = prompt_layout(model, sweep.template, state)
    if layout.digest != sweep.key["layout"]:
        raise ValueError(
            "these prompts are not in the context the vocabulary was swept in (different model, template or "
            "learned context tokens); run vocab_sweep with this model and prompts_state"
        )
    return layout


@dataclass
class NeighbourAnalysis:
    """Top-k tables of the learned tokens in prompt space and in (raw, unit) token space."""

    prompt: pd.DataFrame
    token_raw: pd.DataFrame
    token_unit: pd.DataFrame
    learned_features: torch.Tensor  # N x D prompt-space features (raw)
    learned_tokens: torch.Tensor  # N x width input embeddings
    labels: list[str]
    sweep: VocabSweep

    def tables(self) -> dict[str, pd.DataFrame]:
        return {"prompt": self.prompt, "token_raw": self.token_raw, "token_unit": self.token_unit}

    def nearest_words(self, space: str = "prompt") -> pd.DataFrame:
        """Each query's nearest vocabulary entry (learned neighbours skipped)."""
        table = self.tables()[space]
        return table[table["kind"] == "vocab"].groupby("query", sort=False).head(1).reset_index(drop=True)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready top-k tables and the sweep's description (for ``results.json``)."""
        return {name: table_records(t) for name, t in self.tables().items()} | {"sweep": self.sweep.summary()}


def table_records(table: pd.DataFrame) -> list[dict[str, Any]]:
    """A neighbour table as JSON-ready records (distances to 6 significant digits)."""
    return json.loads(table.to_json(orient="records", double_precision=6))


def analyse(
    model: open_clip.CLIP,
    prompts_state: Mapping[str, torch.Tensor | None],
    sweep: VocabSweep,
    top_k: int = 15,
) -> NeighbourAnalysis:
    """The paper's analysis of one set of learned depth tokens against a vocabulary sweep.

    The learned prompts go through the same template layout and encoder as the sweep (checked by the
    layout hash), so a learned token equal to a word embedding lands exactly on that word's prompt.
    """
    layout = checked_layout(model, prompts_state, sweep)
    tokens = depth_tokens(prompts_state)
    feats = encode_fillings(model, layout, tokens[:, None]).cpu()
    labels = [LEARNED_LABEL.format(i) for i in range(len(tokens))]
    vocab_tokens = model.token_embedding.weight.detach().float().cpu()[torch.as_tensor(sweep.ids)]
    prompt = nearest_neighbours(feats, sweep.features, sweep.ids, top_k, True, labels, space="prompt")
    raw = nearest_neighbours(tokens, vocab_tokens, sweep.ids, top_k, False, labels, space="token_raw")
    unit = nearest_neighbours(tokens, vocab_tokens, sweep.ids, top_k, True, labels, space="token_unit")
    return NeighbourAnalysis(prompt, raw, unit, feats, tokens, labels, sweep)


def paper_format(table: pd.DataFrame, ranks: int | None = None) -> pd.DataFrame:
    """The paper's layout: one column per learned token, one row per rank, cells ``word 0.123``."""
    t = table if ranks is None else table[table["rank"] <= ranks]
    cells = t.assign(cell=t["neighbour"] + " " + t["distance"].map(lambda d: f"{d:.3f}"))
    wide = cells.pivot(index="rank", columns="query", values="cell")
    return wide[list(dict.fromkeys(t["query"]))]


def side_by_side(ours: pd.DataFrame, paper: pd.DataFrame | None = None, ranks: int = PAPER_RANKS) -> pd.DataFrame:
    """Paper Table 8 next to our table, per (query, rank): ``paper`` and ``ours`` cells ``word 0.123``."""
    if paper is None:
        paper = load_table8()

    def cells(t: pd.DataFrame) -> pd.Series:
        t = t[t["rank"] <= ranks]
        return pd.Series((t["neighbour"] + " " + t["distance"].map(lambda d: f"{d:.3f}")).values,
                         index=pd.MultiIndex.from_arrays([t["query"], t["rank"]]))

    return pd.DataFrame({"paper": cells(paper), "ours": cells(ours)}).rename_axis(["query", "rank"])


# ---------------------------------------------------------------------------------------------
# Over training
# ---------------------------------------------------------------------------------------------


def initial_prompts(model: open_clip.CLIP, run_dir: str | os.PathLike[str]) -> dict[str, torch.Tensor] | None:
    """The untrained (epoch 0) tokens of a run, redrawn from the seed its ``result.json`` records.

    The trainer does not save epoch 0; the draw is deterministic (``PromptEncoder(seed=...)``), so the
    starting point of the trajectory can be rebuilt. None when the run has no ``result.json``.
    """
    path = Path(run_dir) / "result.json"
    if not path.is_file():
        return None
    exp = json.loads(path.read_text())["experiment"]["experiment"]
    enc = PromptEncoder(model, words=exp["words"], template=exp["template"], seed=int(exp["train"]["seed"]))
    return {k: v.detach().cpu() for k, v in enc.state_dict().items()}


def neighbours_over_epochs(
    model: open_clip.CLIP,
    run_dir: str | os.PathLike[str],
    sweep: VocabSweep,
    top_k: int = 5,
    include_initial: bool = True,
) -> pd.DataFrame:
    """Prompt-space top-k of every per-epoch checkpoint (``epoch_XXX.pt``), plus epoch 0 when known.

    Reuses one vocabulary sweep, which is valid because the depth tokens are the only thing that
    changes between epochs for templates without learned context (checked per epoch by the layout hash).
    """
    run_dir = Path(run_dir)
    states: list[tuple[int, Mapping[str, torch.Tensor | None]]] = []
    if include_initial:
        init = initial_prompts(model, run_dir)
        if init is not None:
            states.append((0, init))
    for path in sorted(run_dir.glob("epoch_*.pt")):
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        states.append((int(path.stem.split("_")[1]), ckpt["prompts"]))
    if not states:
        raise FileNotFoundError(f"no epoch_XXX.pt checkpoints in {run_dir}")
    frames = []
    for epoch, state in states:
        table = analyse(model, state, sweep, top_k=top_k).prompt
        frames.append(table.assign(epoch=epoch))
    return pd.concat(frames, ignore_index=True)
