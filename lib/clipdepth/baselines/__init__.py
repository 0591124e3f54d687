"""Trained baselines the study compares the learned-prompt method with.

- :mod:`.clip2depth`: CLIP2Depth (Kim et al. 2024/2025): a learnable "mirror" token matrix through
  CLIP's frozen text encoder conditions frozen CLIP image features by FiLM; a compact decoder predicts
  dense depth. No public code: every choice is listed in :func:`.clip2depth.design_choices`.
- :mod:`.llm_mde`: LLM-MDE (Xia & Wu 2024): ImageNet ViT-B/16 and 12-layer BERT with LoRA,
  reprogramming to text prototypes, adaptive prompts, convolutional head; after the authors' code.
- :mod:`.fit`: the shared fitting loop; :mod:`.runner`: train + score + cache one run;
  :mod:`.published`: their published numbers with sources and kinds.

DepthCLIP (zero-shot) is not here: it is a bin-prompt model, :func:`clipdepth.model.factory.depthclip_zero_shot`.
"""

from clipdepth.baselines.clip2depth import CLIP2Depth, CLIP2DepthConfig, build_clip2depth, design_choices
from clipdepth.baselines.fit import FitConfig, FitResult, TrainBatches, fit, probe_loss
from clipdepth.baselines.llm_mde import LLMMDE, LLMMDEConfig, build_llm_mde, evaluate_normalised, normalised_metrics
from clipdepth.baselines.runner import METHODS, BaselineResult, run_baseline
from clipdepth.study.reference.baselines import PUBLISHED, clip2depth_implied_abs_rel, published_table

__all__ = [
    "CLIP2Depth",
    "CLIP2DepthConfig",
    "LLMMDE",
    "LLMMDEConfig",
    "METHODS",
    "PUBLISHED",
    "BaselineResult",
    "FitConfig",
    "FitResult",
    "TrainBatches",
    "build_clip2depth",
    "build_llm_mde",
    "clip2depth_implied_abs_rel",
    "design_choices",
    "evaluate_normalised",
    "fit",
    "normalised_metrics",
    "probe_loss",
    "published_table",
    "run_baseline",
]
