"""Compare the metrics of two report folders bit for bit: did a change move any number?

Usage: python benchmarks/compare_reports.py BEFORE/reports/demo AFTER/reports/demo

For every notebook's ``results.json`` present in both folders, every row (experiment, seed) and every
metric (per-image means, pixel-pooled values and each image's metrics) is compared with ``==`` on the
floats as stored (JSON keeps all 17 significant digits, so equal text means equal doubles). Prints one
line per notebook and exits 1 if any number differs or a row is missing on one side; rows present only
in AFTER (a new backbone, say) are listed but do not count as a difference. Timing and provenance fields
(wall time, run folders, commits) are ignored: they are expected to change.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

#: Keys of ``extra`` that say how long something took, where a file is or which module a label came
#: from: expected to change with the machine, the checkout or the package layout, never a result.
NOT_RESULTS = {"run_dir", "seconds", "prompts_per_s", "eval s", "train s", "source", "wall_seconds"}

METRIC_KEYS = ("abs_rel", "sq_rel", "rmse", "rmse_log", "log_mse", "log10", "silog", "d1", "d2", "d3")


def _numbers(row: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {m: row.get(m) for m in METRIC_KEYS if m in row}
    for m, v in (row.get("pooled") or {}).items():
        out[f"pooled.{m}"] = v
    for name, metrics in sorted((row.get("per_image") or {}).items()) if isinstance(row.get("per_image"), dict) \
            else enumerate(row.get("per_image") or []):
        for m, v in (metrics.items() if isinstance(metrics, dict) else [("value", metrics)]):
            out[f"image[{name}].{m}"] = v
    return out


def _rows(path: Path) -> dict[tuple[str, Any], dict[str, Any]]:
    data = json.loads(path.read_text(encoding="utf-8"))
    return {(r.get("experiment") or r.get("name"), r.get("seed")): _numbers(r) for r in data.get("rows", [])}


def _leaves(a: Any, b: Any, path: str):
    """(path, before, after) for every leaf that differs, skipping :data:`NOT_RESULTS` keys."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k not in NOT_RESULTS:
                yield from _leaves(a.get(k), b.get(k), f"{path}.{k}")
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            yield from _leaves(x, y, f"{path}[{i}]")
    elif a != b:
        yield path, a, b


def compare(before: Path, after: Path) -> int:
    differences = 0
    for b_file in sorted(before.glob("*/results.json")):
        a_file = after / b_file.parent.name / "results.json"
        if not a_file.is_file():
            print(f"{b_file.parent.name}: missing in {after}")
            differences += 1
            continue
        b_rows, a_rows = _rows(b_file), _rows(a_file)
        moved = []
        for key, b_nums in b_rows.items():
            a_nums = a_rows.get(key)
            if a_nums is None:
                moved.append(f"{key}: missing after")
                continue
            for m, v in b_nums.items():
                if a_nums.get(m) != v:
                    moved.append(f"{key} {m}: {v!r} -> {a_nums.get(m)!r}")
        b_extra = json.loads(b_file.read_text(encoding="utf-8")).get("extra") or {}
        a_extra = json.loads(a_file.read_text(encoding="utf-8")).get("extra") or {}
        for path, b_val, a_val in _leaves(b_extra, a_extra, "extra"):  # Table 8, seed tables, claims
            delta = abs(b_val - a_val) if isinstance(b_val, float) and isinstance(a_val, float) else None
            moved.append(f"{path}: {b_val!r} -> {a_val!r}" + (f" (|diff| {delta:.1e})" if delta is not None else ""))
        new = sorted(set(a_rows) - set(b_rows))
        n_values = sum(len(v) for v in b_rows.values())
        status = "identical" if not moved else f"{len(moved)} difference(s)"
        print(f"{b_file.parent.name}: {len(b_rows)} row(s), {n_values} numbers: {status}"
              + (f"; {len(new)} row(s) only after: {', '.join(str(k[0]) for k in new)}" if new else ""))
        for line in moved[:10]:
            print(f"  {line}")
        differences += len(moved)
    return 1 if differences else 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(compare(Path(sys.argv[1]), Path(sys.argv[2])))
