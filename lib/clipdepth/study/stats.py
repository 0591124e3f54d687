"""Seed statistics: confidence intervals over seeds, paired differences and a paired bootstrap over images.

Why a module of its own: the paper reports one training seed (42) per row, and several of its
conclusions rest on differences of 0.002-0.02 AbsRel. Whether such a difference is larger than what a
different seed (token initialisation, batch order, augmentation) or a different draw of test images
would move it is a statistical question with one right answer per input. These functions are pure
(numpy, scipy, pandas; no torch, no files) so the numbers they give can be checked by hand.

Two sources of noise, two tools:

- **Seed noise** (training randomness): each seed gives one number per row. :func:`t_interval`
  turns the per-seed values of a row, or the per-seed paired differences of two rows
  (:func:`paired_differences`), into a Student-t confidence interval.
- **Test-set noise** (which images happen to be in the test set): for one seed, the per-image
  metrics of two rows on the same images are resampled together by :func:`paired_bootstrap`.

:func:`exceeds_noise` says whether an interval lies entirely on the side of zero that a claim
predicts. :func:`aggregate_rows` turns result rows (one dict per experiment and seed) into a
per-experiment mean/CI table.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from scipy import stats as _scipy_stats

__all__ = [
    "BootstrapInterval",
    "TInterval",
    "aggregate_rows",
    "exceeds_noise",
    "paired_bootstrap",
    "paired_differences",
    "row_metric",
    "t_interval",
    "values_by_seed",
]

#: Resamples drawn per block in :func:`paired_bootstrap`; bounds memory at block * n_images indices.
_BOOTSTRAP_BLOCK = 1000


class TInterval(NamedTuple):
    """Student-t interval over seeds: ``mean``, bounds ``low``/``high``, ``half_width``, ``n`` values."""

    mean: float
    low: float
    high: float
    half_width: float
    n: int


class BootstrapInterval(NamedTuple):
    """Paired-bootstrap percentile interval of ``statistic(a) - statistic(b)`` over images.

    ``observed`` is the difference on the actual test set (no resampling); ``n_images`` the number
    of paired images; ``n_resamples`` the number of bootstrap draws.
    """

    observed: float
    low: float
    high: float
    n_images: int
    n_resamples: int


def _check_confidence(confidence: float) -> float:
    confidence = float(confidence)
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    return confidence


def _finite_vector(values: Iterable[float] | np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be one-dimensional, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{what} is empty")
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise ValueError(f"{what} has non-finite values at positions {bad[:5].tolist()}")
    return arr


def t_interval(values: Iterable[float] | np.ndarray, confidence: float = 0.95) -> TInterval:
    """Mean and two-sided Student-t confidence interval of ``values`` (one value per seed).

    Formula, with n values x_i, mean m = sum(x_i) / n and sample standard deviation
    s = sqrt(sum((x_i - m)^2) / (n - 1)) (ddof = 1)::

        half_width = t_{(1 + confidence) / 2, n - 1} * s / sqrt(n)
        interval   = [m - half_width, m + half_width]

    where t_{q, n-1} is the q quantile of Student's t with n - 1 degrees of freedom
    (``scipy.stats.t.ppf``); for 95 % and three seeds t_{0.975, 2} = 4.302653. The interval
    assumes the per-seed values are independent draws from a roughly normal distribution; with few
    seeds the t quantile (not 1.96) is what keeps its coverage honest.

    With a single value (n = 1) the spread is unknown: ``low``, ``high`` and ``half_width`` are NaN
    and only ``mean`` is meaningful. Identical values give a zero-width interval.
    """
    confidence = _check_confidence(confidence)
    x = _finite_vector(values, "values")
    n = int(x.size)
    mean = float(np.mean(x))
    if n == 1:
        return TInterval(mean, math.nan, math.nan, math.nan, 1)
    s = float(np.std(x, ddof=1))
    t = float(_scipy_stats.t.ppf(0.5 + confidence / 2.0, n - 1))
    half = t * s / math.sqrt(n)
    return TInterval(mean, mean - half, mean + half, half, n)


def paired_differences(a_by_seed: Mapping[int, float], b_by_seed: Mapping[int, float]) -> dict[int, float]:
    """Per-seed differences ``a[seed] - b[seed]``, in ascending seed order.

    Why paired: two rows trained with the same seed share the test images and (in lockstep
    training) the batch order and augmentation, so their difference cancels part of the seed
    noise; comparing unpaired means would throw that away. Both mappings must hold exactly the same
    seeds: a seed present on one side only would silently change what is averaged, so it is an error
    that names the missing seeds.
    """
    a_seeds, b_seeds = set(a_by_seed), set(b_by_seed)
    if a_seeds != b_seeds:
        only_a = sorted(a_seeds - b_seeds)
        only_b = sorted(b_seeds - a_seeds)
        parts = []
        if only_a:
            parts.append(f"seeds {only_a} only in a")
        if only_b:
            parts.append(f"seeds {only_b} only in b")
        raise ValueError("paired differences need the same seeds on both sides: " + "; ".join(parts))
    if not a_seeds:
        raise ValueError("paired differences need at least one seed")
    return {seed: float(a_by_seed[seed]) - float(b_by_seed[seed]) for seed in sorted(a_seeds)}


def paired_bootstrap(
    per_image_a: Sequence[float] | np.ndarray,
    per_image_b: Sequence[float] | np.ndarray,
    n_resamples: int = 10_000,
    seed: int = 0,
    confidence: float = 0.95,
    statistic: Callable[..., Any] = np.mean,
) -> BootstrapInterval:
    """Paired bootstrap over test images of ``statistic(a) - statistic(b)`` for one training seed.

    ``per_image_a[i]`` and ``per_image_b[i]`` are one metric of two rows on the same test image i.
    Each resample draws n image indices with replacement (``np.random.default_rng(seed)``, in blocks
    of :data:`_BOOTSTRAP_BLOCK` resamples of n indices each, the same stream as drawing the
    resamples one after the other) and applies them to *both* rows, so the per-image pairing is kept::

        idx_r  ~ Uniform{0..n-1}^n,  r = 1..R
        d_r    = statistic(a[idx_r]) - statistic(b[idx_r])
        interval = [P_{(1-c)/2}(d), P_{(1+c)/2}(d)]  (numpy percentiles, linear interpolation)

    This is the percentile interval of the test-set noise of the difference. ``statistic`` must
    accept ``axis=1`` (np.mean, np.median, ...); the paper averages each metric over images, so the
    default is the mean, for which the difference of means equals the mean of per-image
    differences. Identical inputs give a zero-width interval at 0.
    """
    confidence = _check_confidence(confidence)
    a = _finite_vector(per_image_a, "per_image_a")
    b = _finite_vector(per_image_b, "per_image_b")
    if a.size != b.size:
        raise ValueError(f"paired bootstrap needs the same test images: per_image_a has {a.size} values, "
                         f"per_image_b has {b.size}")
    n_resamples = int(n_resamples)
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
    n = int(a.size)
    rng = np.random.default_rng(seed)
    deltas = np.empty(n_resamples, dtype=np.float64)
    for start in range(0, n_resamples, _BOOTSTRAP_BLOCK):
        stop = min(start + _BOOTSTRAP_BLOCK, n_resamples)
        idx = rng.integers(0, n, size=(stop - start, n))
        deltas[start:stop] = np.asarray(statistic(a[idx], axis=1)) - np.asarray(statistic(b[idx], axis=1))
    alpha = 1.0 - confidence
    low, high = np.percentile(deltas, [100.0 * alpha / 2.0, 100.0 * (1.0 - alpha / 2.0)])
    observed = float(statistic(a)) - float(statistic(b))
    return BootstrapInterval(observed, float(low), float(high), n, n_resamples)


def exceeds_noise(low: float, high: float, claimed_sign: int) -> bool:
    """Whether the interval [low, high] lies strictly on the side of zero the claim predicts.

    ``claimed_sign`` is +1 when the claim predicts a positive difference (better minus worse for a
    higher-is-better metric such as d1) and -1 for a negative one (lower-is-better metrics such as
    AbsRel). True means the difference is distinguishable from the noise the interval measures;
    an interval that touches or straddles zero, or has NaN bounds (one seed), gives False.
    """
    if claimed_sign not in (1, -1):
        raise ValueError(f"claimed_sign must be +1 or -1, got {claimed_sign!r}")
    low, high = float(low), float(high)
    if math.isnan(low) or math.isnan(high):
        return False
    if low > high:
        raise ValueError(f"interval bounds reversed: low {low} > high {high}")
    return low > 0.0 if claimed_sign > 0 else high < 0.0


# ---------------------------------------------------------------------------------------------
# Result rows: one dict per (experiment, seed)
# ---------------------------------------------------------------------------------------------


def row_metric(row: Mapping[str, Any], metric: str) -> float:
    """One metric of a result row: a top-level key (``report.run_rows`` rows) or inside ``row["metrics"]``.

    A missing metric is NaN, not an error: tables print what is there and a paper-only column stays
    empty.
    """
    if metric in row:
        value = row[metric]
    elif isinstance(row.get("metrics"), Mapping):
        value = row["metrics"].get(metric, math.nan)
    else:
        value = math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _row_seed(row: Mapping[str, Any]) -> int:
    if "seed" not in row or row["seed"] is None:
        raise ValueError(f"result row for {row.get('experiment', '?')!r} has no 'seed'")
    seed = row["seed"]
    if isinstance(seed, bool) or int(seed) != seed:
        raise ValueError(f"result row for {row.get('experiment', '?')!r} has a non-integer seed {seed!r}")
    return int(seed)


def values_by_seed(rows: Iterable[Mapping[str, Any]], experiment: str, metric: str) -> dict[int, float]:
    """``{seed: metric}`` of one experiment's rows; a seed given twice is an error (it would shrink the CI)."""
    out: dict[int, float] = {}
    for row in rows:
        if row.get("experiment") != experiment:
            continue
        seed = _row_seed(row)
        if seed in out:
            raise ValueError(f"experiment {experiment!r} has two result rows for seed {seed}")
        out[seed] = row_metric(row, metric)
    return out


