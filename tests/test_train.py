"""Trainer and feature cache (issue 4, must-show 1-4)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clipdepth.data.transforms import to_tensor
from clipdepth.study import experiments
from clipdepth.train.feature_cache import FeatureCache, FeatureKey
from clipdepth.train.trainer import Trainer, batch_order, resolve_row

N_TRAIN, N_TEST = 16, 4


@pytest.fixture(autouse=True)
def _data_dir(tmp_path_factory, monkeypatch):
    # one synthetic dataset for the whole module (rendered once, reused by every test)
    monkeypatch.setenv("CLIPDEPTH_DATA_DIR", str(tmp_path_factory.getbasetemp() / "train-data"))


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    """One feature cache for the module: entries are keyed, so sharing them is exactly what runs do."""
    return tmp_path_factory.mktemp("feature-cache")


def _trainer(tmp_path, rn50, name="t3/nyu/learned-7", mode="cached", epochs=2, cache=None, **kw) -> Trainer:
    resolved = resolve_row(name, "demo", mode=mode, epochs=epochs)
    kw.setdefault("n_train", N_TRAIN)
    return Trainer(resolved, runs_dir=tmp_path / "runs", cache_dir=cache or tmp_path / "cache", progress=False,
                   clip_model=rn50, n_test=N_TEST, views=2, **kw)


def test_cached_step_equals_faithful_step(tmp_path, rn50):
    """Same batch, BN frozen, no augmentation: the loss and token gradients through the cache's stored
    features equal those through the live image encoder."""
    trainer = _trainer(tmp_path, rn50)
    ds = trainer.split("train")
    idx = [0, 1, 2, 3]
    images = torch.stack([to_tensor(ds[i])[0] for i in idx])
    gt = torch.stack([to_tensor(ds[i])[1] for i in idx])

    live = trainer.model()
    live.train()
    loss_live = trainer.step_loss(live, live.image_features(images), gt)
    loss_live.backward()

    key = FeatureKey("RN50-quickgelu", "random:0", "depthclip", "imagenet", tuple(images.shape[-2:]), "x", "plain",
                     dtype="float32")
    with torch.no_grad():
        entry = FeatureCache(tmp_path / "fc").get_or_build(
            key, len(idx), lambda j: (live.image_features(images[j]), gt[j, 0].numpy()), progress=False)
    cached = trainer.model()
    cached.train()
    feats, depth = entry.batch(list(range(len(idx))))
    loss_cached = trainer.step_loss(cached, feats, depth)
    loss_cached.backward()

    assert abs(loss_live.item() - loss_cached.item()) <= 1e-5
    grad_diff = (live.prompts.depth_tokens.grad - cached.prompts.depth_tokens.grad).abs().max().item()
    assert grad_diff <= 1e-5
    assert live.prompts.depth_tokens.grad.abs().max().item() > 0


def test_demo_learned_7_learns_and_beats_random_7(tmp_path, rn50, shared_cache):
    result = _trainer(tmp_path, rn50, epochs=6, cache=shared_cache).run()
    untrained = _trainer(tmp_path, rn50, name="t3/nyu/random-7", cache=shared_cache).run()
    first, last = result.history[0]["loss"], result.history[-1]["loss"]
    print(f"learned-7: train loss {first:.3f} -> {last:.3f}; test abs_rel {result.metrics['abs_rel']:.3f} "
          f"vs random-7 {untrained.metrics['abs_rel']:.3f}")
    assert last < first
    assert result.metrics["abs_rel"] < untrained.metrics["abs_rel"]
    assert untrained.history == [] and untrained.train_seconds < 1.0
    # a finished run is recognised by its run key and not repeated
    again = _trainer(tmp_path, rn50, epochs=6, cache=shared_cache).run()
    assert again.reused and again.metrics == result.metrics


@pytest.mark.parametrize("mode", ["cached", "faithful"])
def test_resume_is_bit_identical(tmp_path, rn50, shared_cache, mode):
    # faithful mode runs the image encoder every step: fewer images keep the test short
    epochs, n_train = (3, N_TRAIN) if mode == "cached" else (2, 8)
    straight = _trainer(tmp_path / "a", rn50, mode=mode, epochs=epochs, cache=shared_cache, n_train=n_train).run()
    interrupted = _trainer(tmp_path / "b", rn50, mode=mode, epochs=epochs, cache=shared_cache, n_train=n_train)
    interrupted.run(stop_after=1)
    assert sorted(p.name for p in interrupted.run_dir.glob("epoch_*.pt")) == ["epoch_001.pt"]
    resumed = _trainer(tmp_path / "b", rn50, mode=mode, epochs=epochs, cache=shared_cache, n_train=n_train).run()
    a = torch.load(straight.run_dir / "prompts.pt", weights_only=True)["depth_tokens"]
    b = torch.load(resumed.run_dir / "prompts.pt", weights_only=True)["depth_tokens"]
    assert torch.equal(a, b)
    assert resumed.metrics == straight.metrics
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in straight.history]


def test_checkpoint_of_another_config_is_refused(tmp_path, rn50, shared_cache):
    trainer = _trainer(tmp_path, rn50, epochs=1, cache=shared_cache)
    trainer.run(stop_after=1)
    other = _trainer(tmp_path, rn50, name="t3/nyu/learned-7", epochs=2, cache=shared_cache)
    ckpt = trainer.run_dir / "epoch_001.pt"
    with pytest.raises(ValueError, match="belongs to another configuration"):
        other.load_checkpoint(ckpt, other.model())


def test_corrupted_cache_entry_is_rebuilt_not_read(tmp_path):
    cache = FeatureCache(tmp_path)
    key = FeatureKey("RN50-quickgelu", "random:0", "depthclip", "imagenet", (64, 64), "s", "test")
    calls = []

    def compute(idx):
        calls.append(idx)
        return torch.ones(len(idx), 8, 2, 2) * torch.tensor(idx, dtype=torch.float32).view(-1, 1, 1, 1), \
            np.full((len(idx), 64, 64), 2.5)

    first = cache.get_or_build(key, 4, compute, batch_size=2, progress=False)
    assert first.features.dtype == np.float16 and first.features.shape == (4, 8, 2, 2)
    assert float(first.batch([3])[0][0, 0, 0, 0]) == 3.0 and float(first.batch([1])[1].max()) == 2.5
    assert len(calls) == 2
    cache.get_or_build(key, 4, compute, progress=False)
    assert len(calls) == 2  # reused
    path = cache.path(key) / "features.npy"
    del first
    with path.open("r+b") as fh:
        fh.truncate(path.stat().st_size - 16)
    with pytest.warns(UserWarning, match="damaged, rebuilding"):
        rebuilt = cache.get_or_build(key, 4, compute, progress=False)
    assert len(calls) == 3 and rebuilt.features.shape == (4, 8, 2, 2)  # rebuilt in one batch of 8
    # same size but different bytes: caught by the checksum
    with path.open("r+b") as fh:
        fh.seek(-4, 2)
        fh.write(b"\x00\x01\x02\x03")
    with pytest.warns(UserWarning, match="does not match its checksum"):
        assert cache.load(key) is None


def test_batch_order_is_a_seeded_permutation():
    batches = batch_order(42, 3, 10, 4)
    assert [len(b) for b in batches] == [4, 4, 2]
    assert sorted(sum(batches, [])) == list(range(10))
    assert batch_order(42, 3, 10, 4) == batches and batch_order(42, 4, 10, 4) != batches


def test_resolve_row_modes():
    cached = resolve_row("t3/nyu/learned-7", "demo", mode="cached")
    assert cached.train.mode == "cached" and cached.train.bn == "frozen"
    faithful = resolve_row("t3/nyu/learned-7", "demo", mode="faithful")
    assert faithful.train.mode == "faithful" and faithful.train.bn == "adapt"
    assert cached.run_key != faithful.run_key
    untrained = resolve_row("t3/nyu/depth-7", "demo")
    assert untrained.config_hash == experiments.config_hash(experiments.get("t3/nyu/depth-7"))
    assert untrained.epochs == 0
    with pytest.raises(ValueError, match="valid: cached, faithful"):
        resolve_row("t3/nyu/learned-7", mode="fast")
