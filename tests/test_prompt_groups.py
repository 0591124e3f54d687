"""One text-encoder pass for the prompts of many rows (issue 16): ``encode_prompt_groups`` and the
lockstep step built on it are the same computation as encoding and stepping each row alone."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from clipdepth.model.head import normalise_text
from clipdepth.model.prompt_learner import PromptEncoder, encode_prompts
from clipdepth.model.text_encoder import MIN_ROWS, PromptGroup, _Layout, encode_embeddings, encode_prompt_groups
from clipdepth.run.bench import distinct_trained_rows
from clipdepth.train.losses import SILogTarget
from clipdepth.train.step import make_optimiser, optimiser_step, optimiser_steps
from clipdepth.train.trainer import build_model, resolve_row


def _encoders(rn50, names):
    return [build_model(resolve_row(n, "demo", mode="faithful"), rn50).prompts for n in names]


def test_blas_rows_do_not_depend_on_the_products_height(rn50):
    """The premise of the bit-identical lockstep: every row of a product at least MIN_ROWS high is
    computed as in any taller product, for every shape of the text tower, forward (x W^T + b) and
    backward (g W). If this fails, this BLAS computes rows by height and lockstep agrees with rows
    trained alone only to float rounding."""
    block = rn50.transformer.resblocks[0]
    weights = [(block.attn.in_proj_weight, block.attn.in_proj_bias), (block.attn.out_proj.weight, None),
               (block.mlp.c_fc.weight, block.mlp.c_fc.bias), (block.mlp.c_proj.weight, block.mlp.c_proj.bias),
               (rn50.text_projection.t(), None)]
    gen = torch.Generator().manual_seed(0)
    for w, b in weights:
        x = torch.randn(800, w.shape[1], generator=gen)
        g = torch.randn(800, w.shape[0], generator=gen)
        tall, tall_back = F.linear(x, w, b), g @ w
        for rows in range(MIN_ROWS, 60):
            assert torch.equal(F.linear(x[:rows], w, b), tall[:rows]), (tuple(w.shape), rows)
            assert torch.equal(g[:rows] @ w, tall_back[:rows]), (tuple(w.shape), rows)


def test_grouped_pass_equals_each_encoder_alone(rn50):
    """The nine trained NYU rows of Tables 3-7 plus a two-prompt row (fewer tokens than MIN_ROWS): one
    pass gives bit-identical features and token gradients to each encoder's own forward."""
    names = distinct_trained_rows("nyu")
    encoders = [*_encoders(rn50, names), PromptEncoder(rn50, "learned-2", "baseline", seed=3)]
    assert sum(e.prompt_group().head_key is not None for e in encoders) >= 2  # a prefix shared across rows
    gen = torch.Generator().manual_seed(1)
    weights = [torch.randn(e.n_prompts, 1024, generator=gen) for e in encoders]
    params = [[p for p in e.parameters() if p.requires_grad] for e in encoders]

    together = encode_prompts(encoders)
    grads = torch.autograd.grad(sum((f * w).sum() for f, w in zip(together, weights, strict=True)),
                                [p for ps in params for p in ps])
    k = 0
    for enc, feats, w, ps in zip(encoders, together, weights, params, strict=True):
        alone = enc()
        assert torch.equal(feats, alone), enc.words_name
        for a, b in zip(torch.autograd.grad((alone * w).sum(), ps), grads[k : k + len(ps)], strict=True):
            assert torch.equal(a, b), enc.words_name
        k += len(ps)


def test_grouped_pass_is_the_causal_pass_to_float_rounding(rn50):
    encoders = _encoders(rn50, ["t4/nyu/4o4d", "t6/nyu/learned-20-log"])
    for enc, feats in zip(encoders, encode_prompts(encoders), strict=True):
        full = encode_embeddings(rn50, enc.input_embeddings(), enc.eot_index, enc.n_tokens)
        torch.testing.assert_close(feats, full, rtol=1e-5, atol=1e-5)


