"""Bin prompts: word lists, templates, and the prompt encoder with learnable token slots.

A depth-bin prompt is a template ("This {object} appears to be {depth}") whose slots hold either
ordinary words or 512-d vectors that replace input word embeddings of CLIP's frozen text
transformer (learned or frozen random tokens, learned context tokens). ``PromptEncoder`` encodes all
N bin prompts in one batch and is the only trainable part of the authors' method.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass

import open_clip
import torch
from open_clip.transformer import TextTransformer
from torch import nn

# Bin 0 (nearest) to bin N-1 (farthest); exact strings of the paper's Table 2 / the authors' code and
# of DepthCLIP's monoclip.py.
WORD_LISTS: dict[str, tuple[str, ...]] = {
    "depth-7": ("very close", "close", "slightly close", "neither close nor distant", "slightly distant",
                "distant", "very distant"),
    "size-7": ("very small", "small", "slightly small", "neither small nor large", "slightly large",
               "large", "very large"),
    "colour-7": ("very red", "red", "slightly red", "neither red nor green", "slightly green", "green",
                 "very green"),
    "rand-txt-7": ("summer", "inian", "fellow", "greg", "bis", "ksh", "aidan"),
    "depthclip-7": ("giant", "extremely close", "close", "not in distance", "a little remote", "far",
                    "unseen"),
}
VECTOR_SETS: tuple[str, ...] = ("random", "learned")  # used as "random-N" / "learned-N"

# Each "{ctx}" is its own learnable context token, shared by all bins (paper section 3.3).
TEMPLATES: dict[str, str] = {
    "baseline": "This {object} appears to be {depth}",  # the code has no trailing period
    "depthclip": "This {object} is {depth}",
    "1o1d": "{ctx} {object} {ctx} {depth}",
    "1o2d": "{ctx} {object} {ctx} {ctx} {depth}",
    "4o4d": "{ctx} {ctx} {ctx} {ctx} {object} {ctx} {ctx} {ctx} {ctx} {depth}",
}
TOKEN_INIT_STD = 0.02  # CLIP's token_embedding init std, used by the authors for every new token
_SLOT = re.compile(r"\{(object|depth|ctx)\}")


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


@dataclass(frozen=True)
class DepthWords:
    """What fills the depth slot: fixed words, frozen random vectors or learnable vectors."""

    kind: str  # "words" | "random" | "learned"
    n: int
    words: tuple[str, ...] = ()


def parse_depth_words(name: str) -> DepthWords:
    """Resolve a word-set name (``depth-7``, ``random-7``, ``learned-256``, ...)."""
    if name in WORD_LISTS:
        return DepthWords("words", len(WORD_LISTS[name]), WORD_LISTS[name])
    kind, _, count = name.rpartition("-")
    if kind in VECTOR_SETS and count.isdigit() and int(count) > 0:
        return DepthWords(kind, int(count))
    valid = ", ".join([*WORD_LISTS, "random-N", "learned-N"])
    raise ValueError(f"unknown word set {name!r}; valid: {valid}")


def resolve_template(name_or_string: str) -> str:
    """A named template, or a user template string with ``{object}`` and ``{depth}`` slots."""
    if name_or_string in TEMPLATES:
        return TEMPLATES[name_or_string]
    if "{depth}" in name_or_string and "{object}" in name_or_string:
        stray = re.sub(_SLOT, "", name_or_string)
        if "{" in stray or "}" in stray:
            raise ValueError(
                f"template {name_or_string!r} has slots other than {{object}}, {{depth}}, {{ctx}}"
            )
        return name_or_string
    raise ValueError(
        f"unknown template {name_or_string!r}; valid names: {', '.join(TEMPLATES)}, "
        "or a string with {object} and {depth} slots"
    )


class PromptEncoder(nn.Module):
    """Encode the N bin prompts through CLIP's frozen text tower, with vector slots.

    Each prompt is SOT + template tokens + EOT. Word slots are tokenised piecewise (CLIP's BPE works
    word by word, so this equals tokenising the whole string); vector slots carry a 512-d input
    embedding that replaces the word embedding at that position. The text tower is not registered as
    a submodule, so ``parameters()`` / ``state_dict()`` hold only this encoder's tokens: learnable
    depth, context and object tokens, and the frozen ``random-N`` vectors (a persistent buffer).

    Pooling and masking are read from the model (:func:`text_pool_type`), so any open_clip text tower
    works: CLIP's causal, EOT-pooled transformer, SigLIP's bidirectional last-token tower, CoCa's
    class-token tower. ``truncate=True`` cuts the context after the longest prompt only where that is
    exact (:func:`truncation_is_exact`: CLIP is causal and pooled at EOT, so later positions cannot
    influence the output; tested); elsewhere the full context is used and ``truncated`` says so.
    Towers whose vocabulary is not CLIP's need their own ``tokenizer``.
    """

    def __init__(
        self,
        model: open_clip.CLIP,
        words: str = "learned-7",
        template: str = "baseline",
        object_word: str = "object",
        learned_object: bool = False,
        seed: int = 42,
        truncate: bool = True,
        tokenizer: PromptTokenizer | None = None,
    ) -> None:
        super().__init__()
        tower = text_tower(model)
        pool = text_pool_type(model)
        if pool not in ("argmax", "eos", "first", "last", "cls"):
            raise ValueError(f"text pool type {pool!r} gives no single feature per prompt; PromptEncoder needs one")
        self.words_name = words
        self.template_name = template
        self.depth = parse_depth_words(words)
        self.template = resolve_template(template)
        self.learned_object = learned_object
        object.__setattr__(self, "_clip", model)  # frozen, deliberately not a submodule
        tokenizer = tokenizer or clip_prompt_tokenizer()
        vocab = tower.token_embedding.num_embeddings
        if tokenizer.vocab_size > vocab:
            raise ValueError(
                f"the text tower has a vocabulary of {vocab} tokens, the tokenizer {tokenizer.vocab_size}: "
                "pass the model's own tokenizer (tokenizer=...)"
            )
        width = tower.token_embedding.weight.shape[1]
        gen = torch.Generator().manual_seed(seed)
        n_ctx = self.template.count("{ctx}")

        def draw(n: int) -> torch.Tensor:
            return torch.randn(n, width, generator=gen) * TOKEN_INIT_STD

        # Draw order is fixed (context, depth, object) so a seed gives the same tokens every time.
        self.ctx_tokens = nn.Parameter(draw(n_ctx)) if n_ctx else None
        vectors = draw(self.depth.n) if self.depth.kind != "words" else None
        self.depth_tokens = nn.Parameter(vectors) if self.depth.kind == "learned" else None
        self.register_buffer("random_tokens", vectors if self.depth.kind == "random" else None)
        self.object_tokens = nn.Parameter(draw(1)) if learned_object else None

        rows: list[list[int]] = []
        slots: list[tuple[int, int, str, int]] = []  # (prompt, position, source, index)
        for b in range(self.depth.n):
            ids = list(tokenizer.prefix)
            ctx_i = 0
            for piece in re.split(r"(\{object\}|\{depth\}|\{ctx\})", self.template):
                if piece == "{ctx}":
                    slots.append((b, len(ids), "ctx", ctx_i))
                    ids.append(0)
                    ctx_i += 1
                elif piece == "{object}":
                    if learned_object:
                        slots.append((b, len(ids), "object", 0))
                        ids.append(0)
                    else:
                        ids += tokenizer.encode(object_word)
                elif piece == "{depth}":
                    if self.depth.kind == "words":
                        ids += tokenizer.encode(self.depth.words[b])
                    else:
                        slots.append((b, len(ids), self.depth.kind, b))
                        ids.append(0)
                elif piece.strip():
                    ids += tokenizer.encode(piece)
            ids += tokenizer.suffix
            rows.append(ids)
        full = text_context_length(model)
        longest = max(len(r) for r in rows)
        if longest > full:
            raise ValueError(f"prompts of {longest} tokens exceed the text tower's context of {full}")
        self.truncated = bool(truncate) and truncation_is_exact(model)
        self.length = longest if self.truncated else full
        token_ids = torch.full((len(rows), self.length), tokenizer.pad_id, dtype=torch.long)
        for i, r in enumerate(rows):
            token_ids[i, : len(r)] = torch.tensor(r)
        self.register_buffer("token_ids", token_ids, persistent=False)
        self.register_buffer("n_tokens", torch.tensor([len(r) for r in rows]), persistent=False)
        # The position the tower pools from, as its own pooling would find it on the real token ids
        # (vector slots hold id 0 there, which never wins the argmax or matches an EOS id).
        eos_id = getattr(tower, "eos_id", None) if tower is not model else getattr(model, "text_eos_id", None)
        pool_at = {
            "argmax": lambda r: max(range(len(r)), key=lambda i: (r[i], -i)),
            "eos": lambda r: r.index(eos_id) if eos_id in r else len(r) - 1,
            "first": lambda r: 0,
        }.get(pool, lambda r: self.length - 1)
        self.register_buffer("eot_index", torch.tensor([pool_at(r) for r in rows]), persistent=False)
        self._slots = slots
        for source in ("ctx", "object", "learned", "random"):
            sel = [s for s in slots if s[2] == source]
            self.register_buffer(f"_{source}_prompt", torch.tensor([s[0] for s in sel], dtype=torch.long),
                                 persistent=False)
            self.register_buffer(f"_{source}_pos", torch.tensor([s[1] for s in sel], dtype=torch.long),
                                 persistent=False)
            self.register_buffer(f"_{source}_idx", torch.tensor([s[3] for s in sel], dtype=torch.long),
                                 persistent=False)

    @property
    def clip(self) -> open_clip.CLIP:
        return self._clip

    @property
    def n_prompts(self) -> int:
        return self.depth.n

    def _sources(self) -> dict[str, torch.Tensor | None]:
        return {"ctx": self.ctx_tokens, "object": self.object_tokens, "learned": self.depth_tokens,
                "random": self.random_tokens}

    def input_embeddings(self) -> torch.Tensor:
        """The ``N x L x width`` input sequence: word embeddings with vector slots substituted."""
        tower = text_tower(self._clip)
        cast = tower.transformer.get_cast_dtype()
        x = tower.token_embedding(self.token_ids).to(cast)
        for source, vectors in self._sources().items():
            if vectors is None:
                continue
            prompt, pos, idx = (getattr(self, f"_{source}_{k}") for k in ("prompt", "pos", "idx"))
            x = x.index_put((prompt, pos), vectors.to(cast)[idx])
        return x

    def forward(self) -> torch.Tensor:
        """Projected pooled features of all N prompts, ``N x D`` (not normalised)."""
        return encode_embeddings(self._clip, self.input_embeddings(), self.eot_index, self.n_tokens)

    def prompt_strings(self) -> list[str]:
        """Readable prompts; vector slots shown as ``<|depth_i|>``, ``<|prompt_j|>``, ``<|object_0|>``."""
        pieces = self.template.split("{ctx}")
        text = pieces[0] + "".join(f"<|prompt_{j}|>{p}" for j, p in enumerate(pieces[1:]))
        out = []
        for b in range(self.depth.n):
            obj = "<|object_0|>" if self.learned_object else "object"
            depth = self.depth.words[b] if self.depth.kind == "words" else f"<|depth_{b}|>"
            out.append(text.replace("{object}", obj).replace("{depth}", depth))
        return out


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
