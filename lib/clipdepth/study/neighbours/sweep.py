"""The vocabulary sweep: every CLIP token in the depth slot of the training template, encoded once, cached.

The engine of the nearest-neighbour analysis (:mod:`clipdepth.study.neighbours`): prompt-space features of
all 49,408 vocabulary prompts, against which learned prompts are compared. CLIP's text transformer is
causal, so the template tokens before the depth slot have the same hidden states in every vocabulary
prompt. :func:`encode_fillings` computes them (and their attention keys and values) once and runs only
the slot and EOT positions per prompt, which is exact and about four times cheaper than running the
whole truncated prompt. Learned prompts and word prompts go through the same function, so identical
inputs give identical features. The sweep is cached on disk, keyed by weights, template and ids.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock
from tqdm.auto import tqdm

from clipdepth._files import clean_stale_temporaries, file_lock, make_temp_dir
from clipdepth.model.prompt_learner import PromptEncoder, encode_embeddings

__all__ = [
    "VOCAB_SIZE",
    "PromptLayout",
    "VocabSweep",
    "encode_fillings",
    "phrase_fillings",
    "prompt_layout",
    "token_strings",
    "tokenizer",
    "vocab_ids",
    "vocab_sweep",
]

VOCAB_SIZE = 49408  # CLIP's BPE vocabulary (the paper says "40k tokens")
CACHE_FORMAT = "1"  # bump when the sweep's computation changes: old cache folders then miss
MANIFEST = "manifest.json"
SMALL_BATCH = 64  # at most this many prompts are encoded on one CPU thread (see _few_threads)



# ---------------------------------------------------------------------------------------------
# Tokens
# ---------------------------------------------------------------------------------------------


@functools.cache
def tokenizer() -> Any:
    """CLIP's BPE tokenizer (loaded once): ids, their spellings, phrase encodings."""
    return open_clip.get_tokenizer("RN50-quickgelu")  # CLIP's BPE, shared by every arch we support


def token_strings(ids: Sequence[int] | np.ndarray) -> list[str]:
    """Vocabulary entries as BPE spells them: ``close</w>`` ends a word, ``close`` continues one.

    Non-ASCII bytes stay in the byte-to-unicode alphabet (``âł``), as in the paper's table, so our
    strings compare with Table 8 verbatim.
    """
    decoder = tokenizer().decoder
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
    extra = {t for w in include_words for t in tokenizer().encode(w)}
    return np.array(sorted(set(range(vocab_limit)) | extra), dtype=np.int64)


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
    """Split ``template`` around its depth slot exactly as the prompt learner
    (:class:`~clipdepth.model.prompt_learner.PromptEncoder`) builds it.

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
    return [emb[torch.tensor(tokenizer().encode(p), device=emb.device)].detach() for p in phrases]


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
    """Write under a unique temporary name (host and pid in it, the user's umask), rename when complete:
    readers never see a partial entry. The caller holds the entry's lock (see :func:`vocab_sweep`)."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / _key_digest(sweep.key)
    tmp = make_temp_dir(final)
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

    ``weights_key`` is :func:`clipdepth.model.backbone.weights_id` of the loaded weights and ``arch`` their
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
    if cache_dir is None:
        return _compute_sweep(model, ids, layout, key, batch_size, progress, prefix_cache, threads)
    root = Path(cache_dir)
    final = root / _key_digest(key)
    if not refresh:
        hit = _load_sweep(final, key, ids)
        if hit is not None:
            return hit
    # a second process asking for the same entry waits here, then reuses the first one's entry
    with file_lock(final, what=f"vocabulary sweep cache entry {final}"):
        if not refresh:
            hit = _load_sweep(final, key, ids)
            if hit is not None:
                return hit
        clean_stale_temporaries(root)
        sweep = _compute_sweep(model, ids, layout, key, batch_size, progress, prefix_cache, threads)
        sweep.path = _save_sweep(root, sweep)
    return sweep


def _compute_sweep(model: open_clip.CLIP, ids: np.ndarray, layout: PromptLayout, key: dict[str, Any],
                   batch_size: int, progress: bool, prefix_cache: bool, threads: int | None) -> VocabSweep:
    """Encode the vocabulary prompts in batches (see :func:`vocab_sweep`)."""
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
    return VocabSweep(ids, torch.cat(chunks), key, seconds, len(ids) / max(seconds, 1e-9), False, None, info)
