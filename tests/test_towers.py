"""Any open_clip tower: prompt-encoder exactness per text-tower family, dense features per image-tower
family (issue 14, must-show 1). Random init only; each model is built once per module."""

from __future__ import annotations

import logging

import open_clip
import pytest
import torch
from open_clip.transformer import TextTransformer
from torch import nn

from clipdepth.model.backbone import dense_features, feature_stride, normalise_images, text_width
from clipdepth.model.prompt_learner import (
    PromptEncoder,
    PromptTokenizer,
    encode_embeddings,
    text_context_length,
    text_pool_type,
    text_tower,
    truncation_is_exact,
)
from clipdepth.model.towers import backbone_experiments, describe_backbone
from clipdepth.study.experiments import config_hash, variant

TOLERANCE = 1e-5
TOKENIZER = open_clip.get_tokenizer("RN50-quickgelu")
_MODELS: dict[str, nn.Module] = {}


def _model(name: str) -> nn.Module:
    """A random-init open_clip model (frozen, eval), built once per module."""
    if name not in _MODELS:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            logging.disable(logging.WARNING)
            try:
                model = open_clip.create_model(name, pretrained=None)
            finally:
                logging.disable(logging.NOTSET)
        _MODELS[name] = model.eval().requires_grad_(False)
    return _MODELS[name]


class _TinyText(nn.Module):
    """A CustomTextCLIP-like holder for a small TextTransformer with settings no shipped config uses."""

    def __init__(self, **kwargs) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1)
            self.text = TextTransformer(context_length=24, width=64, heads=4, layers=2, output_dim=32, **kwargs)
        self.eval().requires_grad_(False)

    def encode_text(self, text: torch.Tensor) -> torch.Tensor:
        return self.text(text)


def _hash_tokenizer(vocab: int, eos: int, pad: int) -> PromptTokenizer:
    """A stand-in word-level tokenizer for towers whose own (Hugging Face) tokenizer is not available
    offline: what is tested is the tower's forward path, which sees only ids."""
    def encode(text: str) -> list[int]:
        return [3 + sum(map(ord, w)) * 131 % (vocab - 3) for w in text.split()]
    return PromptTokenizer(encode, (), (eos,), pad, vocab)


# family: (model factory, tokenizer, expected pool type, whether truncation is exact)
TEXT_FAMILIES = {
    "clip-builtin-causal-argmax": (lambda: _model("RN50-quickgelu"), None, "argmax", True),
    "texttransformer-causal-argmax-ctx32": (lambda: _model("PE-Core-T-16-384"), None, "argmax", True),
    "siglip-bidirectional-last": (lambda: _model("ViT-B-16-SigLIP"), _hash_tokenizer(32000, 1, 0), "last", False),
    "mobileclip-bidirectional-argmax": (lambda: _model("MobileCLIP-S1"), None, "argmax", False),
    "coca-cls-token": (lambda: _model("coca_ViT-B-32"), None, "cls", False),
    "bidirectional-padmask-eos": (
        lambda: _TinyText(no_causal_mask=True, use_pad_mask=True, pool_type="eos", eos_id=49407), None, "eos", True),
    "causal-first": (lambda: _TinyText(pool_type="first"), None, "first", True),
}


def _fill_word_rows(model: nn.Module, enc: PromptEncoder, pad: int) -> torch.Tensor:
    """Put ordinary word-embedding rows in every vector slot; return the full-context ids they stand for."""
    tower = text_tower(model)
    ids = torch.full((enc.n_prompts, text_context_length(model)), pad)
    ids[:, : enc.length] = enc.token_ids
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for source, vectors in enc._sources().items():
            if vectors is None:
                continue
            prompt, pos, idx = (getattr(enc, f"_{source}_{k}") for k in ("prompt", "pos", "idx"))
            word_ids = torch.randint(300, 20000, (vectors.shape[0],), generator=gen)
            vectors.copy_(tower.token_embedding.weight[word_ids])
            ids[prompt, pos] = word_ids[idx]
    return ids


