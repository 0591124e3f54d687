"""Nearest-neighbour analysis of learned tokens (issue 6, must-show 1 and 2; cache; anomaly check).

Everything runs on the random-init RN50 of ``conftest`` with a few hundred vocabulary tokens, so each
test takes seconds on a shared two-core CPU.
"""

from __future__ import annotations

import json

import numpy as np
import open_clip
import pandas as pd
import pytest
import torch

from clipdepth.model.prompt_learner import PromptEncoder, encode_embeddings
from clipdepth.study import neighbours as nb
from clipdepth.study.neighbours import sweep as nb_sweep

TOKENIZER = open_clip.get_tokenizer("RN50-quickgelu")
WEIGHTS = "random:0"  # conftest's rn50 is load_clip(seed=0)
ARCH = "RN50-quickgelu"
LIMIT = 200
# Chosen tokens: two bytes inside the first LIMIT ids ("I", "s") and depth-7 words, which only
# include_words brings into the slice.
CHOSEN = ("I", "s", "close", "distant", "very")
TOL = 1e-5


def _id(word: str) -> int:
    """The end-of-word token of ``word``, or its byte token for the single letters of CHOSEN."""
    if len(word) == 1 and word in "Is":
        return TOKENIZER.encoder[word]
    ids = TOKENIZER.encode(word)
    assert len(ids) == 1, word
    return ids[0]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """These tests run tiny batches; on the shared two-core CPU one thread avoids OpenMP workers
    waiting on each other (several times faster here). Restored after the module."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def sweep(rn50, tmp_path_factory):
    return nb.vocab_sweep(rn50, WEIGHTS, ARCH, vocab_limit=LIMIT, include_words=nb.anomaly_words(),
                          cache_dir=tmp_path_factory.mktemp("nn-cache"), progress=False)


def _state(tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"depth_tokens": tokens.detach().clone()}


def _word_tokens(model, words=CHOSEN) -> torch.Tensor:
    return model.token_embedding.weight[[_id(w) for w in words]].detach().clone()


# --- encoding -----------------------------------------------------------------------------------


def test_vocab_ids_slice_includes_words():
    ids = nb.vocab_ids(LIMIT, ["close", "neither close nor distant"])
    assert ids[:LIMIT].tolist() == list(range(LIMIT))
    assert {_id("close"), _id("distant"), _id("neither"), _id("nor")} <= set(ids.tolist())
    assert len(nb.vocab_ids(None)) == nb.VOCAB_SIZE == len(TOKENIZER.encoder)
    assert nb.token_strings([_id("close"), 0]) == ["close</w>", "!"]


def test_single_token_bins_of_depth7():
    assert nb.single_token_bins("depth-7") == {1: "close</w>", 5: "distant</w>"}


def test_prefix_cache_is_exact(rn50):
    """The shared-prefix shortcut equals the full truncated tower and CLIP's own encode_text."""
    layout = nb.prompt_layout(rn50, "baseline")
    ids = [_id("close"), _id("distant"), 7, 4000]
    fill = rn50.token_embedding.weight[ids][:, None]
    fast = nb.encode_fillings(rn50, layout, fill, prefix_cache=True)
    slow = nb.encode_fillings(rn50, layout, fill, prefix_cache=False)
    text = ["This object appears to be " + TOKENIZER.decoder[i].replace("</w>", "") for i in ids[:2]]
    with torch.no_grad():
        reference = rn50.encode_text(TOKENIZER(text))
    assert (fast - slow).abs().max().item() < TOL
    assert (fast[:2] - reference).abs().max().item() < TOL


def test_learned_prompts_encoded_as_in_training(rn50):
    """A learned token in the layout gives the feature the trainer's PromptEncoder gives."""
    enc = PromptEncoder(rn50, words="learned-7", template="baseline", seed=3)
    with torch.no_grad():
        trained = enc()
    layout = nb.prompt_layout(rn50, "baseline", enc.state_dict())
    ours = nb.encode_fillings(rn50, layout, enc.depth_tokens.detach()[:, None])
    assert (ours - trained).abs().max().item() < TOL
    # multi-token phrases (word prompts) take the same path
    words = PromptEncoder(rn50, words="depth-7", template="baseline")
    with torch.no_grad():
        reference = words()
    phrases = nb.encode_fillings(rn50, layout, nb.phrase_fillings(rn50, nb.anomaly_words()))
    assert (phrases - reference).abs().max().item() < TOL


