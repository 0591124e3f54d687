"""From notebook parameters to rows and units of work: what a notebook or ``./run_all.sh`` will compute.

Why one module: the notebooks (through :func:`clipdepth.report.session.run_rows`) and ``./run_all.sh``
(which trains every row group *before* the notebooks run, in worker processes or on a cluster) must
turn the same parameters into the same rows, or the notebooks would not find what ``run_all`` computed.
Everything here is cheap: it reads split lists and hashes, it trains nothing.

- :func:`resolve_rows` (with :func:`seeds_of` and :func:`run_options`): the one path from a profile and
  parameters to resolved rows and run options, the data root passed explicitly (``data_dir``);
- :func:`table_rows`: the registry rows of the tables a notebook declares (its ``clipdepth.tables``
  metadata; this module knows no notebook by name);
- :func:`plan_tables` and :func:`describe_plan`: the units of work of a whole invocation, and the
  ``--plan`` summary (rows, groups, images read, bytes written, an estimated wall time).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from clipdepth._files import repo_path
from clipdepth.model.backbone import resolve_device
from clipdepth.study import experiments
from clipdepth.study.experiments import Experiment, ResolvedExperiment
from clipdepth.train.lockstep import RunOptions, Unit, plan
from clipdepth.vocab import DATASETS

__all__ = ["DEFAULT_SEEDS", "RowSpec", "describe_plan", "plan_lines", "plan_tables", "resolve_rows", "run_options",
           "seeds_of", "spec_names", "table_rows"]

#: Training seeds per profile when the ``seeds`` parameter is None: the paper's single seed (42). The
#: demo uses one seed too: three seeds of every row of Tables 3-7 take about 3x the demo's 10-minute
#: budget on two cores; ``-p seeds '[42, 1, 2]'`` runs the seed study (README "Seeds and claims").
DEFAULT_SEEDS: dict[str, tuple[int, ...]] = {"demo": (42,), "paper": (42,)}

RowSpec = str | Experiment | tuple[Experiment, str | None]


def seeds_of(params: Mapping[str, Any], profile: str) -> list[int]:
    """The training seeds of a notebook: the ``seeds`` parameter, else the profile's default; a notebook
    without a ``seeds`` parameter (04, 05: one trained run each) trains its ``seed`` (default 42)."""
    if "seeds" not in params:
        return [int(params.get("seed") if params.get("seed") is not None else 42)]
    seeds = params.get("seeds")
    if seeds is None:
        return list(DEFAULT_SEEDS.get(profile, (42,)))
    if isinstance(seeds, int):
        seeds = [seeds]
    out = [int(s) for s in seeds]
    if not out or len(set(out)) != len(out):
        raise ValueError(f"seeds must be a non-empty list of distinct integers, got {seeds!r}")
    return out


def run_options(params: Mapping[str, Any], force_since: float | None = None, keep_examples: int = 3,
                progress: bool = False) -> RunOptions:
    """The run settings the notebook parameters ask for (paths from the repository root).

    ``n_train`` / ``n_test`` (optional keys, in no notebook's parameters cell, so ``./run_all.sh`` cannot
    set them) cap the frames per split: a knob for tests and in-process rehearsals that call
    :func:`clipdepth.report.session.run_rows` with tiny data; the run folder records the counts.
    """
    since = os.environ.get("CLIPDEPTH_FORCE_SINCE")
    if since is not None:  # `./run_all.sh --force`: rows recomputed once per invocation, not per notebook
        force_since = float(since)
    subset = params.get("subset")
    return RunOptions(
        runs_dir=str(repo_path(params.get("runs_dir") or "cache/runs")),
        cache_dir=str(repo_path(params.get("cache_dir") or "cache/features")),
        device=resolve_device(params.get("device", "cpu")),
        precision=str(params.get("precision") or "fp32"),
        views=int(params.get("views") or 4),
        n_train=None if params.get("n_train") is None else int(params["n_train"]),
        n_test=None if params.get("n_test") is None else int(params["n_test"]),
        subset=None if subset is None else int(subset),
        allow_stale=bool(params.get("allow_stale", False)),
        force=bool(params.get("force", False)),
        force_since=force_since,
        keep_examples=keep_examples,
        progress=progress,
        num_workers=None if params.get("num_workers") is None else int(params["num_workers"]),
    )


def resolve_rows(specs: Iterable[RowSpec], profile: str, params: Mapping[str, Any]) -> list[ResolvedExperiment]:
    """Each spec (a registry name, an Experiment variant, or (Experiment, weights)) for every seed,
    bound to the profile with the parameters' training mode, epochs, weights and data root
    (``data_dir``, relative to the repository root). Seed-major order.

    The one path from parameters to rows: notebooks (:func:`clipdepth.report.session.run_rows`),
    ``./run_all.sh`` and the executors' units all come through here, so they find the same runs."""
    specs = list(specs)
    mode = params.get("train_mode") or "faithful"
    data_dir = repo_path(params["data_dir"]) if params.get("data_dir") else None
    rows = []
    for seed in seeds_of(params, profile):
        for spec in specs:
            exp, weights = (spec if isinstance(spec, tuple) else (spec, params.get("weights")))
            rows.append(experiments.resolve(exp, profile, mode, seed=seed, data_dir=data_dir,
                                            epochs=params.get("epochs"), weights=weights))
    return rows


