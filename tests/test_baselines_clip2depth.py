"""CLIP2Depth baseline (issue 7, must-show 1-2): only mirror/FiLM/decoder train, counts, demo learning."""

from __future__ import annotations

import pytest
import torch

from clipdepth.baselines import CLIP2Depth, CLIP2DepthConfig, FitConfig, TrainBatches, design_choices, fit, probe_loss
from clipdepth.baselines.runner import run_baseline
from clipdepth.model.backbone import load_clip
from clipdepth.study import experiments

N_TRAIN, N_TEST = 16, 4


@pytest.fixture(autouse=True)
def _data_dir(tmp_path_factory, monkeypatch):
    # one synthetic dataset for the baseline tests (rendered once, reused by every test)
    monkeypatch.setenv("CLIPDEPTH_DATA_DIR", str(tmp_path_factory.getbasetemp() / "baselines-data"))


@pytest.fixture(scope="module")
def vit_b16():
    return load_clip("ViT-B-16", weights=None, seed=0)


def _expected(d: int, ff: int, mirror: tuple[int, int], q_dim: int, tap_widths: list[int],
              deconv_channels: list[tuple[int, int, int]]) -> dict[str, int]:
    """Trainable parameters by formula: Linear = in*out + out; TransformerEncoderLayer = in_proj (3d^2+3d),
    out_proj (d^2+d), two FF linears, two LayerNorms (2d each); deconv = 3x3 conv + transposed convs."""
    block = (3 * d * d + 3 * d) + (d * d + d) + (d * ff + ff) + (ff * d + d) + 2 * (2 * d)
    return {
        "mirror": mirror[0] * mirror[1],
        "film": 2 * (q_dim * d + d),
        "reduce": sum(c * d + d for c in tap_widths),
        "blocks": len(tap_widths) * block,
        "deconv": (d * d * 9 + d) + sum(ci * co * k * k + co for ci, co, k in deconv_channels),
    }


def _batch(h: int = 64, w: int = 96, n: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    images = torch.rand(n, 3, h, w, generator=gen)
    depth = 0.5 + 9 * torch.rand(n, 1, h, w, generator=gen)
    return images, depth


def test_parameter_counts_match_configuration(vit_b16, rn50):
    vit = CLIP2Depth(vit_b16, CLIP2DepthConfig())
    groups = vit.parameter_groups()
    print(f"CLIP2Depth ViT-B/16 trainable: {groups} = {sum(groups.values()):,}")
    # mirror 64 x 512; query 512-d; taps 9/6/3 of width 768; stride 16 -> ConvT x4 (64->32), x4 (32->1)
    assert groups == _expected(64, 2048, (64, 512), 512, [768] * 3, [(64, 32, 4), (32, 1, 4)])
    assert sum(p.numel() for p in vit.trainable_parameters()) == sum(groups.values()) == 1_159_777

    res = CLIP2Depth(rn50, CLIP2DepthConfig(arch="RN50-quickgelu", max_depth=80.0))
    groups = res.parameter_groups()
    print(f"CLIP2Depth RN50 trainable: {groups} = {sum(groups.values()):,}")
    # query 1024-d; taps layer4/3/2 of width 2048/1024/512; stride 8 -> ConvT x4 (64->32), x2 (32->1)
    assert groups == _expected(64, 2048, (64, 512), 1024, [2048, 1024, 512], [(64, 32, 4), (32, 1, 2)])
    assert res(torch.rand(1, 3, 64, 96)).shape == (1, 1, 64, 96)


def test_only_mirror_film_and_decoder_train(vit_b16):
    model = CLIP2Depth(vit_b16, CLIP2DepthConfig())
    clip_before = {k: v.detach().clone() for k, v in vit_b16.state_dict().items()}
    trainable = dict(model.named_parameters())
    trainable = {k: p for k, p in trainable.items() if not k.startswith("clip.")}
    before = {k: p.detach().clone() for k, p in trainable.items()}
    assert {id(p) for p in model.trainable_parameters()} == {id(p) for p in trainable.values()}
    assert not any(p.requires_grad for p in vit_b16.parameters())

    images, depth = _batch()
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-3)
    model.train()
    assert not vit_b16.training  # the frozen encoder stays in eval mode
    loss = model.loss(images, depth)
    loss.backward()
    opt.step()

    for k, v in vit_b16.state_dict().items():
        assert torch.equal(v, clip_before[k]), f"CLIP weight {k} changed"
    unchanged = [k for k, p in trainable.items() if torch.equal(p.detach(), before[k])]
    assert unchanged == [], f"trainable parameters that did not move: {unchanged}"
    assert not torch.equal(model.mirror.detach(), before["mirror"])  # gradient reaches the mirror through CLIP


