"""``clipdepth bench --parts input``: the input side of a faithful training step, measured in one run.

At the paper's frame sizes (NYU 480x640 JPEG, KITTI 375x1242 PNG KB-cropped to 352x1216, 16-bit depth
PNGs, written into a temporary folder in the real layouts) it times, per frame, the PIL decode, the
augmentation as the library now does it (PIL rotation of the decoded 8-bit image and 16-bit depth,
the authors' order) against the previous hand-written numpy rotation on float images (kept here only,
as the comparison reference), and, per batch with one worker, decode + augment + collate against the
encoder pass of that batch. Then it steps a lockstep group of two trained rows on batches fed by
:class:`clipdepth.data.pipeline.InputPipeline` running ahead with ``workers`` processes, against the
same steps on batches prepared beforehand (compute alone): with the input side overlapped, a step
costs max(input / workers, compute), not their sum.

Where it would live after the restructure: next to :mod:`clipdepth.run.bench` (the benchmarks' package).
"""

from __future__ import annotations

import copy
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, features

from clipdepth.data.common import Sample, read_depth_u16, read_rgb_u8
from clipdepth.data.kitti import KITTIEigen
from clipdepth.data.nyu import NYUDepthV2
from clipdepth.data.pipeline import InputPipeline
from clipdepth.data.transforms import TrainTransform, border_crop, to_tensor
from clipdepth.study.experiments import resolve as resolve_row
from clipdepth.train.losses import SILogTarget
from clipdepth.train.step import make_optimiser, optimiser_steps
from clipdepth.train.trainer import build_model

#: Frames written per dataset (one batch); the timed batches cycle through them.
FRAMES = 16


def _numpy_rotate(image: np.ndarray, depth: np.ndarray, degrees: float) -> tuple[np.ndarray, np.ndarray]:
    """The previous rotation (float image, own bilinear interpolation, nearest depth), the comparison
    reference only: the library rotates with PIL as the authors' loader does."""
    h, w = depth.shape
    if degrees == 0:
        return image.copy(), depth.copy()
    a = np.deg2rad(degrees)
    ca, sa = np.cos(a), np.sin(a)
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    yy, xx = np.mgrid[0:h, 0:w]
    xr, yr = xx - cx, yy - cy
    sx, sy = ca * xr - sa * yr + cx, sa * xr + ca * yr + cy
    x0, y0 = np.floor(sx).astype(np.int64), np.floor(sy).astype(np.int64)
    fx, fy = (sx - x0).astype(np.float32), (sy - y0).astype(np.float32)
    out = np.zeros_like(image, dtype=np.float32)
    for dy, dx, weight in ((0, 0, (1 - fx) * (1 - fy)), (0, 1, fx * (1 - fy)), (1, 0, (1 - fx) * fy), (1, 1, fx * fy)):
        xi, yi = x0 + dx, y0 + dy
        ok = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
        out += np.where(ok[..., None], image[np.clip(yi, 0, h - 1), np.clip(xi, 0, w - 1)], 0) * weight[..., None]
    xn, yn = np.floor(sx + 0.5).astype(np.int64), np.floor(sy + 0.5).astype(np.int64)
    ok = (xn >= 0) & (xn < w) & (yn >= 0) & (yn < h)
    return out, np.where(ok, depth[np.clip(yn, 0, h - 1), np.clip(xn, 0, w - 1)], 0).astype(np.float32)


def _previous_transform(tf: TrainTransform, sample: Sample, epoch: int, index: int) -> Sample:
    """The previous augmentation path (same draws, numpy rotation of the float frame), for timing."""
    cfg, rng = tf.config, tf.rng(epoch, index)
    angle = rng.uniform(-cfg.rotation_deg, cfg.rotation_deg)
    u_top, u_left = rng.random(), rng.random()
    flip, colour = rng.random() < cfg.flip_p, rng.random() < cfg.colour_p
    gamma, brightness = rng.uniform(*cfg.gamma), rng.uniform(*cfg.brightness)
    gains = rng.uniform(cfg.gain[0], cfg.gain[1], size=3)
    image, depth = border_crop(sample.image, sample.depth) if cfg.nyu_border else (sample.image, sample.depth)
    image, depth = _numpy_rotate(image, depth, angle)
    (h, w), (ch, cw) = depth.shape, cfg.crop
    top, left = int(u_top * (h - ch + 1)), int(u_left * (w - cw + 1))
    image, depth = image[top : top + ch, left : left + cw], depth[top : top + ch, left : left + cw]
    if flip:
        image, depth = image[:, ::-1], depth[:, ::-1]
    if colour:
        image = np.power(image, np.float32(gamma)) * np.float32(brightness) * gains.astype(np.float32)
    return Sample(np.ascontiguousarray(np.clip(image, 0, 1), dtype=np.float32), np.ascontiguousarray(depth),
                  sample.name, sample.focal)


