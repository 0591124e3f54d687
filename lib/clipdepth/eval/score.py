"""``clipdepth score``: one evaluator for anyone's depth predictions on the NYU and KITTI test sets.

Why: published depth numbers disagree as much because of the evaluation protocol (crop, masks,
averaging, DepthCLIP's pasted canvas) as because of the models. This module scores saved predictions
with the very code the notebooks use (:func:`clipdepth.eval.metrics.compute_metrics`, the crops of
:mod:`clipdepth.eval.metrics`, :func:`clipdepth.eval.protocols.sanitise` and DepthCLIP's placement
:func:`clipdepth.eval.protocols.predict_depthclip_protocol`), so a number printed here and one in a notebook
mean the same thing.

Ground truth comes from the existing readers, split ``test``: :class:`clipdepth.data.NYUDepthV2`
(full 480 x 640 frames) and :class:`clipdepth.data.KITTIEigen` (KB crop 352 x 1216; lines without
ground truth and right-camera lines are skipped as the reader does).

Protocols (:data:`PROTOCOLS`): all keep ``min_depth < gt <= max_depth`` (defaults from
:mod:`clipdepth.data.specs`: NYU 1e-3..10, KITTI 1e-3..80) inside a crop:

- ``eigen_nyu``: rows 45:471, cols 41:601 (BTS/AdaBins, the paper);
- ``depthclip_nyu``: DepthCLIP's own: rows 45:471, cols 46:601, ``gt < max`` (exclusive), a
  prediction of its 416 x 544 input box is pasted into a zero canvas at (top 56, left 60) and only
  ``pred > min_depth`` is scored; a full-frame map is taken as an already pasted canvas;
- ``garg_kitti``: Garg crop fractions on the KB-cropped frame (as the authors' online evaluation);
- ``eigen_kitti``: Eigen crop fractions on the KB-cropped frame;
- ``none``: the whole frame.

Predictions are clamped to ``[min_depth, max_depth]`` first, as BTS/AdaBins/the authors do
(``depthclip_nyu``: clamped to ``max_depth`` only, after pasting, as DepthCLIP does). With
``--median-scaling`` there is no range clamp (the range is in metres, the predictions are not yet),
and each image is scaled by median(gt) / median(pred) over its valid pixels inside compute_metrics.
NaN, infinite or negative predictions are refused, never repaired; zero means "no prediction".

Prediction files and names: a folder of per-image ``.npy``/``.npz``/16-bit ``.png`` files named by
sample (``__`` reads as ``/``), or one ``.h5``/``.hdf5``/``.npz`` bundle keyed by sample name; reading
and matching them is :mod:`clipdepth.eval._prediction_files` (full rule there; its names re-exported here).
Maps must have the ground truth's size (KITTI: the KB crop, or the full raw frame, which is then
KB-cropped; ``depthclip_nyu``: the frame or the 416 x 544 box); other sizes are an error unless
``--resize`` (bilinear, ``align_corners=True``, as the authors upsample).

Averages: ``per_image`` is the mean over images of each image's metrics (the paper, the authors'
``metrics_ra``); ``pixel_pooled`` weighs every valid pixel of every image the same (the authors'
``metrics``; :func:`clipdepth.eval.metrics.pooled_metrics`).

Exit codes follow :mod:`clipdepth.data.cli`: 0 success, 1 data problems (missing, extra, wrongly sized
or invalid predictions, unreadable ground truth), 2 contradictory or unknown arguments. Every problem
is one ``error:`` line naming the file.

Long because: protocols, placement, the scoring loop, the published rows and the command are one
evaluator read top to bottom; reading the files is already apart (:mod:`clipdepth.eval._prediction_files`).
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from clipdepth._files import atomic_write_json, atomic_write_text, output_dir_problem
from clipdepth.data import KITTIEigen, NYUDepthV2, get_spec, kb_crop
from clipdepth.data.base import ListDataset
from clipdepth.data.common import DataError
from clipdepth.eval._prediction_files import (
    BUNDLE_SUFFIXES,
    IMAGE_SUFFIXES,
    Predictions,
    ScoreError,
    match_predictions,
    name_aliases,
    name_from_key,
    open_predictions,
)
from clipdepth.eval.metrics import METRIC_NAMES, average_metrics, compute_metrics, pixel_sums, pooled_metrics
from clipdepth.eval.protocols import depthclip_box, predict_depthclip_protocol, sanitise, upsample
from clipdepth.study.reference import TABLES, load_reference
from clipdepth.vocab import DATASETS

__all__ = [
    "BUNDLE_SUFFIXES",
    "IMAGE_SUFFIXES",
    "PROTOCOLS",
    "Predictions",
    "Protocol",
    "ScoreError",
    "ScoreResult",
    "add_parser",
    "match_predictions",
    "name_from_key",
    "open_predictions",
    "published_rows",
    "score_predictions",
    "name_aliases",
]

#: At most this many problem lines are printed; the rest are counted.
MAX_PROBLEM_LINES = 20


@dataclass(frozen=True)
class Protocol:
    """A named evaluation protocol: which dataset, which crop of :mod:`clipdepth.eval.metrics`, and how the
    prediction is placed and clamped before :func:`compute_metrics`."""

    name: str
    dataset: str | None  # None: any dataset
    crop: str
    max_inclusive: bool = True
    depthclip: bool = False  # DepthCLIP placement: paste the box into a zero canvas, keep pred > min
    description: str = ""


PROTOCOLS: dict[str, Protocol] = {
    p.name: p
    for p in (
        Protocol("eigen_nyu", "nyu", "eigen_nyu", description="rows 45:471, cols 41:601; min < gt <= max"),
        Protocol(
            "depthclip_nyu", "nyu", "depthclip_nyu", max_inclusive=False, depthclip=True,
            description="rows 45:471, cols 46:601; 416x544 box pasted at (56, 60); min < gt < max, pred > min",
        ),
        Protocol("garg_kitti", "kitti", "garg_kitti", description="KB crop, then Garg crop; min < gt <= max"),
        Protocol("eigen_kitti", "kitti", "eigen_kitti", description="KB crop, then Eigen crop; min < gt <= max"),
        Protocol("none", None, "none", description="whole frame; min < gt <= max"),
    )
}


def get_protocol(name: str, dataset: str) -> Protocol:
    """The protocol ``name`` for ``dataset``; a ScoreError (status 2) listing the valid ones otherwise."""
    if name not in PROTOCOLS:
        raise ScoreError(f"unknown protocol {name!r}; valid: {', '.join(PROTOCOLS)}", status=2)
    protocol = PROTOCOLS[name]
    if protocol.dataset not in (None, dataset):
        valid = [p for p, v in PROTOCOLS.items() if v.dataset in (None, dataset)]
        raise ScoreError(
            f"protocol {name!r} is for {protocol.dataset}, not {dataset}; valid for {dataset}: {', '.join(valid)}",
            status=2,
        )
    return protocol


# -- ground truth ----------------------------------------------------------------------------------------


def open_test_set(
    dataset: str,
    root: str | Path,
    split_file: str | Path | None = None,
    depth_root: str | Path | None = None,
    fetch: bool = True,
) -> ListDataset:
    """The test reader. KITTI is opened uncropped so a full-frame prediction can be KB-cropped like
    its ground truth (:func:`kb_crop` is applied by :func:`score_predictions`)."""
    try:
        if dataset == "nyu":
            return NYUDepthV2(root, "test", split_file, fetch=fetch)
        return KITTIEigen(root, depth_root, "test", split_file, crop=False, fetch=fetch)
    except DataError as exc:
        raise ScoreError(" ".join(line.strip() for line in str(exc).splitlines())) from None


# -- scoring -----------------------------------------------------------------------------------------------


@dataclass
class ScoreResult:
    """Per-image metrics (with valid-pixel counts), both averages, and the settings that produced them."""

    names: list[str]
    sources: list[str]
    per_image: list[dict[str, float]]
    n_pixels: list[int]
    per_image_mean: dict[str, float]
    pixel_pooled: dict[str, float]
    settings: dict[str, Any] = field(default_factory=dict)

    def table(self) -> pd.DataFrame:
        """One row per image: name, source, valid pixels, metrics."""
        frame = pd.DataFrame(self.per_image, columns=list(METRIC_NAMES))
        frame.insert(0, "n_pixels", self.n_pixels)
        frame.insert(0, "source", self.sources)
        frame.insert(0, "name", self.names)
        return frame


def place_prediction(
    pred: np.ndarray,
    gt_shape: tuple[int, int],
    raw_shape: tuple[int, int],
    protocol: Protocol,
    *,
    min_depth: float,
    max_depth: float,
    clamp: bool,
    resize: bool,
    where: str,
) -> torch.Tensor:
    """The full-resolution map that is scored, 1 x 1 x H x W, from a saved prediction.

    Order as in :func:`clipdepth.eval.protocols.evaluate`: clamp (``sanitise``) at the saved resolution, then
    upsample; DepthCLIP: paste the box (upsampled to it if needed) into a zero canvas, clamp to max.
    """
    if not np.all(np.isfinite(pred)):
        bad = int(np.size(pred) - np.count_nonzero(np.isfinite(pred)))
        raise ScoreError(f"{where}: prediction has {bad} NaN or infinite value(s)")
    if np.any(pred < 0):
        raise ScoreError(f"{where}: prediction has {int(np.count_nonzero(pred < 0))} negative depth value(s)")
    shape = tuple(pred.shape)
    if shape == raw_shape and raw_shape != gt_shape:
        pred, shape = kb_crop(pred), gt_shape  # KITTI full frame -> the ground truth's KB crop
    low = torch.from_numpy(np.ascontiguousarray(pred))[None, None]
    if protocol.depthclip:
        left, top, right, bottom = depthclip_box(*gt_shape)
        box = (bottom - top, right - left)
        if shape == gt_shape:  # already a pasted canvas
            return low.clamp(max=max_depth)
        if shape != box and not resize:
            raise ScoreError(
                f"{where}: prediction is {shape[0]}x{shape[1]}; depthclip_nyu expects the {box[0]}x{box[1]} input "
                f"box or the {gt_shape[0]}x{gt_shape[1]} frame (or pass --resize)"
            )
        frame = torch.zeros(1, 1, *gt_shape, dtype=low.dtype)
        return predict_depthclip_protocol(lambda _box: low, frame, min_depth, max_depth, flip=False)
    if shape != gt_shape and not resize:
        raise ScoreError(
            f"{where}: prediction is {shape[0]}x{shape[1]}, expected {gt_shape[0]}x{gt_shape[1]} "
            f"(the ground truth's size; pass --resize to upsample bilinearly)"
        )
    if clamp:
        low = sanitise(low, min_depth, max_depth)
    return upsample(low, gt_shape)


def _indices(n: int, progress: bool) -> Iterator[int]:
    indices: Any = range(n)
    if progress:
        from tqdm.auto import tqdm  # progress bar only on a terminal

        indices = tqdm(indices, desc="score", unit="image", leave=False)
    yield from indices


def score_predictions(
    predictions: str | Path,
    dataset: str,
    root: str | Path,
    protocol: str | None = None,
    *,
    split_file: str | Path | None = None,
    depth_root: str | Path | None = None,
    min_depth: float | None = None,
    max_depth: float | None = None,
    median_scaling: bool = False,
    scale: float | None = None,
    resize: bool = False,
    fetch: bool = True,
    progress: bool = False,
) -> ScoreResult:
    """Score saved predictions against a test set under a named protocol (see the module docstring).

    Raises :class:`ScoreError` listing every problem found (status 1 for data, 2 for arguments).
    """
    if dataset not in DATASETS:
        raise ScoreError(f"unknown dataset {dataset!r}; valid: {', '.join(DATASETS)}", status=2)
    spec = get_spec(dataset)
    proto = get_protocol(protocol or spec.eval_crop, dataset)
    min_depth = spec.min_depth if min_depth is None else float(min_depth)
    max_depth = spec.max_depth if max_depth is None else float(max_depth)
    int_scale = None if scale is None else float(scale)  # integer arrays only with a scale given
    scale = spec.depth_scale if scale is None else float(scale)
    if not 0 <= min_depth < max_depth:
        raise ScoreError(f"--min-depth {min_depth} and --max-depth {max_depth}: need 0 <= min < max", status=2)
    if not scale > 0:
        raise ScoreError(f"--scale {scale}: must be > 0", status=2)
    clamp = not median_scaling

    reader = open_test_set(dataset, root, split_file, depth_root, fetch)
    test_names = reader.names()
    if not test_names:
        raise ScoreError(f"{reader.split_file}: the {dataset} test list has no usable sample")
    preds = open_predictions(predictions, scale, int_scale)
    matched = match_predictions(test_names, name_aliases(reader), preds)

    metric_kwargs = dict(
        crop=proto.crop, min_depth=min_depth, max_depth=max_depth, median_scaling=median_scaling,
        max_inclusive=proto.max_inclusive, min_pred=min_depth if proto.depthclip else None,
    )
    rows: list[dict[str, float]] = []
    sums: list[dict[str, float]] = []
    sources: list[str] = []
    problems: list[str] = []
    clamped = [0, 0, 0]  # valid pixels at the maximum depth, at the minimum, all
    for i in _indices(len(reader), progress):
        pred_name = matched[test_names[i]]
        where = preds.sources[pred_name]
        try:
            sample = reader[i]
        except DataError as exc:  # unreadable or empty ground truth: named by the reader
            problems.append(" ".join(line.strip() for line in str(exc).splitlines()))
            continue
        raw_depth = np.asarray(sample.depth, dtype=np.float64)
        gt = kb_crop(raw_depth) if dataset == "kitti" else raw_depth
        try:
            full = place_prediction(
                preds.load(pred_name), tuple(gt.shape), tuple(raw_depth.shape), proto,
                min_depth=min_depth, max_depth=max_depth, clamp=clamp, resize=resize, where=where,
            )
            rows.append(compute_metrics(full, gt, **metric_kwargs))
            sums.append(pixel_sums(full, gt, **metric_kwargs))
        except ScoreError as exc:
            if exc.status == 2:  # the same for every file (an integer array without --scale): say it once
                raise
            problems.extend(exc.lines)
            continue
        except ValueError as exc:  # no valid pixel, non-positive prediction at a valid pixel
            problems.append(f"{where}: cannot score {sample.name!r}: {exc}")
            continue
        if clamp:
            valid = torch.from_numpy((gt > min_depth) & (gt <= max_depth))
            at = full[0, 0][valid]
            clamped[0] += int((at >= max_depth).sum())
            clamped[1] += int((at <= min_depth).sum())
            clamped[2] += int(at.numel())
        sources.append(where)
    if problems:
        raise ScoreError(problems)

    settings = {
        "dataset": dataset,
        "protocol": proto.name,
        "protocol_description": proto.description,
        "crop": proto.crop,
        "min_depth": min_depth,
        "max_depth": max_depth,
        "max_inclusive": proto.max_inclusive,
        "median_scaling": median_scaling,
        "clamp": "max only (DepthCLIP)" if proto.depthclip else ("range" if clamp else "none"),
        "resize": resize,
        "png_scale": scale,
        "predictions": str(Path(predictions)),
        "root": str(Path(root)),
        "split_file": str(reader.split_file),
        "n_images": len(rows),
        "clamped_at_max": clamped[0] / max(clamped[2], 1),
        "clamped_at_min": clamped[1] / max(clamped[2], 1),
        "skipped_lines": dict(reader.skip_reasons),
    }
    return ScoreResult(
        names=list(test_names),
        sources=sources,
        per_image=rows,
        n_pixels=[int(s["n"]) for s in sums],
        per_image_mean=average_metrics(rows),
        pixel_pooled=pooled_metrics(sums),
        settings=settings,
    )


# -- published numbers ----------------------------------------------------------------------------------


def published_rows(dataset: str, keys: Sequence[str] = ()) -> tuple[list[dict[str, Any]], list[str]]:
    """Published rows to print beside a score, and notes on published numbers that are not comparable.

    ``keys`` are registry experiment names (``t3/nyu/learned-7``) or table ids (``t3``, ``depthclip``:
    that table's rows for ``dataset``); empty: the learned-7 row of Table 3, and DepthCLIP for NYU.
    Rows come from :mod:`clipdepth.study.reference` (per-image averages under the paper's protocol, or
    DepthCLIP's for its row); notes from :mod:`clipdepth.study.reference.baselines` (relative or
    normalised numbers, never rows).
    """
    # Imported here: the baselines package imports its models (open_clip, transformers), seconds of
    # start-up that every other ``clipdepth score`` run does not need.
    from clipdepth.study.reference.baselines import PUBLISHED

    ref = load_reference()
    ref = ref[ref["dataset"] == dataset]
    if not keys:
        keys = [f"t3/{dataset}/learned-7"] + (["depthclip/nyu/zero-shot"] if dataset == "nyu" else [])
    chosen = []
    for key in keys:
        if key in TABLES:
            part = ref[ref["table"] == key]
        else:
            part = ref[ref["experiment"] == key]
        if part.empty:
            raise ScoreError(
                f"--compare {key!r}: no published {dataset} row; give a table id ({', '.join(TABLES)}) or an "
                f"experiment name such as t3/{dataset}/learned-7",
                status=2,
            )
        chosen.append(part)
    frame = pd.concat(chosen).drop_duplicates("experiment")
    rows = []
    for _, r in frame.iterrows():
        values = {m: float(r[m]) for m in METRIC_NAMES if m in r and not pd.isna(r[m])}
        protocol = "depthclip_nyu" if r["table"] == "depthclip" else get_spec(dataset).eval_crop
        rows.append({"label": f"published {r['experiment']}", "experiment": r["experiment"], "protocol": protocol,
                     "metrics": values, "source": r["source"]})
    notes = [
        f"{p.method} ({p.regime}): {p.metric} {p.value:+.3f} is {p.kind}, not a metric row ({p.note}); {p.source}"
        for p in PUBLISHED
        if p.dataset == dataset and p.kind != "metric"
    ]
    return rows, notes


# -- output --------------------------------------------------------------------------------------------------


def format_table(result: ScoreResult, compare: Sequence[dict[str, Any]] = ()) -> str:
    """The printed table: per-image mean, pixel-pooled and any published rows, one metric per column."""
    s = result.settings
    head = (
        f"{s['n_images']} {s['dataset']} test images ({s['split_file']}), protocol {s['protocol']} "
        f"({s['protocol_description']}; min {s['min_depth']:g}, max {s['max_depth']:g}), "
        f"clamp {s['clamp']}{', median scaling' if s['median_scaling'] else ''}"
    )
    rows = [("per-image mean", result.per_image_mean), ("pixel-pooled", result.pixel_pooled)]
    rows += [(r["label"], r["metrics"]) for r in compare]
    width = max(len(label) for label, _ in rows)
    lines = [head, " " * width + "".join(f"{m:>10}" for m in METRIC_NAMES)]
    for label, values in rows:
        cells = "".join(f"{values[m]:>10.4f}" if m in values else f"{'-':>10}" for m in METRIC_NAMES)
        lines.append(f"{label:<{width}}{cells}")
    if compare:
        lines.append("published rows are per-image means under " + ", ".join(
            sorted({f"{r['experiment']}: {r['protocol']}" for r in compare})))
    return "\n".join(lines)


def write_outputs(
    result: ScoreResult, out: str | Path, compare: Sequence[dict[str, Any]] = (), notes: Sequence[str] = ()
) -> tuple[Path, Path]:
    """``OUT/per_image.csv`` and ``OUT/summary.json``, each written atomically."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    result.table().to_csv(buf, index=False)  # repr floats: the CSV round-trips exactly
    csv_path = atomic_write_text(folder / "per_image.csv", buf.getvalue())
    summary = {
        "settings": result.settings,
        "per_image_mean": result.per_image_mean,
        "pixel_pooled": result.pixel_pooled,
        "n_pixels": int(sum(result.n_pixels)),
        "published": list(compare),
        "published_notes": list(notes),
    }
    json_path = atomic_write_json(folder / "summary.json", summary)
    return csv_path, json_path


# -- command line ------------------------------------------------------------------------------------------


def add_parser(subparsers) -> None:
    """Register ``clipdepth score`` on the top-level parser."""
    p = subparsers.add_parser(
        "score",
        help="score saved depth predictions on the NYU/KITTI test set under a named protocol",
        description="Score saved depth predictions against the NYU or KITTI test ground truth under a named "
        "protocol, with per-image and pixel-pooled averages (see clipdepth.eval.score).",
    )
    p.add_argument("predictions", help="folder of per-image .npy/.npz/.png files, or one .h5/.npz with all")
    p.add_argument("--dataset", choices=DATASETS, required=True)
    p.add_argument("--root", required=True, help="NYU: the nyu_depth_v2 folder; KITTI: the raw-data root")
    p.add_argument("--depth-root", help="KITTI annotated depth (default ROOT/data_depth_annotated)")
    p.add_argument("--split-file", help="test list (default: found as the readers do)")
    p.add_argument("--protocol", help=f"one of {', '.join(PROTOCOLS)} (default: eigen_nyu / garg_kitti)")
    p.add_argument("--min-depth", type=float, help="valid ground truth above this (default: dataset's, 1e-3)")
    p.add_argument("--max-depth", type=float, help="valid ground truth up to this (default: NYU 10, KITTI 80)")
    p.add_argument("--median-scaling", action="store_true", help="scale each image by median(gt)/median(pred)")
    p.add_argument("--scale", type=float, help="16-bit PNG predictions: depth = value / SCALE (default: GT scale)")
    p.add_argument("--resize", action="store_true", help="upsample other sizes bilinearly (align_corners=True)")
    p.add_argument("--out", help="write OUT/per_image.csv and OUT/summary.json")
    p.add_argument("--compare", nargs="*", metavar="KEY",
                   help="print published rows beside (table ids or experiment names; none given: learned-7, DepthCLIP)")
    p.add_argument("--no-fetch", action="store_true", help="never download the canonical split list")
    p.set_defaults(func=_cmd_score)


def _err(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)


#: Above this share of valid pixels clamped at one end of the range, the score is that of a constant map.
CLAMPED_WARNING = 0.5


def clamp_warning(settings: dict[str, Any]) -> str | None:
    """A loud warning when most valid pixels were clamped at the maximum or minimum depth: predictions in
    another unit (millimetres, or a scale off by 1000) score as a constant map and look like a bad model."""
    for end, limit in (("max", "max_depth"), ("min", "min_depth")):
        share = settings.get(f"clamped_at_{end}", 0.0)
        if share > CLAMPED_WARNING:
            return (f"WARNING: {share:.0%} of the valid pixels were clamped to the {end}imum depth "
                    f"({settings[limit]:g} m): these scores are those of a nearly constant map; are the predictions "
                    "in metres? (for another unit, save floats in metres or pass --scale)")
    return None


def _cmd_score(args: argparse.Namespace) -> int:
    if args.out and (problem := output_dir_problem(args.out, "--out")):  # before the work, not after it
        _err(problem)
        return 2
    try:
        compare, notes = published_rows(args.dataset, args.compare) if args.compare is not None else ([], [])
        result = score_predictions(
            args.predictions, args.dataset, args.root, args.protocol,
            split_file=args.split_file, depth_root=args.depth_root, min_depth=args.min_depth,
            max_depth=args.max_depth, median_scaling=args.median_scaling, scale=args.scale,
            resize=args.resize, fetch=not args.no_fetch, progress=sys.stderr.isatty(),
        )
    except ScoreError as exc:
        for line in exc.lines[:MAX_PROBLEM_LINES]:
            _err(line)
        if len(exc.lines) > MAX_PROBLEM_LINES:
            _err(f"... and {len(exc.lines) - MAX_PROBLEM_LINES} more problems")
        return exc.status
    print(format_table(result, compare))
    warning = clamp_warning(result.settings)
    if warning:
        print(warning, file=sys.stderr)
    for note in notes:
        print(f"note: {note}")
    if args.out:
        csv_path, json_path = write_outputs(result, args.out, compare, notes)
        print(f"wrote {csv_path} and {json_path}")
    return 0

