"""``clipdepth data ...`` commands: check a dataset root, render synthetic data, export, download.

Each command returns an exit code: 0 on success, 1 when the data has problems (missing or corrupt
files, an unusable list, a failed download), 2 for contradictory arguments. Problems are printed one
per line with the file path so they can be fixed by hand; no tracebacks for data problems.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from clipdepth.data.common import DataError


def add_parser(subparsers) -> None:
    """Register the ``data`` command group on the top-level ``clipdepth`` parser."""
    data = subparsers.add_parser("data", help="datasets: check layouts, render synthetic scenes, download")
    sub = data.add_subparsers(dest="data_command", required=True)

    check = sub.add_parser("check", help="verify a dataset root against its split list")
    check.add_argument("--dataset", choices=["nyu", "kitti"], required=True)
    check.add_argument("--root", required=True, help="NYU: the nyu_depth_v2 folder; KITTI: the raw-data root")
    check.add_argument("--split", choices=["train", "test", "all"], default="test")
    check.add_argument("--split-file", help="list to check against (default: found as the readers do)")
    check.add_argument("--depth-root", help="KITTI annotated depth (default ROOT/data_depth_annotated)")
    check.add_argument("--no-decode", action="store_true", help="only check that listed files exist")
    check.add_argument("--no-fetch", action="store_true", help="never download the canonical split list")
    check.add_argument("--subset", type=_positive_int, metavar="N", help="check only the first N lines of each list")
    check.set_defaults(func=_cmd_check)

    synth = sub.add_parser("synth", help="render procedural RGB-D scenes in the NYU or KITTI layout")
    synth.add_argument("--family", choices=["indoor", "outdoor"], help="scene family (not with --paper-shaped)")
    synth.add_argument(
        "--paper-shaped",
        action="store_true",
        help="write OUT/nyu, OUT/kitti/raw, OUT/kitti/depth as the paper profile reads them: full-length "
        "lists, only the first --train/--test frames on disk (rehearse with CLIPDEPTH_DATA_DIR=OUT, --subset)",
    )
    synth.add_argument(
        "--list-lines", type=int, metavar="N", help="--paper-shaped: lists of N lines instead of the real lengths"
    )
    synth.add_argument("--out", required=True)
    synth.add_argument("--train", type=int, required=True, help="number of training frames")
    synth.add_argument("--test", type=int, required=True, help="number of test frames")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="smaller frame size")
    synth.add_argument("--lidar", action="store_true", help="outdoor: sparse LiDAR-like ground truth")
    synth.add_argument("--force", action="store_true", help="re-render even if an identical copy exists")
    synth.set_defaults(func=_cmd_synth)

    export = sub.add_parser("export-nyu", help="write the official NYU test split from the labeled .mat")
    export.add_argument("--mat", required=True, help="nyu_depth_v2_labeled.mat")
    export.add_argument("--splits", required=True, help="splits.mat")
    export.add_argument("--out", required=True, help="nyu_depth_v2 root to write into")
    export.set_defaults(func=_cmd_export)

    dl = sub.add_parser("download", help="fetch freely downloadable data (resumable)")
    dl.add_argument("what", choices=["splits", "nyu-labeled", "kitti-eigen-test"])
    dl.add_argument("--out", required=True, help="destination folder (KITTI: the raw-data root)")
    dl.add_argument("--split-file", help="KITTI: Eigen test list (default: the canonical one)")
    dl.add_argument("--timeout", type=float, default=5.0)
    dl.set_defaults(func=_cmd_download)


def _err(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)


def _positive_int(text: str) -> int:
    """argparse type for a count of list lines: a usage error (exit 2) for 0 or less."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive number of list lines, got {value}")
    return value


