"""Backbone loading and dense features (issue 2, must-show 3)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from clipdepth.model.backbone import (
    WeightsUnavailableError,
    _vit_patch_tokens,
    dense_features,
    load_clip,
    normalise_images,
    weights_id,
)

PAPER_SIZES = [((416, 544), (13, 17)), ((480, 640), (15, 20)), ((352, 1216), (11, 38))]


@pytest.mark.parametrize(("size", "grid"), PAPER_SIZES)
def test_rn50_dense_shapes_at_paper_sizes(rn50, size, grid):
    with torch.no_grad():
        f = dense_features(rn50, torch.rand(1, 3, *size))
    assert tuple(f.shape) == (1, 1024, *grid)


def test_depthclip_mode_is_normalised_layer4_every_second_channel(rn50):
    x = torch.rand(2, 3, 128, 160)
    v = rn50.visual
    with torch.no_grad():
        layer4 = v.layer4(v.layer3(v.layer2(v.layer1(v.stem(normalise_images(x, "imagenet"))))))
        explicit = F.normalize(layer4, dim=1)[..., ::2, :, :]
        ours = dense_features(rn50, x, "depthclip")
    assert layer4.shape[1] == 2048
    assert torch.equal(ours, explicit)
    # no renormalisation after subsampling: norms are well below 1
    assert 0.5 < ours.norm(dim=1).mean().item() < 0.9


def test_maskclip_mode_lands_in_joint_space(rn50):
    with torch.no_grad():
        f = dense_features(rn50, torch.rand(1, 3, 96, 128), "maskclip")
    assert tuple(f.shape) == (1, 1024, 3, 4)
    assert torch.allclose(f.norm(dim=1), torch.ones(1, 3, 4), atol=1e-5)


def test_vit_dense_shapes_at_non_224_sizes(vit_b32):
    with torch.no_grad():
        f = dense_features(vit_b32, torch.rand(1, 3, 320, 448), "tokens")
        g = dense_features(vit_b32, torch.rand(2, 3, 416, 544), "depthclip")
    assert tuple(f.shape) == (1, 512, 10, 14)
    assert tuple(g.shape) == (2, 512, 13, 17)
    assert torch.allclose(g.norm(dim=1), torch.ones(2, 13, 17), atol=1e-5)


def test_vit_path_at_224_reproduces_encode_image(vit_b32):
    """At the pretraining grid our token path's class token is exactly CLIP's image embedding."""
    x = normalise_images(torch.rand(2, 3, 224, 224), "clip")
    with torch.no_grad():
        ours = _vit_patch_tokens(vit_b32.visual, x, with_cls=True)[:, 0]
        ref = vit_b32.encode_image(x)
    assert (ours - ref).abs().max().item() <= 1e-5


def test_bad_inputs_are_refused(rn50, vit_b32):
    with pytest.raises(ValueError, match="not divisible by the feature stride 32"):
        dense_features(rn50, torch.rand(1, 3, 100, 128))
    with pytest.raises(ValueError, match="valid: depthclip, maskclip, tokens"):
        dense_features(rn50, torch.rand(1, 3, 64, 64), "cls")
    with pytest.raises(ValueError, match="for ViT backbones"):
        dense_features(rn50, torch.rand(1, 3, 64, 64), "tokens")
    with pytest.raises(ValueError, match="ResNet backbones only"):
        dense_features(vit_b32, torch.rand(1, 3, 64, 64), "maskclip")
    with pytest.raises(ValueError, match="valid: imagenet, clip"):
        normalise_images(torch.rand(1, 3, 4, 4), "coco")


def test_random_init_is_seeded_frozen_and_has_live_residual_branches(rn50):
    again = load_clip("RN50-quickgelu", seed=0)
    other = load_clip("RN50-quickgelu", seed=1)
    sd, sd_again, sd_other = rn50.state_dict(), again.state_dict(), other.state_dict()
    assert all(torch.equal(sd[k], sd_again[k]) for k in sd)
    assert not torch.equal(sd["visual.layer1.0.conv1.weight"], sd_other["visual.layer1.0.conv1.weight"])
    bn3 = [v for k, v in sd.items() if k.endswith("bn3.weight") and ".layer" in k]
    assert len(bn3) == 16 and all(v.abs().min() > 0 for v in bn3)
    assert not rn50.training and not any(p.requires_grad for p in rn50.parameters())


def test_local_checkpoint_file_round_trips(tmp_path, rn50):
    path = tmp_path / "rn50.pt"
    torch.save(rn50.state_dict(), path)
    loaded = load_clip("RN50-quickgelu", weights=path)
    assert torch.equal(loaded.visual.layer4[0].conv1.weight, rn50.visual.layer4[0].conv1.weight)
    assert weights_id(path).startswith("sha256:") and weights_id(None, 3) == "random:3"


def test_unavailable_weights_say_how_to_pass_a_local_file(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError, match=r"pass its local path: load_clip"):
        load_clip("RN50-quickgelu", weights="openai")
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        load_clip("RN50-quickgelu", weights=tmp_path / "missing.pt")
    with pytest.raises(WeightsUnavailableError, match="not a pretrained tag"):
        load_clip("RN50-quickgelu", weights="laion9000")
    with pytest.raises(ValueError, match="supported: RN50-quickgelu"):
        load_clip("RN18")
