"""The towers researchers reach for first, below the notebook: timm ViT dense features (EVA02, SigLIP),
SigLIP prompts through its own tokenizer, and patch-14 sizes rounded to the stride.

Random-init towers of the real open_clip architectures, tiny inputs, CPU. The references are the
towers' own code: timm's ``forward_features`` at the native size, a timm model of the same weights
built with ``dynamic_img_size=True`` at a non-square grid, timm's attention pool on copies of one token,
and open_clip's ``encode_text`` on the ids of SigLIP's (file-built) Hugging Face tokenizer.
"""

from __future__ import annotations

import open_clip
import pytest
import timm
import torch

from clipdepth.model.backbone import (
    WeightsUnavailableError,
    _map_per_token,
    dense_features,
    feature_stride,
    fit_to_stride,
    load_clip,
    normalise_images,
    stride_size,
)
from clipdepth.model.factory import learned_prompt_model
from clipdepth.model.prompt_learner import WORD_LISTS, PromptEncoder, demo_vocabulary, hf_prompt_tokenizer
from clipdepth.model.text_encoder import prompt_tokenizer_for, word_level_tokenizer

_MODELS: dict[str, torch.nn.Module] = {}


def _model(arch: str) -> torch.nn.Module:
    if arch not in _MODELS:
        _MODELS[arch] = load_clip(arch, None)
    return _MODELS[arch]


def _own_cells(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The tower's own token sequence (timm ``forward_features``), prefix dropped, then open_clip's
    per-vector head steps; ``B x N x D`` in timm's (row-major) token order."""
    trunk = model.visual.trunk
    tokens = trunk.forward_features(normalise_images(x))[:, trunk.num_prefix_tokens :]
    if trunk.attn_pool is not None:
        tokens = _map_per_token(trunk.attn_pool, tokens)
    return trunk.head(trunk.fc_norm(tokens))


@pytest.mark.parametrize(("arch", "prefix", "width"), [("EVA02-B-16", 1, 512), ("ViT-B-16-SigLIP", 0, 768)])
def test_timm_vit_dense_features_are_the_towers_patch_tokens_on_the_grid(arch, prefix, width):
    model = _model(arch)
    trunk = model.visual.trunk
    assert trunk.num_prefix_tokens == prefix and feature_stride(model) == 16
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 224, 224, generator=gen)
    with torch.no_grad():
        dense = dense_features(model, x, "tokens")
        own = _own_cells(model, x)
    assert dense.shape == (2, width, 14, 14)
    # token k of the tower's sequence is grid cell (k // 14, k % 14)
    assert torch.equal(dense.permute(0, 2, 3, 1).reshape(2, 196, width), own)
    assert torch.equal(dense[:, :, 3, 5], own[:, 3 * 14 + 5])

    # another, non-square grid: timm's own model of the same weights built for any size
    twin = timm.create_model(trunk.default_cfg["architecture"], pretrained=False, num_classes=trunk.num_classes,
                             global_pool=trunk.global_pool, dynamic_img_size=True).eval()
    twin.load_state_dict(trunk.state_dict())
    small = torch.rand(1, 3, 32, 48, generator=gen)
    with torch.no_grad():
        tokens = twin.forward_features(normalise_images(small))[:, prefix:]
        ref = twin.head(twin.fc_norm(_map_per_token(twin.attn_pool, tokens) if twin.attn_pool is not None else tokens))
        got = dense_features(model, small, "tokens")
        again = dense_features(model, x, "tokens")
    assert got.shape == (1, width, 2, 3)
    torch.testing.assert_close(got.permute(0, 2, 3, 1).reshape(1, 6, width), ref, rtol=1e-5, atol=1e-5)
    assert torch.equal(again, dense)  # the shared tower is unchanged by a call on another grid
    normed = dense_features(model, small, "depthclip")
    torch.testing.assert_close(normed.norm(dim=1), torch.ones(1, 2, 3))


