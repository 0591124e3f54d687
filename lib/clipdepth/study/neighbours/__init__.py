"""Nearest-neighbour analysis of learned depth tokens (paper Table 8 / poster Table 4).

The paper's most quoted finding is that learned depth tokens sit far from every English word. Its
analysis script was never released, so this package is the reference implementation of the method as
the paper describes it (``shared/research/learned_prompts.md`` section 9), in three parts:

- :mod:`~clipdepth.study.neighbours.sweep` -- the engine: every vocabulary token in the depth slot of the
  training template, encoded once (exactly, with the shared prefix computed once) and cached on disk;
- :mod:`~clipdepth.study.neighbours.analysis` -- neighbours of the learned prompts in prompt space (the
  paper's method) and token space, the paper's table layout, the trajectory over training;
- :mod:`~clipdepth.study.neighbours.anomaly` -- the 0.000 entries of Table 8 and what produces them;
- :mod:`~clipdepth.study.neighbours.figures` -- projections, distance heatmaps and their data.

Loading the trained run a notebook analyses is a notebook step (:mod:`clipdepth.report.steps.learned`). Every
public name of the parts is re-exported here, so ``from clipdepth import neighbours as nb`` is all a
notebook needs.
"""

from __future__ import annotations

from clipdepth.study.neighbours.analysis import (
    PAPER_RANKS,
    TABLE8_ROW,
    NeighbourAnalysis,
    analyse,
    initial_prompts,
    load_prompts,
    nearest_neighbours,
    neighbours_over_epochs,
    paper_format,
    side_by_side,
)
from clipdepth.study.neighbours.anomaly import (
    ANOMALY_WORD_SET,
    ZERO_TOL,
    AnomalyCheck,
    anomaly_check,
    anomaly_words,
    single_token_bins,
)
from clipdepth.study.neighbours.figures import (
    nearest_word_vs_bin,
    pairwise_distances,
    plot_nearest_word_vs_bin,
    plot_neighbours_over_epochs,
    plot_pairwise,
    plot_projection,
    projection,
)
from clipdepth.study.neighbours.sweep import (
    VOCAB_SIZE,
    PromptLayout,
    VocabSweep,
    encode_fillings,
    phrase_fillings,
    prompt_layout,
    token_strings,
    vocab_ids,
    vocab_sweep,
)

__all__ = [
    "ANOMALY_WORD_SET",
    "PAPER_RANKS",
    "TABLE8_ROW",
    "VOCAB_SIZE",
    "ZERO_TOL",
    "AnomalyCheck",
    "NeighbourAnalysis",
    "PromptLayout",
    "VocabSweep",
    "analyse",
    "anomaly_check",
    "anomaly_words",
    "encode_fillings",
    "initial_prompts",
    "load_prompts",
    "nearest_neighbours",
    "nearest_word_vs_bin",
    "neighbours_over_epochs",
    "pairwise_distances",
    "paper_format",
    "phrase_fillings",
    "plot_nearest_word_vs_bin",
    "plot_neighbours_over_epochs",
    "plot_pairwise",
    "plot_projection",
    "projection",
    "prompt_layout",
    "side_by_side",
    "single_token_bins",
    "token_strings",
    "vocab_ids",
    "vocab_sweep",
]