def _cmd_check(args: argparse.Namespace) -> int:
    from clipdepth.data.kitti import KITTIEigen
    from clipdepth.data.nyu import NYUDepthV2

    splits = ["train", "test"] if args.split == "all" else [args.split]
    if args.split_file and len(splits) > 1:
        _err("--split-file names one list; choose --split train or --split test")
        return 2
    status = 0
    reported: set[str] = set()  # a missing root fails both splits of --split all the same way: say it once
    for split in splits:
        try:
            if args.dataset == "nyu":
                reader = NYUDepthV2(
                    args.root, split, args.split_file, on_missing="skip", fetch=not args.no_fetch, subset=args.subset
                )
            else:
                reader = KITTIEigen(
                    args.root,
                    args.depth_root,
                    split,
                    args.split_file,
                    on_missing="skip",
                    fetch=not args.no_fetch,
                    subset=args.subset,
                )
        except DataError as exc:
            if str(exc) not in reported:
                reported.add(str(exc))
                _err(str(exc))
            status = 1
            continue
        if args.no_decode:
            from clipdepth.data.base import CheckReport

            report = CheckReport(
                args.dataset,
                split,
                reader.split_file,
                len(reader.listed),
                len(reader),
                skipped=reader.skip_reasons,
                missing=reader.missing_report(),
                list_length=reader.list_length,
            )
        else:
            report = reader.check(progress=sys.stderr.isatty())
        for line in report.lines():
            print(line)
        if not report.ok:
            status = 1
    return status


def _cmd_synth(args: argparse.Namespace) -> int:
    from clipdepth.data.synthetic import ensure_synthetic_dataset

    if args.train < 0 or args.test < 0:
        _err("--train and --test must be >= 0")
        return 2
    if args.paper_shaped:
        return _synth_paper_shaped(args)
    if args.family is None:
        _err("--family is required (or use --paper-shaped)")
        return 2
    if args.list_lines is not None:
        _err("--list-lines needs --paper-shaped")
        return 2
    try:
        root = ensure_synthetic_dataset(
            args.family,
            args.out,
            args.train,
            args.test,
            args.seed,
            tuple(args.size) if args.size else None,
            lidar=args.lidar,
            force=args.force,
        )
    except ValueError as exc:
        _err(str(exc))
        return 2
    layout = "NYU (BTS)" if args.family == "indoor" else "KITTI (Eigen/BTS)"
    print(f"{root}: {args.train} train + {args.test} test {args.family} frames in the {layout} layout")
    return 0


def _synth_paper_shaped(args: argparse.Namespace) -> int:
    from clipdepth.data.paper_shaped import LIST_KEYS, write_paper_shaped

    given = [f for f, v in (("--family", args.family), ("--size", args.size), ("--lidar", args.lidar)) if v]
    if given:
        _err(f"--paper-shaped writes fixed layouts and sizes; drop {', '.join(given)}")
        return 2
    lines = None if args.list_lines is None else dict.fromkeys(LIST_KEYS, args.list_lines)
    try:
        info = write_paper_shaped(args.out, args.train, args.test, lines, seed=args.seed)
    except ValueError as exc:
        _err(str(exc))
        return 2
    for name in ("nyu", "kitti"):
        counts = info[name]["splits"]
        print(
            f"{info[name]['root']}: {name} lists of {counts['train']['count']:,} train / "
            f"{counts['test']['count']:,} test lines; the first {args.train} / {args.test} exist on disk"
        )
    most = min(args.train, args.test)
    print(f"rehearse the paper profile with CLIPDEPTH_DATA_DIR={info['root']} and --subset <= {most}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from clipdepth.data.nyu import export_official_test

    try:
        path = export_official_test(args.mat, args.splits, args.out, progress=sys.stderr.isatty())
    except DataError as exc:
        _err(str(exc))
        return 1
    print(f"wrote the official NYU test split under {Path(args.out) / 'official_splits/test'}; list {path}")
    return 0


def _cmd_download(args: argparse.Namespace) -> int:
    from clipdepth.data import download as dl
    from clipdepth.data.splits import CANONICAL_SHA256, get_split_file

    try:
        if args.what == "splits":
            for name in CANONICAL_SHA256:
                path = get_split_file(name, timeout=args.timeout)
                print(path)
        elif args.what == "nyu-labeled":
            for path in dl.download_nyu_labeled(args.out, timeout=args.timeout):
                print(path)
        else:
            split_file = args.split_file or get_split_file(
                "eigen_test_files_with_gt.txt", timeout=args.timeout
            )
            drives = dl.download_kitti_eigen(args.out, split_file, timeout=args.timeout)
            print(f"{len(drives)} drives under {args.out}")
    except DataError as exc:
        _err(str(exc))
        return 1
    return 0
