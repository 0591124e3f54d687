"""Frozen CLIP backbones and their dense (per-patch) image features.

Every method in the study compares CLIP image patches with text prompts, so this module is the single
place that (a) builds an open_clip model with real, random or local weights and (b) turns an image
batch into a feature map on the stride grid. Keeping both here means the faithful feature recipe of
DepthCLIP / Auty & Mikolajczyk is written once and tested once.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Literal

import open_clip
import torch
import torch.nn.functional as F
from open_clip.modified_resnet import Bottleneck, ModifiedResNet
from open_clip.timm_model import TimmModel
from open_clip.transformer import VisionTransformer
from torch import nn

# CheckpointError, WeightsUnavailableError and weights_id are re-exported: callers import them from here.
from clipdepth.model.checkpoints import CheckpointError as CheckpointError
from clipdepth.model.checkpoints import WeightsUnavailableError as WeightsUnavailableError
from clipdepth.model.checkpoints import checkpoint_format, quiet_logging, read_state_dict
from clipdepth.model.checkpoints import weights_id as weights_id
from clipdepth.vocab import ARCHS, is_weights_file

# The authors' and DepthCLIP's data loaders normalise with ImageNet statistics, not CLIP's own.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGE_NORMS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "clip": (CLIP_MEAN, CLIP_STD),
}

DenseMode = Literal["depthclip", "maskclip", "tokens"]
DENSE_MODES: tuple[str, ...] = ("depthclip", "maskclip", "tokens")
BN_POLICIES: tuple[str, ...] = ("frozen", "adapt")


def _redraw_residual_bn(model: nn.Module, seed: int) -> None:
    """Give every ResNet bottleneck's last BatchNorm a non-zero weight.

    open_clip's random init zeroes ``bn3.weight`` of each bottleneck (a training trick), which makes
    every residual branch contribute nothing: features of a random model would then barely depend on
    most convolution weights, and equivalence tests would prove little. We re-draw them N(1, 0.1^2)
    from a seeded generator so the demo profile and the tests exercise every weight.
    """
    gen = torch.Generator().manual_seed(seed + 1)
    for module in model.modules():
        if isinstance(module, Bottleneck):
            w = module.bn3.weight
            w.data.copy_(1.0 + 0.1 * torch.randn(w.shape, generator=gen))


def load_clip(
    arch: str = "RN50-quickgelu",
    weights: str | os.PathLike[str] | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> open_clip.CLIP:
    """Build an open_clip model, in eval mode with every parameter frozen.

    ``weights`` is ``None`` (random init of the real architecture, seeded: the offline demo profile and
    the tests; residual-branch BatchNorm weights are re-drawn so no branch is dead, see
    ``_redraw_residual_bn``), a path to a local checkpoint file, or an open_clip pretrained tag such as
    ``"openai"`` (downloaded into open_clip's cache where the network allows). A file may be OpenAI's
    TorchScript archive (``RN50.pt`` as ``clip.load`` caches it), open_clip's
    ``open_clip_pytorch_model.bin`` / ``open_clip_model.safetensors``, or a plain state dict (also as
    ``{"state_dict": ...}`` or with a ``module.`` prefix); see :mod:`clipdepth.model.checkpoints`, which
    raises a one-line :class:`CheckpointError` for anything else. Use the ``-quickgelu``
    configs with OpenAI weights: the plain ``RN50`` config uses a different activation.

    ``arch`` is any open_clip architecture (``open_clip.list_models()``), so backbone sweeps
    (:mod:`clipdepth.model.towers`) can build e.g. ConvNeXt or SigLIP towers; :data:`clipdepth.vocab.ARCHS` are the
    ones the paper-table rows use and the tests cover end to end. Whether the prompt encoder and the
    dense features support a given tower is decided where they are built, not here.
    """
    if arch not in ARCHS and arch not in open_clip.list_models():
        raise ValueError(f"unknown arch {arch!r}; supported: {', '.join(ARCHS)} (tested) and any other "
                         "name in open_clip.list_models()")
    if weights is None:
        with torch.random.fork_rng(devices=[]), quiet_logging():
            torch.manual_seed(seed)
            model = open_clip.create_model(arch, pretrained=None)
        _redraw_residual_bn(model, seed)
    else:
        model = _load_pretrained(arch, weights)
    model = model.to(device).eval()
    model.requires_grad_(False)
    # what the prompt encoder needs to pick the tower's tokenizer (clipdepth.model.text_encoder.prompt_tokenizer_for)
    model.clipdepth_arch, model.clipdepth_weights = arch, None if weights is None else str(weights)
    return model


def _load_pretrained(arch: str, weights: str | os.PathLike[str]) -> open_clip.CLIP:
    """A model with real weights: from a local file of any format ``checkpoints`` reads, or an
    open_clip tag fetched through open_clip's cache."""
    if is_weights_file(weights):
        checkpoint_format(weights)  # a missing or unreadable file fails here, before a model is built
        with torch.random.fork_rng(devices=[]), quiet_logging():
            model = open_clip.create_model(arch, pretrained=None)  # its random init is overwritten below
        state = read_state_dict(weights, arch, expected=model.state_dict())
        model.load_state_dict(state, strict=True)
        return model
    tags = open_clip.list_pretrained_tags_by_model(arch)
    if str(weights) not in tags:
        raise WeightsUnavailableError(
            f"{weights!r} is not a pretrained tag of {arch} (tags: {', '.join(tags) or 'none'}) nor a file"
        )
    try:
        return open_clip.create_model(arch, pretrained=str(weights))
    except Exception as exc:
        raise WeightsUnavailableError(
            f"could not obtain the {weights!r} weights of {arch} ({type(exc).__name__}: {exc}). "
            "Offline? Download the checkpoint on a machine with network access (e.g. "
            f"open_clip.create_model('{arch}', pretrained='{weights}') fills open_clip's cache) and pass "
            "its local path: load_clip(arch, weights='/path/to/checkpoint.pt')."
        ) from exc


def text_width(model: open_clip.CLIP) -> int:
    """Width of the joint (projected) text space: 1024 for RN50, 512 for RN101 and ViT-B."""
    tower = getattr(model, "text", None) or model  # CustomTextCLIP / CoCa keep the text tower in .text
    proj = tower.text_projection
    return int(proj.out_features if isinstance(proj, nn.Linear) else proj.shape[1])


def feature_stride(model: open_clip.CLIP) -> int:
    """Pixels per feature cell, per image-tower family.

    ModifiedResNet (RN50, RN101, RN50x4...): 32 (stem 4, layer2-4 halve once each). open_clip
    VisionTransformer: the patch size (32 for ViT-B/32, 16 for ViT-B/16, 14 for ViT-L/14). timm towers
    (ConvNeXt CLIP): the last stage's reduction from timm's ``feature_info`` (32 for ConvNeXt).
    """
    visual = model.visual
    if isinstance(visual, VisionTransformer):
        return int(visual.conv1.stride[0])
    if isinstance(visual, ModifiedResNet):
        return 32
    if isinstance(visual, TimmModel):
        info = getattr(visual.trunk, "feature_info", None)
        if not info:
            raise TypeError(f"timm tower {type(visual.trunk).__name__} does not report its feature stride")
        return int(info[-1]["reduction"])
    raise TypeError(f"unsupported visual tower {type(visual).__name__}")


def stride_size(size: tuple[int, int], stride: int) -> tuple[int, int]:
    """The input size a tower of feature stride ``stride`` sees for a crop of ``size`` (height, width).

    Each side is rounded to the *nearest* multiple of the stride (ties upwards, at least one stride),
    so the rescale is the smallest possible: a stride that divides the size leaves it unchanged (every
    stride-32 and stride-16 tower at the profiles' sizes). For patch-14 towers (ViT-L/14, EVA02-L/14,
    SigLIP SO400M/14): NYU train 416x544 -> 420x546 (grid 30x39), test 480x640 -> 476x644 (34x46);
    KITTI train 352x704 -> 350x700 (25x50), test 352x1216 -> 350x1218 (25x87).
    """
    return tuple(max(stride, int((int(s) + stride / 2) // stride) * stride) for s in size)  # type: ignore[return-value]


def fit_to_stride(images: torch.Tensor, stride: int) -> torch.Tensor:
    """``images`` resized (bilinear, ``align_corners=False``, no antialiasing) to :func:`stride_size`;
    unchanged when the stride divides them.

    Why a resize of the model input rather than another crop: the data stream -- the augmentation's
    crop, the ground truth the loss compares with, the test images and the evaluation crops -- stays
    the same pixels for every backbone, so rows on towers of different strides are trained and scored
    against identical targets (and share lockstep streams and feature caches with nothing else
    changed). The prediction stays on the tower's grid; the loss and the evaluation upsample it to the
    ground truth exactly as for RN50, so the protocol is unchanged. The rescale is below 1.3 % per side
    at the paper's sizes (420/416, 546/544, 476/480, 644/640, 350/352, 700/704, 1218/1216).
    """
    h, w = images.shape[-2:]
    size = stride_size((h, w), stride)
    if size == (h, w):
        return images
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False)


def normalise_images(images: torch.Tensor, policy: str = "imagenet") -> torch.Tensor:
    """Map [0, 1] RGB batches to the backbone's input statistics (``imagenet`` is faithful)."""
    if policy not in IMAGE_NORMS:
        raise ValueError(f"unknown image normalisation {policy!r}; valid: {', '.join(IMAGE_NORMS)}")
    mean, std = IMAGE_NORMS[policy]
    m = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images - m) / s


def set_bn_policy(model: nn.Module, policy: str) -> None:
    """Put the image tower's BatchNorm layers in the mode a training policy asks for.

    ``frozen``: eval mode, running statistics fixed (what a frozen encoder should be).
    ``adapt``: train mode, so batches are normalised with their own statistics and running
    statistics drift to the training data -- what the authors' Lightning code effectively did,
    because nothing kept CLIP's BN layers in eval mode. Weights stay frozen either way.
    """
    if policy not in BN_POLICIES:
        raise ValueError(f"unknown BatchNorm policy {policy!r}; valid: {', '.join(BN_POLICIES)}")
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.train(policy == "adapt")


def dense_features(
    model: open_clip.CLIP,
    images: torch.Tensor,
    mode: str = "depthclip",
    image_norm: str | None = "imagenet",
) -> torch.Tensor:
    """Per-patch image features, ``B x C x H/s x W/s`` for any input divisible by the stride ``s``.

    ``images`` are RGB in [0, 1] (``image_norm`` normalises them; pass ``None`` for inputs already
    normalised). Modes:

    - ``depthclip`` (faithful): ResNet stem + layer1..layer4, no attention pool; each 2048-d patch
      vector L2-normalised, then channels subsampled by ``2048 // text_width`` (0, 2, ..., 2046 for
      RN50: what a nearest ``F.interpolate`` to the text width does in both DepthCLIP's and the
      authors' code), with no renormalisation. On a ViT, the authors' path: patch tokens after
      ``ln_post`` and ``proj``, L2-normalised (dimensions already match the text width).
    - ``maskclip`` (ResNet): the attention pool's value and output projections applied to each patch
      (MaskCLIP), so patches land in the joint image-text space; L2-normalised.
    - ``tokens`` (ViT): patch tokens after ``ln_post`` and ``proj``, not normalised.
    - timm convolutional towers (ConvNeXt CLIP): the trunk's last-stage map before global pooling, then
      per location what open_clip applies after pooling -- the timm head's norm (ConvNeXt's
      LayerNorm2d) and the pointwise projection (open_clip's linear/MLP ``head``, or timm's ``fc``) --
      so each cell lands in the joint space, as ``ln_post`` + ``proj`` do per ViT token. ``depthclip``
      L2-normalises each cell, ``tokens`` does not; ``maskclip`` is not defined there.
    - timm ViT towers (EVA02, SigLIP): the trunk's token sequence on any patch grid (positional
      embeddings resampled as timm's ``dynamic_img_size`` does, RoPE on the new grid), prefix tokens
      (class / register) dropped, the patch tokens put back on the ``h x w`` grid row by row, then per
      token what open_clip applies after pooling: for token/average pooling the head norm and
      projection; for SigLIP's attention pool (MAP) its value and output projections and its MLP, i.e.
      the pool's output if it attended to that token alone (MaskCLIP's recipe for attention pools).
      Attention pools with their own positional embedding or several latents raise a TypeError.

    Inputs must be divisible by the stride; :func:`fit_to_stride` rounds other sizes (the model does).

    ViT positional embeddings are interpolated in 2-D (bicubic) for grids other than the pretraining
    one; the authors' code used a 1-D interpolation along the flattened sequence, which scrambles
    rows for non-square grids -- a documented deviation (the paper only uses RN50).
    """
    if mode not in DENSE_MODES:
        raise ValueError(f"unknown dense mode {mode!r}; valid: {', '.join(DENSE_MODES)}")
    stride = feature_stride(model)
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images of shape B x 3 x H x W, got {tuple(images.shape)}")
    h, w = images.shape[-2:]
    if h % stride or w % stride:
        raise ValueError(f"input size {h}x{w} is not divisible by the feature stride {stride}")
    x = normalise_images(images, image_norm) if image_norm else images
    visual = model.visual
    if isinstance(visual, ModifiedResNet):
        if mode == "tokens":
            raise ValueError("mode 'tokens' is for ViT backbones; use 'depthclip' or 'maskclip'")
        x = x.to(visual.conv1.weight.dtype)
        fmap = visual.layer4(visual.layer3(visual.layer2(visual.layer1(visual.stem(x)))))
        if mode == "depthclip":
            fmap = F.normalize(fmap, dim=1)
            step = fmap.shape[1] // text_width(model)
            return fmap[:, ::step]
        pool = visual.attnpool
        tokens = fmap.permute(0, 2, 3, 1)  # B h w C
        joint = F.linear(F.linear(tokens, pool.v_proj.weight, pool.v_proj.bias), pool.c_proj.weight,
                         pool.c_proj.bias)
        return F.normalize(joint, dim=-1).permute(0, 3, 1, 2)
    if isinstance(visual, VisionTransformer):
        if mode == "maskclip":
            raise ValueError("mode 'maskclip' is implemented for ResNet backbones only")
        tokens = _vit_patch_tokens(visual, x.to(visual.conv1.weight.dtype))
        if mode == "depthclip":
            tokens = F.normalize(tokens, dim=-1)
        return tokens.reshape(x.shape[0], h // stride, w // stride, -1).permute(0, 3, 1, 2)
    if isinstance(visual, TimmModel):
        if mode == "maskclip":
            raise ValueError("mode 'maskclip' is implemented for ResNet backbones only")
        cells = _timm_dense_cells(visual, x)
        if mode == "depthclip":
            cells = F.normalize(cells, dim=-1)
        return cells.permute(0, 3, 1, 2)
    raise TypeError(f"unsupported visual tower {type(visual).__name__}")


def _timm_dense_cells(visual: TimmModel, x: torch.Tensor) -> torch.Tensor:
    """A convolutional timm tower's joint-space features per cell, ``B x h x w x D``.

    open_clip pools the trunk's map (average), then applies the timm head's norm, its ``fc`` (a
    projection when the config has ``proj: none``) and open_clip's own ``head``. Every step after the
    pool acts on one vector, so applying them per cell gives features whose average-then-head analogue
    is the image embedding; a step that mixes cells (attention pool) cannot be moved and is refused.
    """
    trunk = visual.trunk
    name = type(trunk).__name__
    if hasattr(trunk, "num_prefix_tokens") and hasattr(trunk, "patch_embed"):  # a timm ViT: tokens, any grid
        return _timm_vit_cells(visual, x)
    fmap = trunk.forward_features(x.to(next(trunk.parameters()).dtype))
    if fmap.ndim != 4:
        raise TypeError(f"timm tower {name} returns {fmap.ndim}-d features; dense features need a map or tokens")
    head = getattr(trunk, "head", None)
    if head is not None and hasattr(head, "global_pool"):  # timm ClassifierHead / NormMlpClassifierHead
        if not isinstance(getattr(head, "pre_logits", nn.Identity()), nn.Identity):
            raise TypeError(f"timm tower {name} has an MLP pre-logits head; dense features are not defined")
        norm = getattr(head, "norm", None)
        if norm is not None:
            fmap = norm(fmap)  # LayerNorm2d: per location over channels
        cells = fmap.permute(0, 2, 3, 1)
        fc = getattr(head, "fc", nn.Identity())
        cells = fc(cells) if isinstance(fc, nn.Linear) else cells
    elif head is None or isinstance(head, nn.Identity):
        cells = fmap.permute(0, 2, 3, 1)
    else:
        raise TypeError(f"timm tower {name} has a head of type {type(head).__name__}; dense features not defined")
    for layer in visual.head:
        if "pool" in type(layer).__name__.lower():
            raise TypeError(f"timm tower {name} pools with {type(layer).__name__}, which mixes cells")
        if not isinstance(layer, nn.Dropout):
            cells = layer(cells)
    return cells


@contextlib.contextmanager
def _any_grid(trunk: nn.Module) -> Iterator[None]:
    """Let a timm ViT / EVA trunk run on any patch grid for the duration of a call, as if built with
    ``dynamic_img_size=True``: the patch embedding keeps its grid (NHWC) and ``_pos_embed`` resamples
    the absolute positional embedding (and builds RoPE) for that grid. Restored afterwards, so the
    shared model is unchanged (its weights never are)."""
    from timm.layers import Format

    embed = trunk.patch_embed
    rope = getattr(trunk, "rope", None)  # EVA: a RoPE cached for the build grid is rebuilt per call
    cached = getattr(rope, "_use_cached_embed", None)
    saved = (trunk.dynamic_img_size, embed.strict_img_size, embed.flatten, embed.output_fmt)
    trunk.dynamic_img_size, embed.strict_img_size, embed.flatten, embed.output_fmt = True, False, False, Format.NHWC
    if cached is not None:
        rope._use_cached_embed = False
    try:
        yield
    finally:
        trunk.dynamic_img_size, embed.strict_img_size, embed.flatten, embed.output_fmt = saved
        if cached is not None:
            rope._use_cached_embed = cached


def _map_per_token(pool: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """timm's ``AttentionPoolLatent`` (SigLIP's MAP head) applied to each token as if it attended to that
    token alone: value projection, output projection, then the residual MLP. Equal to the pool's output
    on a sequence of copies of the token (tested), since attention weights sum to one."""
    if getattr(pool, "pos_embed", None) is not None or getattr(pool, "latent_len", 1) != 1:
        raise TypeError("attention pool with its own positional embedding or several latents: no per-token form")
    width = tokens.shape[-1]
    v = F.linear(tokens, pool.kv.weight[width:], None if pool.kv.bias is None else pool.kv.bias[width:])
    out = pool.proj(v)
    return out + pool.mlp(pool.norm(out)) if pool.mlp is not None else out


def _timm_vit_cells(visual: TimmModel, x: torch.Tensor) -> torch.Tensor:
    """A timm ViT tower's (EVA02, SigLIP) per-patch joint-space features, ``B x h x w x D``."""
    trunk = visual.trunk
    name = type(trunk).__name__
    patch = trunk.patch_embed.patch_size
    h, w = x.shape[-2] // patch[0], x.shape[-1] // patch[1]
    with _any_grid(trunk):
        tokens = trunk.forward_features(x.to(next(trunk.parameters()).dtype))
    tokens = tokens[:, trunk.num_prefix_tokens :]  # class and register tokens
    if tokens.shape[1] != h * w:
        raise TypeError(f"timm tower {name} returned {tokens.shape[1]} patch tokens for a {h}x{w} grid")
    if getattr(trunk, "attn_pool", None) is not None:
        tokens = _map_per_token(trunk.attn_pool, tokens)
    elif trunk.global_pool not in ("token", "avg", ""):
        raise TypeError(f"timm tower {name} pools with {trunk.global_pool!r}; dense features not defined")
    tokens = trunk.head(trunk.fc_norm(tokens))
    for layer in visual.head:
        if "pool" in type(layer).__name__.lower():
            raise TypeError(f"timm tower {name} pools with {type(layer).__name__}, which mixes tokens")
        if not isinstance(layer, nn.Dropout):
            tokens = layer(tokens)
    return tokens.reshape(x.shape[0], h, w, -1)


def vit_positional_embedding(visual: VisionTransformer, grid: tuple[int, int]) -> torch.Tensor:
    """Class + patch positional embeddings for an ``h x w`` patch grid (2-D bicubic resize)."""
    pos = visual.positional_embedding
    cls_pos, patch_pos = pos[:1], pos[1:]
    side = int(round(patch_pos.shape[0] ** 0.5))
    if (side, side) == tuple(grid):
        return pos
    grid_pos = patch_pos.reshape(1, side, side, -1).permute(0, 3, 1, 2)
    grid_pos = F.interpolate(grid_pos.float(), size=grid, mode="bicubic", align_corners=False)
    grid_pos = grid_pos.to(pos.dtype).permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1)
    return torch.cat([cls_pos, grid_pos], dim=0)


def _vit_patch_tokens(visual: VisionTransformer, x: torch.Tensor, with_cls: bool = False) -> torch.Tensor:
    """Run a ViT on any patch grid and return projected patch tokens ``B x (h*w) x D``."""
    x = visual.conv1(x)
    grid = (x.shape[-2], x.shape[-1])
    x = x.flatten(2).transpose(1, 2)
    cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + vit_positional_embedding(visual, grid).to(x.dtype)
    x = visual.ln_pre(x)
    x = visual.transformer(x)
    x = visual.ln_post(x)
    if visual.proj is not None:
        x = x @ visual.proj
    return x if with_cls else x[:, 1:]


def resolve_device(device: str | None) -> str:
    """``"auto"`` (or None) picks CUDA when visible, else CPU; anything else is returned unchanged."""
    if device in (None, "", "auto"):
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)
