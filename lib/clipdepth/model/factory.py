"""Ready-made bin-prompt models: DepthCLIP zero-shot and the authors' learned-prompt model.

Both are ``BinPromptDepth``; these factories fix the choices that define each method so a notebook or
the experiment registry names a method instead of re-stating its parameters. :func:`model_for_experiment`
is the one place that turns a registry row (or a resolved run) into a model.
"""

from __future__ import annotations

from collections.abc import Sequence

import open_clip

from clipdepth.model.bins import bin_centres
from clipdepth.model.head import DEFAULT_LOGIT_SCALE, BinPromptDepth
from clipdepth.model.prompt_learner import AUTHORS_BATCH_SIZE, PromptEncoder, TokenInit
from clipdepth.study.experiments import Experiment, ResolvedExperiment


def build_bin_prompt_model(
    clip_model: open_clip.CLIP,
    words: str,
    template: str,
    bins: str | Sequence[float],
    min_depth: float,
    max_depth: float,
    text_norm: str = "frobenius",
    logit_scale: float = DEFAULT_LOGIT_SCALE,
    seed: int = 42,
    learned_object: bool = False,
    dense_mode: str = "depthclip",
    image_norm: str = "imagenet",
    bn: str = "frozen",
    token_init: TokenInit = "ours",
    dataset: str | None = None,
    batch_size: int = AUTHORS_BATCH_SIZE,
) -> BinPromptDepth:
    """General factory: prompts (word set x template), bins over [min, max], head settings.

    ``token_init="authors"`` draws the initial tokens as the authors' code does for ``dataset``
    (``nyu``/``kitti``) and ``batch_size`` (see :func:`clipdepth.model.prompt_learner.authors_initial_tokens`).
    """
    prompts = PromptEncoder(clip_model, words=words, template=template, learned_object=learned_object,
                            seed=seed, token_init=token_init, authors_dataset=dataset,
                            authors_batch_size=batch_size)
    centres = bin_centres(bins, prompts.n_prompts, min_depth, max_depth)
    return BinPromptDepth(clip_model, prompts, centres, text_norm=text_norm, logit_scale=logit_scale,
                          dense_mode=dense_mode, image_norm=image_norm, bn=bn)


def depthclip_zero_shot(clip_model: open_clip.CLIP) -> BinPromptDepth:
    """DepthCLIP (Zhang et al. 2022): "This object is {word}", its 7 words and bins 1.0-3.0 m,
    unit text columns, logits 1000 * dot. Evaluate with ``evaluate(..., protocol="depthclip")`` for its
    own NYU protocol (fixed input box pasted into a zero canvas)."""
    return build_bin_prompt_model(clip_model, "depthclip-7", "depthclip", "depthclip", 1e-3, 10.0,
                                  text_norm="per_prompt")


def learned_prompt_model(
    clip_model: open_clip.CLIP,
    min_depth: float = 1e-3,
    max_depth: float = 10.0,
    words: str = "learned-7",
    template: str = "baseline",
    bins: str = "even",
    seed: int = 42,
    bn: str = "frozen",
) -> BinPromptDepth:
    """Auty & Mikolajczyk: baseline template, learnable depth tokens, Frobenius text normalisation,
    bins over the dataset range (NYU [0.001, 10], KITTI [0.001, 80])."""
    return build_bin_prompt_model(clip_model, words, template, bins, min_depth, max_depth,
                                  text_norm="frobenius", seed=seed, bn=bn)


def model_for_experiment(
    exp: Experiment | ResolvedExperiment, clip_model: open_clip.CLIP, bn: str | None = None
) -> BinPromptDepth:
    """The untrained model of a registry row or resolved run: every method field, the seed, the token
    initialisation (with the row's dataset and batch size for ``token_init="authors"``) and the learned
    object token. ``bn`` defaults to the row's training policy."""
    return build_bin_prompt_model(
        clip_model, exp.words, exp.template, exp.bins, exp.min_depth, exp.max_depth,
        text_norm=exp.text_norm, logit_scale=exp.logit_scale, seed=exp.train.seed,
        learned_object=exp.learned_object, dense_mode=exp.dense_mode, image_norm=exp.image_norm,
        bn=exp.train.bn if bn is None else bn, token_init=exp.train.token_init, dataset=exp.dataset,
        batch_size=exp.train.batch_size,
    )
