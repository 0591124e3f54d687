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
import copy
import platform
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from clipdepth._files import atomic_write_json
from clipdepth.data.pipeline import check_workers
from clipdepth.model.backbone import dense_features, load_clip, resolve_device
from clipdepth.model.factory import learned_prompt_model
from clipdepth.model.prompt_learner import PromptEncoder, encode_prompts
from clipdepth.study import experiments
from clipdepth.study.experiments import TrainConfig
from clipdepth.train.losses import SILogTarget
from clipdepth.train.step import make_optimiser, optimiser_step, optimiser_steps
from clipdepth.train.trainer import build_model
from clipdepth.vocab import DATASETS

PAPER_SIZES = {"nyu": {"train": (416, 544), "test": (480, 640), "n_train": 24231, "n_test": 654,
                       "max_depth": 10.0},
               "kitti": {"train": (352, 704), "test": (352, 1216), "n_train": 23157, "n_test": 652,
                         "max_depth": 80.0}}
PAPER_TABLES = ("t3", "t4", "t5", "t6", "t7")
PAPER_EPOCHS = 25

#: How the projection of Tables 3-7 is computed (written into performance.json so a GPU figure can be
#: plugged into the same formula).
PROJECTION_FORMULA = (
    "per dataset d: train = epochs * ceil(n_train_d / batch) * step_d, with step_d = encoder_s + target_s + "
    "group_rows_s (lockstep: every row's text in one pass, heads, losses, one backward, per-row steps) or "
    "sum_i (encoder_s + target_s + row_step_s[i]) (separate); "
    "eval = passes_d * n_test_d * 2 * eval_encoder_s (2 = image and mirror; lockstep: one pass for the "
    "trained group plus one shared by the untrained rows; separate: one per row); total = sum over d. "
    "With the input side (parts lockstep and input together): the pipeline builds batches ahead in `workers` "
    "processes, so a lockstep step costs max(step_d, input_batch_d / workers) with input_batch_d = decode + "
    "augment + collate of one batch in one worker (lockstep_with_input)"
)


def distinct_trained_rows(dataset: str, tables: tuple[str, ...] = PAPER_TABLES) -> list[str]:
    """Registry names of the trained rows of ``tables`` for ``dataset``, one per distinct method
    (a row printed in several tables is trained once)."""
    seen: dict[str, str] = {}
    for exp in experiments.EXPERIMENTS.values():
        if exp.dataset == dataset and exp.trained and exp.table in tables:
            seen.setdefault(experiments.config_hash(exp), exp.name)
    return list(seen.values())


def _untrained_rows(dataset: str, tables: tuple[str, ...] = PAPER_TABLES) -> int:
    return len({experiments.config_hash(e) for e in experiments.EXPERIMENTS.values()
                if e.dataset == dataset and not e.trained and e.table in tables})


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