def aggregate_rows(
    rows: Iterable[Mapping[str, Any]],
    metrics: Sequence[str] = ("abs_rel", "rmse", "d1"),
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Long table of :func:`t_interval` over seeds: one line per (experiment, metric).

    ``rows`` are result dicts with ``experiment``, ``seed`` and the metrics (top level or under
    ``metrics``). Columns: ``experiment, metric, n, seeds, mean, low, high, half_width``; ``seeds``
    is the sorted tuple of seeds used. Experiments keep their first-appearance order. Seeds whose
    value is NaN (metric not computed) are left out of that metric's interval; a metric with no
    value at all has n = 0 and NaN statistics.
    """
    rows = list(rows)
    experiments = list(dict.fromkeys(str(r.get("experiment")) for r in rows))
    out = []
    for name in experiments:
        for metric in metrics:
            by_seed = values_by_seed(rows, name, metric)
            finite = {s: v for s, v in sorted(by_seed.items()) if not math.isnan(v)}
            if finite:
                ci = t_interval(list(finite.values()), confidence)
            else:
                ci = TInterval(math.nan, math.nan, math.nan, math.nan, 0)
            out.append({"experiment": name, "metric": metric, "n": ci.n, "seeds": tuple(finite),
                        "mean": ci.mean, "low": ci.low, "high": ci.high, "half_width": ci.half_width})
    columns = ["experiment", "metric", "n", "seeds", "mean", "low", "high", "half_width"]
    return pd.DataFrame(out, columns=columns)
