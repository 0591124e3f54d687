"""The benchmark's timing helper and report formatting (the figures themselves are not asserted)."""

from __future__ import annotations

import torch

from clipdepth.run.bench import summary_lines, time_call
from clipdepth.run.cli import build_parser


def test_time_call_runs_warmup_then_repeats():
    calls = []
    seconds = time_call(lambda: calls.append(1), torch.device("cpu"), repeats=3, warmup=2)
    assert len(calls) == 5 and seconds >= 0


def test_summary_prints_both_ratios():
    step = {"faithful_step_s": 2.0, "cached_step_s": 0.01, "faithful_epoch_s": 3030.0, "cached_epoch_s": 15.15,
            "cache_build_per_view_s": 600.0, "faithful_over_cached": 200.0}
    report = {"device": "cpu", "device_name": "x", "torch": "2", "datasets": {
        "nyu": {"batch_size": 16, "train_size": [416, 544], "fp32": step}},
        "text_encoder": {"learned-7": {"truncated_tokens": 8, "full_tokens": 77, "full_over_truncated": 4.0}}}
    text = "\n".join(summary_lines(report))
    assert "cached is 200x faster per epoch" in text
    assert "truncated is 4.0x faster" in text


def test_bench_is_a_console_command():
    args = build_parser().parse_args(["bench", "--dataset", "nyu", "--batch-size", "2"])
    assert args.dataset == "nyu" and args.batch_size == 2 and callable(args.func)


def test_projection_with_the_input_side_hand_worked():
    """Per dataset every step costs max(lockstep step, input batch / workers): 2 epochs x 3 steps of a 0.5 s step
    whose input takes 4 s in one worker -> with 4 workers 1.0 s a step, 3 s more per epoch than compute alone."""
    from clipdepth.run.bench import PAPER_EPOCHS, _projection_with_input

    report = {"lockstep": {"nyu": {"lockstep_step_s": 0.5, "steps_per_epoch": 3,
                                   "projection_s": {"lockstep": 100.0}}},
              "input": {"nyu": {"input_per_batch_s": 4.0, "workers": 4}}}
    assert _projection_with_input(report) == 100.0 + PAPER_EPOCHS * 3 * 0.5
    report["input"]["nyu"]["workers"] = 16  # 0.25 s per batch: compute-bound, the input side adds nothing
    assert _projection_with_input(report) == 100.0


def test_bench_input_summary_and_workers_option():
    from clipdepth.run.bench_input import summary_lines as input_lines

    d = {"frame_size": [480, 640], "train_size": [416, 544], "decode_per_frame_s": 0.004, "decoder": "PIL",
         "augment_per_frame_s": 0.005, "previous_augment_per_frame_s": 0.025, "augment_speedup": 5.0,
         "batch_size": 16, "input_per_batch_s": 0.2, "collate_per_batch_s": 0.01, "encoder_per_batch_s": 9.0,
         "input_over_encoder": 0.02, "workers": 1, "bound_vs_encoder": "compute", "rows": ["a", "b"],
         "overlap": {"batch_size": 4, "compute_step_s": 3.0, "step_with_pipeline_s": 3.1, "step_over_compute": 1.03,
                     "input_per_batch_s": 0.05, "serial_step_s": 3.05}}
    text = "\n".join(input_lines({"input": {"nyu": d}}))
    assert "-> 5.0x faster" in text and "vs encoder pass 9.000 s" in text and "= 1.03x compute" in text
    args = build_parser().parse_args(["bench", "--parts", "input", "--workers", "3"])
    assert args.parts == "input" and args.workers == 3
