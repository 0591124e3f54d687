"""CLIP checkpoint files: read any supported format into a validated state dict, and identify them.

Researchers hold CLIP weights in several shapes: OpenAI's TorchScript archive (``RN50.pt`` as
``clip.load`` caches it), open_clip's ``open_clip_pytorch_model.bin`` / ``open_clip_model.safetensors``
(what ``pretrained="openai"`` fetches from the Hugging Face hub), or a plain ``torch.save`` of a state
dict, possibly wrapped as ``{"state_dict": ...}`` by a training script and with DataParallel's
``module.`` prefix. All of them name their tensors the way open_clip's ``CLIP`` does, so one reader
can turn any of them into the state dict of an ``open_clip.create_model(arch)`` model.

The format is recognised from the file's bytes, never from its name, and nothing in a file is ever
executed as Python: tensors come from ``safetensors``, from ``torch.load(weights_only=True)`` or, for
TorchScript, from ``torch.jit.load`` (which runs no pickled Python). Every failure is one line that
names the file and what was expected, so a wrong path or a ViT file passed for RN50 is obvious
without a traceback.

Why not ``open_clip.factory.load_state_dict`` (which also unwraps ``state_dict`` and drops ``module.``):
it picks safetensors by the file *name* (a misnamed file fails inside ``torch.load``), retries a
``TypeError`` with a ``torch.load`` that on torch < 2.6 unpickles Python, and lets a file holding a
number or an empty dict surface as an ``AttributeError`` / ``StopIteration`` traceback; the few lines
of unwrapping here are what keeps those cases one line. What open_clip does not do at all is kept:
TorchScript archives, byte-level format detection, the checks against an architecture, the content hash.

A file is identified by its content (:func:`weights_id`): the SHA-256 of its bytes, remembered per
(absolute path, size, mtime, inode) in memory and in a small JSON file so a 300 MB checkpoint is
hashed once, not on every call.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import pickle
import re
import struct
import warnings
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import open_clip
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from clipdepth._files import LockTimeout, atomic_write_json, file_lock
from clipdepth.vocab import cache_dir, is_weights_file

__all__ = [
    "EXPECTED_FORMATS",
    "CheckpointError",
    "WeightsUnavailableError",
    "checkpoint_format",
    "file_sha256",
    "quiet_logging",
    "read_state_dict",
    "weights_id",
    "weights_id_cache_path",
]

#: What a weights file may be; quoted in every "not a checkpoint" message.
EXPECTED_FORMATS = "an OpenAI TorchScript archive, an open_clip .bin/.safetensors or a state dict"

# Keys OpenAI's TorchScript archives carry besides the weights (open_clip and OpenAI drop them too).
_OPENAI_META_KEYS = ("input_resolution", "context_length", "vocab_size")
# A legacy (pre-zip) torch.save file starts with this pickled magic number.
_LEGACY_TORCH_MAGIC = pickle.dumps(torch.serialization.MAGIC_NUMBER, protocol=2)
_ZIP_MAGIC = b"PK\x03\x04"


class WeightsUnavailableError(RuntimeError):
    """Raised when named pretrained weights cannot be obtained (offline, unknown tag, bad file)."""


class CheckpointError(WeightsUnavailableError, ValueError):
    """A weights file that is missing, damaged, not a checkpoint, or for another architecture.

    Both a :class:`WeightsUnavailableError` (callers that catch "no usable weights" keep working) and a
    ``ValueError`` (it is bad input). The message is one line starting with the file's path.
    """


# ---------------------------------------------------------------------------------------------
# Format detection
# ---------------------------------------------------------------------------------------------


def _not_a_checkpoint(path: Path, why: str = "") -> CheckpointError:
    detail = f"; {why}" if why else ""
    return CheckpointError(f"{path}: not a checkpoint (expected {EXPECTED_FORMATS}){detail}")


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:300]


def _safetensors_header(path: Path, head: bytes, size: int) -> dict[str, Any] | None:
    """The JSON header if the file is laid out as safetensors (8-byte length, then a JSON object),
    else None. Raises :class:`CheckpointError` when the layout is right but data is missing."""
    if len(head) < 9 or head[8:9] != b"{":
        return None
    (length,) = struct.unpack("<Q", head[:8])
    if length > 100_000_000:
        return None
    if 8 + length > size:
        raise CheckpointError(
            f"{path}: truncated safetensors file ({size} bytes, its header alone needs {8 + length})"
        )
    with path.open("rb") as fh:
        fh.seek(8)
        raw = fh.read(length)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(header, dict):
        return None
    ends = [v["data_offsets"][1] for k, v in header.items()
            if k != "__metadata__" and isinstance(v, dict) and "data_offsets" in v]
    needed = 8 + length + max(ends, default=0)
    if needed > size:
        raise CheckpointError(f"{path}: truncated safetensors file ({size} bytes, its header describes {needed})")
    return header


def _check_is_file(path: Path) -> None:
    """:class:`CheckpointError` unless ``path`` is a file: a directory is named as one, not as missing."""
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, not a weights file (expected {EXPECTED_FORMATS})")
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file does not exist (expected {EXPECTED_FORMATS})")


def checkpoint_format(path: str | os.PathLike[str]) -> str:
    """Recognise a weights file from its bytes: ``"torchscript"``, ``"torch"`` (a ``torch.save`` zip
    or legacy file) or ``"safetensors"``.

    Raises :class:`CheckpointError` for a missing file, an empty or truncated one, and anything else.
    """
    path = Path(path).expanduser()
    _check_is_file(path)
    size = path.stat().st_size
    if size == 0:
        raise _not_a_checkpoint(path, "the file is empty")
    with path.open("rb") as fh:
        head = fh.read(64)
    if head.startswith(_ZIP_MAGIC):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError) as exc:
            raise CheckpointError(
                f"{path}: truncated or damaged zip archive ({size} bytes; torch.save and TorchScript files are "
                f"zip archives and this one has no readable directory: {_one_line(exc)})"
            ) from exc
        if any("/code/" in name or name.endswith("/constants.pkl") for name in names):
            return "torchscript"
        if any(name.endswith("/data.pkl") or name == "data.pkl" for name in names):
            return "torch"
        raise _not_a_checkpoint(path, "it is a zip archive without data.pkl")
    if head.startswith(_LEGACY_TORCH_MAGIC):
        return "torch"
    if _safetensors_header(path, head, size) is not None:
        return "safetensors"
    raise _not_a_checkpoint(path)


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


def _read_raw(path: Path, fmt: str) -> Any:
    """The object stored in the file, read without executing pickled Python."""
    if fmt == "safetensors":
        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: damaged safetensors file ({_one_line(exc)})") from exc
    if fmt == "torchscript":
        try:
            with warnings.catch_warnings():  # "torch.jit.load is deprecated": it is the only reader of these files
                warnings.simplefilter("ignore", FutureWarning)
                module = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:  # TorchScript's reader raises RuntimeError and friends for a bad archive
            raise CheckpointError(f"{path}: damaged TorchScript archive ({_one_line(exc)})") from exc
        return dict(module.state_dict())
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if found is None and "weights only" not in str(exc).lower():
            raise CheckpointError(f"{path}: truncated or damaged torch.save file ({_one_line(exc)})") from exc
        what = f"a {found.group(1)} object" if found else "Python objects other than tensors"
        raise CheckpointError(
            f"{path}: holds {what}, which weights-only loading does not execute (expected {EXPECTED_FORMATS}; "
            "save model.state_dict() instead)"
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: truncated or damaged torch.save file ({_one_line(exc)})") from exc


def _unwrap(path: Path, obj: Any) -> dict[str, torch.Tensor]:
    """The state dict inside what a file held: ``{"state_dict": sd}`` unwrapped, ``module.`` dropped."""
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj:
        what = "an empty mapping" if isinstance(obj, Mapping) else f"an object of type {type(obj).__name__}"
        raise _not_a_checkpoint(path, f"it holds {what}")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise _not_a_checkpoint(path, f"entry {bad[0]!r} is not a named tensor")
    state = dict(obj)
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _shape(t: torch.Tensor | torch.Size) -> str:
    dims = tuple(t.shape if isinstance(t, torch.Tensor) else t)
    return "x".join(str(d) for d in dims) or "scalar"


def _describe(state: Mapping[str, torch.Tensor]) -> str:
    """What architecture a state dict looks like, from a few telling tensors (for error messages)."""
    parts = []
    conv1 = state.get("visual.conv1.weight")
    if "visual.proj" in state and conv1 is not None:
        parts.append(f"a ViT image tower (patch {conv1.shape[-1]}, width {conv1.shape[0]})")
    elif "visual.layer1.0.conv1.weight" in state:
        blocks = [len({k.split(".")[2] for k in state if k.startswith(f"visual.layer{i}.")}) for i in (1, 2, 3, 4)]
        parts.append(f"a ResNet image tower (blocks {'-'.join(map(str, blocks))}, "
                     f"width {state['visual.layer1.0.conv1.weight'].shape[0]})")
    proj = state.get("text_projection")
    if isinstance(proj, torch.Tensor) and proj.ndim == 2:
        parts.append(f"{proj.shape[1]}-d joint space")
    return " and ".join(parts)


@functools.lru_cache(maxsize=8)
def _expected_shapes(arch: str) -> dict[str, torch.Size]:
    """Key -> shape of ``open_clip.create_model(arch)``'s state dict, built on the meta device (no
    weights are allocated)."""
    with quiet_logging():
        model = open_clip.create_model(arch, pretrained=None, device="meta")
    return {k: v.shape for k, v in model.state_dict().items()}


@contextlib.contextmanager
def quiet_logging() -> Iterator[None]:
    """Silence warnings of the root logger for the block (open_clip warns through it, e.g. that a model
    built without pretrained weights has random weights: exactly what ``weights=None`` asks for)."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def _validate(path: Path, arch: str, state: dict[str, torch.Tensor],
              expected: Mapping[str, torch.Size]) -> dict[str, torch.Tensor]:
    """Make ``state`` load strictly into ``arch``, or say in one line how it disagrees."""
    for key in _OPENAI_META_KEYS:
        if key not in expected:
            state.pop(key, None)
    scale = state.get("logit_scale")
    if scale is not None and "logit_scale" in expected and scale.shape != expected["logit_scale"] \
            and scale.numel() == 1 == expected["logit_scale"].numel():
        state["logit_scale"] = scale.reshape(expected["logit_scale"])  # 0-d in some files, 1-element in others
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    differ = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k])]
    if not (missing or unexpected or differ):
        return state
    notes = []
    if differ:
        k = differ[0]
        notes.append(f"{len(differ)} shapes differ (e.g. {k}: {_shape(state[k])} in the file, {_shape(expected[k])} "
                     "expected)")
    if missing:
        notes.append(f"{len(missing)} keys missing (e.g. {missing[0]})")
    if unexpected:
        notes.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
    looks = _describe(state)
    looks = f"; the file looks like {looks}" if looks else ""
    raise CheckpointError(f"{path}: not a {arch} checkpoint: {', '.join(notes)}{looks}")