def _train_step(model: Any, optim: tuple, images: torch.Tensor, cached: torch.Tensor, gt: torch.Tensor,
                faithful: bool, bf16: bool) -> None:
    """One optimisation step as the trainer does it (:func:`clipdepth.train.step.optimiser_step`),
    from live images or from cached fp16 features."""
    with torch.no_grad(), _autocast(bf16):
        feats = model.image_features(images).float() if faithful else cached.float()
    params, opt, sched = optim
    optimiser_step(model, params, opt, sched, feats, SILogTarget(gt, tuple(feats.shape[-2:])),
                   TrainConfig().grad_clip, lambda: _autocast(bf16))


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
            optim = make_optimiser(model, TrainConfig(), 10_000)
            with torch.no_grad(), _autocast(use_bf16):
                cached = model.image_features(images).float().half()  # the cache stores fp16
            results[mode] = time_call(
                lambda m=model, o=optim, c=cached, f=mode == "faithful", b=use_bf16:
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


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


def bench_lockstep(dataset: str, clip_model: Any, device: torch.device, batch_size: int = 16,
                   repeats: int = 1) -> dict[str, Any]:
    """One lockstep step for the distinct trained rows of Tables 3-7 against the same rows stepped
    separately (each with its own encoder pass), in one run, with the per-part costs.

    Paper sizes, random-init weights, fp32, BN adapt (the faithful protocol). A row stepped alone is the
    trainer's own :func:`clipdepth.train.step.optimiser_step`; "text" is its prompt encoder's forward
    and backward alone and "head_loss_backward" the rest of its step (row step minus text). The lockstep
    rows are stepped by :func:`clipdepth.train.step.optimiser_steps` ("group_rows_s"), whose one text
    pass for all rows is timed alone as "group_text_s".
    """
    spec = PAPER_SIZES[dataset]
    names = distinct_trained_rows(dataset)
    h, w = spec["train"]
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(batch_size, 3, h, w, generator=gen).to(device)
    gt = torch.rand(batch_size, 1, h, w, generator=gen) * (spec["max_depth"] - 0.5) + 0.5
    gt[torch.rand(gt.shape, generator=gen) < 0.2] = 0.0  # pixels without ground truth, as in real data
    gt = gt.to(device)
    clip = copy.deepcopy(clip_model)
    rows = [experiments.resolve(n, "paper", "faithful") for n in names]
    models = [build_model(r, clip).to(device) for r in rows]
    for m in models:
        m.train()
    optim = [make_optimiser(m, r.train, 10_000) for m, r in zip(models, rows, strict=True)]

    def encode() -> torch.Tensor:
        with torch.no_grad():
            return models[0].image_features(images).float()

    feats = encode()
    size = tuple(feats.shape[-2:])
    target_s = time_call(lambda: SILogTarget(gt, size), device, repeats)
    target = SILogTarget(gt, size)
    per_row = []
    for name, model, (params, opt, sched), r in zip(names, models, optim, rows, strict=True):
        text_s = time_call(lambda m=model: m.text_features().sum().backward(), device, repeats)
        step_s = time_call(lambda m=model, p=params, o=opt, s=sched, c=r.train.grad_clip:
                           optimiser_step(m, p, o, s, feats, target, c), device, repeats)
        per_row.append({"row": name, "prompts": model.prompts.n_prompts, "row_step_s": step_s, "text_s": text_s,
                        "head_loss_backward_s": max(step_s - text_s, 0.0)})

    group_text_s = time_call(lambda: torch.stack([t.sum() for t in encode_prompts([m.prompts for m in models])])
                             .sum().backward(), device, repeats)
    clips = [r.train.grad_clip for r in rows]
    rows_s = time_call(lambda: optimiser_steps(models, optim, feats, [target] * len(models), clips), device, repeats)

    def lockstep_step() -> None:
        f = encode()
        t = SILogTarget(gt, size)
        optimiser_steps(models, optim, f, [t] * len(models), clips)

    lockstep_s = time_call(lockstep_step, device, repeats)  # warmed like the separate steps below
    separate_s = 0.0
    for model, (params, opt, sched), r in zip(models, optim, rows, strict=True):
        def alone(m=model, p=params, o=opt, s=sched, c=r.train.grad_clip) -> None:
            f = encode()
            optimiser_step(m, p, o, s, f, SILogTarget(gt, size), c)

        separate_s += time_call(alone, device, repeats, warmup=0)
    # timed last, on a warm allocator: the first passes after building the models pay for first-touch pages
    encoder_s = time_call(encode, device, max(2, repeats), warmup=0)
    th, tw = spec["test"]
    test_image = torch.rand(1, 3, th, tw, generator=gen).to(device)
    models[0].eval()
    with torch.no_grad():
        eval_encoder_s = time_call(lambda: dense_features(clip, test_image, "depthclip"), device, repeats)
    steps = -(-spec["n_train"] // batch_size)
    n_rows, n_untrained = len(names), _untrained_rows(dataset)
    eval_lockstep = 2 * spec["n_test"] * 2 * eval_encoder_s
    eval_separate = (n_rows + n_untrained) * spec["n_test"] * 2 * eval_encoder_s
    return {
        "dataset": dataset, "train_size": [h, w], "batch_size": batch_size, "rows": names,
        "encoder_s": encoder_s, "target_s": target_s, "per_row": per_row,
        "group_text_s": group_text_s, "group_rows_s": rows_s,
        "lockstep_step_s": lockstep_s, "separate_steps_s": separate_s,
        "lockstep_speedup": separate_s / lockstep_s,
        "eval_encoder_s": eval_encoder_s, "steps_per_epoch": steps, "epochs": PAPER_EPOCHS,
        "projection_s": {
            "lockstep": PAPER_EPOCHS * steps * lockstep_s + eval_lockstep,
            "separate_faithful": PAPER_EPOCHS * steps * separate_s + eval_separate,
        },
        "untrained_rows": n_untrained,
        "peak_memory_mb": _peak_memory_mb(device),
        "peak_memory_note": ("process peak resident set size (CPU) or peak CUDA allocation; a lockstep group "
                             "holds one batch, its features and the rows' tokens and optimiser states, so it does "
                             "not grow with the dataset; faithful mode writes nothing per image to disk"),
    }


PARTS: tuple[str, ...] = ("lockstep", "cached", "text", "input")
DEFAULT_PARTS: tuple[str, ...] = ("lockstep", "cached", "text")


def _projection_with_input(report: dict[str, Any]) -> float:
    """Tables 3-7 with the input side: per dataset, every step costs max(lockstep step, input batch / workers)."""
    total = 0.0
    for name, d in report["lockstep"].items():
        inp = report["input"][name]
        step = max(d["lockstep_step_s"], inp["input_per_batch_s"] / max(inp["workers"], 1))
        total += d["projection_s"]["lockstep"] + PAPER_EPOCHS * d["steps_per_epoch"] * (step - d["lockstep_step_s"])
    return total


def run_benchmark(datasets: list[str], device: str = "cpu", batch_size: int = 16, repeats: int = 3,
                  arch: str = "RN50-quickgelu", parts: tuple[str, ...] = DEFAULT_PARTS,
                  workers: int | None = None) -> dict[str, Any]:
    """Every measurement of ``parts`` (lockstep vs separate faithful; faithful vs cached; text encoder; input
    side: decode, augmentation, and a lockstep step with the input pipeline running ahead in ``workers``
    processes, the machine's default when None)."""
    dev = torch.device(device)
    clip_model = load_clip(arch, weights=None, seed=0, device=dev)
    bf16 = dev.type == "cuda"
    report: dict[str, Any] = {
        "what": "lockstep vs separate faithful steps; faithful vs cached steps; text encoder truncated vs full",
        "arch": arch, "weights": "random init (same FLOPs as the real weights)", "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(), "torch": torch.__version__, "repeats": repeats,
        "projection_formula": PROJECTION_FORMULA,
    }
    if "lockstep" in parts:
        report["lockstep"] = {d: bench_lockstep(d, clip_model, dev, batch_size, max(1, repeats // 3))
                              for d in datasets}
        report["projection_tables_3_7_s"] = {k: sum(v["projection_s"][k] for v in report["lockstep"].values())
                                             for k in ("lockstep", "separate_faithful")}
    if "cached" in parts:
        report["datasets"] = {d: bench_dataset(d, clip_model, dev, batch_size, repeats, bf16) for d in datasets}
    if "text" in parts:
        report["text_encoder"] = bench_text(clip_model, dev, repeats)
    if "input" in parts:
        from clipdepth.run.bench_input import bench_input  # the input side's own module (its frames, the previous path)

        report["workers"] = max(1, check_workers(workers))
        report["input"] = {d: bench_input(d, distinct_trained_rows(d)[:2], clip_model, dev, batch_size,
                                          report["workers"]) for d in datasets}
        if "lockstep" in parts:
            report["projection_tables_3_7_s"]["lockstep_with_input"] = _projection_with_input(report)
            report["input_bound"] = {  # is the step of the Tables 3-7 group waiting for its batches?
                d: "input" if report["input"][d]["input_per_batch_s"] / report["workers"]
                > report["lockstep"][d]["lockstep_step_s"] else "compute" for d in datasets}
    return report


def summary_lines(report: dict[str, Any]) -> list[str]:
    lines = [f"device: {report['device']} ({report['device_name']}), torch {report['torch']}"]
    for name, d in report.get("lockstep", {}).items():
        rows = d["per_row"]
        lines.append(
            f"{name} lockstep, {len(rows)} trained rows, batch {d['batch_size']} at {d['train_size'][0]}x"
            f"{d['train_size'][1]}: encoder {d['encoder_s']:.2f} s + rows {sum(r['row_step_s'] for r in rows):.2f} s"
            f" alone; in lockstep encoder + all rows {d['group_rows_s']:.2f} s (their text in one pass "
            f"{d['group_text_s']:.2f} s) = {d['lockstep_step_s']:.2f} s/step vs separate {d['separate_steps_s']:.2f} s"
            f" -> lockstep is {d['lockstep_speedup']:.1f}x faster")
        for r in rows:
            lines.append(f"  {r['row']:<26} {r['prompts']:>3} prompts: step {r['row_step_s'] * 1e3:7.1f} ms "
                         f"(text {r['text_s'] * 1e3:6.1f} ms, "
                         f"head+loss+backward {r['head_loss_backward_s'] * 1e3:6.1f} ms)")
    if "projection_tables_3_7_s" in report:
        proj = report["projection_tables_3_7_s"]
        with_input = ""
        if "lockstep_with_input" in proj:
            hours = proj["lockstep_with_input"] / 3600
            with_input = f"; with the input side ({report['workers']} worker(s)) {hours:.1f} h"
        lines.append(f"Tables 3-7, {', '.join(report['lockstep'])}, faithful protocol on this device: lockstep "
                     f"{proj['lockstep'] / 3600:.1f} h vs separate {proj['separate_faithful'] / 3600:.1f} h"
                     + with_input)
    for name, d in report.get("datasets", {}).items():
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
    for words, t in report.get("text_encoder", {}).items():
        lines.append(f"text encoder {words}: {t['truncated_tokens']} vs {t['full_tokens']} tokens -> "
                     f"truncated is {t['full_over_truncated']:.1f}x faster (forward+backward)")
    if "input" in report:
        from clipdepth.run.bench_input import summary_lines as input_lines

        lines.extend(input_lines(report))
        for name, bound in report.get("input_bound", {}).items():
            lines.append(f"{name}: the lockstep step of Tables 3-7 is {bound}-bound with {report['workers']} worker(s) "
                         f"(input {report['input'][name]['input_per_batch_s']:.3f} s/batch per worker vs step "
                         f"{report['lockstep'][name]['lockstep_step_s']:.3f} s)")
    return lines


def _cmd(args: argparse.Namespace) -> int:
    datasets = list(DATASETS) if args.dataset == "both" else [args.dataset]
    parts = tuple(p.strip() for p in args.parts.split(",") if p.strip())
    bad = [p for p in parts if p not in PARTS]
    if bad or not parts:
        print(f"error: --parts: unknown {', '.join(bad) or '(empty)'}; valid: {', '.join(PARTS)}", file=sys.stderr)
        return 2
    device = resolve_device(args.device)  # "auto": CUDA when visible, else CPU (as in the notebooks)
    if device.startswith("cuda") and not torch.cuda.is_available():
        print(f"error: --device {args.device}: CUDA is not available on this machine; use --device cpu or auto",
              file=sys.stderr)
        return 2
    if args.workers is not None and args.workers < 0:
        print(f"error: --workers: {args.workers} is negative; use 0 or more (0 = build batches in this process)",
              file=sys.stderr)
        return 2
    report = run_benchmark(datasets, device, args.batch_size, args.repeats, args.arch, parts, args.workers)
    for line in summary_lines(report):
        print(line)
    out = Path(args.out) if args.out else Path(args.reports_dir) / args.profile / "performance.json"
    atomic_write_json(out, report)
    print(f"wrote {out}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("bench", help="time lockstep vs separate faithful training, cached mode, context")
    parser.add_argument("--dataset", choices=[*DATASETS, "both"], default="nyu")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (CUDA when visible; default)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--arch", default="RN50-quickgelu")
    parser.add_argument("--parts", default=",".join(DEFAULT_PARTS),
                        help="comma-separated: lockstep (lockstep vs separate faithful steps, per-part costs, "
                             "projection of Tables 3-7), cached (faithful vs cached step), text (truncated context), "
                             "input (decode, augmentation, input pipeline vs compute; not in the default)")
    parser.add_argument("--workers", type=int, default=None,
                        help="input pipeline processes for --parts input (default: min(8, cores - 1))")
    parser.add_argument("--profile", default="demo", help="report folder: reports/<profile>/performance.json")
    parser.add_argument("--reports-dir", default="reports")
    parser.add_argument("--out", default=None, help="write the JSON here instead")
    parser.set_defaults(func=_cmd)
    return parser
