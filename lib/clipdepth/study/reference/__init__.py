"""Published numbers that our results are compared with, transcribed with their source.

Why a package of CSV files: the numbers are data, not code. Keeping them as plain CSV next to the
code makes every transcription reviewable in a diff, lets the report and the notebooks read one
source, and lets the tests check them against the experiment registry (every row names the
registry experiment that regenerates it, see :mod:`clipdepth.study.experiments`).

Files (one per published table):

- ``table3.csv`` .. ``table7.csv``: Auty & Mikolajczyk 2023, paper Tables 3-7 (poster Tables 1-3
  are paper Tables 3-5); rows repeated across tables are transcribed each time they are printed.
- ``depthclip.csv``: the DepthCLIP zero-shot NYU row (Zhang et al. 2022, their Table 1).
- ``table8.csv``: paper Table 8 (= poster Table 4), the four nearest neighbours of each learned
  depth token in CLIP prompt space with their distances (long format, one row per neighbour).
- ``claims.csv``: the comparisons the paper draws between its rows (which is better, on which metric,
  with the sentence that says so); loaded and checked by :mod:`clipdepth.study.reference.claims`.

Metric columns use *our* metric names (those of :mod:`clipdepth.eval.metrics`), not the paper's
headers; see :data:`PAPER_METRIC_NOTE` for the one column whose name misleads.
"""

from __future__ import annotations

import io
import math
import re
from importlib import resources

import pandas as pd

__all__ = [
    "METRICS",
    "PAPER_METRIC_NOTE",
    "REFERENCE_COLUMNS",
    "TABLES",
    "load_reference",
    "load_table8",
    "normalise_table",
    "reference_for",
    "source_for",
]

#: Metric columns, in our names. ``log_mse`` holds the paper's "RMSL" column (see the note below).
METRICS: tuple[str, ...] = ("abs_rel", "sq_rel", "rmse", "log_mse", "log10", "d1", "d2", "d3")

#: Every column of the metric tables, in file order.
REFERENCE_COLUMNS: tuple[str, ...] = ("experiment", "table", "dataset", "row_label", *METRICS, "source")

#: Table id -> CSV file name. Ids match the prefix of the registry's experiment names.
TABLES: dict[str, str] = {
    "t3": "table3.csv",
    "t4": "table4.csv",
    "t5": "table5.csv",
    "t6": "table6.csv",
    "t7": "table7.csv",
    "depthclip": "depthclip.csv",
}

_TABLE8_FILE = "table8.csv"

PAPER_METRIC_NOTE = (
    "The column printed as 'RMSL' in Auty & Mikolajczyk (2023), Tables 3-7, is not a root-mean-square "
    "log error. The authors' running-average metric (RMSELogRunningAvg) averages each image's mean "
    "*squared* natural-log error over images and never takes the square root. We therefore store it as "
    "`log_mse` (per-image mean of (ln gt - ln pred)^2, averaged over images) and compare our `log_mse` "
    "with it; our true `rmse_log` (with the square root) is reported separately and has no published "
    "counterpart. Example of why: NYU learned-7 prints RMSL 0.139 next to log10 0.128, which no true "
    "RMSE-log can do (a mean |ln| error of ~0.295 implies RMSE-log >= 0.295). Tables 3-5 and 7 print no "
    "SqRel column (left empty here); DepthCLIP publishes neither SqRel nor RMSL."
)


def normalise_table(table: str | int) -> str:
    """Map the spellings people use for a table ("3", 3, "T3", "table3", "Table 3") to its id.

    Why: notebooks and the console pass whatever the user typed; one canonical id avoids a
    second lookup table in each caller.
    """
    key = str(table).strip().lower().replace(" ", "")
    key = re.sub(r"^(table|t)", "", key)
    if key.isdigit():
        key = f"t{key}"
    if key in TABLES or key == "t8":
        return key
    valid = ", ".join([*TABLES, "t8"])
    raise ValueError(f"unknown table {table!r}; valid tables: {valid}")


def _read_csv(filename: str) -> pd.DataFrame:
    """Read one packaged CSV through importlib.resources so it works from a wheel or a zip too."""
    text = resources.files(__name__).joinpath(filename).read_text(encoding="utf-8")
    return pd.read_csv(io.StringIO(text), dtype={"table": str, "row_label": str})


def load_reference(table: str | int | None = None) -> pd.DataFrame:
    """Published metric rows of one table, or of all metric tables concatenated when ``table`` is None.

    Columns are :data:`REFERENCE_COLUMNS`; metrics a table does not print are NaN. Table 8 has a
    different shape (neighbour words, not metrics): use :func:`load_table8`.
    """
    if table is None:
        keys = list(TABLES)
    else:
        key = normalise_table(table)
        if key == "t8":
            raise ValueError("Table 8 holds nearest neighbours, not metrics; use load_table8()")
        keys = [key]
    frames = [_read_csv(TABLES[k]) for k in keys]
    frame = pd.concat(frames, ignore_index=True)
    return frame.loc[:, list(REFERENCE_COLUMNS)]


def source_for(experiment: str) -> str | None:
    """Where the published numbers of one registry experiment come from (document, table, and the commit
    of the authors' repository holding the paper PDF), or None when the paper has no such row."""
    frame = load_reference()
    rows = frame[frame["experiment"] == experiment]
    return None if rows.empty else str(rows.iloc[0]["source"])


def reference_for(experiment: str) -> dict[str, float] | None:
    """The published metrics of one registry experiment, or None when the paper has no such row.

    Only metrics the paper prints are returned (no NaN values), so ``set(result)`` tells a report
    which columns it can compare.
    """
    frame = load_reference()
    rows = frame[frame["experiment"] == experiment]
    if rows.empty:
        return None
    if len(rows) > 1:  # guarded by the tests; a duplicate would make the answer ambiguous
        raise RuntimeError(f"experiment {experiment!r} appears in {len(rows)} reference rows")
    row = rows.iloc[0]
    return {m: float(row[m]) for m in METRICS if not math.isnan(float(row[m]))}


def load_table8() -> pd.DataFrame:
    """Paper Table 8: the top-4 nearest neighbours of each learned NYU depth token (learned-7, even bins).

    One row per (query token, rank) with columns ``table, dataset, query, bin, rank, neighbour,
    distance, source``. ``neighbour`` is spelled as CLIP's BPE vocabulary spells it (``</w>`` marks
    an end-of-word token, as in the paper text); ``{depth_k}`` entries are the other learned prompts.
    Distances are Euclidean between L2-normalised prompt embeddings.
    """
    return _read_csv(_TABLE8_FILE)
