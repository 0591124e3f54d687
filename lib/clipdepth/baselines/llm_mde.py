"""LLM-MDE (Xia & Wu, "Large Language Models Can Understanding Depth from Monocular Images", arXiv
2409.01133), following the authors' public code (``651784766/LLM-MDE``, ``LanguageMono.py`` and
``main.py``; facts summarised in ``shared/research/peers.md`` section 2). Our own implementation.

Pipeline (their ``Language4Depth`` with ``prompt=True, LoRA=True``, the configuration of their paper):

1. The image (ImageNet-normalised) is resized bilinearly to 224 x 224 and encoded by timm's
   ``vit_base_patch16_224`` (ImageNet weights, *not* CLIP) adapted with LoRA (r = 160, alpha = 320) on
   the query and value parts of every block's attention. Of the 197 output tokens their code keeps
   ``[:, :-1]``: the class token and the first 195 patches (the last patch is dropped) -- kept here
   (``drop_last_token``) because it fixes the sequence length their head was built for.
2. Text prototypes: a trainable linear map compresses BERT's frozen word-embedding table (30,522 x 768)
   to 1,000 rows.
3. Reprogramming: multi-head cross-attention, queries from the image tokens, keys and values from the
   prototypes, 24 heads of width 768 each (their ``d_keys = d_model``), attention dropout 0.1, projected
   back to 768; then a residual bottleneck MLP applied twice (768 -> 192 -> 768, ReLU, no biases).
4. Adaptive depth prompt, per image: a dataset sentence, the task, six "statistics" (argmin / argmax /
   median *positions* along x and y of the normalised input tensor, as their ``stat_compute``) and a
   "class": the DepthCLIP word whose bin (1.0 ... 3.0) contains the most frequent value of the input
   tensor. Tokenised by BERT's tokenizer, embedded by BERT's frozen word embeddings and concatenated in
   front of the reprogrammed tokens.
5. A 12-layer ``bert-base-uncased`` adapted with LoRA (r = 32) on query, key and value of every layer
   runs on the concatenation (``inputs_embeds``).
6. Head: a linear map over the sequence (310 -> 3 tokens), a linear map 768 -> 1024 reshaped to
   3 x 32 x 32, three upsample-and-fuse blocks (bilinear to the input resolution, concatenated with the
   normalised input image, conv3x3-BN-LeakyReLU twice; 12, 24, 36 channels), a 3x3 conv to one channel
   and a sigmoid.
7. Loss: BTS SILog (lambda 0.85, x10) on pixels with gt > 0.1 m (NYU; their KITTI branch uses 1 m).
   Optimiser: AdamW lr 1e-4 with PyTorch's default weight decay 0.01 and eps (their config's
   ``--weight_decay``/``--adam_eps`` are parsed but never passed), polynomial decay (power 0.9) to
   0.1 x lr per step; batch 32, 50 epochs (:data:`TRAIN_DEFAULTS`).

Deviations, each deliberate and visible in :class:`LLMMDEConfig`:

- LoRA through ``peft``. The ViT's fused ``qkv`` projection is split into three ``nn.Linear`` modules
  with the same weights (bit-identical outputs, tested) so that ``peft`` can adapt exactly the query and
  value parts, as their hand-written ``_LoRA_qkv_timm`` does. Same rank, same scaling (alpha / r = 2).
- BERT: their code *replaces* query/key/value with new ``loralib.Linear`` layers after loading the
  checkpoint -- which re-initialises those weights randomly -- and then marks every parameter whose
  name contains query/key/value as trainable, so the full Q/K/V matrices train from scratch. We follow
  the paper ("LoRA for each attention block"): pretrained Q/K/V stay frozen and only the rank-32 LoRA
  factors train. loralib's default alpha (1, scaling 1/32) would make the adapter almost inert, so we
  use alpha = 64 (scaling 2), the ratio they chose for the ViT.
- Value projection: their ``CrossAttention`` computes a value projection but passes the projected
  *keys* as values; we use the value projection (the attention the paper describes).
- One BERT: their code loads a second, truncated BERT (``llm_layers`` = 4) only for its tokenizer and
  word embeddings, which are the same checkpoint's; we take both from the 12-layer model.
- Prompt length: padded/truncated to a fixed 114 tokens (``prompt_tokens``), so prompt + 196 image
  tokens = the 310 their token-mixing layer expects; their code pads to the longest prompt in the
  batch and silently relies on it being 114 long. Their class word is computed from the *first* image
  of the batch for every image; we compute it per image, so a prediction does not depend on its
  batch-mates, and clamp values above the last bin to the last word (their code would index past the
  list).
- Output: their sigmoid output lies in (0, 1) while the ground truth is in metres, so their model can
  never predict beyond 1 m and is only meaningful after their min-max-normalised scoring. To score it in
  the metric protocol used for every other row we predict ``max_depth * sigmoid`` (``output="metric"``);
  ``output="unit"`` restores their raw sigmoid.
- Scoring: metric protocol by default (``clipdepth.eval.protocols``); :func:`evaluate_normalised` reproduces
  their min-max-normalised scoring (prediction and ground truth each rescaled to [0, 1] per image,
  clamped at 1e-3) so the two can be compared.
- Augmentation: the study's AdaBins augmentation and crops (as every trained row), not their rotation
  plus CutDepth.

Weights: ``pretrained=False`` (demo) builds both towers with random weights of the real architecture, and
uses ``bert-base-uncased``'s tokenizer when its files are in the local Hugging Face cache, else a small
deterministic WordPiece vocabulary that covers the prompt (:func:`demo_tokenizer`; the case here, where
nothing can be downloaded); ``pretrained=True`` (paper) loads timm's ``vit_base_patch16_224`` and
``google-bert/bert-base-uncased`` from the local Hugging Face cache only and raises
:class:`~clipdepth.model.backbone.WeightsUnavailableError` naming what to download when they are missing.

Long because: it follows one paper's code end to end (prompts, modules, builders, their normalised
scoring) in the authors' order, so that each step can be checked against their files side by side.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from clipdepth.data.specs import get_spec
from clipdepth.eval.metrics import average_metrics, compute_metrics, valid_mask
from clipdepth.eval.protocols import EvalResult, predict_with_flip, sanitise, upsample
from clipdepth.model.backbone import WeightsUnavailableError, normalise_images
from clipdepth.model.bins import DEPTHCLIP_BINS
from clipdepth.train.losses import silog_loss
from clipdepth.vocab import WORD_LISTS

__all__ = [
    "DATASET_DESCRIPTION",
    "LLMMDE",
    "LLMMDEConfig",
    "TRAIN_DEFAULTS",
    "adaptive_prompts",
    "build_llm_mde",
    "demo_tokenizer",
    "evaluate_normalised",
    "expected_trainable_parameters",
    "image_statistics",
    "normalised_metrics",
]

#: Their training settings (``configs/arguments_train_nyu.txt`` as ``main.py`` uses them).
TRAIN_DEFAULTS: dict[str, Any] = {"lr": 1e-4, "weight_decay": 1e-2, "batch_size": 32, "epochs": 50,
                                  "schedule": "poly", "poly_power": 0.9, "end_lr_factor": 0.1}

#: The dataset sentence of their prompt (their default when no ``--prompt_domain`` is given).
DATASET_DESCRIPTION = ("Monocular depth estimation is the process of inferring the distance of objects in a "
                       "scene from a single 2D image.")
DEPTHCLIP_WORDS: tuple[str, ...] = WORD_LISTS["depthclip-7"]
VIT_HF_NAME = "vit_base_patch16_224"
BERT_HF_NAME = "google-bert/bert-base-uncased"


@dataclass(frozen=True)
class LLMMDEConfig:
    """Sizes of LLM-MDE. Defaults are the authors' configuration; tests use a smaller one.

    ``bert_*`` sizes other than the defaults only apply to random init (a checkpoint has its own).
    """

    image_size: int = 224
    vit_name: str = VIT_HF_NAME
    vit_lora_rank: int = 160
    vit_lora_alpha: int = 320
    bert_layers: int = 12
    bert_hidden: int = 768
    bert_heads: int = 12
    bert_intermediate: int = 3072
    bert_vocab: int = 30522
    bert_lora_rank: int = 32
    bert_lora_alpha: int = 64
    n_prototypes: int = 1000
    n_heads: int = 24
    d_keys: int | None = None  # per head; None = the ViT width (their d_keys = d_model)
    attention_dropout: float = 0.1
    l2d_reduction: int = 4
    prompt_tokens: int = 114
    head_tokens: int = 3
    head_grid: int = 32
    drop_last_token: bool = True
    output: Literal["metric", "unit"] = "metric"
    max_depth: float = 10.0
    loss_min_depth: float = 0.1

    def __post_init__(self) -> None:
        if self.output not in ("metric", "unit"):
            raise ValueError(f"output must be 'metric' or 'unit', got {self.output!r}")
        if self.image_size % 16:
            raise ValueError(f"image_size must be a multiple of the patch size 16, got {self.image_size}")


# ---------------------------------------------------------------------------------------------
# Adaptive depth prompts
# ---------------------------------------------------------------------------------------------


def image_statistics(x: torch.Tensor) -> list[dict[str, int]]:
    """Their "input statistics" for each image of ``x`` (B x C x H x W, the normalised ViT input).

    Despite the prompt's wording ("min value on the x axis") these are *positions*: e.g. ``max_y`` is
    the smallest row index at which some column (of some channel) has its maximum, ``min_y`` the largest
    row index of a column minimum, ``median_y`` the median over columns of the row index of the column
    median; the same along x with rows and columns swapped.
    """
    out = []
    with torch.no_grad():
        arg_max_h, arg_min_h = x.argmax(dim=2), x.argmin(dim=2)  # B x C x W: row positions
        arg_max_w, arg_min_w = x.argmax(dim=3), x.argmin(dim=3)  # B x C x H: column positions
        med_h, med_w = x.median(dim=2).indices, x.median(dim=3).indices
        for b in range(x.shape[0]):
            out.append({
                "max_x": int(arg_max_w[b].min()), "min_x": int(arg_min_w[b].max()),
                "median_x": int(med_w[b].flatten().median()),
                "max_y": int(arg_max_h[b].min()), "min_y": int(arg_min_h[b].max()),
                "median_y": int(med_h[b].flatten().median()),
            })
    return out


def depth_class(x: torch.Tensor) -> str:
    """The DepthCLIP word of one image: the bin (1.0 ... 3.0) containing its most frequent value."""
    values, counts = torch.unique(x.detach(), return_counts=True)
    mode = values[torch.argmax(counts)]
    bins = torch.tensor(DEPTHCLIP_BINS, dtype=mode.dtype, device=mode.device)
    index = min(int(torch.bucketize(mode, bins)), len(DEPTHCLIP_WORDS) - 1)
    return DEPTHCLIP_WORDS[index]


def adaptive_prompts(x: torch.Tensor, description: str = DATASET_DESCRIPTION) -> list[str]:
    """The per-image prompt text: dataset, task, statistics and class parts (their wording)."""
    prompts = []
    for b, s in enumerate(image_statistics(x)):
        prompts.append(
            f"<|start_prompt|>Dataset description: {description}"
            "Task description: estimate the photo's depth"
            "Input statistics:"
            f"min value on the x axis {s['min_x']},min value on the y axis {s['min_y']},"
            f"max value on the x axis {s['max_x']},max value on the y axis {s['max_y']},"
            f"median value on the x axis {s['median_x']},median value on the y axis {s['median_y']},"
            f"the depth class of input is {depth_class(x[b])}<|<end_prompt>|>"
        )
    return prompts


def demo_tokenizer():
    """A small deterministic WordPiece tokenizer for the offline demo.

    ``bert-base-uncased``'s vocabulary file cannot be downloaded here. This vocabulary holds BERT's
    special tokens, every word of the prompt template and the DepthCLIP words, the integers 0-999 (whole
    tokens in BERT's vocabulary too), and single letters, digits and punctuation with their ``##``
    continuations, so any prompt tokenises without [UNK] and into about as many pieces as with the real
    vocabulary (about 110 of the 114 slots). Ids index the first rows of the (random)
    30,522-row embedding table.
    """
    from transformers import BertTokenizer

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    text = " ".join([DATASET_DESCRIPTION, "dataset task description estimate the photo's depth input statistics",
                     "min max median value on the x y axis", "the depth class of input is start prompt end",
                     *DEPTHCLIP_WORDS])
    words = sorted(set(re.findall(r"[a-z0-9]+", text.lower())))
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789")
    punct = list("<>|_:,.'!?-()")
    numbers = [str(n) for n in range(1000)]  # BERT's vocabulary holds small integers as single tokens
    vocab: list[str] = []
    for token in [*specials, *punct, *chars, *[f"##{c}" for c in chars], *words, "##input", *numbers]:
        if token not in vocab:
            vocab.append(token)
    return BertTokenizer(vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=True)


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------


class _SplitQKV(nn.Module):
    """timm's fused ``qkv`` Linear as three Linears with the same weights (outputs are identical), so
    LoRA can target the query and value parts only."""

    def __init__(self, qkv: nn.Linear) -> None:
        super().__init__()
        d = qkv.in_features
        if qkv.out_features != 3 * d:
            raise ValueError(f"expected a fused qkv of width 3 x {d}, got {qkv.out_features}")
        self.q, self.k, self.v = (nn.Linear(d, d, bias=qkv.bias is not None) for _ in range(3))
        with torch.no_grad():
            for i, part in enumerate((self.q, self.k, self.v)):
                part.weight.copy_(qkv.weight[i * d : (i + 1) * d])
                if qkv.bias is not None:
                    part.bias.copy_(qkv.bias[i * d : (i + 1) * d])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.q(x), self.k(x), self.v(x)], dim=-1)


class Reprogramming(nn.Module):
    """Multi-head cross-attention from image tokens (queries) to text prototypes (keys, values)."""

    def __init__(self, d_model: int, n_heads: int, d_keys: int, d_llm: int, dropout: float) -> None:
        super().__init__()
        self.n_heads, self.d_keys = n_heads, d_keys
        self.query = nn.Linear(d_model, d_keys * n_heads)
        self.key = nn.Linear(d_llm, d_keys * n_heads)
        self.value = nn.Linear(d_llm, d_keys * n_heads)
        self.out = nn.Linear(d_keys * n_heads, d_llm)
        self.dropout = nn.Dropout(dropout)

    def project_prototypes(self, prototypes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = prototypes.shape[0]
        return (self.key(prototypes).view(s, self.n_heads, self.d_keys),
                self.value(prototypes).view(s, self.n_heads, self.d_keys))

    def forward(self, tokens: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        b, n, _ = tokens.shape
        q = self.query(tokens).view(b, n, self.n_heads, self.d_keys)
        scores = torch.einsum("bnhe,she->bhns", q, keys) / math.sqrt(self.d_keys)
        attn = self.dropout(scores.softmax(dim=-1))
        out = torch.einsum("bhns,she->bnhe", attn, values).reshape(b, n, -1)
        return self.out(out)


class _ResidualBottleneck(nn.Module):
    """``x + f2(f1(x))`` with ``f = Linear(c, c/r) ReLU Linear(c/r, c) ReLU`` (their Language2Depth)."""

    def __init__(self, c: int, reduction: int) -> None:
        super().__init__()

        def mlp() -> nn.Sequential:
            return nn.Sequential(nn.Linear(c, c // reduction, bias=False), nn.ReLU(),
                                 nn.Linear(c // reduction, c, bias=False), nn.ReLU())

        self.f1, self.f2 = mlp(), mlp()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.f2(self.f1(x))


class _UpFuse(nn.Module):
    """Bilinear upsample to the guide's size, concatenate the guide, (conv3x3-BN-LeakyReLU) x 2."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.LeakyReLU(),
                                 nn.Conv2d(c_out, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.LeakyReLU())

    def forward(self, x: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=guide.shape[-2:], mode="bilinear", align_corners=True)
        return self.net(torch.cat([x, guide], dim=1))


class DepthHead(nn.Module):
    """Their upsampling head: the 3-channel code is fused three times with full-resolution guides."""

    def __init__(self, f: int = 3) -> None:
        super().__init__()
        self.up1 = _UpFuse(2 * f, 4 * f)  # code (f) + image (3 = f)
        self.up2 = _UpFuse(5 * f, 8 * f)  # code + previous output
        self.up3 = _UpFuse(9 * f, 12 * f)
        self.out = nn.Conv2d(12 * f, 1, 3, padding=1)

    def forward(self, code: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        x = self.up1(code, image)
        x = self.up2(code, x)
        x = self.up3(code, x)
        return self.out(x)


def _versions(*tensors: torch.Tensor) -> tuple[tuple[int, int], ...]:
    """Storage and version of each tensor: changes on an in-place update (optimiser step) or a move."""
    return tuple((t.data_ptr(), t._version) for t in tensors)


class LLMMDE(nn.Module):
    """ViT (LoRA) -> reprogramming to BERT prototypes -> [prompt; tokens] -> BERT (LoRA) -> conv head.

    ``forward`` maps [0, 1] RGB images to depth at the input resolution: metres for ``output="metric"``,
    their raw sigmoid for ``output="unit"``.
    """

    def __init__(self, vit: nn.Module, bert: nn.Module, tokenizer: Any, config: LLMMDEConfig, seed: int = 42) -> None:
        super().__init__()
        self.config = config
        self.vit, self.bert = vit, bert
        object.__setattr__(self, "tokenizer", tokenizer)  # not a module
        d_model = int(vit.embed_dim)
        d_llm = int(bert.config.hidden_size)
        vocab = bert.get_input_embeddings().weight.shape[0]
        grid = config.image_size // int(vit.patch_embed.patch_size[0])
        self.n_image_tokens = grid * grid  # class token + all patches but the last, or the patches
        self.seq_len = config.prompt_tokens + self.n_image_tokens
        d_keys = config.d_keys or d_model
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.prototypes = nn.Linear(vocab, config.n_prototypes)
            self.reprogram = Reprogramming(d_model, config.n_heads, d_keys, d_llm, config.attention_dropout)
            self.language_to_depth = _ResidualBottleneck(d_llm, config.l2d_reduction)
            self.token_mix = nn.Linear(self.seq_len, config.head_tokens)
            self.to_grid = nn.Linear(d_llm, config.head_grid * config.head_grid)
            self.head = DepthHead(config.head_tokens)
        if config.head_tokens != 3:
            raise ValueError("the head fuses the code with the RGB image channel-for-channel: head_tokens must be 3")
        self._kv_cache: tuple[tuple[tuple[int, int], ...], tuple[torch.Tensor, torch.Tensor]] | None = None

    # -- parameters -----------------------------------------------------------------------------
    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def base_parameters(self) -> dict[str, nn.Parameter]:
        """The frozen pretrained weights of both towers (everything of ViT and BERT but LoRA)."""
        out = {}
        for prefix, module in (("vit", self.vit), ("bert", self.bert)):
            for name, p in module.named_parameters():
                if "lora_" not in name:
                    out[f"{prefix}.{name}"] = p
        return out

    def parameter_groups(self) -> dict[str, int]:
        """Trainable parameter counts by component (for the notebook's table and the tests)."""

        def count(module: nn.Module, lora: bool | None = None) -> int:
            return sum(p.numel() for n, p in module.named_parameters()
                       if p.requires_grad and (lora is None or ("lora_" in n) == lora))

        return {"vit_lora": count(self.vit, True), "bert_lora": count(self.bert, True),
                "prototypes": count(self.prototypes), "reprogramming": count(self.reprogram),
                "language_to_depth": count(self.language_to_depth),
                "head_linear": count(self.token_mix) + count(self.to_grid), "head_conv": count(self.head)}

    # -- forward --------------------------------------------------------------------------------
    def prototype_keys_values(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of the text prototypes (image-independent; cached during evaluation)."""
        params = (self.prototypes.weight, self.prototypes.bias, self.reprogram.key.weight, self.reprogram.key.bias,
                  self.reprogram.value.weight, self.reprogram.value.bias)
        cacheable = not torch.is_grad_enabled() and not self.training
        if cacheable and self._kv_cache is not None and self._kv_cache[0] == _versions(*params):
            return self._kv_cache[1]
        table = self.bert.get_input_embeddings().weight  # vocab x d_llm, frozen
        prototypes = self.prototypes(table.t()).t()  # n_prototypes x d_llm
        kv = self.reprogram.project_prototypes(prototypes)
        if cacheable:
            self._kv_cache = (_versions(*params), kv)
        return kv

    def prompt_ids(self, x: torch.Tensor) -> torch.Tensor:
        """Tokenised adaptive prompts, ``B x prompt_tokens`` (padded with [PAD] / truncated)."""
        enc = self.tokenizer(adaptive_prompts(x), padding="max_length", truncation=True,
                             max_length=self.config.prompt_tokens, return_tensors="pt")
        return enc["input_ids"].to(x.device)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        full = normalise_images(images, "imagenet")
        x = F.interpolate(full, size=(cfg.image_size, cfg.image_size), mode="bilinear", align_corners=False)
        tokens = self.vit.forward_features(x)
        prefix = int(getattr(self.vit, "num_prefix_tokens", 1))
        tokens = tokens[:, :-1] if cfg.drop_last_token else tokens[:, prefix:]
        tokens = tokens[:, -self.n_image_tokens:]  # models with several prefix tokens: keep the count fixed
        keys, values = self.prototype_keys_values()
        aligned = self.language_to_depth(self.reprogram(tokens, keys, values))
        prompt = self.bert.get_input_embeddings()(self.prompt_ids(x))
        hidden = self.bert(inputs_embeds=torch.cat([prompt, aligned], dim=1)).last_hidden_state
        code = self.token_mix(hidden.transpose(1, 2)).transpose(1, 2)  # B x 3 x d_llm
        code = self.to_grid(code).reshape(-1, cfg.head_tokens, cfg.head_grid, cfg.head_grid)
        out = torch.sigmoid(self.head(code, full))
        return cfg.max_depth * out if cfg.output == "metric" else out

    def loss(self, images: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        """BTS SILog on pixels with gt > ``loss_min_depth`` (their mask)."""
        return silog_loss(self(images), depth, self.config.loss_min_depth)


def expected_trainable_parameters(config: LLMMDEConfig, vit_width: int = 768, vit_depth: int = 12,
                                  patch: int = 16, vocab: int | None = None) -> dict[str, int]:
    """Trainable parameter counts by formula, per component (the tests compare them with the model)."""
    d_llm, r = config.bert_hidden, config.l2d_reduction
    vocab = config.bert_vocab if vocab is None else vocab
    hk = config.n_heads * (config.d_keys or vit_width)
    seq = config.prompt_tokens + (config.image_size // patch) ** 2
    f = config.head_tokens

    def up(c_in: int, c_out: int) -> int:
        return (c_in * c_out * 9 + c_out) + 2 * c_out + (c_out * c_out * 9 + c_out) + 2 * c_out

    return {
        "vit_lora": vit_depth * 2 * (vit_width * config.vit_lora_rank + config.vit_lora_rank * vit_width),
        "bert_lora": config.bert_layers * 3 * 2 * d_llm * config.bert_lora_rank,
        "prototypes": vocab * config.n_prototypes + config.n_prototypes,
        "reprogramming": (vit_width * hk + hk) + 2 * (d_llm * hk + hk) + (hk * d_llm + d_llm),
        "language_to_depth": 2 * 2 * d_llm * (d_llm // r),
        "head_linear": (seq * f + f) + (d_llm * config.head_grid**2 + config.head_grid**2),
        "head_conv": up(2 * f, 4 * f) + up(5 * f, 8 * f) + up(9 * f, 12 * f) + (12 * f * 9 + 1),
    }


# ---------------------------------------------------------------------------------------------
# Building (random init or local caches)
# ---------------------------------------------------------------------------------------------


def _cached_hf_file(repo_id: str, filenames: Sequence[str]) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    for name in filenames:
        path = try_to_load_from_cache(repo_id, name)
        if isinstance(path, str):
            return path
    return None


def _build_vit(config: LLMMDEConfig, pretrained: bool, vit_file: str | None = None) -> nn.Module:
    import timm

    if vit_file is not None:  # a local file: checked, then loaded strictly (clipdepth.baselines.weights)
        from clipdepth.baselines.weights import load_vit_file

        return load_vit_file(vit_file, config.vit_name, config.image_size)
    kwargs = {"img_size": config.image_size, "num_classes": 0}
    if not pretrained:
        return timm.create_model(config.vit_name, pretrained=False, **kwargs)
    cfg = timm.models.get_pretrained_cfg(config.vit_name)
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    path = _cached_hf_file(hub_id, ("model.safetensors", "pytorch_model.bin")) if hub_id else None
    if path is None:
        raise WeightsUnavailableError(
            f"the pretrained {config.vit_name} weights (Hugging Face '{hub_id}') are not in the local cache. "
            f"On a machine with network access run `timm.create_model('{config.vit_name}', pretrained=True)` "
            "(it fills ~/.cache/huggingface/hub) and copy that cache here, or use the demo profile."
        )
    return timm.create_model(config.vit_name, pretrained=True, pretrained_cfg_overlay={"file": path}, **kwargs)


def bert_tokenizer_cached() -> bool:
    """Whether bert-base-uncased's tokenizer files are in the local Hugging Face cache."""
    return _cached_hf_file(BERT_HF_NAME, ("vocab.txt", "tokenizer.json")) is not None


def _cached_bert_tokenizer() -> Any | None:
    """bert-base-uncased's own tokenizer when its files are cached (the demo then uses the real
    vocabulary with random weights), else None."""
    if not bert_tokenizer_cached():
        return None
    from transformers import BertTokenizer

    try:
        return BertTokenizer.from_pretrained(BERT_HF_NAME, local_files_only=True)
    except (OSError, ValueError):
        return None


def tokenizer_source(tokenizer: Any) -> str:
    """A short name of the tokenizer a model uses (recorded with every run)."""
    size = len(tokenizer.get_vocab())
    return "bert-base-uncased" if size >= 30000 else f"demo WordPiece ({size} entries, offline)"


def _build_bert(config: LLMMDEConfig, pretrained: bool, bert_folder: str | None = None) -> tuple[nn.Module, Any]:
    from transformers import BertConfig, BertModel, BertTokenizer

    if bert_folder is not None:  # a local Hugging Face folder: checked, then loaded (clipdepth.baselines.weights)
        from clipdepth.baselines.weights import load_bert_folder

        return load_bert_folder(bert_folder, config.bert_hidden, config.bert_heads, config.bert_vocab,
                                config.bert_intermediate, config.bert_layers)
    if not pretrained:
        bert_config = BertConfig(vocab_size=config.bert_vocab, hidden_size=config.bert_hidden,
                                 num_hidden_layers=config.bert_layers, num_attention_heads=config.bert_heads,
                                 intermediate_size=config.bert_intermediate)
        tokenizer = _cached_bert_tokenizer() if config.bert_vocab == 30522 else None
        return BertModel(bert_config, add_pooling_layer=False), tokenizer or demo_tokenizer()
    try:
        tokenizer = BertTokenizer.from_pretrained(BERT_HF_NAME, local_files_only=True)
        bert = BertModel.from_pretrained(BERT_HF_NAME, local_files_only=True, add_pooling_layer=False,
                                         num_hidden_layers=config.bert_layers)
    except (OSError, ValueError) as exc:
        raise WeightsUnavailableError(
            f"'{BERT_HF_NAME}' is not in the local Hugging Face cache ({type(exc).__name__}). On a machine with "
            f"network access run `transformers.BertModel.from_pretrained('{BERT_HF_NAME}')` and "
            f"`BertTokenizer.from_pretrained('{BERT_HF_NAME}')`, copy ~/.cache/huggingface/hub here, "
            "or use the demo profile."
        ) from exc
    if bert.config.hidden_size != config.bert_hidden:
        raise ValueError(f"checkpoint width {bert.config.hidden_size} differs from bert_hidden={config.bert_hidden}")
    return bert, tokenizer


def _add_lora(vit: nn.Module, bert: nn.Module, config: LLMMDEConfig) -> None:
    """Freeze both towers, then inject peft LoRA adapters (the only trainable part of the towers)."""
    from peft import LoraConfig, inject_adapter_in_model

    for block in vit.blocks:
        block.attn.qkv = _SplitQKV(block.attn.qkv)
    vit.requires_grad_(False)
    bert.requires_grad_(False)
    inject_adapter_in_model(LoraConfig(r=config.vit_lora_rank, lora_alpha=config.vit_lora_alpha, lora_dropout=0.0,
                                       target_modules=r".*blocks\.\d+\.attn\.qkv\.(q|v)"), vit)
    inject_adapter_in_model(LoraConfig(r=config.bert_lora_rank, lora_alpha=config.bert_lora_alpha,
                                       lora_dropout=0.0,
                                       target_modules=r".*encoder\.layer\.\d+\.attention\.self\.(query|key|value)"),
                            bert)
    for module in (vit, bert):
        for name, p in module.named_parameters():
            p.requires_grad_("lora_" in name)


def build_llm_mde(
    dataset: str = "nyu",
    pretrained: bool = False,
    seed: int = 42,
    device: str | torch.device = "cpu",
    vit_file: str | None = None,
    bert_folder: str | None = None,
    **config: Any,
) -> LLMMDE:
    """LLM-MDE for a dataset: ``max_depth`` 10 m and loss mask gt > 0.1 m for NYU, 80 m and gt > 1 m
    for KITTI (their KITTI branch). Keywords override :class:`LLMMDEConfig` fields.

    ``vit_file`` (timm's ViT-B/16 weights, ``.safetensors`` / ``.bin``) and ``bert_folder`` (a Hugging Face
    BERT folder with ``vocab.txt``) load those towers from local files, whatever ``pretrained`` says
    (:mod:`clipdepth.baselines.weights`: every file is checked first, one line per problem).

    Random init (``pretrained=False``) is seeded: the same seed gives the same towers and adapters.
    """
    max_depth = get_spec(dataset).max_depth  # raises a clear ValueError for an unknown dataset
    loss_min_depth = {"nyu": 0.1, "kitti": 1.0}[dataset]  # LLM-MDE's own training mask thresholds
    fields = {f.name for f in dataclasses.fields(LLMMDEConfig)}
    bad = set(config) - fields
    if bad:
        raise TypeError(f"unknown LLM-MDE option(s) {', '.join(sorted(bad))}; valid: {', '.join(sorted(fields))}")
    config.setdefault("max_depth", max_depth)
    config.setdefault("loss_min_depth", loss_min_depth)
    cfg = LLMMDEConfig(**config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vit = _build_vit(cfg, pretrained, vit_file)
        bert, tokenizer = _build_bert(cfg, pretrained, bert_folder)
        _add_lora(vit, bert, cfg)  # LoRA A matrices are drawn here, from the seeded generator
    return LLMMDE(vit, bert, tokenizer, cfg, seed=seed).to(device)


# ---------------------------------------------------------------------------------------------
# Their normalised scoring
# ---------------------------------------------------------------------------------------------


def _minmax(x: np.ndarray) -> np.ndarray:
    lo, hi = float(x.min()), float(x.max())
    return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)


def normalised_metrics(pred: np.ndarray | torch.Tensor, gt: np.ndarray, crop: str, min_depth: float,
                       max_depth: float) -> dict[str, float]:
    """Metrics after their min-max normalisation (``tools/utils.py::compute_errors``).

    Prediction and ground truth are each rescaled to [0, 1] over the whole frame (the ground truth's
    minimum is usually a 0 hole, as in their code) and clamped below at 1e-3; unlike their code, only the
    pixels the metric protocol scores (crop, ``min < gt <= max`` in metres) are then counted, so the two
    scorings differ in the normalisation alone.
    """
    p = pred.detach().cpu().numpy() if isinstance(pred, torch.Tensor) else np.asarray(pred)
    p = np.asarray(p, dtype=np.float64).squeeze()
    g = np.asarray(gt, dtype=np.float64).squeeze()
    mask = valid_mask(g, crop, min_depth, max_depth)
    pn = np.maximum(_minmax(p), 1e-3)[mask]
    gn = np.maximum(_minmax(g), 1e-3)[mask]
    return compute_metrics(pn, gn, crop="none", min_depth=0.0, max_depth=1.0)


@torch.no_grad()
def evaluate_normalised(predict: Any, samples: Iterable[Any], min_depth: float, max_depth: float, crop: str,
                        flip: bool = True, device: torch.device | str = "cpu",
                        keep_examples: int = 0) -> tuple[EvalResult, EvalResult]:
    """Score once, both ways: ``(metric, normalised)`` results from the same predictions.

    The prediction of each image is exactly the metric protocol's (flip TTA at the predictor's
    resolution after clamping to [min, max], bilinear ``align_corners=True`` upsampling), so the
    metric result equals ``clipdepth.eval.protocols.evaluate(..., protocol="authors")``; the normalised one
    applies :func:`normalised_metrics` (their scoring) to the same upsampled prediction.
    """
    metric_rows, norm_rows, names, examples = [], [], [], []
    for sample in samples:
        image = torch.from_numpy(np.ascontiguousarray(sample.image.transpose(2, 0, 1))).float()[None].to(device)
        gt = np.asarray(sample.depth, dtype=np.float64)
        low = predict_with_flip(predict, image, min_depth, max_depth) if flip else sanitise(
            predict(image), min_depth, max_depth)
        full = upsample(low, gt.shape)
        metric_rows.append(compute_metrics(full, gt, crop=crop, min_depth=min_depth, max_depth=max_depth))
        norm_rows.append(normalised_metrics(full, gt, crop, min_depth, max_depth))
        names.append(str(sample.name))
        if len(examples) < keep_examples:
            examples.append({"name": str(sample.name), "image": sample.image, "depth": gt,
                             "pred": full.squeeze().cpu().numpy()})
    return (EvalResult(metric_rows, names, average_metrics(metric_rows), examples),
            EvalResult(norm_rows, list(names), average_metrics(norm_rows)))
