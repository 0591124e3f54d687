"""The researcher's API: token setter/loader, learned object token, logits, low-resolution predictions,
the authors' token initialisation, and their config files mapped to our registry (issues 12 and 13)."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import open_clip
import pytest
import torch
import yaml

from clipdepth.eval.metrics import compute_metrics
from clipdepth.eval.protocols import depthclip_box, evaluate, upsample
from clipdepth.model.factory import learned_prompt_model, model_for_experiment
from clipdepth.model.head import DepthOutput, bin_logits, depth_from_probabilities
from clipdepth.model.prompt_learner import PromptEncoder, PromptLearner, TextEncoder, token_distance
from clipdepth.study import _cli as experiments_cli
from clipdepth.study.authors_configs import authors_config_from_mapping, from_authors, lang_strat_from_stem
from clipdepth.study.experiments import (
    AUTHORS_CONFIGS,
    EXPERIMENTS,
    TrainConfig,
    config_hash,
    describe,
    get,
    resolve,
    variant,
)

TOKENIZER = open_clip.get_tokenizer("RN50-quickgelu")


def _word_row(model, word: str) -> torch.Tensor:
    ids = TOKENIZER.encode(word)
    assert len(ids) == 1, f"{word!r} is not a single token"
    return model.token_embedding.weight[ids[0]].detach().clone()


# ---- token setter / loader -----------------------------------------------------------------------


def test_set_tokens_equals_writing_the_attributes(rn50):
    """set_tokens is the public form of copying into ctx_tokens / depth_tokens / object_tokens."""
    gen = torch.Generator().manual_seed(5)
    values = {"ctx": torch.randn(8, 512, generator=gen) * 0.02, "depth": torch.randn(7, 512, generator=gen) * 0.02,
              "object": torch.randn(1, 512, generator=gen) * 0.02}
    public = PromptEncoder(rn50, "learned-7", "4o4d", learned_object=True, seed=1)
    poked = PromptEncoder(rn50, "learned-7", "4o4d", learned_object=True, seed=2)
    assert public.token_shapes() == {"ctx": (8, 512), "depth": (7, 512), "object": (1, 512)}
    param_ids = [id(p) for p in public.parameters()]
    public.set_tokens(values)
    with torch.no_grad():
        poked.ctx_tokens.copy_(values["ctx"])
        poked.depth_tokens.copy_(values["depth"])
        poked.object_tokens.copy_(values["object"])
        assert torch.equal(public(), poked())
    assert [id(p) for p in public.parameters()] == param_ids  # copied in place: an optimiser keeps them
    assert all(torch.equal(public.tokens()[k], v) for k, v in values.items())


def test_random_depth_tokens_are_the_depth_name(rn50):
    enc = PromptEncoder(rn50, "random-7", "baseline")
    new = torch.full((7, 512), 0.01)
    enc.set_tokens({"depth": new})
    assert torch.equal(enc.random_tokens, new) and list(enc.parameters()) == []


def test_load_tokens_from_a_state_dict(rn50):
    trained = PromptEncoder(rn50, "learned-7", "1o1d", seed=3)
    fresh = PromptEncoder(rn50, "learned-7", "1o1d", seed=4)
    fresh.load_tokens(trained.state_dict())  # the trainer's prompts.pt keys
    with torch.no_grad():
        assert torch.equal(fresh(), trained())
    other = PromptEncoder(rn50, "learned-7", "1o1d", seed=5)
    other.load_tokens({"ctx": trained.ctx_tokens.detach(), "depth": trained.depth_tokens.detach()})
    assert torch.equal(other.depth_tokens, trained.depth_tokens)


def test_token_errors_name_the_token_and_shape(rn50):
    enc = PromptEncoder(rn50, "learned-7", "baseline")
    before = enc.depth_tokens.detach().clone()
    with pytest.raises(ValueError, match=r"token 'depth' must have shape \(7, 512\), got \(6, 512\)"):
        enc.set_tokens({"depth": torch.zeros(6, 512)})
    with pytest.raises(ValueError, match=r"no token 'ctx' in this prompt encoder .* its tokens: depth"):
        enc.set_tokens({"depth": torch.zeros(7, 512), "ctx": torch.zeros(2, 512)})
    assert torch.equal(enc.depth_tokens, before)  # nothing written when any entry is bad
    with pytest.raises(ValueError, match="NaN or infinite"):
        enc.set_tokens({"depth": torch.full((7, 512), float("nan"))})
    with pytest.raises(ValueError, match=r"state lacks token\(s\) depth \(7, 512\)"):
        enc.load_tokens({})
    with pytest.raises(ValueError, match="unknown token key 'prompt'"):
        enc.load_tokens({"prompt": torch.zeros(1, 512)})
    with pytest.raises(ValueError, match="object"):
        enc.load_tokens({"depth_tokens": before, "object_tokens": torch.zeros(1, 512)})
    enc.load_tokens({"depth_tokens": before, "object_tokens": torch.zeros(1, 512)}, strict=False)
    assert torch.equal(enc.depth_tokens, before)


def test_coop_names(rn50):
    assert PromptLearner is PromptEncoder
    enc = PromptLearner(rn50, "learned-7", "4o4d")
    with torch.no_grad():  # the encoder runs the shared prefix once: equal to float32 rounding
        torch.testing.assert_close(TextEncoder(rn50)(enc.input_embeddings(), enc.eot_index), enc(),
                                   rtol=1e-5, atol=1e-5)


# ---- learned object token ------------------------------------------------------------------------


@pytest.mark.parametrize(("words", "template"), [("depth-7", "baseline"), ("learned-7", "4o4d"),
                                                 ("random-7", "1o2d")])
def test_learned_object_with_the_word_embedding_equals_the_word(rn50, words, template):
    """A learned object slot holding the embedding of "object" is the ordinary prompt, exactly."""
    plain = PromptEncoder(rn50, words, template, seed=7)
    slot = PromptEncoder(rn50, words, template, seed=7, learned_object=True)
    shared = {k: v for k, v in plain.tokens().items()}
    slot.set_tokens({**shared, "object": _word_row(rn50, "object")[None]})
    with torch.no_grad():
        assert torch.equal(slot.input_embeddings(), plain.input_embeddings())
        assert torch.equal(slot(), plain())
    assert "<|object_0|>" in slot.prompt_strings()[0]


def test_learned_object_is_an_experiment_field(rn50):
    base = get("t3/nyu/learned-7")
    ls1 = variant(base, learned_object=True)
    assert ls1.name == "t3/nyu/learned-7[learned_object=True]"
    assert ls1.n_trainable_tokens == base.n_trainable_tokens + 1
    assert config_hash(ls1) != config_hash(base)
    assert "learned object token" in describe(ls1)
    model = model_for_experiment(ls1, rn50)
    assert model.prompts.token_shapes() == {"depth": (7, 512), "object": (1, 512)}
    # depth-7 with only a learned object token has one thing to learn, so it may train
    assert variant("t3/nyu/depth-7", learned_object=True, trained=True).n_trainable_tokens == 1


def test_model_for_experiment_equals_the_factory(rn50):
    exp = get("t5/kitti/4o4d+learned-7")
    a = model_for_experiment(resolve(exp, "demo"), rn50)
    b = learned_prompt_model(rn50, 0.001, 80.0, words="learned-7", template="4o4d", bn="adapt")
    assert torch.equal(a.centres, b.centres) and a.bn == "adapt"
    assert torch.equal(a.prompts.ctx_tokens, b.prompts.ctx_tokens)
    assert torch.equal(a.prompts.depth_tokens, b.prompts.depth_tokens)


# ---- logits on the model's output ----------------------------------------------------------------


def test_logits_output_is_what_the_depth_is_computed_from(rn50):
    model = learned_prompt_model(rn50, bn="frozen").eval()
    images = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        depth = model(images)
        out = model(images, return_logits=True)
        features = model.image_features(images)
        text = model.text_features()
    assert isinstance(out, DepthOutput) and torch.equal(out.depth, depth)
    hand = model.logit_scale * torch.einsum("bchw,cn->bnhw", features, text)
    assert out.logits.shape == (2, 7, 2, 3)
    assert torch.allclose(out.logits, hand, rtol=0, atol=1e-4)
    assert torch.equal(out.logits, bin_logits(features, text, model.logit_scale))
    assert torch.equal(out.probs, out.logits.softmax(dim=1))
    assert torch.equal(depth_from_probabilities(out.probs, model.centres), depth)


# ---- low-resolution predictions from evaluation --------------------------------------------------


def _samples(n: int) -> list[SimpleNamespace]:
    rng = np.random.default_rng(0)
    return [SimpleNamespace(image=rng.random((96, 128, 3)).astype(np.float32),
                            depth=rng.uniform(0.5, 9.0, (96, 128)), name=f"s{i}") for i in range(n)]


def _predict(x: torch.Tensor) -> torch.Tensor:
    # a deterministic, not flip-symmetric low-resolution predictor
    cells = torch.nn.functional.avg_pool2d(x.mean(1, keepdim=True), 32)
    return 12.0 * cells + torch.linspace(0.0, 1.0, cells.shape[-1])


@pytest.mark.parametrize("protocol", ["authors", "depthclip"])
def test_low_res_predictions_are_what_full_res_upsamples(protocol):
    samples = _samples(2)
    plain = evaluate(_predict, samples, 1e-3, 10.0, "none" if protocol == "authors" else "none",
                     protocol=protocol, keep_examples=2, progress=False)
    kept = evaluate(_predict, samples, 1e-3, 10.0, "none" if protocol == "authors" else "none",
                    protocol=protocol, keep_examples=2, progress=False, keep_low_res=True)
    assert plain.low_res is None and kept.per_image == plain.per_image
    assert len(kept.low_res) == 2 and all(low.ndim == 2 for low in kept.low_res)
    if protocol == "authors":
        assert all(low.shape == (3, 4) for low in kept.low_res)
        for low, example, row, sample in zip(kept.low_res, kept.examples, kept.per_image, samples, strict=True):
            full = upsample(torch.from_numpy(low)[None, None], sample.depth.shape)
            assert np.array_equal(full.squeeze().numpy(), example["pred"])
            assert compute_metrics(full, sample.depth, crop="none", min_depth=1e-3, max_depth=10.0) == row
            flipped = _predict(torch.from_numpy(sample.image.transpose(2, 0, 1).copy())[None].flip(-1)).flip(-1)
            expected = 0.5 * (_predict(torch.from_numpy(sample.image.transpose(2, 0, 1).copy())[None]).clamp(
                1e-3, 10.0) + flipped.clamp(1e-3, 10.0))
            assert np.array_equal(low, expected.squeeze().numpy())
    else:  # DepthCLIP: the box prediction, upsampled to the box and pasted into a zero canvas
        left, top, right, bottom = depthclip_box(96, 128)
        for low, example in zip(kept.low_res, kept.examples, strict=True):
            canvas = np.zeros((96, 128), dtype=low.dtype)
            box = upsample(torch.from_numpy(low)[None, None], (bottom - top, right - left))
            canvas[top:bottom, left:right] = box.squeeze().numpy()
            assert np.array_equal(canvas.clip(max=10.0), example["pred"])


# ---- token_init="authors" ------------------------------------------------------------------------


def _reenact(dataset_hw: tuple[int, int], n_ctx: int, n_depth: int, n_object: int, seed: int = 42):
    """The authors' sequence on the global generator, written from the documented steps."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # pl.seed_everything(seed)
        height, width = dataset_hw
        torch.rand((16, 3, height, width))  # MainRunnerLM.example_input_array
        torch.rand((16, 1, height, width))
        ctx = [torch.normal(mean=0, std=0.02, size=(1, 512)) for _ in range(n_ctx)]
        depth = [torch.normal(mean=0, std=0.02, size=(1, 512)) for _ in range(n_depth)]
        obj = [torch.normal(mean=0, std=0.02, size=(1, 512)) for _ in range(n_object)]
    return ctx, depth, obj


