"""The prompt encoder is CLIP's own text path with vector slots (issue 2, must-show 1 and 2)."""

from __future__ import annotations

import open_clip
import pytest
import torch

from clipdepth.model.prompt_learner import TEMPLATES, WORD_LISTS, PromptEncoder, parse_depth_words, resolve_template

TOKENIZER = open_clip.get_tokenizer("RN50-quickgelu")
# Single-token words used to fill vector slots, so the same prompt also exists as a plain string.
CTX_WORDS = ("a", "photo", "of", "the", "big", "small", "one", "thing")
FILL_WORDS = WORD_LISTS["rand-txt-7"]  # each a single CLIP token (checked below)
TOLERANCE = 1e-5


def _row(model, word: str) -> torch.Tensor:
    ids = TOKENIZER.encode(word)
    assert len(ids) == 1, f"{word!r} is not a single token"
    return model.token_embedding.weight[ids[0]].detach().clone()


def _fill_and_strings(model, enc: PromptEncoder, words: tuple[str, ...]) -> list[str]:
    """Put ordinary word-embedding rows in every vector slot; return the equivalent plain prompts."""
    with torch.no_grad():
        if enc.ctx_tokens is not None:
            enc.ctx_tokens.copy_(torch.stack([_row(model, w) for w in CTX_WORDS[: len(enc.ctx_tokens)]]))
        if enc.depth_tokens is not None:
            enc.depth_tokens.copy_(torch.stack([_row(model, w) for w in words]))
        if enc.random_tokens is not None:
            enc.random_tokens.copy_(torch.stack([_row(model, w) for w in words]))
    pieces = enc.template.split("{ctx}")
    text = pieces[0] + "".join(f"{CTX_WORDS[j]}{p}" for j, p in enumerate(pieces[1:]))
    return [text.replace("{object}", "object").replace("{depth}", w) for w in words]


def _case_ids():
    sets = [*WORD_LISTS, "random-7", "learned-7"]
    return [(s, t) for s in sets for t in TEMPLATES]


@pytest.mark.parametrize("arch_fixture", ["rn50", "vit_b32"])
@pytest.mark.parametrize(("words", "template"), _case_ids())
def test_encoder_equals_encode_text(request, arch_fixture, words, template):
    model = request.getfixturevalue(arch_fixture)
    enc = PromptEncoder(model, words=words, template=template)
    fill = WORD_LISTS[words] if words in WORD_LISTS else FILL_WORDS
    strings = _fill_and_strings(model, enc, fill)
    with torch.no_grad():
        ours = enc()
        reference = model.encode_text(TOKENIZER(strings))
    assert ours.shape == reference.shape
    assert (ours - reference).abs().max().item() <= TOLERANCE


def test_user_template_and_learned_object(rn50):
    enc = PromptEncoder(rn50, words="depth-7", template="a photo of a {object} that is {depth}",
                        learned_object=True)
    with torch.no_grad():
        enc.object_tokens.copy_(_row(rn50, "chair")[None])
        ours = enc()
        ref = rn50.encode_text(TOKENIZER([f"a photo of a chair that is {w}" for w in WORD_LISTS["depth-7"]]))
    assert (ours - ref).abs().max().item() <= TOLERANCE
    assert enc.prompt_strings()[0] == "a photo of a <|object_0|> that is very close"


def test_truncated_context_is_exact(rn50):
    """Float64 removes GEMM-shape rounding: truncated and full 77-token contexts agree to 1e-12."""
    short = PromptEncoder(rn50, words="depth-7", template="4o4d").double()
    full = PromptEncoder(rn50, words="depth-7", template="4o4d", truncate=False).double()
    full.load_state_dict(short.state_dict())
    rn50.double()
    try:
        with torch.no_grad():
            a, b = short(), full()
        assert short.length == 15 and full.length == 77  # SOT + 8 ctx + object + 4 + EOT
        assert (a - b).abs().max().item() <= 1e-12
    finally:
        rn50.float()
    with torch.no_grad():
        a32 = PromptEncoder(rn50, words="depth-7", template="4o4d")()
        b32 = full.float()()
    assert (a32 - b32).abs().max().item() <= 1e-5


