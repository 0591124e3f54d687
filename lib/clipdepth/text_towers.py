"""The text tower seen from input embeddings: which open_clip towers qualify, how they pool and mask,
and the frozen path from token embeddings to projected text features.

Why a module of its own: :class:`clipdepth.prompts.PromptEncoder` writes vectors into token slots
and needs CLIP's text transformer *below* its tokenizer (open_clip has no such entry point); the same
path serves the Table 8 vocabulary sweep and the authors' token initialisation. This module knows the
towers (open_clip ``CLIP``, ``CustomTextCLIP``/``CoCa`` ``TextTransformer``; not Hugging Face towers),
the tokenizer interface a prompt needs (:class:`PromptTokenizer`), and when cutting the context after
the longest prompt is exact (:func:`truncation_is_exact`); :mod:`clipdepth.prompts` builds prompts on
it and re-exports its names. :class:`TextEncoder` is CoOp's name for the frozen path.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import open_clip
import torch
from open_clip.transformer import TextTransformer
from torch import nn

__all__ = [
    "encode_embeddings_shared_prefix",
    "prefix_sharing_is_exact",
    "PromptTokenizer",
    "TextEncoder",
    "clip_prompt_tokenizer",
    "clip_tokenizer",
    "encode_embeddings",
    "text_context_length",
    "text_pool_type",
    "text_tower",
    "truncation_is_exact",
]


@functools.lru_cache(maxsize=1)
def clip_tokenizer() -> open_clip.tokenizer.SimpleTokenizer:
    """CLIP's BPE tokenizer (the same for every architecture here); built once, it reads a 1.3 MB vocabulary."""
    return open_clip.get_tokenizer("RN50-quickgelu")


@dataclass(frozen=True)
class PromptTokenizer:
    """What the prompt encoder needs from a tokenizer: piecewise ``encode`` and the special ids.

    A prompt row is ``prefix + encode(piece) ... + suffix`` padded with ``pad_id`` -- what the model's
    own tokenizer produces for the whole string when it works word by word (CLIP's BPE does).
    """

    encode: Callable[[str], list[int]]
    prefix: tuple[int, ...]
    suffix: tuple[int, ...]
    pad_id: int
    vocab_size: int


def clip_prompt_tokenizer() -> PromptTokenizer:
    """CLIP's BPE as a :class:`PromptTokenizer`: SOT prefix, EOT suffix, zero padding."""
    tok = clip_tokenizer()
    return PromptTokenizer(tok.encode, (tok.sot_token_id,), (tok.eot_token_id,), 0, len(tok.encoder))


def text_tower(model: nn.Module) -> nn.Module:
    """The module holding a model's text transformer parts.

    open_clip's ``CLIP`` keeps them on the model itself; ``CustomTextCLIP`` and ``CoCa`` hold an
    open_clip ``TextTransformer`` in ``model.text``. Towers built on Hugging Face models
    (``HFTextEncoder``) are not supported: they have no input-embedding path this encoder can use.
    """
    if getattr(model, "transformer", None) is not None and getattr(model, "token_embedding", None) is not None:
        return model
    text = getattr(model, "text", None)
    if isinstance(text, TextTransformer):
        return text
    if text is not None:
        raise TypeError(
            f"text tower {type(text).__name__} is not supported: PromptEncoder needs open_clip's own "
            "transformer text tower (CLIP or TextTransformer), not a Hugging Face text model"
        )
    raise TypeError(f"{type(model).__name__} has no open_clip text tower")


def text_pool_type(model: nn.Module) -> str:
    """How the tower pools its token outputs: ``argmax`` (CLIP's EOT), ``eos``, ``first``, ``last``, or
    ``cls`` (CoCa's appended class token, layer-normed after pooling), read from the model."""
    tower = text_tower(model)
    if tower is model:
        return str(getattr(model, "text_pool_type", "argmax"))
    return "cls" if tower.cls_emb is not None else str(tower.pool_type)


def text_context_length(model: nn.Module) -> int:
    """Token positions of the text tower's context (without CoCa's appended class token)."""
    tower = text_tower(model)
    n_pos = tower.positional_embedding.shape[0]
    return int(n_pos - (1 if getattr(tower, "cls_emb", None) is not None else 0))


def _masks_padding(tower: nn.Module) -> bool:
    """Whether the tower masks padding keys (bidirectional towers with ``use_pad_mask``, and CoCa)."""
    return bool(getattr(tower, "use_pad_mask", False)) or getattr(tower, "cls_emb", None) is not None


def truncation_is_exact(model: nn.Module) -> bool:
    """Whether cutting the context after the longest prompt leaves the pooled feature unchanged.

    True when the pooled position is a real token (``argmax``/``eos``/``first``) and no real token can
    see the padding: a causal mask, or a padding mask without an appended class token. SigLIP-style
    ``last`` pooling reads the final padding position, bidirectional towers without a padding mask let
    every token see the padding, and CoCa's class token sits at the end of the full context.
    """
    tower = text_tower(model)
    if text_pool_type(model) not in ("argmax", "eos", "first"):
        return False
    return tower.attn_mask is not None or _masks_padding(tower)


class TextEncoder:
    """CoOp's name for the frozen text path: input embeddings -> projected EOT features.

    A thin, stateless view of a CLIP model's text tower (not an ``nn.Module``, so it never adds CLIP's
    weights to anyone's parameters); calling it is :func:`encode_embeddings`.
    """

    def __init__(self, model: open_clip.CLIP) -> None:
        self.model = model

    def __call__(self, embeddings: torch.Tensor, eot_index: torch.Tensor,
                 n_tokens: torch.Tensor | None = None) -> torch.Tensor:
        return encode_embeddings(self.model, embeddings, eot_index, n_tokens)