def test_authors_token_init_reenacts_their_draws(rn50):
    global_before = torch.get_rng_state()
    enc = PromptEncoder(rn50, "learned-7", "4o4d", learned_object=True, token_init="authors",
                        authors_dataset="nyu")
    assert torch.equal(torch.get_rng_state(), global_before)  # the caller's generator is untouched
    ctx, depth, obj = _reenact((416, 544), 8, 7, 1)
    assert torch.equal(enc.ctx_tokens, torch.cat(ctx))
    assert torch.equal(enc.depth_tokens, torch.cat(depth))
    assert torch.equal(enc.object_tokens, torch.cat(obj))
    ours = PromptEncoder(rn50, "learned-7", "4o4d", learned_object=True, seed=42)
    assert not torch.equal(ours.depth_tokens, enc.depth_tokens)


def test_authors_random7_on_kitti(rn50):
    exp = variant("t3/kitti/random-7", token_init="authors")
    model = model_for_experiment(exp, rn50)
    _, depth, _ = _reenact((352, 1216), 0, 7, 0)
    assert torch.equal(model.prompts.random_tokens, torch.cat(depth))
    plain = model_for_experiment(get("t3/kitti/random-7"), rn50)
    assert not torch.equal(plain.prompts.random_tokens, model.prompts.random_tokens)
    assert config_hash(exp) != config_hash(get("t3/kitti/random-7"))
    assert resolve(exp).run_key != resolve("t3/kitti/random-7").run_key
    assert "token init authors" in describe(exp)


