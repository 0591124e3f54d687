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
