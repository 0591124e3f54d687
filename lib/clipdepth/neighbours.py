"""Nearest-neighbour analysis of learned depth tokens (paper Table 8 / poster Table 4).

The paper's most quoted finding is that learned depth tokens sit far from every English word. Its
analysis script was never released, so this module is the reference implementation of the method as
the paper describes it (``shared/research/learned_prompts.md`` section 9):

- **Prompt space** (the paper's method): every vocabulary token is put in the depth slot of the training
  template ("This object appears to be {token}"), encoded by the frozen text tower, L2-normalised; each
  learned prompt is encoded the same way; neighbours by Euclidean distance, the query excluded, the
  other learned prompts included (labelled ``{depth_i}``, as in the paper's table).
- **Token space**: the same search among the 512-d input embeddings, raw and L2-normalised (the paper
  mentions it without saying which).
- **The 0.000 anomaly**: Table 8 prints exact zeros only at the two bins whose depth-7 phrase is a
  single vocabulary token. :func:`anomaly_check` computes the table for the learned prompts and for the
  depth-7 word prompts (and a hybrid) and states what each reproduces.

Speed: CLIP's text transformer is causal, so the template tokens before the depth slot have the same
hidden states in all 49,408 vocabulary prompts. :func:`encode_fillings` computes them (and their
attention keys and values) once and runs only the slot and EOT positions per prompt, which is exact and
about four times cheaper than running the whole truncated prompt. The sweep is cached on disk.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import pandas as pd
import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock
from tqdm.auto import tqdm

from .prompts import WORD_LISTS, PromptEncoder, encode_embeddings

__all__ = [
    "ANOMALY_WORD_SET",
    "VOCAB_SIZE",
    "TABLE8_ROW",
    "ZERO_TOL",
    "AnomalyCheck",
    "LearnedRun",
    "NeighbourAnalysis",
    "PromptLayout",
    "VocabSweep",
    "analyse",
    "anomaly_check",
    "anomaly_words",
    "encode_fillings",
    "initial_prompts",
    "learned_run",
    "load_prompts",
    "nearest_neighbours",
    "nearest_word_vs_bin",
    "neighbours_over_epochs",
    "paper_format",
    "phrase_fillings",
    "pairwise_distances",
    "plot_nearest_word_vs_bin",
    "plot_neighbours_over_epochs",
    "plot_pairwise",
    "plot_projection",
    "projection",
    "prompt_layout",
    "side_by_side",
    "single_token_bins",
    "token_strings",
    "vocab_ids",
    "vocab_sweep",
]

VOCAB_SIZE = 49408  # CLIP's BPE vocabulary (the paper says "40k tokens")
ZERO_TOL = 5e-4  # a distance below this prints as 0.000 at the paper's three decimals
ANOMALY_WORD_SET = "depth-7"  # the human prompts whose single-token bins carry Table 8's zeros
PAPER_RANKS = 4  # Table 8 as transcribed (clipdepth.reference) lists the top 4 of 15 per token
CACHE_FORMAT = "1"  # bump when the sweep's computation changes: old cache folders then miss
MANIFEST = "manifest.json"
LEARNED_LABEL = "{{depth_{}}}"
SMALL_BATCH = 64  # at most this many prompts are encoded on one CPU thread (see _few_threads)


# ---------------------------------------------------------------------------------------------
# Tokens and labels
# ---------------------------------------------------------------------------------------------


@functools.cache
def _tokenizer() -> Any:
    return open_clip.get_tokenizer("RN50-quickgelu")  # CLIP's BPE, shared by every arch we support


def token_strings(ids: Sequence[int] | np.ndarray) -> list[str]:
    """Vocabulary entries as BPE spells them: ``close</w>`` ends a word, ``close`` continues one.

    Non-ASCII bytes stay in the byte-to-unicode alphabet (``âł``), as in the paper's table, so our
    strings compare with Table 8 verbatim.
    """
    decoder = _tokenizer().decoder
    return [decoder[int(i)] for i in ids]


def vocab_ids(vocab_limit: int | None = None, include_words: Sequence[str] = ()) -> np.ndarray:
    """Token ids to sweep: all 49,408, or the first ``vocab_limit`` plus the tokens of ``include_words``.

    The demo profile sweeps a slice to stay within minutes on a CPU; ``include_words`` keeps the tokens a
    check depends on (the depth-7 words for :func:`anomaly_check`) in that slice. The full sweep contains
    them anyway, so the results of a full run do not depend on ``include_words``.
    """
    if vocab_limit is None or vocab_limit >= VOCAB_SIZE:
        return np.arange(VOCAB_SIZE, dtype=np.int64)
    if vocab_limit < 1:
        raise ValueError(f"vocab_limit must be >= 1 or None, got {vocab_limit}")
    extra = {t for w in include_words for t in _tokenizer().encode(w)}
    return np.array(sorted(set(range(vocab_limit)) | extra), dtype=np.int64)


def anomaly_words(word_set: str = ANOMALY_WORD_SET) -> tuple[str, ...]:
    """The phrases whose tokens a ``vocab_limit`` slice must keep for :func:`anomaly_check`."""
    return WORD_LISTS[word_set]


def single_token_bins(word_set: str = ANOMALY_WORD_SET) -> dict[int, str]:
    """Bins whose phrase is one vocabulary token (depth-7: 1 ``close</w>``, 5 ``distant</w>``).

    Such a word prompt is *identical* to one vocabulary prompt, so it sits at distance 0 from it under
    any weights: the fingerprint the anomaly check looks for.
    """
    out = {}
    for b, phrase in enumerate(WORD_LISTS[word_set]):
        ids = _tokenizer().encode(phrase)
        if len(ids) == 1:
            out[b] = token_strings(ids)[0]
    return out


# ---------------------------------------------------------------------------------------------
# Encoding prompts with a filled depth slot
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromptLayout:
    """The training template cut around its depth slot, as input embeddings.

    ``prefix`` holds SOT, the template words and any learned context/object tokens before the slot
    (``P x width``); ``after`` holds the rest up to and including EOT (``A x width``). A prompt is
    ``prefix + filling + after`` for a filling of one or more vectors.
    """

    template: str
    prefix: torch.Tensor
    after: torch.Tensor

    @functools.cached_property
    def digest(self) -> str:
        """Content hash: equal layouts mean the sweep can be reused for these prompts."""
        h = hashlib.sha256(self.template.encode())
        for t in (self.prefix, self.after):
            h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        return h.hexdigest()[:16]


def prompt_layout(
    model: open_clip.CLIP,
    template: str = "baseline",
    prompts_state: Mapping[str, torch.Tensor | None] | None = None,
    object_word: str = "object",
) -> PromptLayout:
    """Split ``template`` around its depth slot exactly as :class:`~clipdepth.prompts.PromptEncoder` builds it.

    Learned context (``ctx_tokens``) or object tokens (``object_tokens``) come from ``prompts_state``
    (a ``PromptEncoder.state_dict()``): the vocabulary must be encoded in the context the depth tokens
    were trained in, so a template with context tokens and no state is an error, not a random context.
    """
    state = dict(prompts_state or {})
    learned_object = state.get("object_tokens") is not None
    enc = PromptEncoder(model, words="learned-1", template=template, object_word=object_word,
                        learned_object=learned_object)
    if enc.ctx_tokens is not None:
        ctx = state.get("ctx_tokens")
        if ctx is None:
            raise ValueError(
                f"template {template!r} has learned context tokens; pass the trained prompts' state dict "
                "(prompts_state) so the vocabulary is encoded in the context the tokens were trained in"
            )
        enc.ctx_tokens.data.copy_(ctx)
    if learned_object:
        enc.object_tokens.data.copy_(state["object_tokens"])
    enc = enc.to(model.token_embedding.weight.device)
    with torch.no_grad():
        emb = enc.input_embeddings()[0]
    slot, eot = int(enc._learned_pos[0]), int(enc.eot_index[0])
    return PromptLayout(template, emb[:slot].clone(), emb[slot + 1 : eot + 1].clone())


def _prefix_cache_supported(model: open_clip.CLIP) -> bool:
    """The shortcut re-implements open_clip's standard pre-LN block; anything else takes the full path."""
    tower = model.transformer
    if not getattr(tower, "batch_first", False):
        return False
    for blk in tower.resblocks:
        if type(blk) is not ResidualAttentionBlock or hasattr(blk, "ln_1_kv"):
            return False
        attn = blk.attn
        if not attn._qkv_same_embed_dim or attn.bias_k is not None or not attn.batch_first:
            return False
    return True


