"""The bin-prompt depth head and the full CLIP depth model built on it.

Depth per patch = sum_k softmax_k(scale * <patch, text_k>) * c_k: image patches are compared with one
text feature per depth bin, and the probabilities weight fixed bin centres. DepthCLIP and the
authors' learned-prompt method differ only in the prompts, the text normalisation and the bins.
"""

from __future__ import annotations

from dataclasses import dataclass

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from clipdepth.model.backbone import dense_features, feature_stride, fit_to_stride, set_bn_policy
from clipdepth.model.prompt_learner import PromptEncoder

TEXT_NORMS: tuple[str, ...] = ("per_prompt", "frobenius")
# Both codes write the scale as 100 * <., .> / temperature with temperature 0.1.
DEFAULT_LOGIT_SCALE = 100.0 / 0.1


def normalise_text(text: torch.Tensor, mode: str = "frobenius") -> torch.Tensor:
    """Turn ``N x D`` prompt features into the ``D x N`` matrix the head multiplies with.

    ``per_prompt`` (DepthCLIP): unit columns. ``frobenius`` (the authors' code): each prompt
    L2-normalised, then the whole matrix divided by its Frobenius norm, so every column has norm
    ``1/sqrt(N)`` -- the effective logit scale shrinks with the number of bins.
    """
    if mode not in TEXT_NORMS:
        raise ValueError(f"unknown text normalisation {mode!r}; valid: {', '.join(TEXT_NORMS)}")
    t = F.normalize(text, dim=-1)
    if mode == "frobenius":
        t = t / t.norm()
    return t.t()


def bin_logits(features: torch.Tensor, text_cols: torch.Tensor, logit_scale: float) -> torch.Tensor:
    """Bin logits ``logit_scale * <patch, text_k>``; ``B x C x h x w`` -> ``B x N x h x w``.

    Computed as one ``(N x C) @ (C x B.h.w)`` product and returned as a ``B x N x h x w`` view: in this
    layout the gradient to the text is one product as well. The batched ``einsum`` form was 2-7x slower
    per training step on CPU (measured at batch 16, 7 to 256 bins), mostly in its backward.
    """
    b, c, h, w = features.shape
    flat = features.transpose(0, 1).reshape(c, b * h * w)
    logits = logit_scale * (text_cols.t().to(features.dtype) @ flat)
    return logits.view(-1, b, h, w).transpose(0, 1)


def bin_probabilities(features: torch.Tensor, text_cols: torch.Tensor, logit_scale: float) -> torch.Tensor:
    """Softmax over bins of :func:`bin_logits`; ``B x C x h x w`` -> ``B x N x h x w``."""
    return bin_logits(features, text_cols, logit_scale).softmax(dim=1)


@dataclass
class DepthOutput:
    """Everything the head computes for a batch, at feature resolution (``return_logits=True``).

    ``depth`` (B x 1 x h x w, metres) is what the model returns by default; ``probs`` = softmax of
    ``logits`` over the bin axis (B x N x h x w); the authors' code calls the logits ``depth_logits``.
    """

    depth: torch.Tensor
    probs: torch.Tensor
    logits: torch.Tensor


def depth_from_probabilities(probs: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Expected depth ``sum_k p_k c_k``, ``B x 1 x h x w``."""
    b, n, h, w = probs.shape
    flat = probs.transpose(0, 1).reshape(n, b * h * w)  # a view for what bin_logits returns
    return (centres.to(probs.dtype) @ flat).view(b, 1, h, w)


class BinPromptDepth(nn.Module):
    """Frozen CLIP + prompt encoder + bin centres: the model of DepthCLIP and of the authors.

    Output stays at feature resolution (H/32 x W/32 for ResNets); upsampling belongs to the loss and
    the evaluation protocol, as in the authors' code. ``bn`` decides what ``train()`` does to the image
    tower's BatchNorm layers (``frozen`` or ``adapt``, see ``backbone.set_bn_policy``); everything
    else of CLIP stays in eval mode and frozen.
    """

    def __init__(
        self,
        clip_model: open_clip.CLIP,
        prompts: PromptEncoder,
        centres: torch.Tensor,
        text_norm: str = "frobenius",
        logit_scale: float = DEFAULT_LOGIT_SCALE,
        dense_mode: str = "depthclip",
        image_norm: str = "imagenet",
        bn: str = "frozen",
    ) -> None:
        super().__init__()
        if centres.numel() != prompts.n_prompts:
            raise ValueError(f"{centres.numel()} bin centres for {prompts.n_prompts} prompts")
        if text_norm not in TEXT_NORMS:
            raise ValueError(f"unknown text normalisation {text_norm!r}; valid: {', '.join(TEXT_NORMS)}")
        self.clip = clip_model
        self.prompts = prompts
        self.register_buffer("centres", centres.to(torch.float32))
        self.text_norm = text_norm
        self.logit_scale = float(logit_scale)
        self.dense_mode = dense_mode
        self.image_norm = image_norm
        set_bn_policy(clip_model, bn)  # validates the name
        self.bn = bn
        self.clip.eval()

    def train(self, mode: bool = True) -> BinPromptDepth:
        super().train(mode)
        self.clip.eval()
        if mode:
            set_bn_policy(self.clip, self.bn)
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.prompts.parameters() if p.requires_grad]

    def text_features(self) -> torch.Tensor:
        """Normalised ``D x N`` text matrix for the current tokens."""
        return normalise_text(self.prompts(), self.text_norm)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Dense features of [0, 1] RGB images (the frozen, cacheable part); sizes the feature stride does
        not divide (patch-14 towers) are rounded to the nearest multiple (``backbone.fit_to_stride``)."""
        images = fit_to_stride(images, feature_stride(self.clip))
        return dense_features(self.clip, images, self.dense_mode, self.image_norm)

    def forward_features(
        self, features: torch.Tensor, text: torch.Tensor | None = None, return_logits: bool = False
    ) -> torch.Tensor | DepthOutput:
        """Depth from precomputed dense features (the cached-training path); with ``return_logits`` a
        :class:`DepthOutput` holding the bin logits and probabilities as well."""
        text = self.text_features() if text is None else text
        logits = bin_logits(features.to(text.dtype), text, self.logit_scale)
        probs = logits.softmax(dim=1)
        depth = depth_from_probabilities(probs, self.centres)
        return DepthOutput(depth, probs, logits) if return_logits else depth

    def forward(self, images: torch.Tensor, return_logits: bool = False) -> torch.Tensor | DepthOutput:
        """Low-resolution depth in metres for a batch of [0, 1] RGB images (a :class:`DepthOutput`
        with bin logits and probabilities when ``return_logits``)."""
        return self.forward_features(self.image_features(images), return_logits=return_logits)