def test_context_template_needs_trained_context(rn50):
    with pytest.raises(ValueError, match="context"):
        nb.prompt_layout(rn50, "1o1d")
    enc = PromptEncoder(rn50, words="learned-7", template="1o1d")
    layout = nb.prompt_layout(rn50, "1o1d", enc.state_dict())
    assert torch.equal(layout.prefix[1], enc.ctx_tokens.detach()[0])


# --- must-show 1: a case with a known answer --------------------------------------------------


def test_tokens_equal_to_words_find_those_words(rn50, sweep):
    analysis = nb.analyse(rn50, _state(_word_tokens(rn50)), sweep, top_k=5)
    for space in ("prompt", "token_raw", "token_unit"):
        first = analysis.tables()[space].query("rank == 1").reset_index(drop=True)
        assert first["neighbour"].tolist() == [TOKENIZER.decoder[_id(w)] for w in CHOSEN], space
        assert first["token_id"].tolist() == [_id(w) for w in CHOSEN], space
        assert (first["distance"] < TOL).all(), (space, first["distance"].tolist())
        second = analysis.tables()[space].query("rank == 2")
        assert (second["distance"] > 100 * TOL).all(), space  # the zero is not a degenerate collapse


def test_perturbed_tokens_are_not_at_zero(rn50, sweep):
    """The same case with a small perturbation: still nearest to the word, no longer at 0 (the test can fail)."""
    tokens = _word_tokens(rn50) + 0.01 * torch.randn(len(CHOSEN), 512, generator=torch.Generator().manual_seed(1))
    analysis = nb.analyse(rn50, _state(tokens), sweep, top_k=3)
    first = analysis.token_raw.query("rank == 1")
    assert (first["distance"] > 1e-3).all()
    assert (analysis.prompt.query("rank == 1")["distance"] > 1e-4).all()


# --- must-show 2: Euclidean distances between unit vectors ------------------------------------


def test_distance_is_sqrt_2_minus_2cos(rn50, sweep):
    """Every candidate of every query (top_k = all of them), in all three spaces."""
    tokens = 0.02 * torch.randn(7, 512, generator=torch.Generator().manual_seed(0))
    everything = len(sweep) + 6
    analysis = nb.analyse(rn50, _state(tokens), sweep, top_k=everything)
    pos = {int(t): i for i, t in enumerate(sweep.ids)}
    vocab_tokens = rn50.token_embedding.weight.detach()

    for space in ("prompt", "token_unit", "token_raw"):
        table = analysis.tables()[space]
        assert len(table) == 7 * everything and set(table["kind"]) == {"vocab", "learned"}
        queries = analysis.learned_features if space == "prompt" else analysis.learned_tokens
        learned = table["kind"] == "learned"
        other = torch.stack([queries[int(n[7:-1])] for n in table.loc[learned, "neighbour"]])
        words = sweep.features[[pos[t] for t in table.loc[~learned, "token_id"]]] if space == "prompt" else \
            vocab_tokens[table.loc[~learned, "token_id"].tolist()]
        neighbours = torch.empty(len(table), queries.shape[1])
        mask = torch.tensor(learned.to_numpy())
        neighbours[mask] = other
        neighbours[~mask] = words
        q = queries[torch.tensor(table["bin"].to_numpy())]
        if space == "token_raw":
            expected = (q.double() - neighbours.double()).norm(dim=1)
        else:
            cos = torch.nn.functional.cosine_similarity(q.double(), neighbours.double(), dim=1)
            expected = (2 - 2 * cos).clamp_min(0).sqrt()
        assert np.allclose(table["distance"], expected.numpy(), atol=TOL), space
        ranks = table.groupby("query")["distance"].apply(lambda d: bool(np.all(np.diff(d.to_numpy()) >= 0)))
        assert ranks.all(), space
    # raw and unit token spaces are different searches (raw tokens are far from unit length)
    assert not np.allclose(analysis.token_raw["distance"], analysis.token_unit["distance"])


# --- the query is excluded, the other learned prompts are included ----------------------------


def test_query_excluded_other_learned_included(rn50, sweep):
    base = 0.02 * torch.randn(3, 512, generator=torch.Generator().manual_seed(5))
    tokens = torch.stack([base[0], base[0], base[1], base[2]])  # {depth_0} and {depth_1} are twins
    analysis = nb.analyse(rn50, _state(tokens), sweep, top_k=4)
    for table in analysis.tables().values():
        assert not (table["neighbour"] == table["query"]).any()
        first = table.query("rank == 1").set_index("query")
        assert first.loc["{depth_0}", "neighbour"] == "{depth_1}"
        assert first.loc["{depth_1}", "neighbour"] == "{depth_0}"
        assert first.loc["{depth_0}", "distance"] == 0.0
        assert first.loc["{depth_0}", "kind"] == "learned" and first.loc["{depth_0}", "token_id"] == -1


