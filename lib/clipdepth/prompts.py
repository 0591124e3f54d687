"""Bin prompts: word lists, templates, and the prompt encoder with learnable token slots.

A depth-bin prompt is a template ("This {object} appears to be {depth}") whose slots hold either
ordinary words or 512-d vectors that replace input word embeddings of CLIP's frozen text
transformer (learned or frozen random tokens, learned context tokens). ``PromptEncoder`` encodes all
N bin prompts in one batch and is the only trainable part of the authors' method.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import open_clip
import torch
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

    The context is truncated to the longest prompt: CLIP's text transformer is causal and pooled at
    the EOT token, so positions after it cannot influence the output (tested to be exact).
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
    ) -> None:
        super().__init__()
        if getattr(model, "transformer", None) is None or getattr(model, "token_embedding", None) is None:
            raise TypeError("PromptEncoder needs an open_clip CLIP with a built-in text tower")
        self.words_name = words
        self.template_name = template
        self.depth = parse_depth_words(words)
        self.template = resolve_template(template)
        self.learned_object = learned_object
        object.__setattr__(self, "_clip", model)  # frozen, deliberately not a submodule
        tokenizer = clip_tokenizer()
        width = model.token_embedding.weight.shape[1]
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

        sot, eot = tokenizer.sot_token_id, tokenizer.eot_token_id
        rows: list[list[int]] = []
        slots: list[tuple[int, int, str, int]] = []  # (prompt, position, source, index)
        for b in range(self.depth.n):
            ids = [sot]
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
            ids.append(eot)
            rows.append(ids)
        full = model.positional_embedding.shape[0]
        longest = max(len(r) for r in rows)
        if longest > full:
            raise ValueError(f"prompts of {longest} tokens exceed CLIP's context of {full}")
        self.length = longest if truncate else full
        token_ids = torch.zeros(len(rows), self.length, dtype=torch.long)
        for i, r in enumerate(rows):
            token_ids[i, : len(r)] = torch.tensor(r)
        self.register_buffer("token_ids", token_ids, persistent=False)
        self.register_buffer("eot_index", torch.tensor([len(r) - 1 for r in rows]), persistent=False)
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
        model = self._clip
        cast = model.transformer.get_cast_dtype()
        x = model.token_embedding(self.token_ids).to(cast)
        for source, vectors in self._sources().items():
            if vectors is None:
                continue
            prompt, pos, idx = (getattr(self, f"_{source}_{k}") for k in ("prompt", "pos", "idx"))
            x = x.index_put((prompt, pos), vectors.to(cast)[idx])
        return x

    def forward(self) -> torch.Tensor:
        """Projected EOT features of all N prompts, ``N x D`` (not normalised)."""
        return encode_embeddings(self._clip, self.input_embeddings(), self.eot_index)

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


def encode_embeddings(model: open_clip.CLIP, x: torch.Tensor, eot_index: torch.Tensor) -> torch.Tensor:
    """CLIP's text path from input embeddings: add positions, causal transformer, ln_final, EOT pool,
    projection. ``x`` is ``N x L x width`` with ``L`` at most the model's context length."""
    length = x.shape[1]
    x = x + model.positional_embedding[:length].to(x.dtype)
    mask = model.attn_mask[:length, :length] if model.attn_mask is not None else None
    x = model.transformer(x, attn_mask=mask)
    x = model.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), eot_index.to(x.device)]
    proj = model.text_projection
    if proj is None:
        return x
    return proj(x) if isinstance(proj, nn.Linear) else x @ proj