def test_token_init_errors(rn50):
    with pytest.raises(ValueError, match="token_init must be"):
        TrainConfig(token_init="theirs")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs authors_dataset"):
        PromptEncoder(rn50, "learned-7", token_init="authors")
    with pytest.raises(ValueError, match="token_init must be one of"):
        PromptEncoder(rn50, "learned-7", token_init="mine")  # type: ignore[arg-type]


def test_token_distance_hand_worked():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    b = torch.tensor([[0.0, 1.0], [0.0, 2.0]])
    d = token_distance(a, b)
    assert d["max_l2"] == pytest.approx(math.sqrt(2))
    assert d["mean_l2"] == pytest.approx(math.sqrt(2) / 2)
    assert d["mean_cosine"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="one shape"):
        token_distance(a, b[:1])


# ---- the authors' config files -------------------------------------------------------------------

# Keys transcribed from the authors' params files (DylanAuty/PromptLearningCLIP-MDE, commit 0b30195);
# every released config shares the basic / optimizer / loss / dataset values below.
_COMMON = {
    "basic": {"batch_size": 16, "max_epochs": 25, "use_adabins_dataloader": True},
    "optimizer": {"name": "adamw", "lr": 0.000357, "wd": 0.1, "div_factor": 25, "final_div_factor": 100,
                  "gradient_clip_val": 0.1},
    "model": {"name": "depthclip"},
    "loss": {"names": ["silog"], "coeffs": [1]},
    "nyu": {"min_depth": 0.001, "max_depth": 10},
    "kitti": {"min_depth": 0.001, "max_depth": 80},
}