@pytest.mark.parametrize("family", list(TEXT_FAMILIES))
@pytest.mark.parametrize(("words", "template"), [("learned-7", "baseline"), ("depth-7", "1o2d")])
def test_prompt_encoder_equals_encode_text_per_family(family, words, template):
    factory, tokenizer, pool, exact = TEXT_FAMILIES[family]
    model = factory()
    assert text_pool_type(model) == pool
    assert truncation_is_exact(model) is exact
    enc = PromptEncoder(model, words=words, template=template, tokenizer=tokenizer)
    # Truncated exactly where exact; full context (and the test says so) everywhere else.
    assert enc.truncated is exact
    assert enc.length == (int(enc.n_tokens.max()) if exact else text_context_length(model))
    ids = _fill_word_rows(model, enc, tokenizer.pad_id if tokenizer else 0)
    with torch.no_grad():
        ours = enc()
        reference = model.encode_text(ids, normalize=False) if not isinstance(model, _TinyText) else \
            model.encode_text(ids)
    assert ours.shape == reference.shape == (7, reference.shape[1])
    assert (ours - reference).abs().max().item() <= TOLERANCE


@pytest.mark.parametrize("family", [f for f, v in TEXT_FAMILIES.items() if v[2] != "cls"])
def test_truncation_changes_output_exactly_where_it_is_refused(family):
    """Where truncation is declared inexact it really changes the feature (so using the full context
    matters); where declared exact, the truncated and full contexts agree."""
    factory, tokenizer, _, exact = TEXT_FAMILIES[family]
    model = factory()
    enc = PromptEncoder(model, words="depth-7", tokenizer=tokenizer, truncate=False)
    x = enc.input_embeddings()
    n = int(enc.n_tokens.max())
    with torch.no_grad():
        full = enc()
        cut = encode_embeddings(model, x[:, :n], enc.eot_index.clamp(max=n - 1), enc.n_tokens)
    gap = (full - cut).abs().max().item()
    assert gap <= TOLERANCE if exact else gap > 1e-3


def test_clip_strings_tokenized_by_open_clip_match_for_a_texttransformer_tower():
    """For a CLIP-vocabulary TextTransformer the encoder's ids are open_clip's own tokenization."""
    model = _model("PE-Core-T-16-384")
    enc = PromptEncoder(model, words="depth-7")
    strings = [s.replace("{object}", "object") for s in enc.prompt_strings()]
    ids = TOKENIZER(strings, context_length=text_context_length(model))
    assert torch.equal(ids[:, : enc.length], enc.token_ids)
    with torch.no_grad():
        assert (enc() - model.encode_text(ids)).abs().max().item() <= TOLERANCE


def test_foreign_vocabulary_and_hf_towers_are_refused_clearly():
    with pytest.raises(ValueError, match="vocabulary of 32000"):
        PromptEncoder(_model("ViT-B-16-SigLIP"), words="learned-7")

    class HFTextEncoder(nn.Module):
        pass

    holder = nn.Module()
    holder.text = HFTextEncoder()
    with pytest.raises(TypeError, match="HFTextEncoder is not supported"):
        PromptEncoder(holder, words="learned-7")
    with pytest.raises(ValueError, match="no single feature"):
        PromptEncoder(_TinyText(pool_type="none"), words="learned-7")


# ---------------------------------------------------------------------------------------------
# Dense features per image-tower family, at non-square sizes
# ---------------------------------------------------------------------------------------------

# family: (model factory, stride, modes)
IMAGE_FAMILIES = {
    "ModifiedResNet": (lambda: _model("RN50-quickgelu"), 32, ("depthclip", "maskclip")),
    "VisionTransformer": (lambda: _model("ViT-S-32"), 32, ("depthclip", "tokens")),
    "timm-ConvNeXt": (lambda: _model("convnext_tiny"), 32, ("depthclip", "tokens")),
}


@pytest.mark.parametrize("family", list(IMAGE_FAMILIES))
@pytest.mark.parametrize("cells", [(2, 3), (3, 1)])
def test_dense_shapes_per_family_at_non_square_sizes(family, cells):
    factory, stride, modes = IMAGE_FAMILIES[family]
    model = factory()
    assert feature_stride(model) == stride
    images = torch.rand(2, 3, cells[0] * stride, cells[1] * stride)
    for mode in modes:
        with torch.no_grad():
            f = dense_features(model, images, mode)
        expected_c = 1024 if (family == "ModifiedResNet" and mode == "depthclip") else text_width(model)
        assert tuple(f.shape) == (2, expected_c, *cells), (family, mode)
        assert torch.isfinite(f).all()


