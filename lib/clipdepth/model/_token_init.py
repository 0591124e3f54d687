"""Initial values of new prompt tokens: our draw, and the authors' draw sequence reproduced.

Why a module of its own: which numbers a learned or random token starts from is a protocol question of
its own (the seed study compares our draw with the authors' and measures how far they lie apart), and
it is independent of how prompts are built and encoded (:mod:`clipdepth.model.prompt_learner`, which re-exports
these names).
"""

from __future__ import annotations

from typing import Literal

import torch

__all__ = ["AUTHORS_BATCH_SIZE", "AUTHORS_EXAMPLE_INPUT", "TOKEN_INITS", "TOKEN_INIT_STD", "TokenInit",
           "authors_initial_tokens", "authors_prelude_shapes", "initial_tokens", "token_distance"]

TOKEN_INIT_STD = 0.02  # CLIP's token_embedding init std, used by the authors for every new token
TOKEN_INITS: tuple[str, ...] = ("ours", "authors")
TokenInit = Literal["ours", "authors"]
#: The example input the authors' Lightning module draws in its constructor (``example_input_array``):
#: (height, width) per dataset -- KITTI's KB crop 352 x 1216 when ``do_kb_crop``, else NYU's
#: ``dimensions_train`` 416 x 544 (every released config).
AUTHORS_EXAMPLE_INPUT: dict[str, tuple[int, int]] = {"nyu": (416, 544), "kitti": (352, 1216)}
AUTHORS_BATCH_SIZE = 16


def authors_prelude_shapes(dataset: str, batch_size: int = AUTHORS_BATCH_SIZE) -> tuple[tuple[int, ...], ...]:
    """Shapes of the two ``torch.rand`` draws the authors' ``MainRunnerLM.__init__`` makes before the model.

    Its ``example_input_array`` is ``(torch.rand(B, 3, H, W), torch.rand(B, 1, H, W))`` with B the
    config's batch size and (H, W) from :data:`AUTHORS_EXAMPLE_INPUT`.
    """
    if dataset not in AUTHORS_EXAMPLE_INPUT:
        raise ValueError(f"token_init='authors' needs dataset 'nyu' or 'kitti', got {dataset!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    height, width = AUTHORS_EXAMPLE_INPUT[dataset]
    return ((batch_size, 3, height, width), (batch_size, 1, height, width))


def authors_initial_tokens(
    n_ctx: int,
    n_depth: int,
    learned_object: bool,
    dataset: str = "nyu",
    batch_size: int = AUTHORS_BATCH_SIZE,
    seed: int = 42,
    width: int = 512,
) -> dict[str, torch.Tensor | None]:
    """The initial tokens the authors' code draws, reproduced on CPU: ``{"ctx", "depth", "object"}``.

    What it relies on (``DylanAuty/PromptLearningCLIP-MDE``, commit 0b30195):

    - ``main.py`` calls ``pl.seed_everything(seed)`` (42), which seeds the *global* CPU generator with
      ``torch.manual_seed(seed)``; nothing draws from it until the model is built.
    - ``MainRunnerLM.__init__`` then draws ``torch.rand(B, 3, H, W)`` and ``torch.rand(B, 1, H, W)``
      (its ``example_input_array``; shapes from :func:`authors_prelude_shapes`).
    - ``DepthCLIP.__init__`` draws every new token as its own ``torch.normal(mean=0, std=0.02,
      size=(1, 512))`` in this order: the template's context tokens (``<|prompt_0|>`` ...), the depth
      tokens (``<|depth_0|>`` ...), the object token (``<|object_0|>``). ``clip.load`` comes after.
    - Random-static ("rs") configs are the learned ones evaluated untrained, so random-N vectors are
      the depth draws.

    The same calls are made here on a private ``torch.Generator`` seeded with ``seed`` (a fresh CPU
    generator seeded with s produces the stream of the global one after ``torch.manual_seed(s)``), so
    the caller's global state is untouched. Equal values need the same CPU kernels as theirs
    (``uniform_`` / ``normal_`` of the installed torch; they used torch 1.13.1) -- the test re-enacts
    the sequence with the global generator on the torch installed here. Only the CPU generator is
    meant: on CUDA the streams differ. ``width`` other than 512 (not RN50) is our extension.
    """
    gen = torch.Generator().manual_seed(int(seed))
    for shape in authors_prelude_shapes(dataset, batch_size):
        torch.rand(shape, generator=gen)  # drawn and dropped: only the generator's advance matters

    def draw(n: int) -> torch.Tensor | None:
        if n == 0:
            return None
        return torch.cat([torch.normal(0.0, TOKEN_INIT_STD, size=(1, width), generator=gen) for _ in range(n)])

    ctx = draw(n_ctx)
    depth = draw(n_depth)
    return {"ctx": ctx, "depth": depth, "object": draw(1) if learned_object else None}


def token_distance(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """How far two sets of token vectors (``N x width`` each, row i against row i) lie apart.

    Returns the mean and max Euclidean distance per token and the mean cosine similarity, e.g. to show
    how far random-7 moves between ``token_init="ours"`` and ``"authors"`` or across seeds.
    """
    if a.shape != b.shape or a.dim() != 2:
        raise ValueError(f"token_distance needs two N x width tensors of one shape, got {tuple(a.shape)} "
                         f"and {tuple(b.shape)}")
    a64, b64 = a.detach().double(), b.detach().double()
    dist = (a64 - b64).norm(dim=1)
    cos = torch.nn.functional.cosine_similarity(a64, b64, dim=1)
    return {"mean_l2": float(dist.mean()), "max_l2": float(dist.max()), "mean_cosine": float(cos.mean())}


def initial_tokens(token_init: TokenInit, n_ctx: int, n_depth: int, learned_object: bool, seed: int, width: int,
                   authors_dataset: str | None = None,
                   authors_batch_size: int = AUTHORS_BATCH_SIZE) -> dict[str, torch.Tensor | None]:
    """A prompt's initial tokens ``{"ctx", "depth", "object"}`` (None where it has none).

    ``"ours"``: a private generator seeded with ``seed`` draws N(0, 0.02) in a fixed order (context,
    depth, object), so a seed gives the same tokens every time. ``"authors"``: the draw sequence of the
    authors' code (:func:`authors_initial_tokens`) for ``authors_dataset`` (``nyu``/``kitti``).
    """
    if token_init not in TOKEN_INITS:
        raise ValueError(f"token_init must be one of {', '.join(TOKEN_INITS)}, got {token_init!r}")
    if token_init == "authors":
        if authors_dataset is None:
            raise ValueError("token_init='authors' needs authors_dataset ('nyu' or 'kitti')")
        return authors_initial_tokens(n_ctx, n_depth, learned_object, authors_dataset, authors_batch_size, seed,
                                      width)
    gen = torch.Generator().manual_seed(seed)

    def draw(n: int) -> torch.Tensor | None:
        return torch.randn(n, width, generator=gen) * TOKEN_INIT_STD if n else None

    return {"ctx": draw(n_ctx), "depth": draw(n_depth), "object": draw(1 if learned_object else 0)}