def spec_names(specs: Iterable[RowSpec], profile: str, params: Mapping[str, Any]) -> list[str]:
    """The registry-style name of each row :func:`resolve_rows` returns, in the same order: a seed
    variant keeps the name of its row (``t3/nyu/learned-7``, not ``t3/nyu/learned-7[seed=1]``), so
    rows of several seeds compare with the same published number."""
    names = [(s[0] if isinstance(s, tuple) else s) for s in specs]
    names = [n if isinstance(n, str) else n.name for n in names]
    return [n for _ in seeds_of(params, profile) for n in names]


def table_rows(tables: Sequence[str], params: Mapping[str, Any], profile: str) -> list[ResolvedExperiment]:
    """The rows of registry ``tables`` (e.g. ``("t4", "t5")``) for the parameters' ``datasets`` and seeds."""
    datasets = params.get("datasets") or list(DATASETS)
    datasets = [datasets] if isinstance(datasets, str) else list(datasets)
    names = [e.name for t in tables for d in datasets for e in experiments.select(table=t, dataset=d)]
    return resolve_rows(names, profile, params)


def plan_tables(jobs: Sequence[tuple[Sequence[str], Mapping[str, Any]]], profile: str
                ) -> tuple[list[Unit], RunOptions | None]:
    """Units of work for ``jobs``: (registry tables, parameters) pairs, one per table notebook.

    Jobs sharing run settings are planned together, so a row group that two notebooks need (e.g.
    Table 6's learned-7 is Table 3's) is one unit. Returns the units and the options of the last
    group of settings (None when no job names a table).
    """
    groups: dict[str, tuple[RunOptions, list[ResolvedExperiment]]] = {}
    for tables, params in jobs:
        if not tables:
            continue
        options = run_options(params, keep_examples=3)
        key = json.dumps(options.__dict__, sort_keys=True, default=str)
        groups.setdefault(key, (options, []))[1].extend(table_rows(tables, params, profile))
    units: list[Unit] = []
    last = None
    for options, rows in groups.values():
        units += plan(rows, options)[0]
        last = options
    return units, last


def _performance(profile_dir: Path) -> dict[str, Any] | None:
    path = profile_dir / "performance.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if data.get("lockstep") else None


