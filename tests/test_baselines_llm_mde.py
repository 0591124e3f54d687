"""LLM-MDE baseline (issue 7, must-show 1-2): LoRA-only towers, counts, prompts, scoring, demo learning.

The parameter-count test builds the authors' full sizes (ViT-B/16, 12-layer BERT, 1,000 prototypes,
24 x 768-wide heads) at random init with a 32 x 32 ViT input; the freezing test steps those same full
towers with smaller adapters around them; the "loss decreases" test uses a smaller configuration
(ViT-Tiny, 2-layer BERT of width 64, 50 prototypes) on 64 x 96 crops of the synthetic scenes so that
enough steps fit in a few seconds on CPU.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from clipdepth.baselines import LLMMDE, FitConfig, LLMMDEConfig, TrainBatches, build_llm_mde, fit, probe_loss
from clipdepth.baselines.llm_mde import (
    DEPTHCLIP_WORDS,
    _build_bert,
    _build_vit,
    _SplitQKV,
    adaptive_prompts,
    demo_tokenizer,
    depth_class,
    image_statistics,
    normalised_metrics,
)
from clipdepth.eval.metrics import compute_metrics
from clipdepth.model.backbone import WeightsUnavailableError
from clipdepth.study import experiments

N_TRAIN, N_TEST = 16, 4
SMALL = dict(image_size=32, vit_name="vit_tiny_patch16_224", bert_layers=2, bert_hidden=64, bert_heads=2,
             bert_intermediate=128, n_prototypes=50, n_heads=2, d_keys=32, vit_lora_rank=8, vit_lora_alpha=16,
             bert_lora_rank=4, bert_lora_alpha=8, head_grid=8)


@pytest.fixture(autouse=True)
def _data_dir(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("CLIPDEPTH_DATA_DIR", str(tmp_path_factory.getbasetemp() / "baselines-data"))


@pytest.fixture(scope="module")
def full_model():
    """The authors' architecture (random init), ViT input 32 x 32 (4 image tokens)."""
    return build_llm_mde("nyu", seed=0, image_size=32)


def _expected(cfg: LLMMDEConfig, vit_width: int, vit_depth: int, vocab: int, n_image_tokens: int) -> dict[str, int]:
    """Trainable parameters by formula (Linear = in*out + out unless bias-free; BN = 2 per channel)."""
    hk = cfg.n_heads * (cfg.d_keys or vit_width)
    d = cfg.bert_hidden
    seq = cfg.prompt_tokens + n_image_tokens

    def fuse(c_in: int, c_out: int) -> int:
        return (9 * c_in * c_out + c_out) + 2 * c_out + (9 * c_out * c_out + c_out) + 2 * c_out

    return {
        # LoRA A (r x in) and B (out x r) on the query and value parts of each ViT block
        "vit_lora": vit_depth * 2 * (cfg.vit_lora_rank * vit_width + vit_width * cfg.vit_lora_rank),
        # LoRA on query, key and value of each BERT layer
        "bert_lora": cfg.bert_layers * 3 * (cfg.bert_lora_rank * d + d * cfg.bert_lora_rank),
        "prototypes": vocab * cfg.n_prototypes + cfg.n_prototypes,
        "reprogramming": (vit_width * hk + hk) + 2 * (d * hk + hk) + (hk * d + d),
        "language_to_depth": 2 * 2 * d * (d // cfg.l2d_reduction),
        "head_linear": (seq * 3 + 3) + (d * cfg.head_grid**2 + cfg.head_grid**2),
        "head_conv": fuse(6, 12) + fuse(15, 24) + fuse(27, 36) + (9 * 36 + 1),
    }


def test_parameter_counts_match_configuration(full_model):
    groups = full_model.parameter_groups()
    total = sum(groups.values())
    frozen = sum(p.numel() for p in full_model.base_parameters().values())
    print(f"LLM-MDE trainable (ViT input 32): {groups} = {total:,}; frozen ViT + BERT: {frozen:,}")
    assert groups == _expected(full_model.config, 768, 12, 30522, 4)
    # the authors' sizes: LoRA r=160 on ViT q,v (5.9 M), r=32 on BERT q,k,v (1.8 M), 1000 prototypes
    assert groups["vit_lora"] == 5_898_240 and groups["bert_lora"] == 1_769_472
    assert groups["prototypes"] == 30_523_000 and groups["reprogramming"] == 56_679_168
    assert sum(p.numel() for p in full_model.trainable_parameters()) == total
    # at their 224 x 224 input the sequence is 114 + 196 = 310 tokens, the length of their token mixer
    paper = _expected(LLMMDEConfig(), 768, 12, 30522, 196)
    assert paper["head_linear"] == 310 * 3 + 3 + 768 * 1024 + 1024
    print(f"LLM-MDE trainable at the paper's 224 x 224: {sum(paper.values()):,}")


def test_only_lora_and_adapter_parameters_train(full_model):
    """Two optimiser steps. The towers are the full ViT-B/16 and 12-layer BERT of ``full_model`` (with
    their LoRA adapters); the adapters around them are rebuilt smaller (50 prototypes, 2 heads, 16 prompt
    tokens) only to keep the steps fast -- their sizes are checked in the test above."""
    small = LLMMDEConfig(image_size=32, n_prototypes=50, n_heads=2, d_keys=64, prompt_tokens=16)
    model = LLMMDE(full_model.vit, full_model.bert, full_model.tokenizer, small, seed=0)
    base = model.base_parameters()
    assert not any(p.requires_grad for p in base.values())
    assert "bert.embeddings.word_embeddings.weight" in base
    assert any(".attn.qkv.q.base_layer.weight" in k for k in base) and any("query.base_layer" in k for k in base)
    base_before = {k: p.detach().clone() for k, p in base.items()}
    trainable = {k: p for k, p in model.named_parameters() if p.requires_grad}
    before = {k: p.detach().clone() for k, p in trainable.items()}
    lora = [k for k in trainable if "lora_" in k]
    assert len(lora) == 12 * 2 * 2 + 12 * 3 * 2  # A and B: ViT q, v; BERT q, k, v
    assert all(k.startswith(("vit.", "bert.")) for k in lora)
    assert set(trainable) - set(lora) == {k for k, _ in model.named_parameters()
                                          if not k.startswith(("vit.", "bert."))}

    gen = torch.Generator().manual_seed(0)
    images, depth = torch.rand(1, 3, 48, 64, generator=gen), 0.5 + 5 * torch.rand(1, 1, 48, 64, generator=gen)
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-3, weight_decay=0.0)
    model.train()
    for _ in range(2):  # LoRA B starts at zero, so A only receives a gradient from the second step on
        opt.zero_grad()
        model.loss(images, depth).backward()
        opt.step()
    model.eval()

    changed_base = [k for k, p in base.items() if not torch.equal(p.detach(), base_before[k])]
    assert changed_base == [], f"frozen ViT/BERT weights changed: {changed_base[:5]}"
    unchanged = [k for k, p in trainable.items() if torch.equal(p.detach(), before[k])]
    assert unchanged == [], f"trainable parameters that did not move: {unchanged[:5]}"