def _config(dataset: str, lang_strat: dict[str, str], **depthclip: str) -> dict:
    cfg = {k: dict(v) for k, v in _COMMON.items()}
    cfg["basic"]["dataset"] = dataset
    cfg["depthclip"] = {"clip": "RN50", "lang_strat": lang_strat, **depthclip}
    return cfg


def _write(tmp_path: Path, stem: str, cfg: dict) -> Path:
    path = tmp_path / f"{stem}.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def _console(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="clipdepth")
    experiments_cli.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_from_authors_finds_the_registry_row(tmp_path, capsys):
    # params/depthclip_nyu_rn50_pv1_d7_p_dset-even-7.yaml
    path = _write(tmp_path, "depthclip_nyu_rn50_pv1_d7_p_dset-even-7", _config("nyu", {
        "templates": "paper-v1", "depth_tokens": "depth-7", "object_tokens": "paper",
        "depth_bin_centres": "dset-even-7"}))
    assert from_authors(path).registry == ("t3/nyu/depth-7", "t4/nyu/baseline")
    assert _console(["experiments", "from-authors", str(path)]) == 0
    out = capsys.readouterr().out
    assert "= registry row(s): t3/nyu/depth-7, t4/nyu/baseline" in out and "abs_rel 1.014" in out


def test_from_authors_rs_learned_object_is_a_variant(tmp_path, capsys):
    # params/depthclip_nyu_rn50_rs1o2d_rs7_rs1_dset-even-7.yaml (contents: learned-static-1o2d,
    # learned-static-7, learned-static-1; "rs" in the name = evaluated untrained)
    path = _write(tmp_path, "depthclip_nyu_rn50_rs1o2d_rs7_rs1_dset-even-7", _config("nyu", {
        "templates": "learned-static-1o2d", "depth_tokens": "learned-static-7",
        "object_tokens": "learned-static-1", "depth_bin_centres": "dset-even-7"}))
    match = from_authors(path)
    assert match.registry == () and match.experiment is not None
    exp = match.experiment
    assert (exp.words, exp.template, exp.learned_object, exp.trained) == ("random-7", "1o2d", True, False)
    rebuilt = variant(match.closest, **match.changes)
    assert config_hash(rebuilt) == config_hash(exp)
    assert _console(["experiments", "from-authors", str(path)]) == 0
    out = capsys.readouterr().out
    assert "random-static (rs)" in out and "no registry row has this method" in out and "learned_object=True" in out


