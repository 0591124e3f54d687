"""The input pipeline (issue 20): results do not depend on the worker count; a resumed run says so (issue 23)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _compare import assert_states_equal

from clipdepth.data.pipeline import InputPipeline, check_workers, default_workers, prefetched
from clipdepth.study import experiments
from clipdepth.study.experiments import resolve as resolve_row
from clipdepth.train.lockstep import LockstepGroup, RunOptions, plan, run_units
from clipdepth.train.step import batch_order
from clipdepth.train.trainer import Trainer

# two trained NYU rows (7 learned depth tokens; 8 learned context tokens): 6 images in batches of 4 = two
# steps, the second one short; two test images
GROUP = ("t3/nyu/learned-7", "t4/nyu/4o4d")
N_TRAIN, N_TEST, BATCH = 6, 2, 4


@pytest.fixture(autouse=True)
def _data_dir(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("CLIPDEPTH_DATA_DIR", str(tmp_path_factory.getbasetemp() / "pipeline-data"))


def _rows(epochs: int = 1):
    return [resolve_row(experiments.variant(experiments.get(n), batch_size=BATCH), "demo", mode="faithful",
                        epochs=epochs) for n in GROUP]


def _options(root: Path, **kw) -> RunOptions:
    return RunOptions(runs_dir=str(root / "runs"), cache_dir=str(root / "cache"), n_train=N_TRAIN, n_test=N_TEST,
                      keep_examples=0, **kw)


def test_lockstep_epoch_is_bit_identical_with_0_1_and_2_workers(tmp_path, rn50):
    """Must show 3: tokens, optimiser and scheduler states, BN statistics, history and every metric."""
    outcomes = {}
    for workers in (0, 1, 2):
        options = _options(tmp_path / f"w{workers}", num_workers=workers)
        results = run_units(_rows(), options, clip_provider=lambda arch, weights: rn50)
        (checkpoint,) = Path(options.runs_dir, "groups").glob("*/epoch_*.pt")
        outcomes[workers] = (results, torch.load(checkpoint, weights_only=True))
        assert all(r.protocol["num_workers"] == workers for r in results)
    ref_results, ref_state = outcomes[0]
    for workers in (1, 2):
        results, state = outcomes[workers]
        assert [r.run_dir.name for r in results] == [r.run_dir.name for r in ref_results]  # not in the run key
        for a, b in zip(results, ref_results, strict=True):
            assert a.metrics == b.metrics and a.per_image == b.per_image and a.pooled == b.pooled
            assert a.history == b.history
        assert_states_equal(state["rows"], ref_state["rows"], "rows")  # tokens, optimiser, scheduler, history
        assert_states_equal(state["bn_buffers"], ref_state["bn_buffers"], "bn")
        assert_states_equal(state["torch_rng"], ref_state["torch_rng"], "rng")  # the loader leaves the global RNG alone


def test_pipeline_batches_equal_the_serial_batches(tmp_path):
    """Every batch of an epoch, built by two workers, equals the batch built in this process."""
    trainer = Trainer(_rows()[0], runs_dir=tmp_path / "runs", progress=False, n_train=N_TRAIN, n_test=N_TEST)
    ds, tf = trainer.split("train"), trainer.transform()
    order = batch_order(trainer.train_cfg.seed, 3, len(ds), BATCH)
    with InputPipeline(ds, tf, num_workers=2) as pipe:
        for epoch in (3, 4):  # persistent workers follow the epoch
            order = batch_order(trainer.train_cfg.seed, epoch, len(ds), BATCH)
            got = list(pipe.epoch(epoch, order))
            assert len(got) == len(order) == 2
            for idx, (images, depth) in zip(order, got, strict=True):
                serial_images, serial_depth = trainer._image_batch([tf(ds[i], epoch, i) for i in idx])
                assert torch.equal(images, serial_images) and torch.equal(depth, serial_depth)
    test = trainer.split("test")
    for sample, i in zip(prefetched(test, 2), range(len(test)), strict=True):
        ref = test[i]
        assert sample.name == ref.name and sample.image.tobytes() == ref.image.tobytes()
        assert sample.depth.tobytes() == ref.depth.tobytes()


def test_worker_count_parameter():
    assert default_workers(1) == 0 and default_workers(2) == 1 and default_workers(16) == 8
    assert check_workers(None) == default_workers() and check_workers(3) == 3
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="num_workers must be an integer >= 0"):
            check_workers(bad)


class _Killed(RuntimeError):
    pass


def test_rerun_after_a_kill_says_it_resumed(tmp_path, rn50, capsys):
    """Issue 23 item 7: one line naming the epoch of the checkpoint a rerun continues from."""
    rows = _rows(epochs=2)
    options = _options(tmp_path / "group", num_workers=0)
    (group,) = plan(rows, options)[0]
    assert isinstance(group, LockstepGroup)

    def kill(epoch: int, step: int) -> None:
        if (epoch, step) == (1, 0):
            raise _Killed

    group.on_step = kill
    with pytest.raises(_Killed):
        group(rn50)
    assert "resumed" not in capsys.readouterr().err  # a fresh start says nothing
    run_units(rows, options, clip_provider=lambda a, w: rn50)
    lines = [line for line in capsys.readouterr().err.splitlines() if "resumed" in line]
    assert len(lines) == 1 and lines[0].startswith("lockstep group of 2 row(s): resumed from the checkpoint of "
                                                   "epoch 1 of 2 (") and lines[0].endswith("epoch_001.pt)")

    trainer = Trainer(rows[0], runs_dir=tmp_path / "alone", progress=False, clip_model=rn50, n_train=N_TRAIN,
                      n_test=N_TEST, num_workers=0)
    trainer.run(stop_after=1, keep_examples=0)
    assert "resumed" not in capsys.readouterr().err
    trainer.run(keep_examples=0)
    lines = [line for line in capsys.readouterr().err.splitlines() if "resumed" in line]
    checkpoint = trainer.run_dir / "epoch_001.pt"
    assert lines == [f"{rows[0].name}: resumed from the checkpoint of epoch 1 of 2 ({checkpoint})"]
