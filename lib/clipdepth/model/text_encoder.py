"""The text tower seen from input embeddings: which open_clip towers qualify, how they pool and mask,
and the frozen path from token embeddings to projected text features.

Why a module of its own: :class:`clipdepth.model.prompt_learner.PromptEncoder` writes vectors into token slots
and needs CLIP's text transformer *below* its tokenizer (open_clip has no such entry point); the same
path serves the Table 8 vocabulary sweep and the authors' token initialisation. This module knows the
towers (open_clip ``CLIP``, ``CustomTextCLIP``/``CoCa`` ``TextTransformer``; not Hugging Face towers),
the tokenizer interface a prompt needs (:class:`PromptTokenizer`), and when cutting the context after
the longest prompt is exact (:func:`truncation_is_exact`); :mod:`clipdepth.model.prompt_learner` builds prompts on
it and re-exports its names. :class:`TextEncoder` is CoOp's name for the frozen path.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import open_clip
import torch
import torch.nn.functional as F
from open_clip.transformer import TextTransformer
from torch import nn

__all__ = [
    "PromptGroup",
    "PromptTokenizer",
    "TextEncoder",
    "clip_prompt_tokenizer",
    "clip_tokenizer",
    "hf_prompt_tokenizer",
    "prompt_tokenizer_for",
    "word_level_tokenizer",
    "encode_embeddings",
    "encode_prompt_groups",
    "prefix_sharing_is_exact",
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


def hf_prompt_tokenizer(tokenizer: Any, clean: Callable[[str], str] | None = None) -> PromptTokenizer:
    """A Hugging Face tokenizer (what open_clip's ``HFTokenizer`` wraps for SigLIP) as a
    :class:`PromptTokenizer`: ``clean`` (open_clip's text cleaning for the model, e.g. ``canonicalize``)
    then the tokenizer without special tokens per piece; the special tokens it puts before and after a
    text (SigLIP: none before, ``</s>`` after) read from how it encodes one word with and without them;
    its pad id."""
    clean = clean or (lambda text: text)
    bare = list(tokenizer("object", add_special_tokens=False)["input_ids"])
    around = list(tokenizer("object")["input_ids"])
    at = next((i for i in range(len(around) - len(bare) + 1) if around[i : i + len(bare)] == bare), None)
    if not bare or at is None:
        raise ValueError(f"tokenizer {type(tokenizer).__name__}: cannot tell its special tokens from the text")
    around = around[:at] + [None] + around[at + len(bare) :]
    at = around.index(None)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return PromptTokenizer(lambda text: list(tokenizer(clean(text), add_special_tokens=False)["input_ids"]),
                           tuple(around[:at]), tuple(around[at + 1 :]), int(pad), len(tokenizer))


def word_level_tokenizer(words: Sequence[str]) -> Any:
    """A small word-level Hugging Face tokenizer over ``words`` with SigLIP's special-token layout
    (``<pad>`` 0, ``</s>`` 1 appended to every text, ``<unk>`` 2; lower-cased, split on whitespace).

    Why: SigLIP's own tokenizer is a Hugging Face download (open_clip's ``hf_tokenizer_name``), which an
    offline machine does not have. A random-init tower knows no vocabulary, so for the demo any fixed
    tokenizer whose ids fit the tower's table is as good as the real one: words map to fixed rows of the
    random embedding table. With real weights the model's own tokenizer is required
    (:func:`prompt_tokenizer_for`).
    """
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "</s>", "<unk>"]
    vocab = {w: i for i, w in enumerate(specials + sorted({w.lower() for w in words} - set(specials)))}
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def prompt_tokenizer_for(model: nn.Module, demo_words: Sequence[str] = ()) -> PromptTokenizer:
    """The tokenizer a model's prompts are written with, as :class:`PromptTokenizer`.

    CLIP's BPE for every tower whose open_clip config names no Hugging Face tokenizer (OpenAI CLIP,
    ConvNeXt, EVA02, ...). For towers that do (SigLIP, ``text_cfg.hf_tokenizer_name``): with real
    weights, the model's own tokenizer through ``open_clip.get_tokenizer`` (from the local Hugging Face
    cache when offline; missing files are one line naming the repository to fetch); with random weights
    (:func:`clipdepth.model.backbone.load_clip` with ``weights=None``, the demo), :func:`word_level_tokenizer`
    over ``demo_words``. The architecture and weights are read from the attributes ``load_clip`` sets;
    a model built elsewhere gets CLIP's BPE.
    """
    arch = getattr(model, "clipdepth_arch", None)
    cfg = (open_clip.get_model_config(arch) or {}) if arch else {}
    text_cfg = cfg.get("text_cfg", {})
    hf_name = text_cfg.get("hf_tokenizer_name")
    if not hf_name:
        return clip_prompt_tokenizer()
    clean_fn = open_clip.tokenizer.get_clean_fn(text_cfg.get("tokenizer_kwargs", {}).get("clean", "whitespace"))
    if getattr(model, "clipdepth_weights", None) is None:
        return hf_prompt_tokenizer(word_level_tokenizer(list(demo_words)), clean_fn)
    try:
        own = open_clip.get_tokenizer(arch)
    except (OSError, ValueError) as exc:
        from clipdepth.model.checkpoints import WeightsUnavailableError

        raise WeightsUnavailableError(
            f"{arch}: its text tokenizer '{hf_name}' is not in the local Hugging Face cache ({type(exc).__name__}); "
            f"on a machine with network access run open_clip.get_tokenizer('{arch}') and copy "
            "~/.cache/huggingface/hub here") from exc
    return hf_prompt_tokenizer(own.tokenizer, own.clean_fn)


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
    (``batch_first`` multi-head attention with one packed input projection) and pooling at a real token
    (``argmax``/``eos``).
    """
    tower = text_tower(model)
    blocks = getattr(tower.transformer, "resblocks", None)
    return (tower.attn_mask is not None and not _masks_padding(tower) and blocks is not None
            and text_pool_type(model) in ("argmax", "eos") and getattr(tower.transformer, "batch_first", False)
            and all(_standard_block(b) for b in blocks))


