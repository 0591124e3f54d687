"""Common machinery of the list-driven readers (NYU BTS layout, KITTI Eigen).

Both datasets are "a split list plus two folders"; the subclasses only say where a listed path lives
and how a frame is cropped. Keeping the bookkeeping here means skips are counted the same way and the
layout check (``clipdepth data check``) sees exactly what training and evaluation will read.

``subset=N`` keeps the first N lines of the list, in list order, before anything else happens (lines
without ground truth among them are still skipped and counted). It is what a user rehearsing the
paper profile on a few downloaded frames needs: the list stays the canonical 24,231 / 654 (NYU) or
Eigen list, only the first N lines are read, and :attr:`ListDataset.list_length` keeps the full count
so reports can say "subset: 8 of 24,231 train / 654 test" (:func:`subset_label`).
"""

from __future__ import annotations

import abc
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clipdepth.data.common import (
    DataError,
    ListEntry,
    RawFrame,
    Sample,
    check_pair,
    check_valid_depth,
    read_depth_u16,
    read_rgb_u8,
    read_split_list,
)
from clipdepth.data.specs import DatasetSpec
from clipdepth.data.splits import resolve_split_list


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
    #: Lines in the whole list when only the first ``listed`` were checked (``subset``); None = all.
    list_length: int | None = None

    @property
    def ok(self) -> bool:
        return not self.missing and not self.bad and self.usable > 0

    def lines(self) -> list[str]:
        """Human-readable report, one finding per line, problems first."""
        out = [f"missing: {m}" for m in self.missing] + [f"bad: {b}" for b in self.bad]
        skips = ", ".join(f"{n} {reason}" for reason, n in sorted(self.skipped.items())) or "none"
        lines = f"{self.listed} lines"
        if self.list_length is not None and self.list_length != self.listed:
            lines = f"first {self.listed} of {self.list_length:,} lines"
        out.append(
            f"{self.dataset} {self.split}: {lines} in {self.split_file}; "
            f"{self.usable} samples, {len(self.missing)} missing files, {len(self.bad)} unreadable or "
            f"invalid samples; skipped lines: {skips}"
        )
        out.append("OK" if self.ok else "PROBLEMS FOUND")
        return out


def check_subset(subset: int | None, split_file: Path, list_length: int) -> int | None:
    """Validate ``subset`` against a list of ``list_length`` lines; None means the whole list.

    A subset larger than the list is an error rather than "the whole list": a user who asked for
    1,000 frames of a 654-line list has the wrong list or the wrong number, and a run labelled
    "subset: 1000" that used 654 frames would be mislabelled.
    """
    if subset is None:
        return None
    if isinstance(subset, bool) or not isinstance(subset, (int, np.integer)) or subset < 1:
        raise ValueError(f"subset must be a positive number of list lines or None, got {subset!r}")
    if subset > list_length:
        raise DataError(
            f"{split_file}: subset={int(subset)} is larger than the list, which has {list_length:,} lines; "
            f"use subset <= {list_length} or None for the whole list"
        )
    return int(subset)


def subset_label(subset: int | None, train_lines: int, test_lines: int) -> str:
    """Label for reports: ``"subset: 8 of 24,231 train / 654 test"`` (``"full lists: ..."`` without one).

    The counts are the full list lengths (:attr:`ListDataset.list_length`), so a reader of the report
    sees how small the rehearsal was next to the paper's lists.
    """
    lists = f"{train_lines:,} train / {test_lines:,} test"
    return f"full lists: {lists}" if subset is None else f"subset: {subset:,} of {lists}"


class ListDataset(abc.ABC):
    """A map-style dataset over a BTS-style split list.

    ``on_missing="error"`` (default) refuses to build when a listed file does not exist, naming the
    first few, because a silently shorter test set changes the metrics; ``"skip"`` drops those lines
    and counts them in :attr:`skip_reasons`. Lines with depth ``None`` are always skipped and counted.
    ``subset=N`` uses only the first N lines of the list (see the module docstring); :attr:`listed`
    holds the lines in use and :attr:`list_length` the length of the whole list.
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
        subset: int | None = None,
    ) -> None:
        if on_missing not in ("error", "skip"):
            raise ValueError(f"on_missing must be 'error' or 'skip', not {on_missing!r}")
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', not {split!r}")
        self.split = split
        self.split_file = resolve_split_list(self.spec.name, split, root, split_file, fetch=fetch)
        lines = read_split_list(self.split_file, self.spec.focal)
        self.list_length = len(lines)
        self.subset = check_subset(subset, self.split_file, self.list_length)
        self.listed = lines if self.subset is None else lines[: self.subset]
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
            hint = " (to read only the first N lines of the list, pass subset=N)" if self.subset is None else ""
            raise DataError(
                f"{self.split_file}: {len(self.missing)} listed file(s) are missing; the list points at "
                f"files that do not exist{hint}:\n  {shown}{more}"
            )

    # -- hooks for subclasses -------------------------------------------------------------------
    @abc.abstractmethod
    def _resolve(self, entry: ListEntry) -> Resolved:
        """The files and per-item settings of one list line (each dataset's own layout)."""

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

    def raw(self, index: int) -> RawFrame:
        """Sample ``index`` as decoded (uint8 image, uint16 depth, cropped), before conversion to float: the
        augmentation rotates these, as AdaBins does. The all-invalid-depth check is left to ``__getitem__``
        (training validates every frame through it before the first step)."""
        item = self.items[index]
        assert item.depth is not None
        image = read_rgb_u8(item.rgb)
        depth = read_depth_u16(item.depth)
        check_pair(image, depth, item.rgb, item.depth)
        image, depth = self._crop(image, depth)
        return RawFrame(image=np.ascontiguousarray(image), depth=np.ascontiguousarray(depth),
                        depth_scale=self.spec.depth_scale, name=self._name(item.entry), focal=item.entry.focal)

    def __getitem__(self, index: int) -> Sample:
        sample = self.raw(index).sample()
        check_valid_depth(sample.depth, self.items[index].depth, self.spec.min_depth, self.spec.max_depth)
        return sample

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
            list_length=self.list_length,
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
