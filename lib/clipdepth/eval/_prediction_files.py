"""Reading prediction files for ``clipdepth score``: a folder of per-image maps or one bundle, and
matching them to the test set's names.

Why a module of its own: where predictions come from (file formats, the name rule, duplicate and
missing names) is independent of how they are scored (:mod:`clipdepth.eval.score`: protocols, crops,
metrics). Every problem is a :class:`ScoreError` line naming the file.

The name rule. A test sample's name is the reader's :meth:`names` entry (NYU
``bathroom/rgb_00045``, KITTI ``2011_09_26_drive_0002_sync/image_02/0000000069``); the split list's
RGB path without extension (KITTI ``2011_09_26/2011_09_26_drive_0002_sync/image_02/data/0000000069``)
is accepted as well. In a folder, a file's path relative to the folder, extension dropped and every
``__`` read as ``/``, is its name: ``PRED/bathroom/rgb_00045.npy`` and ``PRED/bathroom__rgb_00045.npy``
both score ``bathroom/rgb_00045``. Per-image files are ``.npy``, ``.npz`` (exactly one array) or 16-bit
``.png`` (depth = value / ``--scale``, default the dataset's GT scale: NYU 1000, KITTI 256); integer
``.npy``/``.npz``/``.h5`` arrays need an explicit ``--scale`` (no default: metres are floats). A single
``.h5``/``.hdf5``/``.npz`` file holds all predictions, keyed by name (``/`` or ``__``; HDF5 groups
nest naturally).
Which sizes a map may have is the scorer's business (:func:`clipdepth.eval.score.place_prediction`).
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from clipdepth.data.base import ListDataset
from clipdepth.data.common import DataError, read_depth_png

__all__ = [
    "BUNDLE_SUFFIXES",
    "IMAGE_SUFFIXES",
    "Predictions",
    "ScoreError",
    "match_predictions",
    "name_from_key",
    "open_predictions",
    "name_aliases",
]

#: Per-image prediction files in a folder; a single file with a bundle suffix holds all predictions.
IMAGE_SUFFIXES: tuple[str, ...] = (".npy", ".npz", ".png")
BUNDLE_SUFFIXES: tuple[str, ...] = (".h5", ".hdf5", ".npz")


class ScoreError(ValueError):
    """Bad input for the scorer: one line per problem, and the exit status (1 data, 2 arguments)."""

    def __init__(self, lines: str | Sequence[str], status: int = 1) -> None:
        self.lines = [lines] if isinstance(lines, str) else list(lines)
        self.status = status
        super().__init__("; ".join(self.lines))


def name_from_key(key: str) -> str:
    """Sample name of a bundle key or of a file path relative to the prediction folder (without its
    extension): ``__`` reads as ``/``, leading ``/`` and ``./`` are dropped."""
    name = key.replace("\\", "/").replace("__", "/")
    return str(PurePosixPath("/" + name)).lstrip("/")


def _as_depth_map(array: np.ndarray, where: str, int_scale: float | None = None) -> np.ndarray:
    """A real-valued H x W float array (singleton batch/channel axes dropped), or a ScoreError.

    An integer array is a depth map in some unit (uint16 millimetres is common), never metres: it is
    divided by ``int_scale`` (``--scale``), and refused (status 2, stop at once) when no scale was given;
    read as metres, every pixel would be clamped to the maximum depth and score as a constant map."""
    a = np.asarray(array)
    if a.ndim > 2:
        a = a.reshape([d for d in a.shape if d != 1] or [1])
    if a.ndim != 2:
        raise ScoreError(f"{where}: prediction has shape {tuple(np.shape(array))}; expected a 2-D depth map")
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise ScoreError(f"{where}: prediction has dtype {a.dtype}; expected numbers")
    if np.issubdtype(a.dtype, np.integer):
        if int_scale is None:
            raise ScoreError(f"{where}: prediction is an integer array ({a.dtype}), not depth in metres; pass "
                             "--scale S to read it as value / S (e.g. --scale 1000 for millimetres)", status=2)
        return a.astype(np.float64) / int_scale
    if a.dtype not in (np.float32, np.float64):
        a = a.astype(np.float32)
    return a


class Predictions:
    """Name -> prediction map, from a folder of per-image files or one bundle file.

    :attr:`sources` maps each sample name to where it comes from (a file, or ``bundle[key]``).
    """

    def __init__(self, path: Path, sources: dict[str, str], loaders: dict[str, Any],
                 int_scale: float | None = None) -> None:
        self.path = path
        self.sources = sources
        self._loaders = loaders
        self.int_scale = int_scale  #: ``--scale`` for integer arrays (None: refused)

    def load(self, name: str) -> np.ndarray:
        """The prediction of ``name`` as an H x W float array (ScoreError naming the file if unreadable)."""
        where = self.sources[name]
        try:
            array = self._loaders[name]()
        except ScoreError:
            raise
        except DataError as exc:
            raise ScoreError(str(exc)) from None
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            raise ScoreError(f"{where}: cannot read the prediction ({exc})") from None
        return _as_depth_map(array, where, self.int_scale)


def _register(sources: dict[str, str], loaders: dict[str, Any], name: str, where: str, loader: Any) -> None:
    if name in sources:
        raise ScoreError(f"{where} and {sources[name]} are both predictions for {name!r}; keep one")
    sources[name] = where
    loaders[name] = loader


def _load_single_npz(path: Path) -> np.ndarray:
    with np.load(path, allow_pickle=False) as npz:
        keys = list(npz.files)
        if len(keys) != 1:
            raise ScoreError(
                f"{path}: a per-image .npz must hold exactly one array, found {len(keys)} ({', '.join(keys[:5])})"
            )
        return npz[keys[0]]


def _folder_predictions(folder: Path, scale: float) -> Predictions:
    sources: dict[str, str] = {}
    loaders: dict[str, Any] = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if any(part.startswith(".") for part in rel.parts):
            continue  # hidden files and our own temporaries
        name = name_from_key(rel.with_suffix("").as_posix())
        suffix = path.suffix.lower()
        if suffix == ".npy":
            loader = partial(np.load, path, allow_pickle=False)
        elif suffix == ".npz":
            loader = partial(_load_single_npz, path)
        else:
            loader = partial(read_depth_png, path, scale)
        _register(sources, loaders, name, str(path), loader)
    return Predictions(folder, sources, loaders)


def _h5_predictions(path: Path) -> Predictions:
    import h5py  # optional dependency of the .mat reader too; only needed for .h5 bundles

    sources: dict[str, str] = {}
    loaders: dict[str, Any] = {}
    keys: list[str] = []
    try:
        with h5py.File(path, "r") as fh:
            fh.visititems(lambda key, obj: keys.append(key) if isinstance(obj, h5py.Dataset) else None)
    except OSError as exc:
        raise ScoreError(f"{path}: cannot read as HDF5 ({exc})") from None

    def read(key: str) -> np.ndarray:
        with h5py.File(path, "r") as fh:
            return np.asarray(fh[key])

    for key in sorted(keys):
        _register(sources, loaders, name_from_key(key), f"{path}[{key}]", lambda k=key: read(k))
    return Predictions(path, sources, loaders)


def _npz_bundle_predictions(path: Path) -> Predictions:
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = list(npz.files)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ScoreError(f"{path}: cannot read as .npz ({exc})") from None

    def read(key: str) -> np.ndarray:
        with np.load(path, allow_pickle=False) as npz:  # reads the zip directory, then one array
            return npz[key]

    sources: dict[str, str] = {}
    loaders: dict[str, Any] = {}
    for key in sorted(keys):
        _register(sources, loaders, name_from_key(key), f"{path}[{key}]", lambda k=key: read(k))
    return Predictions(path, sources, loaders)


def open_predictions(path: str | Path, scale: float, int_scale: float | None = None) -> Predictions:
    """Index the predictions at ``path``: a folder of per-image files, or one ``.h5``/``.hdf5``/``.npz``
    holding all of them keyed by name (the name rule is in the module docstring). ``scale`` divides 16-bit
    PNGs; ``int_scale`` (the ``--scale`` the user gave, else None) divides integer arrays, refused without."""
    predictions = _open_predictions(Path(path), scale)
    predictions.int_scale = int_scale
    return predictions


def _open_predictions(p: Path, scale: float) -> Predictions:
    if p.is_dir():
        return _folder_predictions(p, scale)
    if not p.exists():
        raise ScoreError(f"{p}: predictions path does not exist")
    suffix = p.suffix.lower()
    if suffix in (".h5", ".hdf5"):
        return _h5_predictions(p)
    if suffix == ".npz":
        return _npz_bundle_predictions(p)
    raise ScoreError(
        f"{p}: a single prediction file must be a bundle ({', '.join(BUNDLE_SUFFIXES)}) keyed by sample name; "
        f"per-image {', '.join(IMAGE_SUFFIXES)} files go in a folder"
    )


def _count_tail(items: Sequence[str], shown: int = 5) -> str:
    listed = ", ".join(items[:shown])
    return listed + (f" and {len(items) - shown} more" if len(items) > shown else "")


def match_predictions(test_names: Sequence[str], aliases: dict[str, str], predictions: Predictions) -> dict[str, str]:
    """Map each test name to its prediction's name; ScoreError lines for missing and extra predictions.

    ``aliases`` maps other accepted spellings of a test name (the list's RGB path) to the test name.
    """
    by_test: dict[str, str] = {}
    extra: list[str] = []
    problems: list[str] = []
    for pred_name, where in predictions.sources.items():
        test = aliases.get(pred_name)
        if test is None:
            extra.append(where)
        elif test in by_test:
            problems.append(f"{where} and {predictions.sources[by_test[test]]} are both predictions for {test!r}")
        else:
            by_test[test] = pred_name
    missing = [n for n in test_names if n not in by_test]
    if missing:
        more = f" (and {len(missing) - 1} more of {len(test_names)} test images)" if len(missing) > 1 else ""
        problems.append(
            f"no prediction for test image {missing[0]!r}{more} in {predictions.path}; "
            f"expected e.g. {missing[0]}.npy or {missing[0].replace('/', '__')}.npy"
        )
    if extra:
        problems.append(f"{len(extra)} prediction(s) match no test image: {_count_tail(extra)}")
    if problems:
        raise ScoreError(problems)
    return by_test


def name_aliases(reader: ListDataset) -> dict[str, str]:
    """Accepted spellings -> test name: the name itself and the list's RGB path without extension."""
    out: dict[str, str] = {}
    for item, name in zip(reader.items, reader.names(), strict=True):
        out[name] = name
        out[name_from_key(item.entry.rgb.rsplit(".", 1)[0])] = name
    return out
