"""CLIP2Depth (Kim, Kang, Kim & Lee, "CLIP Can Understand Depth", arXiv 2402.03251): our re-implementation.

No code was published, and the paper (as far as we could read it: the v2 abstract, the Pattern
Recognition abstract, secondary reviews; see ``shared/research/peers.md`` section 1) fixes only the
outline:

- a learnable "mirror" matrix (64 x 512) is the *entire* input token sequence of CLIP's frozen text
  encoder -- no words, no template; its pooled output is one query vector shared by every image;
- FiLM layers (per-channel scale and shift predicted from that query) condition the frozen CLIP image
  features;
- a compact (deconvolutional) decoder produces dense depth; mirror, FiLM and decoder are trained end to
  end with a scale-invariant loss; CLIP stays frozen.

Everything else is our choice. Each choice, with its reason, is in :data:`DESIGN_CHOICES` (shown by
the baselines notebook through :func:`design_choices`):

1. Backbone: CLIP ViT-B/16 (open_clip ``ViT-B-16``) by default. The seed summary of the paper names
   ViT-B/16, and the decoder recipe the secondary sources describe (CLIPSeg) is built for it. RN50 is
   one argument away (``arch="RN50-quickgelu"``) so the method can also be compared on the backbone of
   the learned-prompt rows.
2. Image features: ViT activations after residual blocks 3, 6 and 9 (patch tokens, class token and
   ``ln_post`` dropped), used deepest first -- CLIPSeg's taps; blocks 10-12 are never run. On RN50:
   ``layer4``, ``layer3``, ``layer2`` (strides 32, 16, 8), the usual encoder skips of a dense decoder.
3. Mirror: 64 x 512 (the reported size), initialised N(0, 0.02^2) like CLIP's token embeddings (a blog
   post says so; unverified). Positional embeddings are still added (they are part of the frozen
   encoder, not of the token sequence).
4. Pooling position: the last mirror row (index 63). CLIP pools at the EOT token, which the mirror does
   not have; under the causal mask only the last position attends to every mirror row, so it is the one
   position whose output depends on the whole matrix -- the role EOT plays for a sentence. The pooled
   token then goes through ``ln_final`` and ``text_projection`` as usual (512-d for ViT-B/16).
5. FiLM: two linear maps from the query to the decoder width (scale gamma, shift beta) applied once, to
   the projected deepest activation, as in CLIPSeg. Because the query is the same for every image, its
   effect is a learned per-channel affine produced *through* the frozen text encoder -- exactly the
   mirror's claimed role.
6. Decoder: each tap is reduced to 64 channels by a 1x1 projection; one transformer encoder block
   (width 64, 4 heads, feed-forward 2048, PyTorch's default) per tap, the next tap's projection added
   before each block (CLIPSeg's layout; "compact transformer module" in one review); then a 3x3 conv and
   transposed convolutions (x4, x4 for stride 16; x4, x2 for stride 8) to the input resolution.
   About 1.16 M trainable parameters with the mirror -- the count reported by the only open
   re-implementation of this recipe (a thesis; peers.md).
7. Output: ``max_depth * sigmoid(z)``: positive (the log loss needs it), bounded by the evaluation range
   of the dataset, and 0.5 * max_depth at initialisation, which starts training at a sensible scale.
8. Loss: the AdaBins/BTS SILog (lambda 0.85, x10, ``clipdepth.train.losses.silog_loss``), the loss every
   CLIP depth paper of this line uses; the paper only says "modified scale-invariant loss".
9. Input normalisation: CLIP's own mean/std (CLIP2Depth is a CLIP model with its own pipeline; the
   learned-prompt rows use ImageNet statistics because the authors' code did).
10. Training (see :data:`TRAIN_DEFAULTS`): AdamW, lr 1e-3, weight decay 1e-2, batch 16, 25 epochs,
    cosine decay -- lr/batch/epochs from the thesis re-implementation, the rest PyTorch defaults;
    the paper's schedule was not available to us.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import open_clip
import torch
import torch.nn.functional as F
from open_clip.modified_resnet import ModifiedResNet
from open_clip.transformer import VisionTransformer
from torch import nn

from clipdepth.data.specs import get_spec
from clipdepth.model.backbone import load_clip, normalise_images, text_width, vit_positional_embedding
from clipdepth.model.prompt_learner import TOKEN_INIT_STD, encode_embeddings
from clipdepth.train.losses import silog_loss

__all__ = [
    "CLIP2Depth",
    "CLIP2DepthConfig",
    "DESIGN_CHOICES",
    "TRAIN_DEFAULTS",
    "build_clip2depth",
    "design_choices",
    "expected_trainable_parameters",
]

#: Our training settings for CLIP2Depth (the paper's are unknown; choice 10 of the module docstring).
TRAIN_DEFAULTS: dict[str, Any] = {"lr": 1e-3, "weight_decay": 1e-2, "batch_size": 16, "epochs": 25,
                                  "schedule": "cosine"}

DESIGN_CHOICES: tuple[tuple[str, str, str], ...] = (
    ("backbone", "CLIP ViT-B/16 (open_clip 'ViT-B-16'), frozen; RN50 optional",
     "the seed summary names ViT-B/16 and the CLIPSeg-style decoder the reviews describe is built for it"),
    ("image taps", "ViT blocks 3, 6, 9 (patch tokens, no ln_post); RN50 layer4/3/2",
     "CLIPSeg's taps; for RN50 the usual stride-32/16/8 encoder skips"),
    ("mirror", "64 x 512 parameter, init N(0, 0.02^2), positional embeddings still added",
     "reported size; CLIP's token-embedding init (stated only in a blog post)"),
    ("pooling", "output at the last mirror row (63), then ln_final and text_projection",
     "no EOT token exists; under the causal mask only the last row sees the whole mirror"),
    ("FiLM", "gamma, beta = Linear(query) applied once to the projected deepest tap",
     "CLIPSeg's conditioning; the paper says FiLM without details"),
    ("decoder", "1x1 reduce to 64 per tap, 1 transformer block (64 wide, 4 heads) per tap, "
     "3x3 conv + transposed convs to input size",
     "CLIPSeg layout ('compact transformer module' + deconvolutions); ~1.16 M trainable parameters"),
    ("output", "max_depth * sigmoid", "positive for the log loss, bounded by the evaluation range"),
    ("loss", "SILog, lambda 0.85, x10 on pixels with gt > min_depth",
     "the paper says 'scale-invariant'; this is the form used by every CLIP-depth peer"),
    ("input norm", "CLIP mean/std", "CLIP2Depth is its own pipeline on CLIP (not the authors' loaders)"),
    ("training", "AdamW lr 1e-3, wd 1e-2, batch 16, 25 epochs, cosine decay",
     "lr/batch/epochs of the open thesis re-implementation; the paper's schedule is unknown"),
)


def design_choices() -> list[dict[str, str]]:
    """Every undocumented detail of CLIP2Depth we had to choose, with the reason (for the notebook)."""
    return [{"component": c, "choice": choice, "reason": why} for c, choice, why in DESIGN_CHOICES]


@dataclass(frozen=True)
class CLIP2DepthConfig:
    """Sizes of the trainable parts and which CLIP activations feed the decoder.

    ``taps`` are 1-based ViT block indices (outputs after that residual block) or RN50 stage numbers
    (``4`` = ``layer4``); they are used deepest first whatever the order given.
    """

    arch: str = "ViT-B-16"
    mirror_tokens: int = 64
    taps: tuple[int, ...] | None = None  # None: (9, 6, 3) for ViTs, (4, 3, 2) for ResNets
    reduce_dim: int = 64
    n_heads: int = 4
    ff_dim: int = 2048
    max_depth: float = 10.0
    min_depth: float = 1e-3
    image_norm: str = "clip"

    def resolved_taps(self, is_vit: bool) -> tuple[int, ...]:
        taps = self.taps if self.taps is not None else ((9, 6, 3) if is_vit else (4, 3, 2))
        return tuple(sorted(set(int(t) for t in taps), reverse=True))


class _Block(nn.Module):
    """One transformer encoder block over the flattened feature grid (CLIPSeg's decoder block)."""

    def __init__(self, dim: int, heads: int, ff_dim: int) -> None:
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=ff_dim, dropout=0.0, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = self.layer(x.flatten(2).transpose(1, 2))
        return tokens.transpose(1, 2).reshape(b, c, h, w)


def _upsampling_factors(stride: int) -> list[int]:
    """Split an output stride into x4 and x2 transposed-convolution steps (16 -> [4, 4], 8 -> [4, 2])."""
    if stride < 1 or stride & (stride - 1):
        raise ValueError(f"feature stride must be a power of two, got {stride}")
    factors = []
    while stride > 1:
        f = 4 if stride % 4 == 0 else 2
        factors.append(f)
        stride //= f
    return factors


class CLIP2Depth(nn.Module):
    """Frozen CLIP + mirror + FiLM + compact decoder; ``forward`` gives metric depth at input size.

    The CLIP model is held but never trained: ``trainable_parameters()`` returns the mirror, FiLM and
    decoder only, and ``train()`` keeps CLIP in eval mode (so RN50's BatchNorm statistics never move).
    """

    def __init__(self, clip_model: open_clip.CLIP, config: CLIP2DepthConfig = CLIP2DepthConfig(),
                 seed: int = 42) -> None:
        super().__init__()
        self.config = config
        visual = clip_model.visual
        if not isinstance(visual, (VisionTransformer, ModifiedResNet)):
            raise TypeError(f"unsupported visual tower {type(visual).__name__}")
        self.is_vit = isinstance(visual, VisionTransformer)
        self.taps = config.resolved_taps(self.is_vit)
        if self.is_vit:
            n_blocks = len(visual.transformer.resblocks)
            if not all(1 <= t <= n_blocks for t in self.taps):
                raise ValueError(f"ViT taps must be in 1..{n_blocks}, got {self.taps}")
            widths = [visual.transformer.width] * len(self.taps)
            strides = [int(visual.conv1.stride[0])] * len(self.taps)
        else:
            if not all(1 <= t <= 4 for t in self.taps):
                raise ValueError(f"ResNet taps must be stages 1..4, got {self.taps}")
            stage_width = {s: getattr(visual, f"layer{s}")[-1].conv3.out_channels for s in range(1, 5)}
            widths = [stage_width[t] for t in self.taps]
            strides = [2 ** (t + 1) for t in self.taps]
        self.clip = clip_model
        self.clip.requires_grad_(False)
        self.clip.eval()
        width = clip_model.token_embedding.weight.shape[1]
        context = clip_model.positional_embedding.shape[0]
        if not 1 <= config.mirror_tokens <= context:
            raise ValueError(f"mirror_tokens must be in 1..{context}, got {config.mirror_tokens}")
        gen = torch.Generator().manual_seed(seed)
        self.mirror = nn.Parameter(torch.randn(config.mirror_tokens, width, generator=gen) * TOKEN_INIT_STD)
        q_dim = text_width(clip_model)
        d = config.reduce_dim
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.film_scale = nn.Linear(q_dim, d)
            self.film_shift = nn.Linear(q_dim, d)
            self.reduce = nn.ModuleList(nn.Conv2d(c, d, kernel_size=1) for c in widths)
            self.blocks = nn.ModuleList(_Block(d, config.n_heads, config.ff_dim) for _ in self.taps)
            layers: list[nn.Module] = [nn.Conv2d(d, d, kernel_size=3, padding=1), nn.ReLU()]
            channels = d
            factors = _upsampling_factors(strides[-1])
            for i, f in enumerate(factors):
                out = 1 if i == len(factors) - 1 else max(channels // 2, 8)
                layers.append(nn.ConvTranspose2d(channels, out, kernel_size=f, stride=f))
                if out != 1:
                    layers.append(nn.ReLU())
                channels = out
            if channels != 1:  # stride 1 taps: still end in one channel
                layers.append(nn.Conv2d(channels, 1, kernel_size=1))
            self.decoder = nn.Sequential(*layers)
        self.output_stride = strides[-1]
        self._query_cache: tuple[tuple[int, int], torch.Tensor] | None = None

    # -- frozen CLIP parts ----------------------------------------------------------------------
    def train(self, mode: bool = True) -> CLIP2Depth:
        super().train(mode)
        self.clip.eval()  # frozen encoders: no dropout, BatchNorm statistics fixed
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Mirror, FiLM and decoder parameters (CLIP is excluded even if someone unfroze it)."""
        clip_ids = {id(p) for p in self.clip.parameters()}
        return [p for p in self.parameters() if p.requires_grad and id(p) not in clip_ids]

    def parameter_groups(self) -> dict[str, int]:
        """Trainable parameter counts by component (for the notebook's table)."""
        count = lambda mods: sum(p.numel() for m in mods for p in m.parameters())  # noqa: E731
        return {"mirror": self.mirror.numel(), "film": count([self.film_scale, self.film_shift]),
                "reduce": count(self.reduce), "blocks": count(self.blocks), "deconv": count([self.decoder])}

    def query(self) -> torch.Tensor:
        """The mirror through CLIP's frozen text encoder, pooled at the last row: ``1 x D``.

        Cached outside autograd (evaluation), keyed on the mirror's storage and version counter so an
        optimiser step or a device move invalidates it.
        """
        cacheable = not torch.is_grad_enabled() and not self.training
        key = (self.mirror.data_ptr(), self.mirror._version)  # a move or an in-place update changes it
        if cacheable and self._query_cache is not None and self._query_cache[0] == key:
            return self._query_cache[1]
        cast = self.clip.transformer.get_cast_dtype()
        x = self.mirror.to(cast).unsqueeze(0)
        eot = torch.tensor([self.config.mirror_tokens - 1], device=x.device)
        q = encode_embeddings(self.clip, x, eot).float()
        if cacheable:
            self._query_cache = (key, q)
        return q

    def image_taps(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Frozen CLIP activations at the configured taps, deepest first, each ``B x C x h x w``."""
        x = normalise_images(images, self.config.image_norm) if self.config.image_norm else images
        visual = self.clip.visual
        with torch.no_grad():
            if self.is_vit:
                return self._vit_taps(visual, x.to(visual.conv1.weight.dtype))
            x = visual.stem(x.to(visual.conv1.weight.dtype))
            out: dict[int, torch.Tensor] = {}
            for s in range(1, max(self.taps) + 1):
                x = getattr(visual, f"layer{s}")(x)
                out[s] = x
            return [out[t].float() for t in self.taps]

    def _vit_taps(self, visual: VisionTransformer, x: torch.Tensor) -> list[torch.Tensor]:
        x = visual.conv1(x)
        b, _, h, w = x.shape
        x = x.flatten(2).transpose(1, 2)
        cls = visual.class_embedding.to(x.dtype).expand(b, 1, -1)
        x = torch.cat([cls, x], dim=1) + vit_positional_embedding(visual, (h, w)).to(x.dtype)
        x = visual.ln_pre(x)
        batch_first = getattr(visual.transformer, "batch_first", True)
        if not batch_first:
            x = x.transpose(0, 1)
        out: dict[int, torch.Tensor] = {}
        for i, block in enumerate(visual.transformer.resblocks[: max(self.taps)], start=1):
            x = block(x)
            if i in self.taps:
                tokens = x if batch_first else x.transpose(0, 1)
                out[i] = tokens[:, 1:].transpose(1, 2).reshape(b, -1, h, w).float()
        return [out[t] for t in self.taps]

    # -- trainable parts ------------------------------------------------------------------------
    def forward_taps(self, taps: list[torch.Tensor], out_size: tuple[int, int]) -> torch.Tensor:
        """Depth from precomputed taps (deepest first): FiLM, decoder blocks, deconvolutions."""
        q = self.query()
        x = self.reduce[0](taps[0])
        x = self.film_scale(q)[:, :, None, None] * x + self.film_shift(q)[:, :, None, None]
        x = self.blocks[0](x)
        for reduce, block, tap in zip(self.reduce[1:], self.blocks[1:], taps[1:], strict=True):
            skip = reduce(tap)
            if x.shape[-2:] != skip.shape[-2:]:
                x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(x + skip)
        z = self.decoder(x)
        if tuple(z.shape[-2:]) != tuple(out_size):
            z = F.interpolate(z, size=out_size, mode="bilinear", align_corners=False)
        return self.config.max_depth * torch.sigmoid(z)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Metric depth ``B x 1 x H x W`` for [0, 1] RGB images ``B x 3 x H x W`` (H, W divisible by the
        deepest tap's stride)."""
        return self.forward_taps(self.image_taps(images), tuple(images.shape[-2:]))

    def loss(self, images: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        """SILog of the prediction against metric ground truth (pixels with gt > min_depth)."""
        return silog_loss(self(images), depth, self.config.min_depth)


def expected_trainable_parameters(config: CLIP2DepthConfig, token_width: int, query_dim: int,
                                  tap_widths: list[int], output_stride: int) -> dict[str, int]:
    """Trainable parameter counts by formula (tests compare them with the built module)."""
    d, ff = config.reduce_dim, config.ff_dim
    block = (3 * d * d + 3 * d) + (d * d + d) + (d * ff + ff) + (ff * d + d) + 4 * d
    deconv = d * d * 9 + d
    channels = d
    factors = _upsampling_factors(output_stride)
    for i, f in enumerate(factors):
        out = 1 if i == len(factors) - 1 else max(channels // 2, 8)
        deconv += channels * out * f * f + out
        channels = out
    return {
        "mirror": config.mirror_tokens * token_width,
        "film": 2 * (query_dim * d + d),
        "reduce": sum(c * d + d for c in tap_widths),
        "blocks": len(tap_widths) * block,
        "deconv": deconv,
    }


def build_clip2depth(
    dataset: str = "nyu",
    weights: str | None = None,
    seed: int = 42,
    device: str | torch.device = "cpu",
    clip_model: open_clip.CLIP | None = None,
    **config: Any,
) -> CLIP2Depth:
    """CLIP2Depth for a dataset (``max_depth`` 10 m NYU, 80 m KITTI) on a frozen CLIP.

    ``weights``: None = random-init CLIP of the real architecture (demo), ``"openai"`` or a file (paper);
    see :func:`clipdepth.model.backbone.load_clip`. Extra keywords override :class:`CLIP2DepthConfig` fields.
    """
    max_depth = get_spec(dataset).max_depth  # raises a clear ValueError for an unknown dataset
    fields = {f.name for f in dataclasses.fields(CLIP2DepthConfig)}
    bad = set(config) - fields
    if bad:
        raise TypeError(f"unknown CLIP2Depth option(s) {', '.join(sorted(bad))}; valid: {', '.join(sorted(fields))}")
    config.setdefault("max_depth", max_depth)
    cfg = CLIP2DepthConfig(**config)
    if clip_model is None:
        clip_model = load_clip(cfg.arch, weights, seed=0, device=device)
    elif isinstance(clip_model.visual, VisionTransformer) != cfg.arch.startswith("ViT"):
        raise ValueError(f"the CLIP model given has a {type(clip_model.visual).__name__} tower, not {cfg.arch}")
    return CLIP2Depth(clip_model, cfg, seed=seed).to(device)

