"""``clipdepth bench``: what the feature cache and the truncated context buy, measured in one run.

At the paper's input sizes with a random-init RN50 (same architecture and FLOPs as OpenAI's), it times
one training step in ``faithful`` mode (image encoder on a batch, BN adapt) and in ``cached`` mode
(features read from memory), the text encoder with the context truncated to the longest prompt and
with CLIP's full 77 tokens, and on CUDA the same steps under bf16 autocast. It prints the ratios and
writes ``reports/<profile>/performance.json``. Per-epoch times are per-step times multiplied by the
steps of one paper epoch (NYU 24,231 / KITTI 23,157 images, batch 16); the cached epoch excludes the
one-off cache build, which is reported separately (one faithful image-encoder pass per view).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .backbone import load_clip
from .losses import silog_loss
from .methods import learned_prompt_model
from .prompts import PromptEncoder

PAPER_SIZES = {"nyu": {"train": (416, 544), "test": (480, 640), "n_train": 24231, "max_depth": 10.0},
               "kitti": {"train": (352, 704), "test": (352, 1216), "n_train": 23157, "max_depth": 80.0}}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int = 1) -> float:
    """Median seconds of ``fn`` over ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def _autocast(bf16: bool) -> torch.autocast:
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16)


def _train_step(model: Any, opt: torch.optim.Optimizer, images: torch.Tensor, cached: torch.Tensor,
                gt: torch.Tensor, faithful: bool, bf16: bool) -> None:
    """One optimisation step as the trainer does it, from live images or from cached fp16 features."""
    with _autocast(bf16):
        if faithful:
            with torch.no_grad():
                feats = model.image_features(images).float()
        else:
            feats = cached.float()
        loss = silog_loss(model.forward_features(feats).float(), gt)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.trainable_parameters(), 0.1)
    opt.step()


def bench_dataset(dataset: str, clip_model: Any, device: torch.device, batch_size: int, repeats: int,
                  bf16: bool) -> dict[str, Any]:
    """Faithful vs cached training step (fp32, and bf16 when asked) for one dataset's sizes."""
    spec = PAPER_SIZES[dataset]
    h, w = spec["train"]
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(batch_size, 3, h, w, generator=gen).to(device)
    gt = (torch.rand(batch_size, 1, h, w, generator=gen) * (spec["max_depth"] - 0.5) + 0.5).to(device)
    out: dict[str, Any] = {"train_size": [h, w], "batch_size": batch_size,
                           "steps_per_epoch": -(-spec["n_train"] // batch_size)}
    for precision in ("fp32", "bf16") if bf16 else ("fp32",):
        use_bf16 = precision == "bf16"
        results = {}
        for mode in ("faithful", "cached"):
            model = learned_prompt_model(clip_model, 1e-3, spec["max_depth"],
                                         bn="adapt" if mode == "faithful" else "frozen").to(device)
            model.train()
            opt = torch.optim.AdamW(model.trainable_parameters(), lr=3.57e-4, weight_decay=0.1)
            with torch.no_grad(), _autocast(use_bf16):
                cached = model.image_features(images).float().half()  # the cache stores fp16
            results[mode] = time_call(
                lambda m=model, o=opt, c=cached, f=mode == "faithful", b=use_bf16:
                _train_step(m, o, images, c, gt, f, b),
                device, repeats)
        with torch.no_grad(), _autocast(use_bf16):
            build = time_call(lambda m=model: m.image_features(images), device, repeats) / batch_size
        steps = out["steps_per_epoch"]
        out[precision] = {
            "faithful_step_s": results["faithful"], "cached_step_s": results["cached"],
            "faithful_epoch_s": results["faithful"] * steps, "cached_epoch_s": results["cached"] * steps,
            "cache_build_per_view_s": build * spec["n_train"],
            "faithful_over_cached": results["faithful"] / results["cached"],
        }
    return out


def bench_text(clip_model: Any, device: torch.device, repeats: int) -> dict[str, Any]:
    """Text encoder forward + backward with the truncated and the full 77-token context."""
    out = {}
    for words in ("learned-7", "learned-256"):
        timing = {}
        for label, truncate in (("truncated", True), ("full", False)):
            enc = PromptEncoder(clip_model, words, "baseline", truncate=truncate).to(device)

            def run(enc=enc) -> None:
                enc().sum().backward()

            timing[label] = time_call(run, device, repeats)
            timing[f"{label}_tokens"] = enc.length
        timing["full_over_truncated"] = timing["full"] / timing["truncated"]
        out[words] = timing
    return out


def run_benchmark(datasets: list[str], device: str = "cpu", batch_size: int = 16, repeats: int = 3,
                  arch: str = "RN50-quickgelu") -> dict[str, Any]:
    dev = torch.device(device)
    clip_model = load_clip(arch, weights=None, seed=0, device=dev)
    bf16 = dev.type == "cuda"
    report: dict[str, Any] = {
        "what": "per-step and per-epoch training time, faithful vs cached; text encoder truncated vs full",
        "arch": arch, "weights": "random init (same FLOPs as the real weights)", "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(), "torch": torch.__version__, "repeats": repeats,
        "datasets": {d: bench_dataset(d, clip_model, dev, batch_size, repeats, bf16) for d in datasets},
        "text_encoder": bench_text(clip_model, dev, repeats),
    }
    return report


def summary_lines(report: dict[str, Any]) -> list[str]:
    lines = [f"device: {report['device']} ({report['device_name']}), torch {report['torch']}"]
    for name, d in report["datasets"].items():
        for precision in ("fp32", "bf16"):
            if precision not in d:
                continue
            r = d[precision]
            lines.append(
                f"{name} {precision} batch {d['batch_size']} at {d['train_size'][0]}x{d['train_size'][1]}: "
                f"faithful {r['faithful_step_s'] * 1e3:.1f} ms/step ({r['faithful_epoch_s'] / 60:.1f} min/epoch), "
                f"cached {r['cached_step_s'] * 1e3:.2f} ms/step ({r['cached_epoch_s']:.1f} s/epoch) "
                f"-> cached is {r['faithful_over_cached']:.0f}x faster per epoch; "
                f"one cache view {r['cache_build_per_view_s'] / 60:.1f} min")
    for words, t in report["text_encoder"].items():
        lines.append(f"text encoder {words}: {t['truncated_tokens']} vs {t['full_tokens']} tokens -> "
                     f"truncated is {t['full_over_truncated']:.1f}x faster (forward+backward)")
    return lines


def _cmd(args: argparse.Namespace) -> int:
    datasets = ["nyu", "kitti"] if args.dataset == "both" else [args.dataset]
    report = run_benchmark(datasets, args.device, args.batch_size, args.repeats, args.arch)
    for line in summary_lines(report):
        print(line)
    out = Path(args.out) if args.out else Path(args.reports_dir) / args.profile / "performance.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("bench", help="time faithful vs cached training and truncated vs full context")
    parser.add_argument("--dataset", choices=["nyu", "kitti", "both"], default="both")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--arch", default="RN50-quickgelu")
    parser.add_argument("--profile", default="demo", help="report folder: reports/<profile>/performance.json")
    parser.add_argument("--reports-dir", default="reports")
    parser.add_argument("--out", default=None, help="write the JSON here instead")
    parser.set_defaults(func=_cmd)
    return parser