def _standard_block(block: nn.Module) -> bool:
    """open_clip's ``ResidualAttentionBlock`` with plain self-attention: what :func:`encode_prompt_groups`
    re-expresses token by token (packed q/k/v projection, no extra key/value biases, no cross-attention)."""
    attn = getattr(block, "attn", None)
    return (isinstance(attn, nn.MultiheadAttention) and attn.batch_first and attn._qkv_same_embed_dim
            and attn.bias_k is None and not attn.add_zero_attn and attn.dropout == 0.0
            and not hasattr(block, "ln_1_kv")
            and all(hasattr(block, n) for n in ("ln_1", "ln_2", "mlp", "ls_1", "ls_2")))


#: Tail tokens per attention problem in :func:`encode_prompt_groups`: a group's prompts are packed a
#: few at a time (block-diagonal within the pack), because one tiny problem per prompt and head costs
#: more in per-problem overhead than in arithmetic (CPU, 256 two-token tails: 3.5x faster than one
#: problem per prompt, measured with ``F.scaled_dot_product_attention`` forward and backward).
PACK_TOKENS = 16


@dataclass(frozen=True)
class PromptGroup:
    """The prompts of one prompt encoder, as :func:`encode_prompt_groups` takes them.

    ``embeddings`` is ``N x L x width`` (input embeddings, before positions), ``eot_index`` the pooled
    position of each prompt, ``prefix`` the number of leading input embeddings every prompt shares.
    Groups with equal ``head_key`` (not None) promise equal prefixes, which then run once for all of
    them (e.g. the token ids of a prefix of fixed words, in one model).
    """

    embeddings: torch.Tensor
    eot_index: torch.Tensor
    prefix: int
    head_key: Hashable | None = None


#: Matrix products in :func:`encode_prompt_groups` get at least this many rows (zero rows appended):
#: MKL computes each row of a product of 12 rows or more independently of the height (measured for every
#: shape of CLIP's text tower, forward and backward), below that some heights take another kernel. A group
#: encoded alone then rounds exactly as the same group encoded with others.
MIN_ROWS = 16


def _at_least(x: torch.Tensor, rows: int) -> torch.Tensor:
    """``x`` with zero rows appended up to ``rows`` (padding tokens: no real token attends to them)."""
    return x if x.shape[0] >= rows else torch.cat([x, x.new_zeros(rows - x.shape[0], *x.shape[1:])])