def read_state_dict(
    path: str | os.PathLike[str], arch: str, expected: Mapping[str, torch.Tensor | torch.Size] | None = None
) -> dict[str, torch.Tensor]:
    """Read a weights file of any supported format into a state dict that loads strictly into ``arch``.

    ``expected`` is the state dict (or key -> shape map) of the model it will be loaded into; by
    default that of ``open_clip.create_model(arch)``, computed without allocating weights. Tensors keep
    the file's dtype (OpenAI's are partly fp16); ``load_state_dict`` casts them to the model's.
    Raises :class:`CheckpointError` (one line naming the file) for a missing, empty, truncated or
    damaged file, a file that is not a checkpoint, one that pickles Python objects, and a checkpoint
    of another architecture.
    """
    path = Path(path).expanduser()
    fmt = checkpoint_format(path)
    state = _unwrap(path, _read_raw(path, fmt))
    shapes = (_expected_shapes(arch) if expected is None
              else {k: v.shape if isinstance(v, torch.Tensor) else torch.Size(v) for k, v in expected.items()})
    return _validate(path, arch, state, shapes)


# ---------------------------------------------------------------------------------------------
# Identity
# ---------------------------------------------------------------------------------------------

_MEMO: dict[tuple[str, int, int, int], str] = {}


def weights_id_cache_path() -> Path:
    """Where file hashes are remembered between processes: ``$CLIPDEPTH_CACHE_DIR/weights_ids.json``,
    else ``~/.cache/clipdepth/weights_ids.json``."""
    return cache_dir() / "weights_ids.json"


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_cache(cache: Path) -> dict[str, Any]:
    try:
        data = json.loads(cache.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # absent or unreadable: it is only a cache, the hash is recomputed
    return data if isinstance(data, dict) else {}


def _cached_sha256(path: Path) -> str:
    """SHA-256 of ``path``, hashed only when (absolute path, size, mtime_ns, inode) is new.

    The inode is part of the key so a file replaced by a rename within the filesystem's timestamp
    granularity still counts as new. Entries of files that no longer exist are dropped when the cache
    is rewritten. A cache that cannot be written (read-only home) costs only time.
    """
    absolute = str(path.resolve())
    st = path.stat()
    key = (absolute, st.st_size, st.st_mtime_ns, st.st_ino)
    if key in _MEMO:
        return _MEMO[key]
    record = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}
    cache = weights_id_cache_path()
    entry = _read_cache(cache).get(absolute)
    if isinstance(entry, dict) and all(entry.get(k) == v for k, v in record.items()) \
            and isinstance(entry.get("sha256"), str):
        _MEMO[key] = entry["sha256"]
        return entry["sha256"]
    digest = file_sha256(path)
    _MEMO[key] = digest
    with contextlib.suppress(OSError, LockTimeout):
        with file_lock(cache, timeout=30, what="weights id cache"):
            table = {name: entry for name, entry in _read_cache(cache).items() if Path(name).is_file()}
            table[absolute] = {**record, "sha256": digest}
            atomic_write_json(cache, table, sort_keys=True)
    return digest


def weights_id(weights: str | os.PathLike[str] | None, seed: int = 0) -> str:
    """A stable identifier of a weights choice, for cache keys and results files.

    Random init is ``random:<seed>``; a local file is ``sha256:<hash of its bytes>`` (its content, not
    its path: the same file elsewhere has the same id, a different file at the same path a new one);
    an open_clip tag is ``tag:<name>``. A path that does not exist raises :class:`CheckpointError`
    rather than passing for a tag.
    """
    if weights is None:
        return f"random:{seed}"
    if not is_weights_file(weights):
        return f"tag:{weights}"
    path = Path(weights).expanduser()
    _check_is_file(path)
    return f"sha256:{_cached_sha256(path)}"
