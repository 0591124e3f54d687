"""Backbone sweeps: one experiment per open_clip architecture, and what each backbone offers.

Why a module: the backbone notebook (issue 14) runs learned-7 / depth-7 rows across a list of
``(architecture, pretrained tag)`` pairs. Building those rows, choosing the dense-feature mode each
image tower supports, and describing each backbone (stride, grid, text width, trainable parameters)
is the same wiring for every caller, so it lives here and the notebook stays a parameter cell.
"""

from __future__ import annotations

from typing import Any

import open_clip
import torch

from clipdepth.model.backbone import feature_stride, load_clip, stride_size, text_width
from clipdepth.model.prompt_learner import PromptEncoder, text_context_length, text_pool_type, truncation_is_exact
from clipdepth.study.experiments import Experiment, get, variant
from clipdepth.vocab import is_weights_file

# Dense modes each image-tower family implements (clipdepth.model.backbone.dense_features). ``depthclip``
# is the faithful mode everywhere: ResNet layer4 with channel subsampling; on a ViT the authors' path
# (tokens after ln_post + proj, L2-normalised); on a timm ConvNeXt the per-cell joint-space feature.
FAMILY_DENSE_MODES: dict[str, tuple[str, ...]] = {
    "ModifiedResNet": ("depthclip", "maskclip"),
    "VisionTransformer": ("depthclip", "tokens"),
    "timm": ("depthclip", "tokens"),
}


def image_family(arch: str) -> str:
    """The image-tower family of an open_clip config, read from the config without building it."""
    cfg = open_clip.get_model_config(arch)
    if cfg is None:
        raise ValueError(f"unknown open_clip architecture {arch!r} (see open_clip.list_models())")
    vision = cfg.get("vision_cfg", {})
    if vision.get("timm_model_name"):
        return "timm"
    if isinstance(vision.get("layers"), (list, tuple)):
        return "ModifiedResNet"
    return "VisionTransformer"


def backbone_experiments(
    base_name: Experiment | str, archs: list[tuple[str, str | None]]
) -> list[tuple[Experiment, str | None]]:
    """One variant of ``base_name`` per ``(arch, pretrained tag)``, with the weights to load it with.

    The tag is an open_clip pretrained tag, a local checkpoint path, or ``None`` (random init, the
    demo). The base row's dense mode is kept where the tower implements it and replaced by
    ``depthclip`` elsewhere (e.g. ``maskclip`` is ResNet-only), so every row runs.
    """
    base = get(base_name) if isinstance(base_name, str) else base_name
    if not archs:
        raise ValueError("archs is empty: give at least one (architecture, pretrained tag) pair")
    out: list[tuple[Experiment, str | None]] = []
    for pair in archs:
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            raise ValueError(f"archs entries must be (architecture, pretrained tag) pairs, got {pair!r}")
        arch, tag = pair
        family = image_family(arch)
        if tag is not None and not is_weights_file(tag) and tag not in open_clip.list_pretrained_tags_by_model(arch):
            tags = ", ".join(open_clip.list_pretrained_tags_by_model(arch)) or "none"
            raise ValueError(f"{tag!r} is not a pretrained tag of {arch} (tags: {tags}) nor a file path")
        mode = base.dense_mode if base.dense_mode in FAMILY_DENSE_MODES[family] else "depthclip"
        changes: dict[str, Any] = {"arch": arch}
        if mode != base.dense_mode:
            changes["dense_mode"] = mode
        out.append((variant(base, **changes), tag))
    return out


def describe_backbone(
    arch: str, input_size: tuple[int, int] = (224, 224), model: torch.nn.Module | None = None
) -> dict[str, Any]:
    """What a backbone offers the method: image-tower family, feature stride, the size the tower sees
    for a crop of ``input_size`` (height, width; rounded to the stride by
    :func:`clipdepth.model.backbone.stride_size`, as the model does) and its feature grid, joint text width,
    text context / pooling / whether truncation is exact, and the trainable parameters of the learned-7
    prompt encoder (measured on the encoder).

    ``model`` skips building (pass one already loaded); otherwise a random-init model is built with
    :func:`clipdepth.model.backbone.load_clip`.
    """
    model = model if model is not None else load_clip(arch, None)
    stride = feature_stride(model)
    crop = (int(input_size[0]), int(input_size[1]))
    h, w = stride_size(crop, stride)
    encoder = PromptEncoder(model, words="learned-7")
    return {
        "arch": arch,
        "image_family": image_family(arch),
        "feature_stride": stride,
        "crop_size": crop,
        "input_size": (h, w),
        "feature_grid": (h // stride, w // stride),
        "text_width": text_width(model),
        "text_context": text_context_length(model),
        "text_pool": text_pool_type(model),
        "text_truncated": truncation_is_exact(model),
        "trainable_params_learned7": sum(p.numel() for p in encoder.parameters() if p.requires_grad),
    }