def _additive(allowed: torch.Tensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An attention mask to add to the scores: 0 where ``allowed``, -inf elsewhere (measured 3% faster
    than a boolean mask in this pass on CPU); cast to the queries' dtype where used (autocast)."""
    return torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, float("-inf")).to(device)


class _Layout:
    """Where every token of a set of prompt groups sits, and who attends to whom.

    Flat: one row per distinct token (each distinct shared prefix, a "head", once; then every prompt's
    remaining tokens), what the per-token layers see in one matrix product. Padded: per head its tokens,
    per group its prompts in packs of ``Q_g = c_g x t_g`` slots (``c_g`` prompts of ``t_g`` tokens), what
    attention sees. A head attends causally to itself; a pack's tokens attend to their group's head and
    causally within their own prompt. Attention runs once per head and once per group, on shapes that
    depend on that head or group alone -- so a group's attention is the same computation whether it is
    encoded alone or with others.
    """

    def __init__(self, groups: Sequence[PromptGroup], device: torch.device, dtype: torch.dtype) -> None:
        self.head_of: list[int] = []  # per group: its head
        self.head_len: list[int] = []
        self.head_source: list[int] = []  # per head: the group whose embeddings it is computed from
        seen: dict[Hashable, int] = {}
        for gi, g in enumerate(groups):
            if g.head_key is not None and g.head_key in seen:
                self.head_of.append(seen[g.head_key])
                continue
            if g.head_key is not None:
                seen[g.head_key] = len(self.head_len)
            self.head_of.append(len(self.head_len))
            self.head_len.append(g.prefix)
            self.head_source.append(gi)
        self.counts = [int(g.embeddings.shape[0]) for g in groups]
        self.tails = [int(g.embeddings.shape[1]) - g.prefix for g in groups]
        self.per_pack = [min(n, max(1, PACK_TOKENS // t)) for n, t in zip(self.counts, self.tails, strict=True)]
        self.n_packs = [-(-n // c) for n, c in zip(self.counts, self.per_pack, strict=True)]
        flat_heads = sum(self.head_len)
        padded_of_flat = list(range(flat_heads))  # heads are unpadded
        pooled: list[int] = []
        self.group_masks: list[torch.Tensor] = []
        slot = flat_heads
        for gi, g in enumerate(groups):
            t, c, p = self.tails[gi], self.per_pack[gi], g.prefix
            eot = g.eot_index.tolist()
            ok = torch.zeros(self.n_packs[gi], c * t, p + c * t, dtype=torch.bool)
            ok[:, :, :p] = True  # every query (padding included) sees its head: no empty softmax row
            for k in range(self.counts[gi]):
                b, a = divmod(k, c)
                pooled.append(len(padded_of_flat) + eot[k] - p)
                padded_of_flat += [slot + (b * c + a) * t + i for i in range(t)]
                ok[b, a * t : (a + 1) * t, p + a * t : p + (a + 1) * t] = torch.ones(t, t, dtype=torch.bool).tril()
            slot += self.n_packs[gi] * c * t
            self.group_masks.append(_additive(ok[:, None], dtype, device))
        flat_of_padded = [0] * slot  # padding reads token 0: it is masked as a key and dropped as a query
        for flat, s in enumerate(padded_of_flat):
            flat_of_padded[s] = flat
        padded_of_flat += [0] * (MIN_ROWS - len(padded_of_flat))  # rows of _at_least: their output is dropped
        as_index = lambda v: torch.tensor(v, dtype=torch.long, device=device)  # noqa: E731
        self.to_flat, self.to_padded, self.pooled = as_index(padded_of_flat), as_index(flat_of_padded), as_index(pooled)
        self.head_masks = [_additive(torch.ones(p, p, dtype=torch.bool).tril(), dtype, device) for p in self.head_len]


def _attention(block: nn.Module, h: torch.Tensor, layout: _Layout) -> torch.Tensor:
    """The block's multi-head self-attention for every token of ``layout`` (flat ``M x width`` in and
    out): the arithmetic of ``nn.MultiheadAttention`` (one packed q/k/v projection, scaled dot-product
    attention; the output projection is left to the caller), per head and per group."""
    attn = block.attn
    width, n_heads = h.shape[1], attn.num_heads
    padded = F.linear(h, attn.in_proj_weight, attn.in_proj_bias).index_select(0, layout.to_padded)

    def split(x: torch.Tensor, batch: int) -> tuple[torch.Tensor, ...]:  # -> q, k, v: batch x heads x n x dim
        return x.view(batch, -1, 3, n_heads, width // n_heads).permute(2, 0, 3, 1, 4).unbind(0)

    outs, heads, start = [], [], 0
    for p, mask in zip(layout.head_len, layout.head_masks, strict=True):
        q, k, v = split(padded[start : start + p], 1)
        outs.append(F.scaled_dot_product_attention(q, k, v, attn_mask=mask.to(q.dtype)))
        heads.append((k, v))
        start += p
    for gi, mask in enumerate(layout.group_masks):
        n = layout.n_packs[gi] * layout.per_pack[gi] * layout.tails[gi]
        q, k, v = split(padded[start : start + n], layout.n_packs[gi])
        hk, hv = heads[layout.head_of[gi]]
        keys = torch.cat([hk.expand(layout.n_packs[gi], -1, -1, -1), k], dim=2)
        values = torch.cat([hv.expand(layout.n_packs[gi], -1, -1, -1), v], dim=2)
        outs.append(F.scaled_dot_product_attention(q, keys, values, attn_mask=mask.to(q.dtype)))
        start += n
    out = torch.cat([o.transpose(1, 2).reshape(-1, width) for o in outs])
    return out.index_select(0, layout.to_flat)


def encode_prompt_groups(model: nn.Module, groups: Sequence[PromptGroup]) -> list[torch.Tensor]:
    """:func:`encode_embeddings` for several prompt encoders at once, each shared prefix once.

    Why: a lockstep step encodes the prompts of every row (7 to 256 prompts of 8 to 15 tokens each).
    Encoded one row at a time, the text transformer's weights are read again for a handful of tokens;
    here every distinct token of every group goes through each per-token layer (layer norms,
    projections, MLP) in one matrix product, and only attention sees the group structure (see
    :class:`_Layout`); past the last block's attention only the pooled tokens go on. A single group is
    what :meth:`clipdepth.model.prompt_learner.PromptEncoder.forward` computes.

    Versus the full causal pass of :func:`encode_embeddings` this is the same arithmetic per token up to
    the float rounding of attention over fewer keys (tested to 1e-5). Versus encoding each group alone
    it is the same computation: attention runs per head and per group on the same shapes, and the
    per-token layers differ only in the height of their matrix products, whose rows the BLAS computes
    independently of the height (MKL from 12 rows; see :data:`MIN_ROWS`) -- the lockstep test shows bit-identical
    training. Only where :func:`prefix_sharing_is_exact`; every group needs
    ``1 <= prefix <= min(eot_index)``. Returns each group's ``N x D`` projected features.
    """
    groups = list(groups)
    if not groups:
        return []
    tower = text_tower(model)
    for g in groups:
        n, length = g.embeddings.shape[0], g.embeddings.shape[1]
        if not 0 < g.prefix < length or int(g.eot_index.min()) < g.prefix:
            raise ValueError(f"shared prefix of {g.prefix} tokens does not fit {n} prompts of {length} tokens")
    x0 = groups[0].embeddings
    layout = _Layout(groups, x0.device, x0.dtype)
    pos = tower.positional_embedding.to(x0.dtype)
    pieces = [groups[gi].embeddings[0, : groups[gi].prefix] + pos[: groups[gi].prefix] for gi in layout.head_source]
    pieces += [(g.embeddings[:, g.prefix :] + pos[g.prefix : g.embeddings.shape[1]]).flatten(0, 1) for g in groups]
    x = _at_least(torch.cat(pieces), MIN_ROWS)
    blocks = list(tower.transformer.resblocks)
    for i, block in enumerate(blocks):
        attended = _attention(block, block.ln_1(x), layout)
        if i == len(blocks) - 1:  # past the last attention only the pooled tokens are read
            x, attended = (_at_least(t.index_select(0, layout.pooled), MIN_ROWS) for t in (x, attended))
        x = x + block.ls_1(F.linear(attended, block.attn.out_proj.weight, block.attn.out_proj.bias))
        x = x + block.ls_2(block.mlp(block.ln_2(x)))
    pooled = tower.ln_final(x)
    proj = tower.text_projection
    if proj is not None:
        pooled = proj(pooled) if isinstance(proj, nn.Linear) else pooled @ proj
    return list(pooled[: len(layout.pooled)].split(layout.counts))