def test_from_authors_names_what_we_do_not_implement(tmp_path, capsys):
    # params/depthclip_nyu_rn50_pv1_ls7_ls1_dset-even-7_d_u4_d.yaml
    path = _write(tmp_path, "depthclip_nyu_rn50_pv1_ls7_ls1_dset-even-7_d_u4_d", _config("nyu", {
        "templates": "paper-v1", "depth_tokens": "learned-static-7", "object_tokens": "learned-static-1",
        "depth_bin_centres": "dset-even-7"}, post_img_feat_stage="depthclip", post_lang_corr_stage="upsample-4x",
        post_depth_pred_stage="depthclip"))
    match = from_authors(path)
    assert match.experiment is None
    assert match.config.unsupported == ("depthclip.post_lang_corr_stage: 'upsample-4x' (their decoder/upsampling "
                                        "variant; we keep the low-resolution bin head)",)
    assert _console(["experiments", "from-authors", str(path)]) == 1
    assert "not implemented here" in capsys.readouterr().out


def test_from_authors_bad_input(tmp_path, capsys):
    assert _console(["experiments", "from-authors", str(tmp_path / "missing.yaml")]) == 2
    assert capsys.readouterr().err.strip().endswith("missing.yaml: no such file")
    broken = tmp_path / "broken.yaml"
    broken.write_text("basic: [unclosed\n", encoding="utf-8")
    assert _console(["experiments", "from-authors", str(broken)]) == 2
    err = capsys.readouterr().err.strip()
    assert "broken.yaml: not valid YAML" in err and len(err.splitlines()) == 1
    cfg = _config("nyu", {"templates": "paper-v1", "depth_tokens": "learned-static-20", "object_tokens": "paper",
                          "depth_bin_centres": "dset-even-7"})
    with pytest.raises(ValueError, match=r"7 bin centres \(dset-even-7\) for 20 depth tokens"):
        authors_config_from_mapping(cfg, "x.yaml")


@pytest.mark.parametrize("name", [n for n, (cfg, _) in AUTHORS_CONFIGS.items() if cfg != "none released"])
def test_registry_configs_agree_with_their_file_names(name):
    """Each cited config, read by its file-name legend, maps to the same method as its registry row."""
    path = AUTHORS_CONFIGS[name][0]
    strat = lang_strat_from_stem(path)
    assert strat is not None, path
    dataset = strat.pop("dataset")
    strat.pop("random_static")
    mapped = authors_config_from_mapping(_config(dataset, strat), path)
    assert mapped.unsupported == ()
    exp = EXPERIMENTS[name]
    assert mapped.dataset == exp.dataset
    assert {k: v for k, v in mapped.method.items() if getattr(exp, k) != v} == {}
    if exp.trained:
        assert TrainConfig(**mapped.train) == exp.train


def test_from_authors_description_names_the_file(tmp_path):
    # params/depthclip_kitti_rn50_pv1_d7_ls1_dset-even-7.yaml (read by its file-name legend)
    path = _write(tmp_path, "depthclip_kitti_rn50_pv1_d7_ls1_dset-even-7", _config("kitti", {
        "templates": "paper-v1", "depth_tokens": "depth-7", "object_tokens": "learned-static-1",
        "depth_bin_centres": "dset-even-7"}))
    match = from_authors(path)
    assert (match.closest, match.changes) == ("t3/kitti/depth-7", {"learned_object": True, "trained": True})
    text = describe(match.experiment)
    assert "row       : the authors' config file, KITTI (Eigen), row 'depthclip_kitti_rn50_pv1_d7_ls1" in text
    assert "1 tokens x 512" in text