def test_split_qkv_is_exact_and_lora_targets_only_q_and_v(full_model):
    qkv = torch.nn.Linear(16, 48)
    x = torch.randn(3, 5, 16)
    assert torch.equal(_SplitQKV(qkv)(x), qkv(x))
    attn = full_model.vit.blocks[0].attn.qkv
    assert hasattr(attn.q, "lora_A") and hasattr(attn.v, "lora_A") and not hasattr(attn.k, "lora_A")
    self_attn = full_model.bert.encoder.layer[0].attention.self
    assert all(hasattr(getattr(self_attn, n), "lora_A") for n in ("query", "key", "value"))
    assert full_model.vit.blocks[0].attn.qkv.q.scaling["default"] == 2.0  # alpha / r = 320 / 160


def test_adaptive_prompt_statistics_and_class():
    # values grow with the row: every column has its max at row 7, its min at row 0, its median at row 3
    y = torch.arange(8.0).view(1, 1, 8, 1).expand(1, 3, 8, 8).contiguous()
    s = image_statistics(y)[0]
    assert (s["max_y"], s["min_y"], s["median_y"]) == (7, 0, 3)
    # the same along x for the transposed image
    s = image_statistics(y.transpose(2, 3).contiguous())[0]
    assert (s["max_x"], s["min_x"], s["median_x"]) == (7, 0, 3)
    # DepthCLIP bins 1.0 ... 3.0: the most frequent value decides the word; above 3.0 -> the last word
    assert depth_class(torch.full((3, 4, 4), 0.2)) == DEPTHCLIP_WORDS[0] == "giant"
    assert depth_class(torch.full((3, 4, 4), 2.1)) == "not in distance"
    assert depth_class(torch.full((3, 4, 4), 9.0)) == "unseen"
    prompt = adaptive_prompts(y)[0]
    assert "max value on the y axis 7" in prompt and "the depth class of input is" in prompt
    tokens = demo_tokenizer()(prompt)["input_ids"]
    assert 1 not in tokens  # no [UNK]
    assert len(tokens) <= LLMMDEConfig().prompt_tokens


