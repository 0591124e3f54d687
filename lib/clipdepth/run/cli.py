"""Console entry point ``clipdepth``.

Each command group lives next to the code it drives and contributes an ``add_parser(subparsers)``
function; this module only assembles them, so adding a group is one line in ``_GROUPS``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# (module, help) for every command group; the module exposes add_parser(subparsers).
_GROUPS: tuple[tuple[str, str], ...] = (
    ("clipdepth.data.cli", "data"),
    ("clipdepth.study._cli", "experiments"),
    ("clipdepth.run.bench", "bench"),
    ("clipdepth.eval.score", "score"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clipdepth", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for module_name, _ in _GROUPS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:  # a group not built yet must not break the others
            if exc.name is None or not module_name.startswith(exc.name):
                raise
            continue
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
