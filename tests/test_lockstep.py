"""Lockstep training of rows that share a data stream (issue 16, must-show 1 and 2) and the shared SILog target."""

from __future__ import annotations

import pytest
import torch
from _compare import assert_states_equal

from clipdepth.eval.protocols import upsample
from clipdepth.study import experiments
from clipdepth.study.experiments import resolve as resolve_row
from clipdepth.train.lockstep import LockstepGroup, RunOptions, SharedEvaluation, SingleRow, plan, run_units, stream_key
from clipdepth.train.losses import SILogTarget, interpolation_matrix, silog_loss
from clipdepth.train.trainer import Trainer

# three trained NYU rows with different token counts and bins: 7 learned depth tokens; 8 learned context
# tokens around the depth-7 words; 20 learned depth tokens on log bins
GROUP = ("t3/nyu/learned-7", "t4/nyu/4o4d", "t6/nyu/learned-20-log")
# batch 4 (a variant of the rows: the optimiser's per-step behaviour is the same) keeps the test small:
# 10 images = three steps per epoch, the last one short
N_TRAIN, N_TEST, EPOCHS, BATCH = 10, 2, 2, 4


@pytest.fixture(autouse=True)
def _data_dir(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("CLIPDEPTH_DATA_DIR", str(tmp_path_factory.getbasetemp() / "lockstep-data"))


def _options(root, **kw) -> RunOptions:
    return RunOptions(runs_dir=str(root / "runs"), cache_dir=str(root / "cache"), n_train=N_TRAIN, n_test=N_TEST,
                      keep_examples=0, **kw)


def _small(name: str):
    return experiments.variant(experiments.get(name), batch_size=BATCH)


def _rows():
    return [resolve_row(_small(name), "demo", mode="faithful", epochs=EPOCHS) for name in GROUP]


def _alone(tmp_path, rn50, name) -> tuple[Trainer, object]:
    trainer = Trainer(resolve_row(_small(name), "demo", mode="faithful", epochs=EPOCHS), runs_dir=tmp_path / "alone",
                      cache_dir=tmp_path / "cache", progress=False, clip_model=rn50, n_train=N_TRAIN, n_test=N_TEST)
    return trainer, trainer.run(keep_examples=0)


def _group_checkpoint(options: RunOptions) -> dict:
    from pathlib import Path

    (path,) = Path(options.runs_dir, "groups").glob("*/epoch_*.pt")
    return torch.load(path, weights_only=True)


def test_lockstep_equals_each_row_trained_alone(tmp_path, rn50):
    """Bit-identical tokens, optimiser and scheduler states, BN statistics, history and every metric.

    In lockstep the three rows' prompts share one text-encoder pass and one backward; this is bit-identical
    because that pass computes each row as alone and the BLAS computes a product's rows independently of
    its height (tests/test_prompt_groups.py checks both)."""
    options = _options(tmp_path / "lockstep")
    units, where = plan(_rows(), options)
    assert [u.kind for u in units] == ["lockstep"] and len(units[0].rows) == 3
    results = dict(zip(GROUP, run_units(_rows(), options, clip_provider=lambda arch, weights: rn50), strict=True))
    group = _group_checkpoint(options)
    assert group["epoch"] == EPOCHS
    for k, name in enumerate(GROUP):
        trainer, alone = _alone(tmp_path, rn50, name)
        together = results[name]
        assert together.metrics == alone.metrics and together.per_image == alone.per_image
        assert together.history == alone.history
        solo = torch.load(trainer.run_dir / f"epoch_{EPOCHS:03d}.pt", weights_only=True)
        row = group["rows"][k]
        assert_states_equal(row["prompts"], solo["prompts"], "prompts")
        assert_states_equal(row["optimizer"], solo["optimizer"], "optimizer")
        assert_states_equal(row["scheduler"], solo["scheduler"], "scheduler")
        assert_states_equal(group["bn_buffers"], solo["bn_buffers"], "bn")
        assert_states_equal(torch.load(together.run_dir / "prompts.pt", weights_only=True), solo["prompts"])
        assert together.protocol["mode"] == "faithful" and together.protocol["bn"] == "adapt"
        assert together.provenance["lockstep_rows"] == 3


class _Killed(RuntimeError):
    pass


def test_kill_mid_epoch_then_rerun_is_bit_identical(tmp_path, rn50):
    straight = dict(zip(GROUP, run_units(_rows(), _options(tmp_path / "a"), clip_provider=lambda a, w: rn50),
                        strict=True))
    options = _options(tmp_path / "b")
    units, _ = plan(_rows(), options)
    (group,) = units
    assert isinstance(group, LockstepGroup)

    def kill(epoch: int, step: int) -> None:
        if (epoch, step) == (1, 0):  # the first step of the second epoch: epoch 1's checkpoint exists
            raise _Killed

    group.on_step = kill
    with pytest.raises(_Killed):
        group(rn50)
    assert _group_checkpoint(options)["epoch"] == 1
    assert not group.is_done()
    resumed = dict(zip(GROUP, run_units(_rows(), options, clip_provider=lambda a, w: rn50), strict=True))
    for name in GROUP:
        assert resumed[name].metrics == straight[name].metrics
        assert resumed[name].history == straight[name].history
        a = torch.load(straight[name].run_dir / "prompts.pt", weights_only=True)
        b = torch.load(resumed[name].run_dir / "prompts.pt", weights_only=True)
        assert_states_equal(a, b)
    # everything finished: a third call reuses every row
    again = run_units(_rows(), options, clip_provider=lambda a, w: rn50)
    assert all(r.reused for r in again)


def test_plan_groups_by_stream_and_shares_untrained_evaluation(tmp_path, rn50):
    names = ["t3/nyu/depth-7", "t3/nyu/random-7", "t3/nyu/learned-7", "t6/nyu/learned-7-even", "t3/kitti/learned-7",
             "depthclip/nyu/zero-shot"]
    rows = [resolve_row(n, "demo", mode="faithful", epochs=1) for n in names]
    options = _options(tmp_path)
    units, where = plan(rows, options)
    kinds = sorted((u.kind, tuple(r.name for r in u.rows)) for u in units)
    assert kinds == [("lockstep", ("t3/kitti/learned-7",)), ("lockstep", ("t3/nyu/learned-7",)),
                     ("shared-eval", ("t3/nyu/depth-7", "t3/nyu/random-7")), ("single", ("depthclip/nyu/zero-shot",))]
    # the same method printed in two tables is one run
    assert where[names.index("t6/nyu/learned-7-even")] == where[names.index("t3/nyu/learned-7")]
    other_seed = resolve_row("t3/nyu/learned-7", "demo", mode="faithful", epochs=1, seed=1)
    assert stream_key(options.trainer(other_seed)) != stream_key(options.trainer(rows[2]))
    assert isinstance(units[[u.kind for u in units].index("single")], SingleRow)
    assert any(isinstance(u, SharedEvaluation) for u in units)


def test_shared_evaluation_equals_rows_evaluated_alone(tmp_path, rn50):
    names = ["t3/nyu/depth-7", "t3/nyu/random-7"]
    rows = [resolve_row(n, "demo", mode="faithful") for n in names]
    shared = dict(zip(names, run_units(rows, _options(tmp_path / "shared"), clip_provider=lambda a, w: rn50),
                      strict=True))
    for name in names:
        trainer = Trainer(resolve_row(name, "demo", mode="faithful"), runs_dir=tmp_path / "alone",
                          progress=False, clip_model=rn50, n_train=N_TRAIN, n_test=N_TEST)
        alone = trainer.run(keep_examples=0)
        assert shared[name].per_image == alone.per_image
        assert shared[name].protocol["mode"] == "untrained"


@pytest.mark.parametrize("size", [(4, 5, 7, 96, 160), (2, 13, 17, 416, 544), (2, 4, 4, 4, 4)])
def test_silog_target_equals_reference_loss(size):
    """The shared target's loss and gradient equal the authors' SILog (interpolate + masked log) to fp32
    rounding; the separable upsampling equals F.interpolate(align_corners=True)."""
    b, h, w, height, width = size
    gen = torch.Generator().manual_seed(0)
    pred = torch.rand(b, 1, h, w, generator=gen) * 5 + 0.5
    gt = torch.rand(b, height, width, generator=gen) * 9 + 0.01
    gt[gt < 1] = 0  # pixels without ground truth
    ref_pred, fast_pred = pred.clone().requires_grad_(), pred.clone().requires_grad_()
    ref = silog_loss(ref_pred, gt)
    ref.backward()
    fast = SILogTarget(gt, (h, w))(fast_pred)
    fast.backward()
    assert abs(ref.item() - fast.item()) <= 1e-6 * ref.item()
    scale = ref_pred.grad.abs().max()
    assert ((ref_pred.grad - fast_pred.grad).abs().max() / scale).item() <= 1e-5
    up = interpolation_matrix(height, h) @ pred @ interpolation_matrix(width, w).T
    assert (up - upsample(pred, (height, width))).abs().max().item() <= 1e-5


def test_silog_target_hand_worked():
    # 1x1 prediction 2 m upsampled to 1x2, gt [1, 4] m: g = [ln 2, -ln 2]; mean 0, mean(g^2) = ln(2)^2
    target = SILogTarget(torch.tensor([[[1.0, 4.0]]]), (1, 1), alpha=10.0, lam=0.85)
    loss = target(torch.full((1, 1, 1, 1), 2.0))
    assert loss.item() == pytest.approx(10 * 0.6931471805599453, rel=1e-6)
    with pytest.raises(ValueError, match="no ground-truth pixel"):
        SILogTarget(torch.zeros(1, 2, 2), (1, 1))
