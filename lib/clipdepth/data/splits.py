"""The canonical BTS split lists: names, checksums, where to get them, how a reader finds its list.

The paper's numbers depend on exactly which frames are used (24,231 NYU training frames, 654 NYU test
frames, 697 KITTI Eigen test lines of which 652 have ground truth), so the lists are pinned by SHA-256.
A list file that carries a canonical BTS name must *be* the canonical list, unless the manifest our
own tools write next to it (synthetic scenes, the ``.mat`` exporter) records a different checksum for
it. Lists with other names are custom lists and are used as given. A list with Windows line endings
(what git's ``autocrlf`` checks out) is the same list: its bytes are compared with CRLF read as LF.

Lookup order for a reader without ``split_file``: the root's manifest, ``<root>/<canonical name>``, the
cache folder (``$CLIPDEPTH_CACHE_DIR/splits`` or ``~/.cache/clipdepth/splits``), then a download from the
BTS repository (short timeout; offline it fails at once and says where to get the file).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from clipdepth import vocab
from clipdepth.data.common import MANIFEST_NAME, DataError, read_manifest, sha256_file
from clipdepth.data.download import DEFAULT_TIMEOUT, DownloadError, download

BTS_BASE_URL = "https://raw.githubusercontent.com/cleinc/bts/master/train_test_inputs/"

#: SHA-256 of the canonical lists in cleinc/bts, folder train_test_inputs/.
CANONICAL_SHA256: dict[str, str] = {
    "nyudepthv2_train_files_with_gt.txt": "66e2beb718a58c5c946c169f6e70cc6ae166ddd19f5618266fff52ff7443e0e9",
    "nyudepthv2_test_files_with_gt.txt": "e92c191d5835a22589b843c11b80cd7235d5bd0d4136e42a6debcea4511bf906",
    "eigen_train_files_with_gt.txt": "3655308ee4a017094dc620402db3fc587d769cfbfa9a16c6d0f8de6dcbe109ec",
    "eigen_test_files_with_gt.txt": "8d0499af9ab4c0d1cd7944d572b0e0e4412feab1e73f4003038426fde699b53a",
}

#: (dataset, split) -> canonical list name.
SPLIT_NAMES: dict[tuple[str, str], str] = {
    ("nyu", "train"): "nyudepthv2_train_files_with_gt.txt",
    ("nyu", "test"): "nyudepthv2_test_files_with_gt.txt",
    ("kitti", "train"): "eigen_train_files_with_gt.txt",
    ("kitti", "test"): "eigen_test_files_with_gt.txt",
}


def split_name(dataset: str, split: str) -> str:
    """Canonical list name for ``(dataset, split)``, with a clear error for an unknown pair."""
    try:
        return SPLIT_NAMES[(dataset, split)]
    except KeyError:
        raise ValueError(f"no split {split!r} for dataset {dataset!r}; use 'train' or 'test'") from None


def split_url(name: str) -> str:
    """Where the canonical list ``name`` is published."""
    return BTS_BASE_URL + name


def cache_dir() -> Path:
    """Folder for downloaded split lists: ``splits/`` in :func:`clipdepth.vocab.cache_dir`."""
    return vocab.cache_dir() / "splits"


def _manifest_sha(folder: Path, name: str) -> str | None:
    manifest = read_manifest(folder)
    if not manifest:
        return None
    for entry in manifest.get("splits", {}).values():
        if entry.get("file") == name:
            return entry.get("sha256")
    return None


def _lf_sha256(path: Path) -> str:
    """SHA-256 of the file with CRLF line endings read as LF: what a checksum of the list as published means."""
    return hashlib.sha256(path.read_bytes().replace(b"\r\n", b"\n")).hexdigest()


def verify_split_file(path: str | Path, expected_sha256: str | None = None, origin: str = "") -> Path:
    """Check a list's SHA-256 and return its path.

    Without ``expected_sha256`` the expected value comes from the manifest in the list's folder, else
    from :data:`CANONICAL_SHA256` when the file has a canonical name; other files are not checked.
    ``origin`` says in the error message where the expected value came from.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: split list is missing")
    expected = expected_sha256
    if expected is None:
        expected = _manifest_sha(p.parent, p.name)
        origin = f"the checksum recorded in {p.parent / MANIFEST_NAME}"
    if expected is None and p.name in CANONICAL_SHA256:
        expected = CANONICAL_SHA256[p.name]
        origin = f"the canonical BTS list ({split_url(p.name)})"
    if expected is None:
        return p
    origin = origin or "the expected checksum"
    got = sha256_file(p)
    if got != expected.lower() and _lf_sha256(p) == expected.lower():
        return p  # the same list with Windows line endings (git's autocrlf); the parser reads both
    if got != expected.lower():
        raise DataError(
            f"{p}: split list checksum mismatch: SHA-256 {got} does not match {origin}, expected "
            f"{expected.lower()}; re-download it, or give a custom list a name of its own"
        )
    return p


def get_split_file(
    name: str,
    local: str | Path | None = None,
    *,
    fetch: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
) -> Path:
    """Return a verified canonical list: ``local`` if given, else the cached copy, else a download.

    Offline (or with ``fetch=False``) and without a cached copy, the DataError says where to get it.
    """
    if name not in CANONICAL_SHA256:
        raise ValueError(f"unknown split list {name!r}; known: {sorted(CANONICAL_SHA256)}")
    expected = CANONICAL_SHA256[name]
    origin = f"the canonical BTS list {name} ({split_url(name)})"
    if local is not None:
        return verify_split_file(local, expected, origin)
    cached = cache_dir() / name
    if cached.is_file():
        return verify_split_file(cached, expected, origin)
    where = (
        f"download {split_url(name)} (repository cleinc/bts, folder train_test_inputs/) and pass its "
        f"path as split_file= / --split-file, or copy it to {cached}"
    )
    if not fetch:
        raise DataError(f"split list {name} is not available locally: {where}")
    try:
        return download(split_url(name), cached, expected, timeout=timeout, progress=False)
    except DownloadError as exc:
        raise DataError(f"split list {name} could not be fetched ({exc.reason}); {where}") from None


def resolve_split_list(
    dataset: str,
    split: str,
    root: str | Path,
    split_file: str | Path | None = None,
    *,
    fetch: bool = True,
) -> Path:
    """Find and verify the list a reader should use (lookup order in the module docstring)."""
    if split_file is not None:
        return verify_split_file(split_file)
    root = Path(root)
    name = split_name(dataset, split)
    manifest = read_manifest(root)
    if manifest and split in manifest.get("splits", {}):
        entry = manifest["splits"][split]
        return verify_split_file(
            root / entry["file"], entry.get("sha256"), f"the checksum recorded in {root / MANIFEST_NAME}"
        )
    if (root / name).is_file():
        return verify_split_file(root / name)
    return get_split_file(name, fetch=fetch)
