"""The paper's claimed improvements as data: which row beats which, on which metric, and the words that say so.

Why data, next to the published numbers: a claim such as "4o4d beats 1o1d on NYU AbsRel" is a fact
about the paper, not about our code, so it lives in ``claims.csv`` beside the transcribed tables and
can be reviewed in a diff. Only the experiment names are stored; the published difference is
computed from :func:`clipdepth.study.reference.load_reference`, so it can never disagree with the tables.
:mod:`clipdepth.study.seeds` tests each claim against our multi-seed results.
"""

from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from clipdepth.study.reference import METRICS, load_reference

__all__ = ["CLAIM_COLUMNS", "HIGHER_IS_BETTER", "Claim", "load_claims"]

_CLAIMS_FILE = "claims.csv"

#: Columns of ``claims.csv``, in file order. The published difference is not stored: it is computed.
CLAIM_COLUMNS: tuple[str, ...] = ("id", "table", "dataset", "metric", "better", "worse", "quote", "source")

#: Metrics where a larger value is better (the same set as :data:`clipdepth.eval.metrics.HIGHER_IS_BETTER`,
#: restated so this data package does not import torch; a test keeps the two equal).
HIGHER_IS_BETTER: frozenset[str] = frozenset({"d1", "d2", "d3"})


@dataclass(frozen=True)
class Claim:
    """One comparison the paper draws: ``better`` beats ``worse`` on ``metric`` (same table and dataset).

    ``paper_delta`` is published(better) - published(worse) in metric units, computed from the
    reference tables; ``claimed_sign`` is the sign the claim predicts for that difference (-1 for
    errors such as AbsRel, +1 for the threshold accuracies). ``line`` is the line in claims.csv.
    """

    id: str
    table: str
    dataset: str
    metric: str
    better: str
    worse: str
    paper_delta: float
    claimed_sign: int
    quote: str
    source: str
    line: int

    @property
    def label(self) -> str:
        """Short readable form, e.g. ``t4 nyu abs_rel: 4o4d < 1o1d``."""
        op = ">" if self.claimed_sign > 0 else "<"
        short = (self.better.rsplit("/", 1)[-1], self.worse.rsplit("/", 1)[-1])
        return f"{self.table} {self.dataset} {self.metric}: {short[0]} {op} {short[1]}"


def load_claims(path: str | os.PathLike[str] | None = None) -> list[Claim]:
    """The paper's claimed improvements (``claims.csv``), validated against the reference tables.

    Each line names two experiments that must both have a published row in the same table and
    dataset, and a metric that row prints. ``paper_delta`` is computed here from those published
    numbers (never typed by hand), and must not contradict the claim: it has the claimed sign or is
    zero (a tie such as NYU 1o2d vs 1o1d, both 0.323). Any violation raises ValueError naming the
    file and line. ``path`` reads another claims file of the same format (a study's own claims);
    by default the packaged one.
    """
    if path is None:
        name = _CLAIMS_FILE
        text = resources.files(__package__).joinpath(_CLAIMS_FILE).read_text(encoding="utf-8")
    else:
        name = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as err:
            raise ValueError(f"cannot read claims file {name}: {err.strerror or err}") from None
    reader = csv.DictReader(io.StringIO(text))
    if tuple(reader.fieldnames or ()) != CLAIM_COLUMNS:
        raise ValueError(f"{name}: header {reader.fieldnames} != expected {list(CLAIM_COLUMNS)}")
    published = {row["experiment"]: row for row in load_reference().to_dict(orient="records")}
    claims: list[Claim] = []
    seen: set[str] = set()
    for record in reader:
        line = reader.line_num
        where = f"{name} line {line}"
        if None in record or any(record[c] is None for c in CLAIM_COLUMNS):
            raise ValueError(f"{where}: expected {len(CLAIM_COLUMNS)} fields")
        values = {c: record[c].strip() for c in CLAIM_COLUMNS}
        if not values["id"] or values["id"] in seen:
            raise ValueError(f"{where}: claim id {values['id']!r} is empty or repeated")
        seen.add(values["id"])
        metric = values["metric"]
        if metric not in METRICS:
            raise ValueError(f"{where}: unknown metric {metric!r}; valid: {', '.join(METRICS)}")
        rows = []
        for side in ("better", "worse"):
            name = values[side]
            if name not in published:
                raise ValueError(f"{where}: {side} experiment {name!r} has no published row "
                                 "(see `clipdepth experiments list`)")
            row = published[name]
            if (row["table"], row["dataset"]) != (values["table"], values["dataset"]):
                raise ValueError(f"{where}: {side} experiment {name!r} is in table {row['table']} / "
                                 f"{row['dataset']}, not {values['table']} / {values['dataset']}")
            if math.isnan(float(row[metric])):
                raise ValueError(f"{where}: {name!r} has no published {metric}")
            rows.append(row)
        if values["better"] == values["worse"]:
            raise ValueError(f"{where}: better and worse are the same experiment")
        sign = 1 if metric in HIGHER_IS_BETTER else -1
        # Published values have three decimals; rounding removes float noise such as 0.318 - 0.323.
        delta = round(float(rows[0][metric]) - float(rows[1][metric]), 9)
        if delta * sign < 0:
            raise ValueError(f"{where}: the published {metric} ({rows[0][metric]} vs {rows[1][metric]}) "
                             f"contradicts '{values['better']} better than {values['worse']}'")
        claims.append(Claim(values["id"], values["table"], values["dataset"], metric, values["better"],
                            values["worse"], delta, sign, values["quote"], values["source"], line))
    if not claims:
        raise ValueError(f"{name}: no claims")
    return claims