def write_frames(root: Path, dataset: str, n: int = FRAMES) -> NYUDepthV2 | KITTIEigen:
    """``n`` paper-size frames in the dataset's layout (textured, with noise and depth holes), as a reader."""
    rng = np.random.default_rng(0)
    h, w = (480, 640) if dataset == "nyu" else (375, 1242)
    yy, xx = np.mgrid[0:h, 0:w]
    lines = []
    for k in range(n):
        base = np.stack([np.sin(xx / (11 + 4 * c + k)) * np.cos(yy / (19 + 3 * c)) for c in range(3)], axis=-1)
        image = np.clip(127 + 90 * base + rng.normal(0, 14, (h, w, 3)), 0, 255).astype(np.uint8)
        depth = (rng.uniform(0.5, 9.5 if dataset == "nyu" else 79.0, (h, w)) *
                 (1000 if dataset == "nyu" else 256)).astype(np.uint16)
        depth[rng.random((h, w)) < (0.05 if dataset == "nyu" else 0.8)] = 0  # KITTI: sparse LiDAR
        if dataset == "nyu":
            rgb, dep = f"scene/rgb_{k:05d}.jpg", f"scene/sync_depth_{k:05d}.png"
            (root / "sync" / "scene").mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(root / "sync" / rgb, quality=95)
            Image.fromarray(depth).save(root / "sync" / dep)
            lines.append(f"/{rgb} /{dep} 518.8579")
        else:
            drive = "2011_09_26_drive_0001_sync"
            rgb = f"2011_09_26/{drive}/image_02/data/{k:010d}.png"
            dep = f"{drive}/proj_depth/groundtruth/image_02/{k:010d}.png"
            for path in (root / "raw" / rgb, root / "depth" / dep):
                path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(root / "raw" / rgb)
            Image.fromarray(depth).save(root / "depth" / dep)
            lines.append(f"{rgb} {dep} 721.5377")
    (root / "list.txt").write_text("\n".join(lines) + "\n")
    if dataset == "nyu":
        return NYUDepthV2(root, "train", split_file=root / "list.txt", fetch=False)
    return KITTIEigen(root / "raw", root / "depth", "train", split_file=root / "list.txt", fetch=False)


