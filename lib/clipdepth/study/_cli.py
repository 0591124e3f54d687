"""The ``clipdepth experiments`` console group: ``list``, ``describe`` and ``from-authors``.

Apart from :mod:`clipdepth.study.experiments` so that the registry stays importable without the reader of
the authors' YAML configs (:mod:`clipdepth.study.authors_configs`, which itself builds on the registry).
"""

from __future__ import annotations

import argparse
import sys

from clipdepth.study.authors_configs import format_authors_match, from_authors
from clipdepth.study.experiments import DATASETS, UnknownExperimentError, describe, format_table, select

__all__ = ["add_parser"]


def _cmd_list(args: argparse.Namespace) -> int:
    try:
        rows = select(table=args.table, dataset=args.dataset, pattern=args.pattern)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not rows:
        print("no experiments match")
        return 1
    print(format_table(rows))
    print(f"\n{len(rows)} experiments")
    return 0


def _cmd_describe(args: argparse.Namespace) -> int:
    status = 0
    for name in args.names:
        try:
            print(describe(name))
        except UnknownExperimentError as exc:
            print(f"error: {exc}", file=sys.stderr)
            status = 2
    return status


def _cmd_from_authors(args: argparse.Namespace) -> int:
    try:
        match = from_authors(args.path)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_authors_match(match))
    return 0 if match.experiment is not None else 1


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``clipdepth experiments {list,describe,from-authors}`` on the dispatcher's subparsers."""
    parser = subparsers.add_parser(
        "experiments", help="list and describe the named configs of every paper table row"
    )
    sub = parser.add_subparsers(dest="experiments_command", required=True)
    p_list = sub.add_parser("list", help="a table of experiments")
    p_list.add_argument("--table", help="t3..t7 or depthclip (3 and 'table3' also work)")
    p_list.add_argument("--dataset", choices=DATASETS)
    p_list.add_argument("--pattern", help="glob on the name, e.g. '*/nyu/learned-*' (else a substring)")
    p_list.set_defaults(func=_cmd_list)
    p_desc = sub.add_parser("describe", help="everything about one or more experiments")
    p_desc.add_argument("names", nargs="+", metavar="NAME")
    p_desc.set_defaults(func=_cmd_describe)
    p_auth = sub.add_parser(
        "from-authors",
        help="map one of the authors' params/*.yaml files to our experiment (or name what we lack)",
    )
    p_auth.add_argument("path", help="a params/*.yaml of DylanAuty/PromptLearningCLIP-MDE")
    p_auth.set_defaults(func=_cmd_from_authors)
    return parser
