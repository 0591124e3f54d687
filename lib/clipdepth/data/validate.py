"""Decode every file a run will read, before the run starts, and report each unusable one by path.

Why: a corrupt or all-zero test frame otherwise surfaces when evaluation builds its features, after
25 epochs of training at paper size. Decoding the whole split first costs seconds to a few minutes
(in parallel threads: PIL releases the GIL while it decodes) and turns that into one list of files
to fix before anything long runs. The checks are the readers' own (:mod:`clipdepth.data.common`),
so a file passes here exactly when training and evaluation can read it:

- image: decodes completely (a truncated JPEG fails here, not inside a data loader worker);
- depth: a 16-bit single-channel PNG (an 8-bit PNG would give silently wrong metres), not all zero,
  the image's size, and with at least one pixel inside the dataset's depth range after its crop.

Listed files that do not exist are the readers' business (``on_missing``); they are not repeated here.
"""

from __future__ import annotations

import concurrent.futures as futures
import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from clipdepth._files import atomic_write_text
from clipdepth.data.base import ListDataset, Resolved
from clipdepth.data.common import DataError, check_pair, check_valid_depth, read_depth_u16, read_rgb

__all__ = ["default_workers", "files_signature", "raise_if_invalid", "validate_once", "validate_split"]


def default_workers() -> int:
    """Decoding threads: one per core, at most 16 (beyond that the disk is the limit)."""
    return max(1, min(16, os.cpu_count() or 1))


def _check_item(dataset: ListDataset, item: Resolved) -> list[str]:
    """Problems of one listed frame (empty when it is usable), each naming its file and list line."""
    where = f" (line {item.entry.line_no} of {dataset.split_file})"
    found: list[str] = []
    image = depth_units = None
    try:
        image = read_rgb(item.rgb)
    except DataError as exc:
        found.append(f"{exc}{where}")
    if item.depth is not None:
        try:
            depth_units = read_depth_u16(item.depth)
        except DataError as exc:
            found.append(f"{exc}{where}")
        else:
            if not depth_units.any():
                found.append(f"{item.depth}: depth map is all zero (no ground truth at any pixel){where}")
                depth_units = None
    if image is not None and depth_units is not None:
        spec = dataset.spec
        depth = depth_units.astype(np.float32) / np.float32(spec.depth_scale)
        try:
            check_pair(image, depth, item.rgb, item.depth)
            _, depth = dataset._crop(image, depth)
            check_valid_depth(depth, item.depth, spec.min_depth, spec.max_depth)
        except DataError as exc:
            found.append(f"{exc}{where}")
    return found


def _check_index(dataset: Any, index: int) -> list[str]:
    """Fallback for datasets that are not list readers: decode the sample through ``__getitem__``."""
    try:
        dataset[index]
    except DataError as exc:
        return [str(exc)]
    return []


def validate_split(dataset: Any, progress: bool = True, workers: int | None = None) -> list[str]:
    """Decode every image and depth map ``dataset`` will serve; return one line per problem, in list order.

    ``dataset`` is a list reader (:class:`~clipdepth.data.NYUDepthV2`, :class:`~clipdepth.data.KITTIEigen`,
    any :class:`~clipdepth.data.base.ListDataset`): each of its files is checked and named with its
    list line. Other datasets are checked sample by sample through ``dataset[i]``. ``workers`` threads
    decode in parallel (default :func:`default_workers`); ``progress`` shows a tqdm bar.
    """
    workers = default_workers() if workers is None else max(1, int(workers))
    if isinstance(dataset, ListDataset):
        items = list(dataset.items)
        label = f"validating {dataset.spec.name} {dataset.split}"

        def check(i: int) -> list[str]:
            return _check_item(dataset, items[i])
    else:
        label = "validating"

        def check(i: int) -> list[str]:
            return _check_index(dataset, i)

    n = len(dataset)
    problems: list[str] = []
    with (tqdm(total=n, desc=label, unit="sample", disable=not progress, leave=False) as bar,
          futures.ThreadPoolExecutor(max_workers=workers) as pool):
        for found in pool.map(check, range(n)):  # results in list order, whatever finishes first
            problems += found
            bar.update(1)
    return problems


def raise_if_invalid(dataset: Any, progress: bool = True, workers: int | None = None, shown: int = 3) -> None:
    """:func:`validate_split`, then one :class:`DataError` naming the first ``shown`` bad files, if any."""
    problems = validate_split(dataset, progress=progress, workers=workers)
    if problems:
        more = f"; and {len(problems) - shown} more problem(s)" if len(problems) > shown else ""
        raise DataError(f"{len(problems)} unusable file(s) in the data this run reads: "
                        + "; ".join(problems[:shown]) + more)


def files_signature(dataset: Any) -> str:
    """SHA-256 over (path, size, mtime) of every file a list reader serves: changes when any file does."""
    digest = hashlib.sha256()
    items = list(dataset.items) if isinstance(dataset, ListDataset) else []
    for item in items:
        for path in (item.rgb, item.depth):
            if path is None:
                continue
            try:
                st = os.stat(path)
                digest.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
            except OSError:
                digest.update(f"{path}\0missing\n".encode())
    return digest.hexdigest()


_VALIDATED: set[str] = set()


def validate_once(dataset: Any, marker_dir: str | os.PathLike[str] | None = None, progress: bool = True,
                  workers: int | None = None) -> bool:
    """:func:`raise_if_invalid`, skipped when these exact files (paths, sizes, times) already passed.

    Passing is remembered in this process and, with ``marker_dir``, as an empty marker file named by
    :func:`files_signature`, so the several notebooks of one ``./run_all.sh`` decode the data once.
    Returns True when the files were decoded now, False when a previous pass was reused.
    """
    if not isinstance(dataset, ListDataset):
        raise_if_invalid(dataset, progress=progress, workers=workers)
        return True
    signature = files_signature(dataset)
    marker = Path(marker_dir) / f"{signature[:32]}.ok" if marker_dir is not None else None
    if signature in _VALIDATED or (marker is not None and marker.is_file()):
        _VALIDATED.add(signature)
        return False
    raise_if_invalid(dataset, progress=progress, workers=workers)
    _VALIDATED.add(signature)
    if marker is not None:
        atomic_write_text(marker, f"{dataset.split_file}\n")
    return True
