"""Notebook 04's step: the trained learned-token run whose tokens the nearest-neighbour analysis reads.

Why not in :mod:`clipdepth.study.neighbours`: finding the run means training or reusing a registry row with
the notebook's parameters (the report layer and the trainer), while the analysis itself only needs a
text tower and a prompt state.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch

from clipdepth.model.backbone import weights_id
from clipdepth.model.bins import bin_centres
from clipdepth.report.provenance import resolve_device
from clipdepth.report.session import NotebookContext, run_rows
from clipdepth.study.experiments import ResolvedExperiment
from clipdepth.study.neighbours import TABLE8_ROW, load_prompts
from clipdepth.train import plan

__all__ = ["TABLE8_ROW", "LearnedRun", "learned_run"]


@dataclass
class LearnedRun:
    """A finished (trained or reused) learned-token run, with what the analysis needs from it."""

    name: str
    row: dict[str, Any]  # the notebook's metrics row (report.run_rows)
    resolved: ResolvedExperiment
    run_dir: Path
    clip: open_clip.CLIP
    weights_key: str

    def prompts(self, epoch: int | None = None) -> dict[str, torch.Tensor]:
        """The trained prompt-encoder state (final, or after ``epoch``)."""
        return load_prompts(self.run_dir, epoch)

    def bin_centres(self) -> list[float]:
        """The row's bin centres in metres, bin 0 first (one per learned token)."""
        r = self.resolved
        lo, hi = r.experiment.bin_range
        return [float(c) for c in bin_centres(r.bins, r.n_bins, lo, hi)]


def learned_run(ctx: NotebookContext, name: str = TABLE8_ROW) -> LearnedRun:
    """Train or reuse registry row ``name`` with a notebook's parameters; return its run folder and CLIP.

    Goes through :func:`clipdepth.report.session.run_rows` (the path every table notebook takes), so the same
    parameters give the same run folder as in the Table 3 notebook and the run is reused, and the
    ``weights``/``seed``/``force`` parameters are honoured. The CLIP returned is the one that trained
    the tokens, which the analysis must use: tokens only mean something in their own text tower.
    """
    p = ctx.params
    (row,) = run_rows(ctx, [name])
    (resolved,) = plan.resolve_rows([name], ctx.profile, p)
    if not resolved.experiment.learned_depth:
        raise ValueError(f"{name} has no learned depth tokens to analyse")
    device = resolve_device(p.get("device", "cpu"))
    clip = ctx.clip(resolved.arch, resolved.weights, device)
    run_dir = Path(row["run_dir"])
    if not (run_dir / "prompts.pt").is_file():
        raise FileNotFoundError(f"{run_dir} has no prompts.pt although {name} finished")
    return LearnedRun(name, row, resolved, run_dir, clip, weights_id(resolved.weights, 0))
