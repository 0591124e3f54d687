"""Bin-prompt head, ready-made methods, loss, and what training may change (issue 2, must-show 6)."""

from __future__ import annotations

import math

import open_clip
import pytest
import torch
import torch.nn.functional as F

from clipdepth.model.backbone import dense_features
from clipdepth.model.bins import DEPTHCLIP_BINS
from clipdepth.model.factory import depthclip_zero_shot, learned_prompt_model
from clipdepth.model.head import normalise_text
from clipdepth.model.prompt_learner import WORD_LISTS
from clipdepth.train.losses import silog_loss


def test_text_normalisations():
    text = torch.randn(7, 16)
    per = normalise_text(text, "per_prompt")
    frob = normalise_text(text, "frobenius")
    assert per.shape == (16, 7)
    assert torch.allclose(per.norm(dim=0), torch.ones(7))
    assert torch.allclose(frob.norm(dim=0), torch.full((7,), 1 / math.sqrt(7)))
    with pytest.raises(ValueError, match="valid: per_prompt, frobenius"):
        normalise_text(text, "l1")


def test_depthclip_equals_its_formula_on_encode_text(rn50):
    """DepthCLIP written out with open_clip's encode_text must equal our ready-made model."""
    model = depthclip_zero_shot(rn50)
    x = torch.rand(2, 3, 128, 160)
    tok = open_clip.get_tokenizer("RN50-quickgelu")
    with torch.no_grad():
        strings = [f"This object is {w}" for w in WORD_LISTS["depthclip-7"]]
        text = F.normalize(rn50.encode_text(tok(strings)), dim=-1)
        img = dense_features(rn50, x)
        logits = 1000.0 * torch.einsum("bchw,nc->bnhw", img, text)
        reference = (logits.softmax(1) * torch.tensor(DEPTHCLIP_BINS).view(1, 7, 1, 1)).sum(1, keepdim=True)
        ours = model(x)
    assert ours.shape == (2, 1, 4, 5)
    assert (ours - reference).abs().max().item() <= 1e-5
    assert 1.0 <= ours.min().item() and ours.max().item() <= 3.0


def test_learned_model_uses_dataset_bins_and_frobenius(rn50):
    model = learned_prompt_model(rn50, 0.001, 80.0)
    assert model.centres[0].item() == pytest.approx(5.7152, abs=1e-4)
    assert model.text_norm == "frobenius"
    with torch.no_grad():
        cols = model.text_features()
    assert torch.allclose(cols.norm(dim=0), torch.full((7,), 1 / math.sqrt(7)), atol=1e-6)


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _one_step(model, x, gt):
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2)
    model.train()
    loss = silog_loss(model(x), gt)
    loss.backward()
    opt.step()
    return loss


def test_step_changes_only_the_tokens_under_frozen_bn(rn50):
    model = learned_prompt_model(rn50, bn="frozen")
    clip_before = _snapshot(rn50)
    tokens_before = model.prompts.depth_tokens.detach().clone()
    x, gt = torch.rand(2, 3, 64, 96), torch.rand(2, 1, 64, 96) * 9 + 0.5
    _one_step(model, x, gt)
    assert not torch.equal(model.prompts.depth_tokens, tokens_before)
    after = rn50.state_dict()
    changed = [k for k, v in clip_before.items() if not torch.equal(v, after[k])]
    assert changed == []
    assert all(p.grad is None for p in rn50.parameters())


def test_adapt_bn_updates_running_statistics_only(rn50):
    model = learned_prompt_model(rn50, bn="adapt")
    before = _snapshot(rn50)
    x, gt = torch.rand(2, 3, 64, 96), torch.rand(2, 1, 64, 96) * 9 + 0.5
    try:
        _one_step(model, x, gt)
        after = rn50.state_dict()
        changed = {k for k, v in before.items() if not torch.equal(v, after[k])}
        assert changed, "BN running statistics should adapt"
        assert all(k.endswith(("running_mean", "running_var", "num_batches_tracked")) for k in changed)
    finally:
        rn50.load_state_dict(before)
        model.eval()
    assert not rn50.visual.bn1.training


def test_silog_loss_by_hand():
    gt = torch.full((1, 1, 4, 4), 2.0)
    pred = torch.full((1, 1, 2, 2), 4.0)  # upsampled to 4 x 4, g = ln 2 everywhere
    expected = 10 * math.log(2) * math.sqrt(1 - 0.85)
    assert silog_loss(pred, gt).item() == pytest.approx(expected, rel=1e-6)
    gt_masked = gt.clone()
    gt_masked[..., :2, :] = 0.0  # masked pixels must not count
    assert silog_loss(pred, gt_masked).item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="no ground-truth pixel above min_depth"):
        silog_loss(pred, torch.zeros(1, 1, 4, 4))