def test_nearest_neighbours_without_queries():
    vocab = torch.eye(4)
    table = nb.nearest_neighbours(torch.eye(4)[:2], vocab, [10, 11, 12, 13], top_k=2, include_queries=False)
    assert table["kind"].eq("vocab").all()
    assert table.query("rank == 1")["token_id"].tolist() == [10, 11]


# --- cache --------------------------------------------------------------------------------------


def test_cache_hit_and_miss(rn50, tmp_path, monkeypatch):
    def sweep_(**kw):
        args = {"vocab_limit": 16, "cache_dir": tmp_path, "progress": False} | kw
        return nb.vocab_sweep(rn50, args.pop("weights", WEIGHTS), ARCH, **args)

    first = sweep_()
    assert not first.from_cache and first.prompts_per_s > 0
    assert first.path is not None and (first.path / "manifest.json").is_file()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]  # no temporary left behind
    manifest = json.loads((first.path / "manifest.json").read_text())
    assert manifest["key"]["weights"] == WEIGHTS and manifest["key"]["vocab_limit"] == 16

    calls = []
    real = nb.encode_fillings
    monkeypatch.setattr(nb_sweep, "encode_fillings", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = sweep_()
    assert again.from_cache and not calls
    assert torch.equal(again.features, first.features) and again.prompts_per_s == first.prompts_per_s

    for changed in ({"vocab_limit": 17}, {"template": "depthclip"}, {"weights": "random:1"},
                    {"include_words": ["distant"]}):
        calls.clear()
        assert not sweep_(**changed).from_cache, changed
        assert calls, changed
    assert sweep_(vocab_limit=17).from_cache

    # a corrupted entry is a miss (rebuilt), never read
    np.save(first.path / "features.npy", np.zeros((16, 1024), np.float32))
    with pytest.warns(UserWarning, match="disagrees"):
        rebuilt = sweep_()
    assert not rebuilt.from_cache and torch.equal(rebuilt.features, first.features)
    assert sweep_(refresh=True).from_cache is False


def test_sweep_in_another_context_is_refused(rn50):
    """Learned context tokens are part of every vocabulary prompt: a sweep made in one context cannot
    serve prompts trained in another (e.g. another epoch of a context-learning run)."""
    a = PromptEncoder(rn50, words="learned-7", template="1o1d", seed=1).state_dict()
    b = PromptEncoder(rn50, words="learned-7", template="1o1d", seed=2).state_dict()
    swept = nb.vocab_sweep(rn50, WEIGHTS, ARCH, template="1o1d", vocab_limit=8, prompts_state=a, cache_dir=None,
                           progress=False)
    assert len(nb.analyse(rn50, a, swept, top_k=2).prompt) == 14
    with pytest.raises(ValueError, match="context the vocabulary was swept in"):
        nb.analyse(rn50, b, swept)


# --- the 0.000 anomaly ----------------------------------------------------------------------------


def test_anomaly_check_reproduces_paper_zeros_with_depth7_prompts(rn50, sweep):
    tokens = 0.02 * torch.randn(7, 512, generator=torch.Generator().manual_seed(42))
    check = nb.anomaly_check(rn50, _state(tokens), sweep, top_k=6)
    assert check.paper_zero_bins == {1: "close</w>", 5: "distant</w>"}
    assert check.paper_isolated_bins == [1, 5]
    assert check.zero_bins["depth-7"] == check.paper_zero_bins
    assert check.zero_bins["hybrid"] == check.paper_zero_bins
    assert check.zero_bins["learned"] == {}
    assert check.verdict == "supported" and check.conclusion.count("Supported") == 1
    assert "random-weight" in check.conclusion
    summary = check.summary()
    assert bool(summary.loc["depth-7", "zeros as paper"]) and not bool(summary.loc["learned", "zeros as paper"])
    json.dumps(check.to_json())


def test_anomaly_check_not_supported_when_learned_tokens_are_the_words(rn50, sweep):
    tokens = 0.02 * torch.randn(7, 512, generator=torch.Generator().manual_seed(7))
    tokens[[1, 5]] = _word_tokens(rn50, ("close", "distant"))  # only bins 1 and 5 sit on a word
    check = nb.anomaly_check(rn50, _state(tokens), sweep, top_k=3)
    assert check.zero_bins["learned"] == {1: "close</w>", 5: "distant</w>"}
    assert check.verdict == "not supported"


def test_anomaly_check_needs_the_words_in_the_sweep(rn50):
    small = nb.vocab_sweep(rn50, WEIGHTS, ARCH, vocab_limit=32, cache_dir=None, progress=False)
    check = nb.anomaly_check(rn50, _state(0.02 * torch.randn(7, 512)), small, top_k=3)
    assert check.missing_words == ["close</w>", "distant</w>"] and check.verdict == "inconclusive"


# --- tables, figures, epochs ---------------------------------------------------------------------


def test_paper_format_and_side_by_side(rn50, sweep):
    analysis = nb.analyse(rn50, _state(0.02 * torch.randn(7, 512)), sweep, top_k=5)
    wide = nb.paper_format(analysis.prompt, ranks=4)
    assert list(wide.columns) == [f"{{depth_{i}}}" for i in range(7)] and list(wide.index) == [1, 2, 3, 4]
    both = nb.side_by_side(analysis.prompt)
    assert both.shape == (28, 2) and both.loc[("{depth_1}", 1), "paper"] == "close</w> 0.000"
    payload = analysis.to_json()
    assert len(payload["prompt"]) == 35 and payload["sweep"]["tokens"] == len(sweep)
    json.dumps(payload)


def test_figures(rn50, sweep):
    import matplotlib

    matplotlib.use("Agg")
    analysis = nb.analyse(rn50, _state(0.02 * torch.randn(7, 512)), sweep, top_k=3)
    for method in ("pca", "tsne"):
        coords = nb.projection(analysis, method=method, seed=0, n_background=60, label_k=1)
        assert set(coords["kind"]) == {"vocab", "nearest", "learned"}
        assert coords.query("kind == 'learned'")["label"].tolist() == analysis.labels
        nb.plot_projection(coords)
    again = nb.projection(analysis, method="tsne", seed=0, n_background=60, label_k=1)
    assert np.allclose(again[["x", "y"]], coords[["x", "y"]])  # fixed seed: the same picture
    dist = nb.pairwise_distances(analysis)
    assert np.allclose(np.diag(dist), 0) and np.allclose(dist, dist.T)
    nb.plot_pairwise(dist)
    near = nb.nearest_word_vs_bin(analysis, torch.linspace(0.7, 9.3, 7))
    assert (near["distance"] > 0).all() and len(near) == 7
    nb.plot_nearest_word_vs_bin(near)


def test_neighbours_over_epochs(rn50, sweep, tmp_path):
    gen = torch.Generator().manual_seed(0)
    for epoch in (1, 2):
        state = {"depth_tokens": 0.02 * torch.randn(7, 512, generator=gen)}
        torch.save({"epoch": epoch, "prompts": state}, tmp_path / f"epoch_{epoch:03d}.pt")
    frame = nb.neighbours_over_epochs(rn50, tmp_path, sweep, top_k=2)
    assert sorted(frame["epoch"].unique()) == [1, 2] and len(frame) == 2 * 7 * 2
    first = frame.query("epoch == 2")
    expected = nb.analyse(rn50, nb.load_prompts(tmp_path, epoch=2), sweep, top_k=2).prompt
    pd.testing.assert_frame_equal(first.drop(columns="epoch").reset_index(drop=True), expected)
    # epoch 0 is redrawn from the seed a run's result.json records
    (tmp_path / "result.json").write_text(json.dumps(
        {"experiment": {"experiment": {"words": "learned-7", "template": "baseline", "train": {"seed": 42}}}}))
    with_init = nb.neighbours_over_epochs(rn50, tmp_path, sweep, top_k=2)
    assert sorted(with_init["epoch"].unique()) == [0, 1, 2]
    init = PromptEncoder(rn50, words="learned-7", template="baseline", seed=42).depth_tokens
    assert torch.equal(nb.initial_prompts(rn50, tmp_path)["depth_tokens"], init.detach())
    nb.plot_neighbours_over_epochs(with_init)
    with pytest.raises(FileNotFoundError):
        nb.neighbours_over_epochs(rn50, tmp_path / "empty", sweep, include_initial=False)


def test_encode_embeddings_still_matches_prompt_encoder(rn50):
    """Guard for the fallback path: it is encode_embeddings on prefix + filling + after."""
    layout = nb.prompt_layout(rn50)
    fill = rn50.token_embedding.weight[[5, 6]][:, None]
    full = torch.cat([layout.prefix[None].expand(2, -1, -1), fill, layout.after[None].expand(2, -1, -1)], dim=1)
    with torch.no_grad():
        ref = encode_embeddings(rn50, full, torch.full((2,), full.shape[1] - 1))
    assert torch.equal(nb.encode_fillings(rn50, layout, fill, prefix_cache=False), ref.float())