def describe_plan(units: Sequence[Unit], profile_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """What the units will do, without doing it: rows and groups, images read, bytes written, and an
    estimated wall time from the per-step costs in ``<profile_dir>/performance.json`` (``clipdepth
    bench``), scaled by the number of rows and pixels; None where nothing was measured."""
    perf = _performance(Path(profile_dir))
    out_units, total_reads, total_bytes, total_s = [], 0, 0, 0.0
    for unit in units:
        trainers = unit.trainers()
        lead = trainers[0]
        r = lead.resolved
        pending = [t for t in trainers if unit.options.done(t) is None]
        n_train = len(lead.split("train")) if r.epochs > 0 else 0
        n_test = len(lead.split("test"))
        steps = math.ceil(n_train / r.train.batch_size) if n_train else 0
        reads = (r.epochs * n_train if unit.kind == "lockstep" else 0) + n_test
        if unit.kind == "single" and r.epochs > 0:
            reads += (unit.options.views * n_train if lead.train_cfg.mode == "cached" else r.epochs * n_train)
        reads *= 1 if pending else 0
        # result.json + prompts.pt + examples per row; one group checkpoint; cached mode: fp16 features
        written = len(pending) * 2_000_000 + (1_000_000 * len(pending) if unit.kind == "lockstep" else 0)
        if unit.kind == "single" and lead.train_cfg.mode == "cached" and r.epochs > 0 and pending:
            h, w = r.train_size
            written += unit.options.views * n_train * 1024 * (h // 32) * (w // 32) * 2
        seconds = None
        if perf and pending:
            m = next(iter(perf["lockstep"].values()))
            scale = (r.train_size[0] * r.train_size[1]) / (m["train_size"][0] * m["train_size"][1])
            row_s = sum(x["row_step_s"] for x in m["per_row"]) / max(len(m["per_row"]), 1)
            enc = m["encoder_s"] * scale * r.train.batch_size / m["batch_size"]
            train_s = r.epochs * steps * (enc + len(pending) * row_s) if unit.kind == "lockstep" else \
                r.epochs * steps * (enc + row_s)
            th, tw = r.test_size
            eval_s = n_test * 2 * m["eval_encoder_s"] * (th * tw) / (480 * 640)
            seconds = train_s + eval_s
            total_s += seconds
        total_reads += reads
        total_bytes += written
        out_units.append({"kind": unit.kind, "key": unit.key[:12], "rows": [t.resolved.name for t in trainers],
                          "seeds": sorted({t.train_cfg.seed for t in trainers}), "pending": len(pending),
                          "epochs": r.epochs, "train_images": n_train, "test_images": n_test,
                          "steps_per_epoch": steps, "image_reads": reads, "bytes_written": written,
                          "estimated_s": seconds})
    return {"units": out_units, "image_reads": total_reads, "bytes_written": total_bytes,
            "estimated_s": total_s if perf else None,
            "estimate_from": (f"{Path(profile_dir) / 'performance.json'} ({perf.get('device_name')}, "
                              f"{perf.get('device')})") if perf else
            "nothing measured: run `clipdepth bench --parts lockstep --profile <profile>` on this machine"}


def plan_lines(summary: Mapping[str, Any]) -> list[str]:
    """Readable ``--plan`` output."""
    lines = []
    for u in summary["units"]:
        state = "done" if not u["pending"] else f"{u['pending']} to compute"
        est = f", ~{u['estimated_s'] / 60:.1f} min" if u["estimated_s"] is not None else ""
        lines.append(f"  {u['kind']:<11} seeds {u['seeds']} epochs {u['epochs']}: {len(u['rows'])} row(s) ({state}); "
                     f"{u['train_images']} train / {u['test_images']} test images, {u['image_reads']:,} image reads"
                     f"{est}: " + ", ".join(u["rows"]))
    est = summary["estimated_s"]
    lines.append(f"total: {len(summary['units'])} unit(s), {summary['image_reads']:,} image reads, about "
                 f"{summary['bytes_written'] / 1e6:,.0f} MB written; estimated wall time "
                 + (f"{est / 3600:.2f} h" if est is not None else "unknown") + f" ({summary['estimate_from']})")
    return lines
