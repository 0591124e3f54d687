"""Common machinery of the list-driven readers (NYU BTS layout, KITTI Eigen).

Both datasets are "a split list plus two folders"; the subclasses only say where a listed path lives
and how a frame is cropped. Keeping the bookkeeping here means skips are counted the same way and the
layout check (``clipdepth data check``) sees exactly what training and evaluation will read.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .common import (
    DataError,
    ListEntry,
    Sample,
    check_pair,
    check_valid_depth,
    read_depth_png,
    read_rgb,
    read_split_list,
)
from .specs import DatasetSpec
from .splits import resolve_split_list


@dataclass
class Resolved:
    """A list entry with the files it points to (``depth`` None when the list says ``None``)."""

    entry: ListEntry
    rgb: Path
    depth: Path | None
    depth_candidates: tuple[Path, ...] = ()


@dataclass
class CheckReport:
    """What a layout check found; ``ok`` is False when any listed file is missing or unreadable."""

    dataset: str
    split: str
    split_file: Path
    listed: int
    usable: int
    skipped: Counter = field(default_factory=Counter)
    missing: list[str] = field(default_factory=list)
    bad: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.bad and self.usable > 0

    def lines(self) -> list[str]:
        """Human-readable report, one finding per line, problems first."""
        out = [f"missing: {m}" for m in self.missing] + [f"bad: {b}" for b in self.bad]
        skips = ", ".join(f"{n} {reason}" for reason, n in sorted(self.skipped.items())) or "none"
        out.append(
            f"{self.dataset} {self.split}: {self.listed} lines in {self.split_file}; "
            f"{self.usable} samples, {len(self.missing)} missing files, {len(self.bad)} unreadable or "
            f"invalid samples; skipped lines: {skips}"
        )
        out.append("OK" if self.ok else "PROBLEMS FOUND")
        return out


class ListDataset:
    """A map-style dataset over a BTS-style split list.

    ``on_missing="error"`` (default) refuses to build when a listed file does not exist, naming the
    first few, because a silently shorter test set changes the metrics; ``"skip"`` drops those lines
    and counts them in :attr:`skip_reasons`. Lines with depth ``None`` are always skipped and counted.
    """

    spec: DatasetSpec

    def __init__(
        self,
        root: Path,
        split: str,
        split_file: str | Path | None,
        *,
        on_missing: str = "error",
        fetch: bool = True,
    ) -> None:
        if on_missing not in ("error", "skip"):
            raise ValueError(f"on_missing must be 'error' or 'skip', not {on_missing!r}")
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', not {split!r}")
        self.split = split
        self.split_file = resolve_split_list(self.spec.name, split, root, split_file, fetch=fetch)
        self.listed = read_split_list(self.split_file, self.spec.focal)
        self.skip_reasons: Counter = Counter()
        self.skipped_lines: list[tuple[int, str]] = []
        self.missing: list[Path] = []
        self._missing_lines: list[tuple[int, str]] = []
        self.items: list[Resolved] = []
        for entry in self.listed:
            reason = self._skip_reason(entry)
            if reason is not None:
                self._skip(entry, reason)
                continue
            item = self._resolve(entry)
            absent = [p for p in (item.rgb, item.depth) if p is not None and not p.is_file()]
            if absent:
                self.missing.extend(absent)
                self._missing_lines.extend((entry.line_no, self._describe_missing(item, p)) for p in absent)
                if on_missing == "skip":
                    self._skip(entry, "missing file")
                continue
            self.items.append(item)
        if self.missing and on_missing == "error":
            shown = "\n  ".join(f"line {n}: {p}" for n, p in self._missing_lines[:5])
            more = f"\n  ... and {len(self.missing) - 5} more" if len(self.missing) > 5 else ""
            raise DataError(
                f"{self.split_file}: {len(self.missing)} listed file(s) are missing; the list points at "
                f"files that do not exist:\n  {shown}{more}"
            )

    # -- hooks for subclasses -------------------------------------------------------------------
    def _resolve(self, entry: ListEntry) -> Resolved:
        raise NotImplementedError

    def _skip_reason(self, entry: ListEntry) -> str | None:
        return "no ground truth" if entry.depth is None else None

    def _crop(self, image: np.ndarray, depth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return image, depth

    def _name(self, entry: ListEntry) -> str:
        return entry.rgb.rsplit(".", 1)[0]

    def _describe_missing(self, item: Resolved, path: Path) -> str:
        return str(path)

    # -- public API -----------------------------------------------------------------------------
    @property
    def skipped(self) -> int:
        """Number of list lines not served as samples (see :attr:`skip_reasons`)."""
        return sum(self.skip_reasons.values())

    def _skip(self, entry: ListEntry, reason: str) -> None:
        self.skip_reasons[reason] += 1
        self.skipped_lines.append((entry.line_no, reason))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Sample:
        item = self.items[index]
        assert item.depth is not None
        image = read_rgb(item.rgb)
        depth = read_depth_png(item.depth, self.spec.depth_scale)
        check_pair(image, depth, item.rgb, item.depth)
        image, depth = self._crop(image, depth)
        check_valid_depth(depth, item.depth, self.spec.min_depth, self.spec.max_depth)
        return Sample(
            image=np.ascontiguousarray(image),
            depth=np.ascontiguousarray(depth),
            name=self._name(item.entry),
            focal=item.entry.focal,
        )

    def missing_report(self) -> list[str]:
        """One line per missing file: ``line N: path`` (N = line of the split list)."""
        return [f"line {n}: {text}" for n, text in self._missing_lines]

    def names(self) -> list[str]:
        """Sample names in order (the list's RGB path without extension)."""
        return [self._name(it.entry) for it in self.items]

    def check(self, progress: bool = False) -> CheckReport:
        """Decode every sample and collect problems instead of stopping at the first one."""
        report = CheckReport(
            dataset=self.spec.name,
            split=self.split,
            split_file=self.split_file,
            listed=len(self.listed),
            usable=0,
            skipped=Counter(self.skip_reasons),
            missing=self.missing_report(),
        )
        indices = range(len(self))
        if progress:
            from tqdm.auto import tqdm

            indices = tqdm(indices, desc=f"checking {self.spec.name} {self.split}", unit="sample")
        for i in indices:
            try:
                self[i]
            except DataError as exc:
                report.bad.append(str(exc))
            else:
                report.usable += 1
        return report