def _encode_with_prefix(model: open_clip.CLIP, prefix: torch.Tensor, suffix: torch.Tensor) -> torch.Tensor:
    """Causal text tower for ``B`` prompts sharing ``prefix``: the prefix runs once, the suffix per prompt.

    Position ``i`` of a causal transformer depends only on positions ``<= i``, so the prefix's hidden
    states (and attention keys/values) are the same in every prompt. Each suffix position attends to
    the cached prefix keys plus the suffix keys up to itself.
    """
    cast = model.transformer.get_cast_dtype()
    n_pre, (batch, n_suf, width) = prefix.shape[0], suffix.shape
    pos = model.positional_embedding
    xp = (prefix + pos[:n_pre]).to(cast)[None]
    xs = (suffix + pos[n_pre : n_pre + n_suf]).to(cast)
    allowed = torch.ones(n_suf, n_pre + n_suf, dtype=torch.bool, device=xs.device).tril(diagonal=n_pre)
    prefix_mask = model.attn_mask[:n_pre, :n_pre] if model.attn_mask is not None else None
    for blk in model.transformer.resblocks:
        attn = blk.attn
        heads = attn.num_heads
        w, b = attn.in_proj_weight, attn.in_proj_bias
        kp, vp = F.linear(blk.ln_1(xp), w[width:], None if b is None else b[width:]).chunk(2, dim=-1)
        q, k, v = F.linear(blk.ln_1(xs), w, b).chunk(3, dim=-1)
        k = torch.cat([kp.expand(batch, -1, -1), k], dim=1)
        v = torch.cat([vp.expand(batch, -1, -1), v], dim=1)
        q, k, v = (t.reshape(batch, t.shape[1], heads, width // heads).transpose(1, 2) for t in (q, k, v))
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        o = attn.out_proj(o.transpose(1, 2).reshape(batch, n_suf, width))
        xs = xs + blk.ls_1(o)
        xs = xs + blk.ls_2(blk.mlp(blk.ln_2(xs)))
        xp = blk(xp, attn_mask=prefix_mask)  # the prefix advances through the block itself
    x = model.ln_final(xs[:, -1])  # the suffix ends with EOT: the pooled position
    proj = model.text_projection
    if proj is None:
        return x
    return proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj


@torch.no_grad()
def encode_fillings(
    model: open_clip.CLIP,
    layout: PromptLayout,
    fillings: torch.Tensor | Sequence[torch.Tensor],
    prefix_cache: bool = True,
) -> torch.Tensor:
    """Projected EOT features (``B x D``, float32, not normalised) of prompts with a filled depth slot.

    ``fillings`` is ``B x k x width`` (k vectors in the slot: 1 for a vocabulary token or a learned
    token, several for a multi-token phrase) or a list of ``k_i x width`` tensors of mixed lengths
    (grouped by length internally). Vocabulary sweep, learned prompts and word prompts all go through
    here, so identical inputs give identical features. The context is truncated to the prompt (exact:
    the tower is causal and pooled at EOT); ``prefix_cache`` also skips recomputing the shared prefix.
    """
    if not isinstance(fillings, torch.Tensor):
        items = list(fillings)
        out: list[torch.Tensor | None] = [None] * len(items)
        for k in sorted({t.shape[0] for t in items}):
            idx = [i for i, t in enumerate(items) if t.shape[0] == k]
            feats = encode_fillings(model, layout, torch.stack([items[i] for i in idx]), prefix_cache)
            for j, i in enumerate(idx):
                out[i] = feats[j]
        return torch.stack(out) if out else torch.empty(0)  # type: ignore[arg-type]
    device = model.token_embedding.weight.device
    fill = fillings.to(device, layout.prefix.dtype)
    batch = fill.shape[0]
    suffix = torch.cat([fill, layout.after.to(device)[None].expand(batch, -1, -1)], dim=1)
    length = layout.prefix.shape[0] + suffix.shape[1]
    if length > model.positional_embedding.shape[0]:
        raise ValueError(f"prompt of {length} tokens exceeds CLIP's context of {model.positional_embedding.shape[0]}")
    with _few_threads(device.type == "cpu" and batch <= SMALL_BATCH):
        if prefix_cache and _prefix_cache_supported(model):
            feats = _encode_with_prefix(model, layout.prefix.to(device), suffix)
        else:
            full = torch.cat([layout.prefix.to(device)[None].expand(batch, -1, -1), suffix], dim=1)
            eot = torch.full((batch,), length - 1, dtype=torch.long, device=device)
            feats = encode_embeddings(model, full.to(model.transformer.get_cast_dtype()), eot)
    return feats.float()


@contextlib.contextmanager
def _few_threads(active: bool) -> Iterator[None]:
    """One intra-op thread for a handful of prompts on CPU (restored afterwards).

    Seven prompts are too little work to split; on our shared two-core machine the split cost more than
    it saved (encoding the 7 learned prompts: 1-4 s with two threads, 0.15 s with one).
    """
    previous = torch.get_num_threads()
    if active:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if active:
            torch.set_num_threads(previous)


def phrase_fillings(model: open_clip.CLIP, phrases: Sequence[str]) -> list[torch.Tensor]:
    """The word embeddings of each phrase's BPE tokens: what a word prompt puts in the depth slot."""
    emb = model.token_embedding.weight
    return [emb[torch.tensor(_tokenizer().encode(p), device=emb.device)].detach() for p in phrases]


# ---------------------------------------------------------------------------------------------
# The vocabulary sweep (cached)
# ---------------------------------------------------------------------------------------------


@dataclass
class VocabSweep:
    """Prompt-space features of vocabulary tokens in the depth slot (``features``: V x D, raw).

    ``seconds`` and ``prompts_per_s`` time the encoding when it ran (stored in the cache manifest, so a
    cache hit reports the original measurement with ``from_cache=True``).
    """

    ids: np.ndarray
    features: torch.Tensor
    key: dict[str, Any]
    seconds: float
    prompts_per_s: float
    from_cache: bool
    path: Path | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def template(self) -> str:
        return str(self.key["template"])

    @functools.cached_property
    def labels(self) -> list[str]:
        return token_strings(self.ids)

    def __len__(self) -> int:
        return len(self.ids)

    def summary(self) -> dict[str, Any]:
        """JSON-ready description (for results files)."""
        return {"tokens": len(self), "dim": int(self.features.shape[1]), "seconds": round(self.seconds, 3),
                "prompts_per_s": round(self.prompts_per_s, 1), "from_cache": self.from_cache,
                "key": self.key, **self.info}


def _cache_key(weights_key: str, arch: str, template: str, vocab_limit: int | None, ids: np.ndarray,
               layout: PromptLayout) -> dict[str, Any]:
    return {"format": CACHE_FORMAT, "weights": weights_key, "arch": arch, "template": template,
            "vocab_limit": vocab_limit, "ids": hashlib.sha256(ids.tobytes()).hexdigest()[:16],
            "layout": layout.digest}


def _key_digest(key: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(dict(key), sort_keys=True).encode()).hexdigest()[:24]


def _checksum(array: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(array).tobytes(), digest_size=16).hexdigest()


def _load_sweep(folder: Path, key: dict[str, Any], ids: np.ndarray) -> VocabSweep | None:
    """A complete, matching cache entry, or None (missing, partial or corrupt entries are misses)."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        if manifest["key"] != key:
            return None
        stored_ids = np.load(folder / "ids.npy")
        feats = np.load(folder / "features.npy")
        if not np.array_equal(stored_ids, ids) or feats.shape[0] != len(ids) or _checksum(feats) != manifest["sha"]:
            warnings.warn(f"vocabulary sweep cache {folder} disagrees with its manifest; recomputing", stacklevel=3)
            return None
    except (OSError, ValueError, KeyError):
        return None
    return VocabSweep(ids, torch.from_numpy(feats), key, float(manifest["seconds"]),
                      float(manifest["prompts_per_s"]), True, folder,
                      {k: manifest[k] for k in ("device", "threads", "prefix_cache") if k in manifest})


def _save_sweep(root: Path, sweep: VocabSweep) -> Path:
    """Write under a temporary name, rename when complete: readers never see a partial entry."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / _key_digest(sweep.key)
    tmp = Path(tempfile.mkdtemp(prefix=".partial-", dir=root))
    try:
        feats = sweep.features.numpy()
        np.save(tmp / "features.npy", feats)
        np.save(tmp / "ids.npy", sweep.ids)
        manifest = {"key": sweep.key, "n": len(sweep.ids), "dim": int(feats.shape[1]), "dtype": str(feats.dtype),
                    "sha": _checksum(feats), "seconds": sweep.seconds, "prompts_per_s": sweep.prompts_per_s,
                    "created": datetime.now(UTC).isoformat(timespec="seconds"), **sweep.info}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        if final.exists():  # a stale or corrupt entry (a valid one would have been a hit)
            shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def vocab_sweep(
    model: open_clip.CLIP,
    weights_key: str,
    arch: str,
    template: str = "baseline",
    vocab_limit: int | None = None,
    include_words: Sequence[str] = (),
    prompts_state: Mapping[str, torch.Tensor | None] | None = None,
    cache_dir: str | os.PathLike[str] | None = "cache/neighbours",
    batch_size: int = 1024,
    progress: bool = True,
    prefix_cache: bool = True,
    refresh: bool = False,
    threads: int | None = None,
) -> VocabSweep:
    """Encode every vocabulary token (or a ``vocab_limit`` slice) in the depth slot of ``template``.

    ``weights_key`` is :func:`clipdepth.backbone.weights_id` of the loaded weights and ``arch`` their
    architecture: the model object does not know either, and they key the cache together with the
    template, ``vocab_limit`` (and the swept ids) and a hash of the template's input embeddings. A hit
    loads ``<cache_dir>/<key digest>/features.npy``; ``refresh`` forces recomputation; ``cache_dir=None``
    disables the cache. Prompts are batched (``batch_size``) with a progress bar. ``threads`` sets
    torch's intra-op threads for the sweep only (restored afterwards): on a CPU shared with other jobs,
    one thread can beat two because OpenMP workers wait on each other (see the benchmark).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    ids = vocab_ids(vocab_limit, include_words)
    layout = prompt_layout(model, template, prompts_state)
    key = _cache_key(weights_key, arch, template, vocab_limit, ids, layout)
    root = Path(cache_dir) if cache_dir is not None else None
    if root is not None and not refresh:
        hit = _load_sweep(root / _key_digest(key), key, ids)
        if hit is not None:
            return hit
    emb = model.token_embedding.weight
    device = emb.device
    chunks = []
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        used_threads = torch.get_num_threads()
        t0 = time.perf_counter()
        with tqdm(total=len(ids), desc="vocabulary sweep", unit="prompt", disable=not progress) as bar:
            for start in range(0, len(ids), batch_size):
                batch = torch.as_tensor(ids[start : start + batch_size], device=device)
                chunks.append(encode_fillings(model, layout, emb[batch][:, None], prefix_cache).cpu())
                bar.update(len(batch))
        seconds = time.perf_counter() - t0
    finally:
        torch.set_num_threads(previous_threads)
    info = {"device": str(device), "threads": used_threads,
            "prefix_cache": bool(prefix_cache and _prefix_cache_supported(model))}
    sweep = VocabSweep(ids, torch.cat(chunks), key, seconds, len(ids) / max(seconds, 1e-9), False, None, info)
    if root is not None:
        sweep.path = _save_sweep(root, sweep)
    return sweep


# ---------------------------------------------------------------------------------------------
# Nearest neighbours
# ---------------------------------------------------------------------------------------------


def _unit(x: torch.Tensor) -> torch.Tensor:
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
        q, cand = _unit(q), _unit(cand)
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


TABLE8_ROW = "t3/nyu/learned-7"  # the paper's analysed tokens: learned-7, NYU, even-7 bins, baseline template


@dataclass
class LearnedRun:
    """A finished (trained or reused) learned-token run, with what the analysis needs from it."""

    name: str
    row: dict[str, Any]  # the notebook's metrics row (report.run_rows)
    resolved: Any  # experiments.ResolvedExperiment
    run_dir: Path
    clip: open_clip.CLIP
    weights_key: str

    def prompts(self, epoch: int | None = None) -> dict[str, torch.Tensor]:
        return load_prompts(self.run_dir, epoch)

    def bin_centres(self) -> list[float]:
        from .bins import bin_centres

        r = self.resolved
        lo, hi = r.experiment.bin_range
        return [float(c) for c in bin_centres(r.bins, r.n_bins, lo, hi)]


def learned_run(ctx: Any, name: str = TABLE8_ROW) -> LearnedRun:
    """Train or reuse registry row ``name`` with a notebook's parameters; return its run folder and CLIP.

    Goes through :func:`clipdepth.report.run_rows` (the path every table notebook takes), so the same
    parameters give the same run folder as in the Table 3 notebook and the run is reused, and the
    ``weights``/``seed``/``force`` parameters are honoured. The CLIP returned is the one that trained
    the tokens, which the analysis must use: tokens only mean something in their own text tower.
    """
    from . import report
    from .backbone import weights_id
    from .train import Trainer

    p = ctx.params
    (row,) = report.run_rows(ctx, [name])
    resolved = report.resolve_row(name, ctx.profile, p.get("train_mode", "cached"), p.get("epochs"),
                                  p.get("weights"), p.get("seed"))
    if not resolved.experiment.learned_depth:
        raise ValueError(f"{name} has no learned depth tokens to analyse")
    device = report.resolve_device(p.get("device", "cpu"))
    clip = ctx.clip(resolved.arch, resolved.weights, device)
    runs_dir = report.repo_path(p.get("runs_dir") or "cache/runs")
    run_dir = Trainer(resolved, runs_dir=runs_dir, views=int(p.get("views", 4)), clip_model=clip).run_dir
    if not (run_dir / "prompts.pt").is_file():
        raise FileNotFoundError(f"{run_dir} has no prompts.pt although {name} finished")
    return LearnedRun(name, row, resolved, run_dir, clip, weights_id(resolved.weights, 0))


def _depth_tokens(state: Mapping[str, torch.Tensor | None]) -> torch.Tensor:
    tokens = state.get("depth_tokens")
    if tokens is None:
        raise ValueError("prompts state has no learned depth tokens (depth_tokens); only learned-N runs apply")
    return tokens.detach().float().cpu()


def _layout_for(model: open_clip.CLIP, state: Mapping[str, torch.Tensor | None], sweep: VocabSweep) -> PromptLayout:
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
        return {name: _records(t) for name, t in self.tables().items()} | {"sweep": self.sweep.summary()}


def _records(table: pd.DataFrame) -> list[dict[str, Any]]:
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
    layout = _layout_for(model, prompts_state, sweep)
    tokens = _depth_tokens(prompts_state)
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
        from .reference import load_table8

        paper = load_table8()

    def cells(t: pd.DataFrame) -> pd.Series:
        t = t[t["rank"] <= ranks]
        return pd.Series((t["neighbour"] + " " + t["distance"].map(lambda d: f"{d:.3f}")).values,
                         index=pd.MultiIndex.from_arrays([t["query"], t["rank"]]))

    return pd.DataFrame({"paper": cells(paper), "ours": cells(ours)}).rename_axis(["query", "rank"])


# ---------------------------------------------------------------------------------------------
# The 0.000 anomaly
# ---------------------------------------------------------------------------------------------


@dataclass
class AnomalyCheck:
    """Table 8 computed three ways, and whether each shows the paper's two oddities.

    Variants: ``learned`` (the learned prompts: what the paper says it analysed), ``<word set>`` (the
    human depth-7 prompts in their place: the suspected mistake) and ``hybrid`` (learned prompts, but
    the human prompt at the bins whose phrase is one token: a leak limited to those bins). Oddities:
    exact zeros (``zero_bins``: bin -> word at rank 1 below ``ZERO_TOL``) and prompts that never appear
    in another prompt's top-4 (``isolated_bins``; in the paper {depth_1} and {depth_5}).
    """

    tables: dict[str, pd.DataFrame]
    zero_bins: dict[str, dict[int, str]]
    isolated_bins: dict[str, list[int]]
    nearest_word: dict[str, list[float]]
    paper_zero_bins: dict[int, str]
    paper_isolated_bins: list[int]
    single_token_bins: dict[int, str]
    missing_words: list[str]
    verdict: str  # "supported" | "not supported" | "inconclusive"
    conclusion: str

    def summary(self) -> pd.DataFrame:
        """One row per variant (and the paper): zeros, isolated prompts, nearest-word distances."""
        rows = [{"variant": "paper Table 8", "zero bins": _fmt_bins(self.paper_zero_bins),
                 "isolated": str(self.paper_isolated_bins), "nearest word (min-max)": "",
                 "zeros as paper": True, "isolation as paper": True}]
        for name in self.tables:
            d = self.nearest_word[name]
            rows.append({"variant": name, "zero bins": _fmt_bins(self.zero_bins[name]),
                         "isolated": str(self.isolated_bins[name]),
                         "nearest word (min-max)": f"{min(d):.3f}-{max(d):.3f}",
                         "zeros as paper": self.zero_bins[name] == self.paper_zero_bins,
                         "isolation as paper": self.isolated_bins[name] == self.paper_isolated_bins})
        return pd.DataFrame(rows).set_index("variant")

    def to_json(self) -> dict[str, Any]:
        return {"tables": {k: _records(v) for k, v in self.tables.items()},
                "zero_bins": {k: {str(b): w for b, w in v.items()} for k, v in self.zero_bins.items()},
                "isolated_bins": self.isolated_bins, "nearest_word": self.nearest_word,
                "paper_zero_bins": {str(b): w for b, w in self.paper_zero_bins.items()},
                "paper_isolated_bins": self.paper_isolated_bins,
                "single_token_bins": {str(b): w for b, w in self.single_token_bins.items()},
                "missing_words": self.missing_words, "verdict": self.verdict, "conclusion": self.conclusion}


def _fmt_bins(bins: Mapping[int, str]) -> str:
    return ", ".join(f"{b} ({w})" for b, w in sorted(bins.items())) or "none"


def _is_word(table: pd.DataFrame) -> pd.Series:
    """Vocabulary rows; the paper's table has no ``kind`` column, its learned entries read ``{depth_i}``."""
    if "kind" in table:
        return table["kind"] == "vocab"
    return ~table["neighbour"].str.match(r"^\{depth_\d+\}$")


def _zero_bins(table: pd.DataFrame, tol: float) -> dict[int, str]:
    """Bins whose top-ranked *word* is at distance below ``tol`` (two coinciding learned prompts are
    another matter, and not what Table 8's zeros show)."""
    words = table[_is_word(table)].sort_values(["bin", "rank"]).groupby("bin").head(1)
    return {int(r.bin): str(r.neighbour) for r in words.itertuples() if r.rank == 1 and r.distance < tol}


def _isolated_bins(table: pd.DataFrame, n: int, ranks: int = PAPER_RANKS) -> list[int]:
    listed = set(table.loc[(table["rank"] <= ranks) & (table["neighbour"] != table["query"]), "neighbour"])
    return [b for b in range(n) if LEARNED_LABEL.format(b) not in listed]


def _nearest_word(table: pd.DataFrame) -> list[float]:
    words = table[table["kind"] == "vocab"].groupby("bin")["distance"].min()
    return [round(float(d), 6) for d in words.sort_index()]


def anomaly_check(
    model: open_clip.CLIP,
    prompts_state: Mapping[str, torch.Tensor | None],
    sweep: VocabSweep,
    word_set: str = ANOMALY_WORD_SET,
    top_k: int = 15,
    zero_tol: float = ZERO_TOL,
    paper: pd.DataFrame | None = None,
) -> AnomalyCheck:
    """Test the hypothesis that Table 8 compared human depth-7 prompts by mistake (see class docstring).

    The zero test does not depend on the weights: a one-token phrase prompt *is* a vocabulary prompt.
    A learned 512-d vector would have to coincide with a word embedding (or map onto the same feature)
    to print 0.000. The isolation test does depend on the weights, so under random weights it is only
    a demonstration of the computation.
    """
    if paper is None:
        from .reference import load_table8

        paper = load_table8()
    layout = _layout_for(model, prompts_state, sweep)
    tokens = _depth_tokens(prompts_state)
    n = len(tokens)
    phrases = WORD_LISTS[word_set]
    if len(phrases) != n:
        raise ValueError(f"{word_set} has {len(phrases)} phrases but the prompts have {n} learned tokens")
    learned = encode_fillings(model, layout, tokens[:, None]).cpu()
    words = encode_fillings(model, layout, phrase_fillings(model, phrases)).cpu()
    single = single_token_bins(word_set)
    hybrid = learned.clone()
    for b in single:
        hybrid[b] = words[b]
    labels = [LEARNED_LABEL.format(i) for i in range(n)]
    variants = {"learned": learned, word_set: words, "hybrid": hybrid}
    tables = {name: nearest_neighbours(f, sweep.features, sweep.ids, top_k, True, labels, space=f"prompt:{name}")
              for name, f in variants.items()}
    zero = {name: _zero_bins(t, zero_tol) for name, t in tables.items()}
    isolated = {name: _isolated_bins(t, n) for name, t in tables.items()}
    nearest = {name: _nearest_word(t) for name, t in tables.items()}
    paper_zero = _zero_bins(paper, zero_tol)
    paper_isolated = _isolated_bins(paper, n)
    swept = set(sweep.labels)
    missing = sorted(w for w in single.values() if w not in swept)
    verdict, text = _conclusion(word_set, zero, isolated, nearest, paper_zero, paper_isolated, single, missing,
                                str(sweep.key.get("weights", "")))
    return AnomalyCheck(tables, zero, isolated, nearest, paper_zero, paper_isolated, single, missing, verdict, text)


def _conclusion(word_set: str, zero: dict[str, dict[int, str]], isolated: dict[str, list[int]],
                nearest: dict[str, list[float]], paper_zero: dict[int, str], paper_isolated: list[int],
                single: dict[int, str], missing: list[str], weights: str) -> tuple[str, str]:
    """Turn the measurements into a verdict and a paragraph; every statement is computed, none assumed."""
    iso = ", ".join(f"{{depth_{b}}}" for b in paper_isolated) or "none"
    lines = [
        f"Paper Table 8 prints 0.000 at bins {_fmt_bins(paper_zero)}; the {word_set} phrases that are a single "
        f"vocabulary token are at bins {_fmt_bins(single)}. Prompts never in another prompt's top-{PAPER_RANKS} "
        f"in the paper: {iso}.",
    ]
    for name in zero:
        d = nearest[name]
        iso_v = ", ".join(f"{{depth_{b}}}" for b in isolated[name]) or "none"
        lines.append(
            f"- {name}: rank-1 distance below {ZERO_TOL:g} at bins {_fmt_bins(zero[name])}; nearest vocabulary "
            f"word at {min(d):.3f}-{max(d):.3f}; never in another's top-{PAPER_RANKS}: {iso_v}."
        )
    words_match = zero[word_set] == paper_zero and bool(paper_zero)
    learned_match = zero["learned"] == paper_zero and bool(paper_zero)
    if missing:
        verdict = "inconclusive"
        lines.append(f"Inconclusive: the swept vocabulary lacks {', '.join(missing)}; sweep a slice that includes "
                     f"the {word_set} words (include_words) or the full vocabulary.")
    elif words_match and not zero["learned"]:
        verdict = "supported"
        lines.append(
            f"Supported: the {word_set} word prompts reproduce the paper's zeros exactly (same bins, same words), "
            "because a one-token phrase prompt is identical to a vocabulary prompt under any weights, while the "
            f"learned prompts match no word (closest {min(nearest['learned']):.3f}). Table 8's 0.000 entries are "
            f"exactly what {word_set} prompts in the analysis produce, and what a learned 512-d vector would only "
            "produce by coinciding with a word embedding; they are not evidence that learned tokens "
            f"{' and '.join(str(b) for b in sorted(paper_zero))} converged to "
            f"{' and '.join(repr(w.replace('</w>', '')) for _, w in sorted(paper_zero.items()))}."
        )
    elif learned_match:
        verdict = "not supported"
        lines.append("Not supported: the learned prompts themselves reproduce the zeros, so no mistake is needed "
                     "to explain them.")
    else:
        verdict = "inconclusive"
        lines.append(f"Inconclusive: neither the learned nor the {word_set} prompts reproduce the paper's zeros "
                     "exactly.")
    if verdict == "supported":
        if isolated["hybrid"] == paper_isolated:
            lines.append(f"The hybrid (human prompts only at bins {sorted(single)}) also reproduces the second "
                         f"oddity, {iso} absent from every other list, which the pure {word_set} variant "
                         f"{'also shows' if isolated[word_set] == paper_isolated else 'does not'}.")
        else:
            lines.append(f"The isolation of {iso} is not reproduced by the hybrid with these weights "
                         f"(isolated there: {isolated['hybrid'] or 'none'}); it depends on the trained model.")
    if weights.startswith("random"):
        lines.append("Demo caveat: random-weight CLIP. The zero test is weight-independent; the neighbour lists, "
                     "distances and isolation are not and say nothing about the paper's model.")
    return verdict, "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Figures and their data
# ---------------------------------------------------------------------------------------------


def projection(
    analysis: NeighbourAnalysis,
    method: str = "pca",
    seed: int = 0,
    n_background: int = 500,
    label_k: int = 2,
    threads: int | None = 1,
) -> pd.DataFrame:
    """2-D coordinates of the learned prompts among vocabulary prompts (unit features).

    Points: a seeded random sample of ``n_background`` vocabulary prompts, each learned prompt's
    ``label_k`` nearest words (kind ``nearest``, labelled) and the learned prompts (kind ``learned``).
    ``method`` is ``pca`` or ``tsne`` (scikit-learn, ``random_state=seed``, after a 50-d PCA; t-SNE on
    the whole vocabulary would take minutes, and the sample is enough to show where the tokens sit).
    ``threads`` caps scikit-learn's OpenMP/BLAS threads: on a shared two-core machine one thread ran
    t-SNE 5-25x faster than two (workers spin-waiting on each other); None keeps the library default.
    """
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    if method not in ("pca", "tsne"):
        raise ValueError(f"method must be 'pca' or 'tsne', got {method!r}")
    sweep = analysis.sweep
    table = analysis.prompt
    nearest = table[(table["kind"] == "vocab")].groupby("query", sort=False).head(label_k)
    near_ids = list(dict.fromkeys(int(t) for t in nearest["token_id"]))
    rng = np.random.default_rng(seed)
    pos_of = {int(t): i for i, t in enumerate(sweep.ids)}
    near_rows = [pos_of[t] for t in near_ids]
    others = np.setdiff1d(np.arange(len(sweep.ids)), near_rows)
    background = rng.choice(others, size=min(n_background, len(others)), replace=False)
    rows = np.concatenate([background, np.array(near_rows, dtype=np.int64)])
    feats = torch.cat([sweep.features[torch.as_tensor(rows)], analysis.learned_features])
    x = _unit(feats.float()).numpy()
    with threadpool_limits(threads):
        if method == "pca":
            xy = PCA(n_components=2, random_state=seed).fit_transform(x)
        else:
            reduced = PCA(n_components=min(50, *x.shape), random_state=seed).fit_transform(x)
            perplexity = float(min(30.0, (len(x) - 1) / 3))
            xy = TSNE(n_components=2, random_state=seed, init="pca", perplexity=perplexity).fit_transform(reduced)
    labels = token_strings(sweep.ids[rows]) + analysis.labels
    kinds = ["vocab"] * len(background) + ["nearest"] * len(near_rows) + ["learned"] * len(analysis.labels)
    return pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1], "label": labels, "kind": kinds})