def test_tokens_after_eot_cannot_change_the_output(rn50):
    """The causal mask makes everything after EOT irrelevant -- bit for bit -- which is why truncation is
    exact."""
    enc = PromptEncoder(rn50, words="depth-7", template="baseline", truncate=False)
    with torch.no_grad():
        before = enc()
        enc.token_ids[:, enc.eot_index.max() + 1 :] = 1234  # junk words in the padding
        after = enc()
    assert torch.equal(before, after)


def test_parameters_are_only_the_learnable_tokens(rn50):
    assert list(PromptEncoder(rn50, "depth-7", "baseline").parameters()) == []
    learned = PromptEncoder(rn50, "learned-7", "baseline")
    assert [tuple(p.shape) for p in learned.parameters()] == [(7, 512)]
    both = PromptEncoder(rn50, "learned-7", "4o4d")
    assert sum(p.numel() for p in both.parameters()) == 15 * 512
    ctx_words = PromptEncoder(rn50, "depth-7", "1o2d")
    assert sum(p.numel() for p in ctx_words.parameters()) == 3 * 512
    rand = PromptEncoder(rn50, "random-7", "baseline", seed=3)
    assert list(rand.parameters()) == [] and rand.random_tokens.shape == (7, 512)
    assert set(learned.state_dict()) == {"depth_tokens"}


def test_init_is_seeded_normal_002(rn50):
    a = PromptEncoder(rn50, "learned-256", "baseline", seed=42).depth_tokens
    b = PromptEncoder(rn50, "learned-256", "baseline", seed=42).depth_tokens
    c = PromptEncoder(rn50, "learned-256", "baseline", seed=43).depth_tokens
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert abs(a.std().item() - 0.02) < 0.001 and abs(a.mean().item()) < 0.001


def test_prompt_lengths_match_the_notes(rn50):
    # research notes: baseline prompt is 8 tokens (EOT at 7), 4o4d is 12 (EOT at 11) for a 1-token depth
    assert PromptEncoder(rn50, "learned-7", "baseline").eot_index.tolist() == [7] * 7
    assert PromptEncoder(rn50, "learned-7", "4o4d").eot_index.tolist() == [11] * 7


def test_unknown_names_list_valid_ones(rn50):
    with pytest.raises(ValueError, match="valid: depth-7, size-7"):
        parse_depth_words("depth-8")
    with pytest.raises(ValueError, match="valid names: baseline, depthclip, 1o1d"):
        resolve_template("2o2d")
    with pytest.raises(ValueError, match="unknown word set 'learned-0'"):
        PromptEncoder(rn50, "learned-0", "baseline")


@pytest.mark.parametrize(("words", "template", "prefix"), [("learned-256", "baseline", 6), ("depth-7", "4o4d", 10),
                                                             ("learned-7", "1o1d", 4)])
def test_shared_prefix_runs_once_and_equals_the_full_pass(rn50, words, template, prefix):
    """"<sot> This object appears to be" (and context tokens, one vector for all prompts) is common to every
    prompt: computed once, the features and the token gradients equal the full causal pass to float32
    rounding (the depth slot, different per prompt, ends the shared part)."""
    from clipdepth.model.text_encoder import encode_embeddings

    enc = PromptEncoder(rn50, words, template)
    assert enc.shared_prefix == prefix
    shared = enc()
    full = encode_embeddings(rn50, enc.input_embeddings(), enc.eot_index, enc.n_tokens)
    torch.testing.assert_close(shared, full, rtol=1e-5, atol=1e-5)
    params = [p for p in enc.parameters() if p.requires_grad]
    grads_shared = torch.autograd.grad(shared.square().sum(), params)
    grads_full = torch.autograd.grad(full.square().sum(), params)
    for a, b in zip(grads_shared, grads_full, strict=True):  # relative to the gradient's scale
        assert ((a - b).abs().max() / b.abs().max()).item() <= 1e-5
