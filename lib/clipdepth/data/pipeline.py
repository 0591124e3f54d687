"""Input pipeline: training batches decoded, augmented and collated ahead of the step by worker processes.

Why. On an accelerator a batch's encoder pass takes tens of milliseconds while decoding and augmenting
its 16 frames takes hundreds on one CPU core; read serially between two optimiser steps, the input
side would set the pace. :class:`InputPipeline` is a ``torch.utils.data.DataLoader`` over a reader
whose batch sampler yields exactly our :func:`clipdepth.train.step.batch_order`; ``num_workers``
processes build the next batches while the current one is computed (pinned memory and asynchronous
copies on CUDA, workers kept across epochs). :func:`prefetched` does the same for the test images of
an evaluation, one sample at a time and in order.

Why it is exact. Every random draw of the augmentation is keyed by (seed, epoch, index)
(:class:`~clipdepth.data.transforms.TrainTransform`) and the batch order comes from the main process,
so a batch holds the same bytes whichever process builds it and however many there are: results do
not depend on ``num_workers`` (it is recorded in each result's protocol, never in its run key). The
loader draws its worker seeds from a private generator, so the global torch RNG, which checkpoints
save, is left untouched.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from clipdepth.data.common import Sample
from clipdepth.data.transforms import TrainTransform, to_tensor

__all__ = ["InputPipeline", "check_workers", "default_workers", "prefetched"]

#: Most worker processes a default asks for (the authors' AdaBins loader ran 8).
MAX_DEFAULT_WORKERS = 8


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def default_workers(cpus: int | None = None) -> int:
    """Worker processes for this machine: one core left to the training process, at most 8."""
    n = _cpus() if cpus is None else int(cpus)
    return max(0, min(MAX_DEFAULT_WORKERS, n - 1))


def check_workers(num_workers: Any) -> int:
    """``num_workers`` as an int (None = :func:`default_workers`); anything else is a one-line error."""
    if num_workers is None:
        return default_workers()
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers must be an integer >= 0 (0 = in this process) or None, got {num_workers!r}")
    return int(num_workers)


def load_frame(reader: Any, index: int) -> Any:
    """What the augmentation starts from: the reader's decoded frame ``index`` before float conversion
    (:meth:`~clipdepth.data.base.ListDataset.raw`), or its sample for readers without one."""
    raw = getattr(reader, "raw", None)
    return raw(index) if raw is not None else reader[index]


class _Frames(Dataset):
    """Item ``(epoch, index)``: the augmented frame as (3xHxW image, 1xHxW depth) tensors."""

    def __init__(self, reader: Any, transform: TrainTransform) -> None:
        self.reader, self.transform = reader, transform

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, index = key
        return to_tensor(self.transform(load_frame(self.reader, index), epoch, index))


class _Order(Sampler):
    """Batch sampler yielding the batches the main process set for the current epoch."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[int, int]]] = []

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        return iter(list(self.batches))

    def __len__(self) -> int:
        return len(self.batches)


def _loader_options(num_workers: int, device: torch.device, prefetch: int) -> dict[str, Any]:
    workers = {"persistent_workers": True, "prefetch_factor": prefetch} if num_workers > 0 else {}
    return {"num_workers": num_workers, "pin_memory": device.type == "cuda",
            "generator": torch.Generator(), **workers}  # private seed source: the global RNG stays as it was


class InputPipeline:
    """Augmented training batches of ``reader``, built ahead by ``num_workers`` processes (0 = in process).

    :meth:`epoch` yields ``(images, depth)`` on ``device`` for the given batch order. Workers persist
    across epochs; :meth:`close` (or leaving a ``with`` block) ends them.
    """

    def __init__(self, reader: Any, transform: TrainTransform, num_workers: int | None = None,
                 device: torch.device | str = "cpu", prefetch: int = 2) -> None:
        self.num_workers = check_workers(num_workers)
        self.device = torch.device(device)
        self._order = _Order()
        self._loader: DataLoader | None = DataLoader(
            _Frames(reader, transform), batch_sampler=self._order, **_loader_options(self.num_workers, self.device,
                                                                                      prefetch))

    def epoch(self, epoch: int, order: Sequence[Sequence[int]]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of ``order`` (lists of sample indices) augmented as in ``epoch``, in that order."""
        if self._loader is None:
            raise RuntimeError("this input pipeline is closed")
        self._order.batches = [[(int(epoch), int(i)) for i in idx] for idx in order]
        copy = self.device.type == "cuda"
        for images, depth in self._loader:
            yield images.to(self.device, non_blocking=copy), depth.to(self.device, non_blocking=copy)

    def close(self) -> None:
        """End the worker processes (dropping the loader drops its persistent iterator, which shuts them down)."""
        self._loader = None

    def __enter__(self) -> InputPipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _identity(sample: Sample) -> Sample:
    return sample


def prefetched(reader: Any, num_workers: int | None = None, prefetch: int = 4) -> Iterable[Sample]:
    """The reader's samples in order, decoded ahead by ``num_workers`` processes (0 = read here, lazily)."""
    workers = check_workers(num_workers)
    if workers == 0:
        return (reader[i] for i in range(len(reader)))
    return DataLoader(reader, batch_size=None, collate_fn=_identity, num_workers=workers, prefetch_factor=prefetch,
                      generator=torch.Generator())