def test_convnext_cells_are_the_image_embedding_path_per_location():
    """One cell (32x32 input): pooling is the identity, so the cell equals encode_image exactly; on a
    larger grid, averaging the trunk map first and then applying the head gives encode_image."""
    model = _model("convnext_tiny")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        cell = dense_features(model, x, "tokens")
        reference = model.encode_image(normalise_images(x, "imagenet"))
    assert tuple(cell.shape) == (2, text_width(model), 1, 1)
    assert (cell[..., 0, 0] - reference).abs().max().item() <= TOLERANCE
    with torch.no_grad():
        normed = dense_features(model, torch.rand(1, 3, 64, 96), "depthclip")
    assert torch.allclose(normed.norm(dim=1), torch.ones(1, 2, 3), atol=1e-5)
    with pytest.raises(ValueError, match="maskclip"):
        dense_features(model, x, "maskclip")


def test_timm_attention_pools_without_a_per_token_form_are_refused_clearly(monkeypatch):
    """timm ViT towers give dense features (tests/test_backbone_towers.py) unless their attention pool has
    no per-token form (several latent queries, or a positional embedding of its own)."""
    model = _model("ViT-B-16-SigLIP")
    monkeypatch.setattr(model.visual.trunk.attn_pool, "latent_len", 2)
    with pytest.raises(TypeError, match="several latents: no per-token form"):
        dense_features(model, torch.rand(1, 3, 32, 32))


# ---------------------------------------------------------------------------------------------
# Backbone sweep helper (clipdepth.model.towers)
# ---------------------------------------------------------------------------------------------


def test_backbone_experiments_builds_one_variant_per_pair():
    pairs = [("RN50-quickgelu", "openai"), ("ViT-B-32-quickgelu", None), ("convnext_tiny", None)]
    rows = backbone_experiments("t3/nyu/learned-7", pairs)
    assert [(e.arch, e.dense_mode, w) for e, w in rows] == [
        ("RN50-quickgelu", "depthclip", "openai"), ("ViT-B-32-quickgelu", "depthclip", None),
        ("convnext_tiny", "depthclip", None)]
    assert rows[1][0].name == "t3/nyu/learned-7[arch=ViT-B-32-quickgelu]"
    assert len({config_hash(e) for e, _ in rows}) == 3
    # maskclip is ResNet-only: kept on RN50, replaced by depthclip on the ViT
    base = variant("t3/nyu/learned-7", dense_mode="maskclip")
    (rn, _), (vit, _) = backbone_experiments(base, pairs[:2])
    assert (rn.dense_mode, vit.dense_mode) == ("maskclip", "depthclip")
    with pytest.raises(ValueError, match="not a pretrained tag of RN50-quickgelu"):
        backbone_experiments("t3/nyu/learned-7", [("RN50-quickgelu", "laion2b")])
    with pytest.raises(ValueError, match="unknown open_clip architecture"):
        backbone_experiments("t3/nyu/learned-7", [("RN51", None)])


@pytest.mark.parametrize(("arch", "family", "stride", "text_w", "width"), [
    ("RN50-quickgelu", "ModifiedResNet", 32, 1024, 512),
    ("ViT-B-32-quickgelu", "VisionTransformer", 32, 512, 512),
    ("convnext_tiny", "timm", 32, 1024, 512),
    ("PE-Core-T-16-384", "timm", 16, 512, 512),
])
def test_describe_backbone(arch, family, stride, text_w, width):
    model = _model(arch)
    d = describe_backbone(arch, (64, 96), model=model)
    assert d["image_family"] == family
    assert d["feature_stride"] == stride == feature_stride(model)
    assert d["feature_grid"] == (64 // stride, 96 // stride)
    assert d["text_width"] == text_w
    # learned-7: seven input vectors of the text tower's token width, nothing else trainable
    assert d["trainable_params_learned7"] == 7 * width == 7 * text_tower(model).token_embedding.embedding_dim
    assert d["text_truncated"] is True
    rounded = describe_backbone(arch, (65, 97), model=model)  # the model rounds to the nearest multiple
    assert rounded["crop_size"] == (65, 97) and rounded["input_size"] == (64, 96) == d["input_size"]
    assert rounded["feature_grid"] == d["feature_grid"]
