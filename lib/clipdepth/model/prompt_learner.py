"""Bin prompts: word lists, templates, and the prompt encoder with learnable token slots.

A depth-bin prompt is a template ("This {object} appears to be {depth}") whose slots hold either
ordinary words or 512-d vectors that replace input word embeddings of CLIP's frozen text
transformer (learned or frozen random tokens, learned context tokens). ``PromptEncoder`` encodes all
N bin prompts in one batch and is the only trainable part of the authors' method. CoOp's names are
aliases: :data:`PromptLearner` (the learnable prompt module) and :class:`TextEncoder` (the frozen text
path, :func:`encode_embeddings`). The text tower itself (which towers qualify, pooling, masks, the
frozen path from embeddings, the tokenizer interface) is :mod:`clipdepth.model.text_encoder`, re-exported here.

Token values have one public door: :meth:`PromptEncoder.set_tokens` / :meth:`PromptEncoder.load_tokens`
(named tensors ``ctx``, ``depth``, ``object``, checked against :meth:`PromptEncoder.token_shapes`), so
nobody has to write into ``ctx_tokens``, ``depth_tokens``, ``object_tokens`` or the ``random_tokens``
buffer. Initial values come from ``token_init``: ``"ours"`` (a private generator seeded with ``seed``) or
``"authors"`` (the draw sequence of the authors' code, see :func:`authors_initial_tokens`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import open_clip
import torch
from torch import nn

from clipdepth.model._token_init import (
    AUTHORS_BATCH_SIZE,
    AUTHORS_EXAMPLE_INPUT,
    TOKEN_INIT_STD,
    TOKEN_INITS,
    TokenInit,
    authors_initial_tokens,
    authors_prelude_shapes,
    initial_tokens,
    token_distance,
)
from clipdepth.model.text_encoder import (
    PromptGroup,
    PromptTokenizer,
    TextEncoder,
    clip_prompt_tokenizer,
    clip_tokenizer,
    encode_embeddings,
    encode_prompt_groups,
    hf_prompt_tokenizer,
    prefix_sharing_is_exact,
    prompt_tokenizer_for,
    text_context_length,
    text_pool_type,
    text_tower,
    truncation_is_exact,
)
from clipdepth.vocab import TEMPLATES, WORD_LISTS, parse_depth_words

__all__ = [
    "AUTHORS_BATCH_SIZE",
    "AUTHORS_EXAMPLE_INPUT",
    "TOKEN_INITS",
    "TOKEN_INIT_STD",
    "TOKEN_NAMES",
    "PromptEncoder",
    "PromptLearner",
    "PromptTokenizer",
    "TextEncoder",
    "TokenInit",
    "authors_initial_tokens",
    "authors_prelude_shapes",
    "clip_prompt_tokenizer",
    "demo_vocabulary",
    "hf_prompt_tokenizer",
    "prompt_tokenizer_for",
    "clip_tokenizer",
    "encode_embeddings",
    "encode_prompts",
    "resolve_template",
    "text_context_length",
    "text_pool_type",
    "text_tower",
    "token_distance",
    "truncation_is_exact",
]

#: Public token names (``set_tokens``/``load_tokens``) -> the attribute holding them. ``depth`` is the
#: learned ``depth_tokens`` parameter for learned-N and the frozen ``random_tokens`` buffer for random-N.
TOKEN_NAMES: tuple[str, ...] = ("ctx", "depth", "object")


def demo_vocabulary() -> list[str]:
    """Every word of the word lists and templates, plus ``object``: the vocabulary of the word-level
    tokenizer random-init towers with their own tokenizer (SigLIP) use offline
    (:func:`clipdepth.model.text_encoder.word_level_tokenizer`)."""
    pieces = [w for words in WORD_LISTS.values() for w in words] + [_SLOT.sub(" ", t) for t in TEMPLATES.values()]
    return sorted({word.lower() for piece in pieces for word in piece.split()} | {"object"})


_STATE_KEYS = {"ctx_tokens": "ctx", "depth_tokens": "depth", "random_tokens": "depth", "object_tokens": "object"}
_SLOT = re.compile(r"\{(object|depth|ctx)\}")


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
    ``tokenizer`` defaults to the model's own (:func:`prompt_tokenizer_for`: CLIP's BPE, or SigLIP's
    Hugging Face tokenizer with real weights, a fixed word-level one over :func:`demo_vocabulary` with
    random weights), so every caller -- trainer, lockstep, notebooks -- writes a tower's prompts with
    its tokenizer.
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
        token_init: TokenInit = "ours",
        authors_dataset: str | None = None,
        authors_batch_size: int = AUTHORS_BATCH_SIZE,
        tokenizer: PromptTokenizer | None = None,
    ) -> None:
        """``token_init="authors"`` draws as :func:`authors_initial_tokens` does, for ``authors_dataset``
        (``nyu``/``kitti``: it fixes the size of their constructor's example input) and batch size."""
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
        tokenizer = tokenizer or prompt_tokenizer_for(model, demo_words=demo_vocabulary())
        vocab = tower.token_embedding.num_embeddings
        if tokenizer.vocab_size > vocab:
            raise ValueError(
                f"the text tower has a vocabulary of {vocab} tokens, the tokenizer {tokenizer.vocab_size}: "
                "pass the model's own tokenizer (tokenizer=...)"
            )
        width = tower.token_embedding.weight.shape[1]
        n_ctx = self.template.count("{ctx}")
        n_vectors = self.depth.n if self.depth.kind != "words" else 0
        self.token_init = token_init
        init = initial_tokens(token_init, n_ctx, n_vectors, learned_object, seed, width, authors_dataset,
                              authors_batch_size)
        self.ctx_tokens = nn.Parameter(init["ctx"]) if n_ctx else None
        vectors = init["depth"]
        self.depth_tokens = nn.Parameter(vectors) if self.depth.kind == "learned" else None
        self.register_buffer("random_tokens", vectors if self.depth.kind == "random" else None)
        self.object_tokens = nn.Parameter(init["object"]) if learned_object else None

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
        # Tokens every prompt shares (same ids; vector slots only when one vector serves all prompts:
        # context and object tokens) are computed once where that is exact (a causal tower).
        per_prompt = {s[1] for s in slots if s[2] in ("learned", "random")}
        shared = 0
        while (shared < min(len(r) for r in rows) - 1 and shared not in per_prompt
               and len({r[shared] for r in rows}) == 1):
            shared += 1
        self.shared_prefix = shared if len(rows) > 1 and prefix_sharing_is_exact(model) else 0
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

    def _token_tensors(self) -> dict[str, torch.Tensor]:
        """Public token name -> the parameter or buffer holding it (only the tokens this encoder has)."""
        depth = self.depth_tokens if self.depth_tokens is not None else self.random_tokens
        found = {"ctx": self.ctx_tokens, "depth": depth, "object": self.object_tokens}
        return {name: t for name, t in found.items() if t is not None}

    def token_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shape of every token tensor this encoder has: ``ctx`` (n_ctx x width), ``depth`` (N x width)
        for learned-N or random-N, ``object`` (1 x width) with a learned object token."""
        return {name: tuple(t.shape) for name, t in self._token_tensors().items()}

    def tokens(self) -> dict[str, torch.Tensor]:
        """Detached copies of the current token values, by public name (the input of :meth:`set_tokens`)."""
        return {name: t.detach().clone() for name, t in self._token_tensors().items()}

    def set_tokens(self, values: Mapping[str, torch.Tensor]) -> None:
        """Set some or all tokens from ``{"ctx": ..., "depth": ..., "object": ...}``.

        Each value must have exactly the shape :meth:`token_shapes` gives; it is copied (cast to the
        token's dtype and device), so the optimiser keeps its parameters. Everything is checked before
        anything is written: a bad name or shape raises ValueError naming the token and the expected
        shape, and leaves the encoder unchanged.
        """
        own = self._token_tensors()
        checked: list[tuple[torch.Tensor, torch.Tensor]] = []
        for name, value in values.items():
            if name not in own:
                has = ", ".join(own) or "none (fixed words only)"
                raise ValueError(f"no token {name!r} in this prompt encoder (words {self.words_name!r}, "
                                 f"template {self.template_name!r}); its tokens: {has}")
            if not isinstance(value, torch.Tensor):
                raise ValueError(f"token {name!r} must be a torch.Tensor, got {type(value).__name__}")
            target = own[name]
            if tuple(value.shape) != tuple(target.shape):
                raise ValueError(f"token {name!r} must have shape {tuple(target.shape)}, got {tuple(value.shape)}")
            if not torch.isfinite(value).all():
                raise ValueError(f"token {name!r} holds NaN or infinite values")
            checked.append((target, value))
        with torch.no_grad():
            for target, value in checked:
                target.copy_(value.to(device=target.device, dtype=target.dtype))

    def load_tokens(self, state: Mapping[str, torch.Tensor | None], strict: bool = True) -> None:
        """Load tokens from a state dict of named tensors: public names (``ctx``, ``depth``, ``object``) or
        this module's ``state_dict()`` keys (``ctx_tokens``, ``depth_tokens``, ``random_tokens``,
        ``object_tokens``; what the trainer saves as ``prompts.pt``). ``None`` entries are skipped.

        ``strict`` (default): every token of this encoder must be given and no other key may appear.
        """
        values: dict[str, torch.Tensor] = {}
        for key, value in state.items():
            if value is None:
                continue
            name = _STATE_KEYS.get(key, key)
            if name not in TOKEN_NAMES:
                if strict:
                    valid = ", ".join([*TOKEN_NAMES, *_STATE_KEYS])
                    raise ValueError(f"unknown token key {key!r} in the state; valid keys: {valid}")
                continue
            if name in values:
                raise ValueError(f"token {name!r} given twice in the state (as {key!r} and another key)")
            values[name] = value
        if strict:
            missing = [name for name in self._token_tensors() if name not in values]
            if missing:
                shapes = self.token_shapes()
                need = ", ".join(f"{n} {shapes[n]}" for n in missing)
                raise ValueError(f"state lacks token(s) {need} (pass strict=False to load some only)")
            extra = [name for name in values if name not in self._token_tensors()]
            if extra:
                raise ValueError(f"state has token(s) {', '.join(extra)} this prompt encoder does not have "
                                 f"(its tokens: {', '.join(self._token_tensors()) or 'none'})")
        else:
            values = {k: v for k, v in values.items() if k in self._token_tensors()}
        self.set_tokens(values)

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

    def prompt_group(self) -> PromptGroup | None:
        """This encoder's prompts for :func:`encode_prompt_groups` (None where prefix sharing is not
        exact). A prefix of fixed words is keyed by its token ids, so encoders sharing it run it once."""
        if not self.shared_prefix:
            return None
        fixed = all(pos >= self.shared_prefix for _, pos, _, _ in self._slots)
        key = ("ids", *self.token_ids[0, : self.shared_prefix].tolist()) if fixed else None
        return PromptGroup(self.input_embeddings(), self.eot_index, self.shared_prefix, key)

    def forward(self) -> torch.Tensor:
        """Projected pooled features of all N prompts, ``N x D`` (not normalised); the tokens all prompts
        share run once where that is exact (:func:`clipdepth.model.text_encoder.prefix_sharing_is_exact`)."""
        group = self.prompt_group()
        if group is not None:
            return encode_prompt_groups(self._clip, [group])[0]
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


def encode_prompts(encoders: Sequence[PromptEncoder]) -> list[torch.Tensor]:
    """Every encoder's ``N x D`` features, bit-identical to calling each encoder, in one text pass for the
    encoders that share a model whose prefix sharing is exact (:func:`encode_prompt_groups`); the others
    run alone. Rows trained in lockstep encode their prompts so."""
    out: dict[int, torch.Tensor] = {}
    batches: dict[int, list[int]] = {}
    for i, enc in enumerate(encoders):
        if enc.shared_prefix:
            batches.setdefault(id(enc.clip), []).append(i)
        else:
            out[i] = enc()
    for members in batches.values():
        groups = [encoders[i].prompt_group() for i in members]
        out.update(zip(members, encode_prompt_groups(encoders[members[0]].clip, groups), strict=True))
    return [out[i] for i in range(len(encoders))]


#: CoOp's name for the learnable prompt module (Zhou et al. 2022); the same class as PromptEncoder.
PromptLearner = PromptEncoder