def test_siglip_attention_pool_per_token_is_the_pool_attending_to_that_token_alone():
    pool = _model("ViT-B-16-SigLIP").visual.trunk.attn_pool
    tokens = torch.randn(3, 768, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        pooled = torch.stack([pool(t.expand(1, 5, -1))[0] for t in tokens])  # 5 copies: every weight 1/5
        mine = _map_per_token(pool, tokens)
    torch.testing.assert_close(mine, pooled, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("words", ["depth-7", "colour-7", "depthclip-7"])
def test_siglip_prompt_features_equal_encode_text_with_its_tokenizer(tmp_path, words):
    """Ordinary word embeddings in the slots: PromptEncoder equals open_clip's encode_text on the ids
    of the model's Hugging Face tokenizer (here one written to a folder and read back by open_clip)."""
    model = _model("ViT-B-16-SigLIP")
    word_level_tokenizer(demo_vocabulary()).save_pretrained(tmp_path)
    hf = open_clip.tokenizer.HFTokenizer(str(tmp_path), context_length=64, clean="canonicalize")
    template = "depthclip" if words == "depthclip-7" else "baseline"
    sentence = "This object is {}" if template == "depthclip" else "This object appears to be {}"
    ids = hf([sentence.format(w) for w in WORD_LISTS[words]])
    enc = PromptEncoder(model, words=words, template=template, tokenizer=hf_prompt_tokenizer(hf.tokenizer, hf.clean_fn))
    default = PromptEncoder(model, words=words, template=template)  # what the trainer builds (random init)
    assert not enc.truncated and enc.length == 64  # last-token pooling reads the full context
    assert torch.equal(enc.token_ids, ids) and torch.equal(default.token_ids, ids)
    with torch.no_grad():
        torch.testing.assert_close(enc(), model.encode_text(ids), rtol=1e-5, atol=1e-5)
    assert (ids[:, :8] == 2).sum() == 0  # no <unk>: the demo vocabulary covers the prompt


def test_tokenizer_choice_per_tower(rn50):
    assert prompt_tokenizer_for(rn50).vocab_size == 49408  # CLIP's BPE
    siglip = _model("ViT-B-16-SigLIP")
    demo = prompt_tokenizer_for(siglip, demo_words=["close"])
    assert demo.prefix == () and demo.suffix == (1,) and demo.pad_id == 0 and demo.encode("Close") == [3]
    siglip.clipdepth_weights = "webli"  # as if real weights: the real tokenizer is required (offline: one line)
    try:
        with pytest.raises(WeightsUnavailableError, match="ViT-B-16-SigLIP: its text tokenizer 'timm/ViT-B-16-SigLIP'"):
            prompt_tokenizer_for(siglip)
    finally:
        siglip.clipdepth_weights = None


def test_patch14_sizes_round_to_the_nearest_multiple():
    # the paper's crops and test frames for stride 14 (README), and every stride that divides them
    assert stride_size((416, 544), 14) == (420, 546)
    assert stride_size((480, 640), 14) == (476, 644)
    assert stride_size((352, 704), 14) == (350, 700)
    assert stride_size((352, 1216), 14) == (350, 1218)
    for stride in (16, 32):
        for size in ((416, 544), (480, 640), (352, 704), (352, 1216)):
            assert stride_size(size, stride) == size
    assert stride_size((7, 21), 14) == (14, 28)  # ties round up, never below one cell
    x = torch.rand(1, 3, 30, 40)
    assert fit_to_stride(x, 14).shape[-2:] == (28, 42)
    assert fit_to_stride(x, 10) is x


def test_the_model_rounds_inputs_its_stride_does_not_divide(vit_b32):
    """What ViT-L/14 does with the paper's crops, on a cheaper tower: the model rounds what the stride
    does not divide (ViT-B/32, 100x150 -> 96x160) and predicts on that grid."""
    model = learned_prompt_model(vit_b32)
    x = torch.rand(1, 3, 100, 150)
    with torch.no_grad():
        out = model(x)
        ref = model.forward_features(dense_features(vit_b32, fit_to_stride(x, 32)))
    assert out.shape == (1, 1, 3, 5) and torch.equal(out, ref)