def plot_projection(coords: pd.DataFrame, ax: Any = None, title: str | None = None) -> Any:
    """Scatter of :func:`projection` output; learned prompts and their nearest words are labelled."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 6))
    style = {"vocab": dict(s=4, c="0.75", label="vocabulary prompts"),
             "nearest": dict(s=18, c="tab:blue", label="nearest words"),
             "learned": dict(s=60, c="tab:red", marker="*", label="learned prompts")}
    for kind, kw in style.items():
        pts = coords[coords["kind"] == kind]
        ax.scatter(pts["x"], pts["y"], **kw)
        if kind != "vocab":
            for r in pts.itertuples():
                ax.annotate(r.label, (r.x, r.y), fontsize=7, xytext=(3, 3), textcoords="offset points",
                            color=kw["c"])
    ax.legend(loc="best", fontsize=8)
    ax.set_title(title or "learned prompts among vocabulary prompts")
    return ax.figure


def pairwise_distances(analysis: NeighbourAnalysis, space: str = "prompt") -> pd.DataFrame:
    """Euclidean distances between the learned prompts (unit features) or tokens (``token_raw``/``token_unit``)."""
    x = {"prompt": _unit(analysis.learned_features), "token_raw": analysis.learned_tokens,
         "token_unit": _unit(analysis.learned_tokens)}[space].float()
    d = torch.cdist(x[None], x[None], compute_mode="donot_use_mm_for_euclid_dist")[0].numpy()
    return pd.DataFrame(d, index=analysis.labels, columns=analysis.labels)


def plot_pairwise(dist: pd.DataFrame, ax: Any = None, title: str | None = None) -> Any:
    """Heatmap of :func:`pairwise_distances` (the paper's neighbour lists show pairs near 0.18)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    if ax is None:
        _, ax = plt.subplots(figsize=(5.5, 4.5))
    sns.heatmap(dist, annot=True, fmt=".3f", cmap="viridis", square=True, ax=ax, annot_kws={"fontsize": 7})
    ax.set_title(title or "distances between learned prompts")
    return ax.figure


def nearest_word_vs_bin(analysis: NeighbourAnalysis, centres: Sequence[float] | torch.Tensor,
                        space: str = "prompt") -> pd.DataFrame:
    """Each learned token's distance to its nearest vocabulary word, with its bin centre in metres."""
    near = analysis.nearest_words(space)
    c = [float(v) for v in centres]
    if len(c) != len(near):
        raise ValueError(f"{len(c)} bin centres for {len(near)} learned tokens")
    return pd.DataFrame({"bin": near["bin"].to_numpy(), "query": near["query"].to_numpy(), "centre_m": c,
                         "word": near["neighbour"].to_numpy(), "distance": near["distance"].to_numpy()})


def plot_nearest_word_vs_bin(frame: pd.DataFrame, ax: Any = None, title: str | None = None) -> Any:
    """Distance to the nearest word against bin centre, each point labelled with that word."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(frame["centre_m"], frame["distance"], "o-")
    for r in frame.itertuples():
        ax.annotate(r.word, (r.centre_m, r.distance), fontsize=7, xytext=(3, 4), textcoords="offset points")
    ax.set_xlabel("bin centre (m)")
    ax.set_ylabel("distance to nearest word")
    ax.set_title(title or "how far each learned token is from any word")
    return ax.figure


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


def plot_neighbours_over_epochs(frame: pd.DataFrame, ax: Any = None, title: str | None = None) -> Any:
    """Distance to the nearest vocabulary word per token over training, labelled with that word."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4))
    words = frame[frame["kind"] == "vocab"].sort_values("rank").groupby(["epoch", "query"], sort=False).head(1)
    for _, g in words.groupby("bin"):  # legend in bin order
        g = g.sort_values("epoch")
        ax.plot(g["epoch"], g["distance"], "o-", label=g["query"].iloc[0])
        for r in g.itertuples():
            ax.annotate(r.neighbour, (r.epoch, r.distance), fontsize=6, xytext=(2, 3), textcoords="offset points")
    ax.set_xticks(sorted(words["epoch"].unique()))
    ax.set_xlabel("epoch")
    ax.set_ylabel("distance to nearest word")
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(title or "nearest vocabulary word over training")
    return ax.figure