def test_mirror_is_the_whole_sequence_and_pooled_at_its_last_row(vit_b16):
    """The query depends on every mirror row (the pooled last row sees all under the causal mask) and is
    the EOT-pooled, projected text feature of that sequence."""
    model = CLIP2Depth(vit_b16, CLIP2DepthConfig(mirror_tokens=8))
    q = model.query()
    assert q.shape == (1, 512)
    grad = torch.autograd.grad(q.sum(), model.mirror)[0]
    assert (grad.abs().sum(dim=1) > 0).all()
    with torch.no_grad():
        model.eval()
        cached = model.query()
        assert model.query() is cached  # evaluation reuses the query ...
        model.mirror.add_(0.1)
        assert not torch.equal(model.query(), cached)  # ... until the mirror changes


def test_demo_training_lowers_the_loss(vit_b16):
    """Four steps on 64 x 96 crops of the synthetic NYU scenes with a 16-row mirror (the default 64 rows
    cost four times the text-encoder time; the architecture is otherwise the default)."""
    resolved = experiments.resolve("t3/nyu/learned-7", "demo", train_size=(64, 96))
    batches = TrainBatches(resolved, batch_size=4, seed=0, n_train=N_TRAIN, n_test=N_TEST)
    model = CLIP2Depth(vit_b16, CLIP2DepthConfig(mirror_tokens=16))
    probe = batches.batch([0, 1, 2, 3], epoch=0)
    before = probe_loss(model, *probe)
    result = fit(model, batches, FitConfig(epochs=1, batch_size=4, lr=3e-3, schedule="constant", seed=0),
                 progress=False)
    after = probe_loss(model, *probe)
    print(f"CLIP2Depth demo (NYU synthetic, {result.steps} steps): probe SILog {before:.3f} -> {after:.3f}; "
          f"step losses {[round(h['loss'], 3) for h in result.history]}")
    assert result.steps == len(batches) == N_TRAIN // 4
    assert after < before


def test_run_baseline_writes_and_reuses_results(tmp_path):
    kw = dict(runs_dir=tmp_path, max_steps=1, batch_size=2, n_train=N_TRAIN, n_test=N_TEST, progress=False,
              keep_examples=1, model_options={"arch": "RN50-quickgelu"})
    first = run_baseline("clip2depth", "kitti", **kw)
    assert (first.run_dir / "result.json").is_file() and not first.reused
    assert len(first.history) == 1 and first.n_trainable == sum(first.parameter_groups.values())
    assert set(first.metrics) >= {"abs_rel", "rmse", "d1"} and first.normalised_metrics is None
    assert first.examples[0]["pred"].shape == first.examples[0]["depth"].shape
    again = run_baseline("clip2depth", "kitti", **kw)
    assert again.reused and again.metrics == first.metrics and again.examples[0]["pred"].shape == (96, 320)


def test_design_choices_are_listed():
    rows = design_choices()
    assert {r["component"] for r in rows} >= {"backbone", "mirror", "pooling", "FiLM", "decoder", "loss"}
    assert all(r["choice"] and r["reason"] for r in rows)