def encode_embeddings(
    model: nn.Module, x: torch.Tensor, eot_index: torch.Tensor, n_tokens: torch.Tensor | None = None
) -> torch.Tensor:
    """The text tower's path from input embeddings: positions, transformer (with the tower's own
    masks), final norm, pooling as :func:`text_pool_type` says, projection.

    ``x`` is ``N x L x width`` with ``L`` at most the context length; ``eot_index`` is the pooled
    position for ``argmax``/``eos``/``first`` pooling (``last`` and ``cls`` ignore it); ``n_tokens``
    (real tokens per prompt, the rest is padding) is needed by towers that mask padding keys.
    """
    tower = text_tower(model)
    pool = text_pool_type(model)
    n, length = x.shape[0], x.shape[1]
    cls = getattr(tower, "cls_emb", None)
    if cls is not None:
        x = torch.cat([x, cls.to(x.dtype).expand(n, 1, -1)], dim=1)
    seq = x.shape[1]
    x = x + tower.positional_embedding[:seq].to(x.dtype)
    mask = tower.attn_mask[:seq, :seq] if tower.attn_mask is not None else None
    if _masks_padding(tower):
        if n_tokens is None:
            raise ValueError(f"{type(tower).__name__} masks padding: encode_embeddings needs n_tokens")
        valid = torch.arange(length, device=x.device)[None] < n_tokens.to(x.device)[:, None]
        if cls is not None:  # open_clip keeps CoCa's legacy order (class-token key first) unless corrected
            ones = valid.new_ones(n, 1)
            valid = torch.cat([valid, ones] if tower.correct_cls_mask else [ones, valid], dim=1)
        pad = torch.zeros(n, seq, seq, dtype=x.dtype, device=x.device)
        pad.masked_fill_(~valid[:, None, :], float("-inf"))
        pad = pad.repeat_interleave(tower.heads, 0)
        mask = pad if mask is None else mask.unsqueeze(0) + pad
    x = tower.transformer(x, attn_mask=mask)
    if pool == "cls":
        x = tower.ln_final(x[:, -1])
    else:
        x = tower.ln_final(x)
        if pool == "last":
            x = x[:, -1]
        elif pool == "first":
            x = x[:, 0]
        else:
            x = x[torch.arange(n, device=x.device), eot_index.to(x.device)]
    proj = tower.text_projection
    if proj is None:
        return x
    return proj(x) if isinstance(proj, nn.Linear) else x @ proj


def prefix_sharing_is_exact(model: nn.Module) -> bool:
    """Whether prompts that start with the same tokens may share those tokens' computation.

    In a causal tower (no padding mask, no class token) a position's state depends only on the tokens
    before it, so a prefix common to every prompt has the same states in every prompt: compute it once,
    and let each prompt's remaining tokens attend to it. Needs open_clip's standard residual blocks
    (``batch_first`` multi-head attention) and pooling at a real token (``argmax``/``eos``).
    """
    tower = text_tower(model)
    blocks = getattr(tower.transformer, "resblocks", None)
    return (tower.attn_mask is not None and not _masks_padding(tower) and blocks is not None
            and text_pool_type(model) in ("argmax", "eos") and getattr(tower.transformer, "batch_first", False)
            and all(isinstance(getattr(b, "attn", None), nn.MultiheadAttention) and b.attn.batch_first
                    and not hasattr(b, "ln_1_kv") for b in blocks))


def encode_embeddings_shared_prefix(model: nn.Module, x: torch.Tensor, eot_index: torch.Tensor,
                                    prefix: int) -> torch.Tensor:
    """:func:`encode_embeddings` for prompts whose first ``prefix`` input embeddings are identical.

    The prefix runs once (1 x prefix tokens, causal); each block then lets the N prompts' remaining
    tokens attend to the prefix keys and causally to their own. Per token this is the same arithmetic as
    the full causal pass, up to the float rounding of the attention's reductions; the cost falls from
    N x L to prefix + N x (L - prefix) tokens (4x for 256 prompts of the baseline template). Only where
    :func:`prefix_sharing_is_exact`.
    """
    tower = text_tower(model)
    n, length = x.shape[0], x.shape[1]
    if not 0 < prefix < length or int(eot_index.min()) < prefix:
        raise ValueError(f"shared prefix of {prefix} tokens does not fit prompts of {length} tokens")
    x = x + tower.positional_embedding[:length].to(x.dtype)
    head, tail = x[:1, :prefix], x[:, prefix:]
    causal = tower.attn_mask[:length, :length].to(x.dtype)
    head_mask, tail_mask = causal[:prefix, :prefix], causal[prefix:, :]
    for block in tower.transformer.resblocks:
        h_head, h_tail = block.ln_1(head), block.ln_1(tail)
        keys = torch.cat([h_head.expand(n, prefix, -1), h_tail], dim=1)
        attended = block.attn(h_tail, keys, keys, need_weights=False, attn_mask=tail_mask)[0]
        tail = tail + block.ls_1(attended)
        tail = tail + block.ls_2(block.mlp(block.ln_2(tail)))
        head = block(head, attn_mask=head_mask)
    rows = torch.arange(n, device=x.device)
    pooled = tower.ln_final(tail[rows, eot_index.to(x.device) - prefix])
    proj = tower.text_projection
    if proj is None:
        return pooled
    return proj(pooled) if isinstance(proj, nn.Linear) else pooled @ proj
