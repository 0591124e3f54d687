"""A run's files: its result, its checkpoints and its training log, written safely and read defensively.

Why apart from the trainer: a single-row run (:mod:`clipdepth.train.trainer`) and a lockstep group
(:mod:`clipdepth.train.lockstep`) leave the same files, and the report layer reads them; one module fixes the
format. Every file is written to a unique temporary and renamed (:mod:`clipdepth._files`), so two
processes never see half a file, and a damaged ``result.json`` is reported by path and recomputed.
"""

from __future__ import annotations

import csv
import io
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clipdepth._files import atomic_write, atomic_write_json, atomic_write_text

__all__ = ["CHECKPOINT_FORMAT", "DamagedResultWarning", "RunResult", "atomic_save", "load_result", "save_result",
           "write_log"]

CHECKPOINT_FORMAT = 1


class DamagedResultWarning(UserWarning):
    """A ``result.json`` could not be read; the run is recomputed."""


@dataclass
class RunResult:
    """What a finished run leaves behind (also written to ``result.json`` in its folder)."""

    name: str
    run_key: str
    run_dir: Path
    metrics: dict[str, float]
    per_image: list[dict[str, float]]
    history: list[dict[str, float]]
    train_seconds: float
    eval_seconds: float
    mode: str
    examples: list[dict[str, Any]] = field(default_factory=list)
    reused: bool = False
    stale: bool = False
    pooled: dict[str, float] = field(default_factory=dict)
    protocol: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)


def atomic_save(obj: Any, path: Path) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def write_log(run_dir: Path, history: list[dict[str, float]]) -> None:
    """``log.csv``: one line per finished epoch (loss, learning rate)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(history[0]))
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(run_dir / "log.csv", buffer.getvalue())


def save_result(result: RunResult, prompts: dict[str, torch.Tensor], experiment: dict[str, Any],
                names: list[str]) -> None:
    """``prompts.pt`` (final tokens), ``examples.npz`` (kept test images) and ``result.json`` in ``result.run_dir``."""
    run_dir = result.run_dir
    atomic_save(prompts, run_dir / "prompts.pt")
    if result.examples:
        arrays = {f"{k}_{i}": np.asarray(ex[k]) for i, ex in enumerate(result.examples)
                  for k in ("image", "depth", "pred")}
        names_kept = np.array([ex["name"] for ex in result.examples])

        def write(tmp: Path) -> None:
            with tmp.open("wb") as fh:  # a file object: numpy would append ".npz" to a path
                np.savez_compressed(fh, **arrays, names=names_kept)

        atomic_write(run_dir / "examples.npz", write)
    payload = {"name": result.name, "run_key": result.run_key, "mode": result.mode,
               "pooled": result.pooled, "protocol": result.protocol, "provenance": result.provenance,
               "experiment": experiment, "metrics": result.metrics,
               "per_image": result.per_image, "test_names": names, "history": result.history,
               "train_seconds": result.train_seconds, "eval_seconds": result.eval_seconds}
    atomic_write_json(run_dir / "result.json", payload, default=str)


def load_result(path: Path, name: str) -> RunResult | None:
    """A finished result, or None (with a warning naming the file) if it cannot be read."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        examples = []
        ex_path = path.parent / "examples.npz"
        if ex_path.is_file():
            with np.load(ex_path) as z:
                for i, kept in enumerate(z["names"]):
                    examples.append({"name": str(kept), **{k: z[f"{k}_{i}"] for k in ("image", "depth", "pred")}})
        return RunResult(name, data["run_key"], path.parent, data["metrics"], data["per_image"],
                         data["history"], data["train_seconds"], data["eval_seconds"], data["mode"], examples,
                         reused=True, pooled=data.get("pooled", {}), protocol=data.get("protocol", {}),
                         provenance=data.get("provenance", {}))
    except (OSError, ValueError, KeyError, TypeError, EOFError) as exc:
        warnings.warn(f"{path}: damaged result ({type(exc).__name__}: {exc}); recomputing",
                      DamagedResultWarning, stacklevel=2)
        return None