def _median(values: list[float]) -> float:
    return float(sorted(values)[len(values) // 2])


def _timed(fn, *args) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_input(dataset: str, rows: list[str], clip_model: Any, device: torch.device, batch_size: int = 16,
                workers: int = 1, steps: int = 2, overlap_batch: int | None = None) -> dict[str, Any]:
    """Per-frame decode and augmentation (new vs previous), per-batch input vs encoder pass at ``batch_size``,
    and the overlap of a lockstep step of the registry rows ``rows`` (paper profile) with the pipeline
    running ahead (see the module docstring). The overlap is measured on batches of ``overlap_batch``
    (default: ``batch_size`` on CUDA, 4 on a CPU, where one step at batch 16 takes minutes), ``steps``
    times, alternating a step fed by the pipeline with a step on a batch prepared beforehand, so both
    see the same load from other processes."""
    if overlap_batch is None:
        overlap_batch = batch_size if device.type == "cuda" else min(batch_size, 4)
    with tempfile.TemporaryDirectory(prefix="clipdepth-bench-input-") as tmp:
        reader = write_frames(Path(tmp), dataset)
        tf = TrainTransform(dataset, seed=42)
        n = len(reader)
        decode, new, old = [], [], []
        for i in range(n):
            item = reader.items[i]
            decode.append(_timed(lambda it=item: (read_rgb_u8(it.rgb), read_depth_u16(it.depth)))[0])
            new.append(_timed(tf, reader.raw(i), 0, i)[0])  # the transform alone, from the decoded frame
            old.append(_timed(_previous_transform, tf, reader[i], 0, i)[0])

        def build(idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
            pairs = [to_tensor(tf(reader.raw(i), 0, i)) for i in idx]
            return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])

        full = [[(k * batch_size + j) % n for j in range(batch_size)] for k in range(2)]
        timed_batches = [_timed(build, idx) for idx in full]
        input_batch_s = _median([t for t, _ in timed_batches])
        images = timed_batches[0][1][0]
        collate_s = _median([_timed(torch.stack, list(b[0]))[0] for _, b in timed_batches])

        names = list(rows)
        resolved = [resolve_row(name, "paper", mode="faithful") for name in names]
        clip = copy.deepcopy(clip_model)
        models = [build_model(r, clip).to(device) for r in resolved]
        for m in models:
            m.train()
        optim = [make_optimiser(m, r.train, 10_000) for m, r in zip(models, resolved, strict=True)]
        clips = [r.train.grad_clip for r in resolved]

        def encode(batch: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                out = models[0].image_features(batch).float()
            _sync(device)
            return out

        def step(batch: torch.Tensor, depth: torch.Tensor) -> None:
            feats = encode(batch)
            optimiser_steps(models, optim, feats, [SILogTarget(depth, tuple(feats.shape[-2:]))] * len(models), clips)
            _sync(device)

        images = images.to(device)
        if device.type == "cuda":
            encode(images)  # warm-up (kernels, allocator)
            encoder_s = _median([_timed(encode, images)[0] for _ in range(3)])
        else:
            encoder_s = _timed(encode, images)[0]  # one pass: minutes at batch 16 on a loaded CPU
        del images

        order = [[(k * overlap_batch + j) % n for j in range(overlap_batch)] for k in range(steps + 1)]
        prepared = [tuple(t.to(device) for t in build(idx)) for idx in order]
        small_input_s = _median([_timed(build, idx)[0] for idx in order[:2]])
        compute, ahead = [], []
        with InputPipeline(reader, tf, workers, device) as pipe:
            it = pipe.epoch(0, order)
            step(*next(it))  # warm-up, includes starting the workers
            step(*prepared[0])
            for k in range(1, steps + 1):
                compute.append(_timed(step, *prepared[k])[0])  # meanwhile the workers are ahead
                start = time.perf_counter()
                step(*next(it))
                ahead.append(time.perf_counter() - start)
        compute_s, ahead_s = _median(compute), _median(ahead)
        per_worker = input_batch_s / max(workers, 1)
        return {
            "dataset": dataset, "frame_size": list(reader.raw(0).image.shape[:2]), "train_size": list(tf.config.crop),
            "batch_size": batch_size, "workers": workers, "rows": names,
            "decoder": f"PIL {Image.__version__}" + (" (libjpeg-turbo)" if features.check_feature("libjpeg_turbo")
                                                     else ""),
            "decode_per_frame_s": _median(decode),
            "augment_per_frame_s": _median(new), "previous_augment_per_frame_s": _median(old),
            "augment_speedup": _median(old) / _median(new),
            "input_per_batch_s": input_batch_s, "collate_per_batch_s": collate_s, "encoder_per_batch_s": encoder_s,
            "input_over_encoder": input_batch_s / encoder_s,
            "bound_vs_encoder": "input" if per_worker > encoder_s else "compute",
            "overlap": {"batch_size": overlap_batch, "steps": steps, "input_per_batch_s": small_input_s,
                        "compute_step_s": compute_s, "step_with_pipeline_s": ahead_s,
                        "step_over_compute": ahead_s / compute_s,
                        "max_input_per_worker_or_compute_s": max(compute_s, small_input_s / max(workers, 1)),
                        "serial_step_s": compute_s + small_input_s},
        }


def summary_lines(report: dict[str, Any]) -> list[str]:
    lines = []
    for name, d in report.get("input", {}).items():
        o = d["overlap"]
        lines.append(
            f"{name} input at {d['frame_size'][0]}x{d['frame_size'][1]} -> {d['train_size'][0]}x{d['train_size'][1]}: "
            f"decode {d['decode_per_frame_s'] * 1e3:.1f} ms/frame ({d['decoder']}); augmentation "
            f"{d['augment_per_frame_s'] * 1e3:.1f} ms/frame (PIL, the authors' order) vs previous "
            f"{d['previous_augment_per_frame_s'] * 1e3:.1f} ms/frame -> {d['augment_speedup']:.1f}x faster")
        lines.append(
            f"{name} per batch of {d['batch_size']} in one worker: decode + augment + collate "
            f"{d['input_per_batch_s']:.3f} s (collate {d['collate_per_batch_s'] * 1e3:.1f} ms) vs encoder pass "
            f"{d['encoder_per_batch_s']:.3f} s -> input/encoder {d['input_over_encoder']:.2f}; with {d['workers']} "
            f"worker(s) {d['bound_vs_encoder']}-bound even against the encoder pass alone")
        lines.append(
            f"{name} lockstep step of {len(d['rows'])} rows, batch {o['batch_size']}: compute alone "
            f"{o['compute_step_s']:.3f} s, with the pipeline ahead ({d['workers']} worker(s)) "
            f"{o['step_with_pipeline_s']:.3f} s = {o['step_over_compute']:.2f}x compute; input "
            f"{o['input_per_batch_s']:.3f} s/batch, serial would be {o['serial_step_s']:.3f} s")
    return lines