def test_a_prompt_sees_only_its_prefix_and_itself(rn50):
    """Prompts packed together attend block-diagonally: changing prompt 3's depth token changes prompt
    3's feature only, and another group's prompts not at all."""
    a, b = PromptEncoder(rn50, "learned-7", "baseline", seed=0), PromptEncoder(rn50, "learned-20", "baseline", seed=1)
    with torch.no_grad():
        before = encode_prompts([a, b])
        a.depth_tokens[3] += 0.5
        after = encode_prompts([a, b])
    changed = [not torch.equal(x, y) for x, y in zip(before[0], after[0], strict=True)]
    assert changed == [False, False, False, True, False, False, False]
    assert torch.equal(before[1], after[1])


def test_layout_of_two_groups_hand_worked(rn50):
    """Group 0: prefix 2, three prompts of 2 tail tokens (one pack of 3); group 1 shares the prefix."""
    x = torch.zeros(3, 4, 8)
    g0 = PromptGroup(x, torch.tensor([3, 3, 3]), 2, head_key="h")
    g1 = PromptGroup(torch.zeros(1, 5, 8), torch.tensor([4]), 2, head_key="h")
    layout = _Layout([g0, g1], torch.device("cpu"), torch.float32)
    assert layout.head_len == [2] and layout.head_of == [0, 0]  # one head for both
    assert layout.per_pack == [3, 1] and layout.n_packs == [1, 1]
    # flat: head (2), g0 tails (3 x 2), g1 tail (3), then zero rows up to MIN_ROWS
    assert layout.pooled.tolist() == [3, 5, 7, 10]
    ok = layout.group_masks[0][0, 0] == 0  # 6 queries x (2 head + 6 pack) keys
    expected = torch.tensor([[1, 1, 1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0, 0, 0],
                             [1, 1, 0, 0, 1, 0, 0, 0], [1, 1, 0, 0, 1, 1, 0, 0],
                             [1, 1, 0, 0, 0, 0, 1, 0], [1, 1, 0, 0, 0, 0, 1, 1]], dtype=torch.bool)
    assert torch.equal(ok, expected)
    assert len(layout.to_flat) == MIN_ROWS


def test_prefix_that_does_not_fit_is_refused(rn50):
    enc = PromptEncoder(rn50, "learned-7", "baseline")
    group = dataclasses.replace(enc.prompt_group(), prefix=enc.length)
    with pytest.raises(ValueError, match="shared prefix of 8 tokens does not fit 7 prompts of 8 tokens"):
        encode_prompt_groups(rn50, [group])


def test_lockstep_step_equals_each_row_stepped_alone(rn50):
    """Three rows, two steps: ``optimiser_steps`` (one text pass, one backward of the summed losses) leaves
    bit-identical tokens, AdamW and OneCycle states and losses to ``optimiser_step`` row by row."""
    names = ["t3/nyu/learned-7", "t4/nyu/4o4d", "t6/nyu/learned-20-log"]
    rows = [resolve_row(n, "demo", mode="faithful") for n in names]
    gen = torch.Generator().manual_seed(2)
    batches = [(torch.randn(2, 1024, 3, 4, generator=gen),
                torch.rand(2, 1, 24, 32, generator=gen) * 9 + 0.5) for _ in range(2)]

    def run(together: bool):
        models = [build_model(r, rn50).train() for r in rows]
        optim = [make_optimiser(m, r.train, 10) for m, r in zip(models, rows, strict=True)]
        losses = []
        for feats, gt in batches:
            target = SILogTarget(gt, (3, 4))
            if together:
                losses.append(optimiser_steps(models, optim, feats, [target] * 3, [r.train.grad_clip for r in rows]))
            else:
                losses.append([optimiser_step(m, *o, feats, target, r.train.grad_clip)
                               for m, o, r in zip(models, optim, rows, strict=True)])
        return models, optim, losses

    (m1, o1, l1), (m2, o2, l2) = run(True), run(False)
    assert l1 == l2
    for a, b, (_, oa, sa), (_, ob, sb) in zip(m1, m2, o1, o2, strict=True):
        for (ka, va), (kb, vb) in zip(a.prompts.state_dict().items(), b.prompts.state_dict().items(), strict=True):
            assert ka == kb and torch.equal(va, vb), ka
        for sa_, sb_ in zip(oa.state.values(), ob.state.values(), strict=True):
            assert all(torch.equal(sa_[k], sb_[k]) for k in sa_)
        assert sa.state_dict() == sb.state_dict()
        assert torch.equal(normalise_text(a.prompts(), a.text_norm), a.text_features())