def test_normalised_scoring_forgives_scale_and_shift_metric_does_not():
    gen = np.random.default_rng(0)
    gt = 1.0 + 8.0 * gen.random((32, 48))
    gt[0, 0] = 0.0  # a hole, as real ground truth has
    pred = 0.05 * gt + 0.02  # right shape of the scene, wrong units (like their sigmoid output)
    metric = compute_metrics(np.maximum(pred, 1e-3), gt, "none", 1e-3, 10.0)
    norm = normalised_metrics(pred, gt, "none", 1e-3, 10.0)
    assert metric["abs_rel"] > 0.9 and metric["d1"] == 0.0
    assert norm["d1"] > 0.99 and norm["abs_rel"] < 0.05


def test_demo_training_lowers_the_loss():
    """Smaller configuration (see module docstring) on the synthetic NYU scenes."""
    resolved = experiments.resolve("t3/nyu/learned-7", "demo", train_size=(64, 96))
    batches = TrainBatches(resolved, batch_size=4, seed=0, n_train=N_TRAIN, n_test=N_TEST)
    model = build_llm_mde("nyu", seed=0, **SMALL)
    probe = batches.batch([0, 1, 2, 3], epoch=0)
    before = probe_loss(model, *probe)
    result = fit(model, batches, FitConfig(epochs=1, batch_size=4, lr=1e-3, schedule="constant", seed=0),
                 progress=False)
    after = probe_loss(model, *probe)
    print(f"LLM-MDE (small config) demo (NYU synthetic, {result.steps} steps): probe SILog {before:.3f} -> "
          f"{after:.3f}; step losses {[round(h['loss'], 3) for h in result.history]}")
    assert after < before


def test_paper_profile_without_cache_raises_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(WeightsUnavailableError, match="vit_base_patch16_224"):
        _build_vit(LLMMDEConfig(), pretrained=True)
    with pytest.raises(WeightsUnavailableError, match="bert-base-uncased"):
        _build_bert(LLMMDEConfig(), pretrained=True)
    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_one_pass_scoring_equals_the_metric_protocol():
    """evaluate_normalised's metric half is exactly clipdepth.eval.protocols's authors protocol."""
    from clipdepth.baselines.llm_mde import evaluate_normalised
    from clipdepth.data.profile_data import open_split
    from clipdepth.eval.protocols import evaluate

    resolved = experiments.resolve("t3/nyu/learned-7", "demo")
    test = open_split(resolved, "test", n_train=N_TRAIN, n_test=N_TEST)

    def predict(images: torch.Tensor) -> torch.Tensor:  # any deterministic, image-dependent predictor
        return 0.5 + 4.0 * images.mean(dim=1, keepdim=True)[..., ::4, ::4]

    metric, norm = evaluate_normalised(predict, test, 1e-3, 10.0, test.spec.eval_crop, keep_examples=1)
    reference = evaluate(predict, test, 1e-3, 10.0, test.spec.eval_crop, protocol="authors", progress=False)
    assert metric.mean == reference.mean and metric.names == norm.names == reference.names
    assert norm.mean != metric.mean and 0.0 <= norm.mean["d1"] <= 1.0
    assert metric.examples[0]["pred"].shape == metric.examples[0]["depth"].shape


def _fake_hub_snapshot(cache, repo_id: str):
    """The Hugging Face cache layout (refs/main -> snapshots/<revision>/) for one repository."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    return snapshot


def test_paper_profile_loads_the_cached_checkpoints(tmp_path, monkeypatch):
    """With the checkpoints in the local cache (written here with random weights), the paper path loads
    them offline: timm's ViT from its Hugging Face file, BERT and its tokenizer with local_files_only."""
    import huggingface_hub.constants as hf_constants
    import timm
    from safetensors.torch import save_file
    from transformers import BertConfig, BertModel

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))
    vit_name = "vit_tiny_patch16_224"
    vit = timm.create_model(vit_name, pretrained=False)
    hub_id = timm.models.get_pretrained_cfg(vit_name).hf_hub_id
    save_file(vit.state_dict(), str(_fake_hub_snapshot(tmp_path, hub_id) / "model.safetensors"))
    bert = BertModel(BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128))
    snapshot = _fake_hub_snapshot(tmp_path, "google-bert/bert-base-uncased")
    bert.save_pretrained(snapshot)
    demo_tokenizer().save_pretrained(snapshot)

    cfg = LLMMDEConfig(vit_name=vit_name, image_size=64, bert_layers=2, bert_hidden=64)
    loaded_vit = _build_vit(cfg, pretrained=True)
    assert torch.equal(loaded_vit.blocks[3].attn.qkv.weight, vit.blocks[3].attn.qkv.weight)
    loaded_bert, tokenizer = _build_bert(cfg, pretrained=True)
    assert torch.equal(loaded_bert.encoder.layer[1].attention.self.value.weight,
                       bert.encoder.layer[1].attention.self.value.weight)
    assert tokenizer("giant")["input_ids"][1] != 1  # a real vocabulary entry, not [UNK]
