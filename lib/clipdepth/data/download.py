"""Download helpers for the freely downloadable parts of NYU Depth v2 and KITTI.

Datasets here are gigabytes on flaky academic servers, so downloads resume (HTTP ``Range`` into a
``.part`` file), verify a SHA-256 where one is known, and show a progress bar. Offline machines are
the normal case for the demo profile, so every network call has a short timeout and host lookup is
bounded too: without a network the helpers fail within seconds with a message saying what to fetch
by hand, instead of hanging. Archives are extracted only after every member has been checked to land
inside the target folder (no absolute paths, no ``..``, no links).
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import socket
import stat
import tarfile
import threading
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from clipdepth.data.common import DataError, sha256_file

DEFAULT_TIMEOUT = 5.0
_CHUNK = 1 << 16


class DownloadError(DataError):
    """A download could not be completed (offline, server error, checksum mismatch).

    ``reason`` is the short cause (e.g. ``cannot resolve host``) for callers that phrase their own
    advice around it.
    """

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason or message


@dataclass(frozen=True)
class Resource:
    """A downloadable file. ``sha256`` is None where no published checksum is known to us."""

    name: str
    url: str
    sha256: str | None = None
    note: str = ""


NYU_LABELED = Resource(
    "nyu_depth_v2_labeled.mat",
    "http://horatio.cs.nyu.edu/mit/silberman/nyu_depth_v2/nyu_depth_v2_labeled.mat",
    note="2.8 GB, NYU Depth v2 labeled subset (MATLAB v7.3)",
)
NYU_SPLITS = Resource(
    "splits.mat",
    "http://horatio.cs.nyu.edu/mit/silberman/indoor_seg_sup/splits.mat",
    note="official 795/654 train/test indices",
)
KITTI_DEPTH_ANNOTATED = Resource(
    "data_depth_annotated.zip",
    "https://s3.eu-central-1.amazonaws.com/avg-kitti/data_depth_annotated.zip",
    note="14 GB, KITTI depth completion ground truth (train/ and val/ drive folders)",
)
KITTI_RAW_URL = "https://s3.eu-central-1.amazonaws.com/avg-kitti/raw_data/{drive}/{drive}_sync.zip"


def kitti_raw_resource(drive: str) -> Resource:
    """Resource for one KITTI raw drive, e.g. ``2011_09_26_drive_0002`` (``_sync`` suffix optional)."""
    drive = drive.removesuffix("_sync")
    return Resource(f"{drive}_sync.zip", KITTI_RAW_URL.format(drive=drive), note="KITTI raw synced drive")


def _resolve_host(host: str, port: int, timeout: float) -> None:
    """Resolve ``host`` with a deadline; getaddrinfo itself ignores socket timeouts and can hang."""
    result: list[BaseException | None] = []

    def target() -> None:
        try:
            socket.getaddrinfo(host, port)
            result.append(None)
        except BaseException as exc:  # reported to the caller below
            result.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    if not result:
        raise OSError(f"looking up {host} took longer than {timeout:g} s")
    if result[0] is not None:
        raise OSError(f"cannot resolve {host}: {result[0]}")


def _offline_message(url: str, dest: Path, exc: BaseException) -> str:
    return (
        f"cannot download {url} ({exc}). The machine looks offline or the server is unreachable; "
        f"fetch the file by hand and place it at {dest}"
    )


def _copy_stream(src, out, total: int | None, initial: int, desc: str, progress: bool) -> None:
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024, desc=desc)
    try:
        while True:
            block = src.read(_CHUNK)
            if not block:
                break
            out.write(block)
            if bar is not None:
                bar.update(len(block))
    finally:
        if bar is not None:
            bar.close()


def download(
    url: str,
    dest: str | Path,
    sha256: str | None = None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    resume: bool = True,
    progress: bool = True,
) -> Path:
    """Download ``url`` to ``dest`` and return ``dest``.

    A finished file with the right checksum is not fetched again. Bytes go to ``dest + '.part'``; if
    that exists and ``resume`` is set, only the rest is requested (HTTP ``Range``; a server that
    ignores it sends everything and the part file is restarted). An interrupted transfer keeps the
    part file for the next call. ``file://`` URLs are supported (local mirrors, tests).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_file() and (sha256 is None or sha256_file(dest) == sha256.lower()):
        return dest
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if (resume and part.is_file()) else 0
    parsed = urllib.parse.urlparse(url)

    try:
        if parsed.scheme == "file":
            src_path = Path(urllib.request.url2pathname(parsed.path))
            if not src_path.is_file():
                raise DownloadError(f"cannot download {url}: {src_path} does not exist")
            total = src_path.stat().st_size
            if offset > total:
                offset = 0
            with open(src_path, "rb") as src, open(part, "ab" if offset else "wb") as out:
                src.seek(offset)
                _copy_stream(src, out, total, offset, dest.name, progress)
        elif parsed.scheme in ("http", "https"):
            port = parsed.port or (443 if parsed.scheme == "https" else 80)
            _resolve_host(parsed.hostname or "", port, timeout)
            headers = {"User-Agent": "clipdepth-data/0.1"}
            if offset:
                headers["Range"] = f"bytes={offset}-"
            request = urllib.request.Request(url, headers=headers)
            try:
                response = urllib.request.urlopen(request, timeout=timeout)
            except urllib.error.HTTPError as exc:
                if exc.code == 416 and offset:  # part file already complete or stale: start over once
                    part.unlink()
                    return download(url, dest, sha256, timeout=timeout, resume=False, progress=progress)
                raise
            with response:
                status = getattr(response, "status", 200)
                length = response.headers.get("Content-Length")
                content_range = response.headers.get("Content-Range", "")
                if status == 206 and not content_range.startswith(f"bytes {offset}-"):
                    raise DownloadError(
                        f"cannot resume {url}: server answered range {content_range!r} for offset {offset}; "
                        f"delete {part} and try again"
                    )
                if status == 206:
                    mode, initial = "ab", offset
                else:  # server ignored Range: full body follows
                    mode, initial = "wb", 0
                total = int(length) + initial if length is not None else None
                with open(part, mode) as out:
                    _copy_stream(response, out, total, initial, dest.name, progress)
                if total is not None and part.stat().st_size != total:
                    raise DownloadError(
                        f"download of {url} ended early ({part.stat().st_size} of {total} bytes); "
                        f"partial file kept at {part}, call again to resume"
                    )
        else:
            raise DownloadError(f"cannot download {url}: unsupported URL scheme {parsed.scheme!r}")
    except DownloadError:
        raise
    except urllib.error.HTTPError as exc:
        raise DownloadError(
            f"cannot download {url}: the server answered HTTP {exc.code} ({exc.reason}); "
            f"fetch the file by hand and place it at {dest}",
            reason=f"HTTP {exc.code}",
        ) from None
    except (urllib.error.URLError, http.client.HTTPException, OSError, TimeoutError) as exc:
        hint = f"; partial file kept at {part}, call again to resume" if part.is_file() else ""
        raise DownloadError(_offline_message(url, dest, exc) + hint, reason=f"offline? {exc}") from None

    if sha256 is not None:
        got = sha256_file(part)
        if got != sha256.lower():
            part.unlink()
            raise DownloadError(
                f"{dest}: checksum mismatch for {url}: SHA-256 {got}, expected {sha256.lower()}; "
                "the corrupt download was deleted"
            )
    os.replace(part, dest)
    return dest


def fetch(resource: Resource, dest_dir: str | Path, **kwargs) -> Path:
    """Download a known :class:`Resource` into ``dest_dir`` (see :func:`download` for the options)."""
    return download(resource.url, Path(dest_dir) / resource.name, resource.sha256, **kwargs)


def _check_member_name(name: str, archive: Path) -> PurePosixPath:
    posix = PurePosixPath(name.replace("\\", "/"))
    if posix.is_absolute() or (posix.parts and posix.parts[0].endswith(":")):
        raise DataError(f"{archive}: refusing absolute member path {name!r}")
    if ".." in posix.parts:
        raise DataError(f"{archive}: refusing member path {name!r} that leaves the target folder")
    return posix


def _inside(target: Path, relative: PurePosixPath, archive: Path, name: str) -> Path:
    out = (target / Path(*relative.parts)).resolve() if relative.parts else target
    if out != target and target not in out.parents:
        raise DataError(f"{archive}: refusing member {name!r} that resolves outside {target}")
    return out


def _check_layout(entries: list[tuple[str, Path, bool]], target: Path, archive: Path) -> None:
    """Refuse members that need a path to be both a file and a folder, before anything is written.

    ``entries`` are (member name, output path, is a folder). A file ``a`` followed by ``a/b`` (or a
    file already in ``target`` where the archive needs a folder, or the reverse) would otherwise fail
    halfway through the extraction with a bare ``FileExistsError``, leaving part of the archive behind.
    """
    files = {out: name for name, out, is_dir in entries if not is_dir}
    for name, out, is_dir in entries:
        parents = [q for q in out.parents if q != target and target in q.parents]
        for folder in ([out] if is_dir else []) + parents:
            if folder in files:
                raise DataError(
                    f"{archive}: member {name!r} needs {files[folder]!r} to be a folder, but the archive also "
                    f"has a file {files[folder]!r}; refusing to extract"
                )
            if folder.exists() and not folder.is_dir():
                raise DataError(f"{archive}: member {name!r} needs {folder} to be a folder, but it is a file; "
                                "refusing to extract")
        if not is_dir and out.is_dir():
            raise DataError(f"{archive}: member {name!r} is a file, but {out} is a folder; refusing to extract")


def extract_archive(
    archive: str | Path,
    target: str | Path,
    members: Callable[[str], bool] | None = None,
) -> list[Path]:
    """Extract a zip or tar archive into ``target``; return the extracted file paths.

    Every member is checked before anything is written: absolute paths, ``..`` components, paths
    that resolve outside ``target`` (including through an existing symlink), link or device entries,
    and paths that would have to be a file and a folder at once are refused with a :class:`DataError`.
    ``members`` optionally selects member names (e.g. only ``image_02`` of a KITTI drive).
    """
    archive = Path(archive)
    if not archive.is_file():
        raise DataError(f"{archive}: archive is missing")
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    target = target.resolve()
    written: list[Path] = []

    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            plan = []
            for info in zf.infolist():
                if members is not None and not members(info.filename):
                    continue
                rel = _check_member_name(info.filename, archive)
                mode = info.external_attr >> 16
                if stat.S_ISLNK(mode):
                    raise DataError(f"{archive}: refusing symbolic link member {info.filename!r}")
                plan.append((info, _inside(target, rel, archive, info.filename)))
            _check_layout([(info.filename, out, info.is_dir()) for info, out in plan], target, archive)
            for info, out in plan:
                if info.is_dir():
                    out.mkdir(parents=True, exist_ok=True)
                    continue
                out.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst, _CHUNK)
                written.append(out)
        return written

    try:
        tf_ctx = tarfile.open(archive)
    except tarfile.TarError as exc:
        raise DataError(f"{archive}: not a zip or tar archive ({exc})") from None
    with tf_ctx as tf:
        plan = []
        for member in tf.getmembers():
            if members is not None and not members(member.name):
                continue
            rel = _check_member_name(member.name, archive)
            if member.issym() or member.islnk():
                raise DataError(f"{archive}: refusing link member {member.name!r}")
            if not (member.isfile() or member.isdir()):
                raise DataError(f"{archive}: refusing special member {member.name!r} (device or fifo)")
            plan.append((member, _inside(target, rel, archive, member.name)))
        _check_layout([(member.name, out, member.isdir()) for member, out in plan], target, archive)
        for member, out in plan:
            if member.isdir():
                out.mkdir(parents=True, exist_ok=True)
                continue
            out.parent.mkdir(parents=True, exist_ok=True)
            src = tf.extractfile(member)
            if src is None:
                raise DataError(f"{archive}: cannot read member {member.name!r}")
            with src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst, _CHUNK)
            written.append(out)
    return written


def download_nyu_labeled(dest_dir: str | Path, **kwargs) -> tuple[Path, Path]:
    """Fetch ``nyu_depth_v2_labeled.mat`` and ``splits.mat`` into ``dest_dir``; return both paths."""
    return fetch(NYU_LABELED, dest_dir, **kwargs), fetch(NYU_SPLITS, dest_dir, **kwargs)


def kitti_drives(split_file: str | Path) -> list[str]:
    """Drive names (``2011_09_26_drive_0002``) used by a KITTI Eigen split list, in first-seen order."""
    from clipdepth.data.common import read_split_list

    drives: dict[str, None] = {}
    for entry in read_split_list(split_file, default_focal=0.0):
        parts = PurePosixPath(entry.rgb).parts
        if len(parts) < 2:
            raise DataError(f"{split_file}:{entry.line_no}: cannot find the drive in {entry.rgb!r}")
        drives[parts[1].removesuffix("_sync")] = None
    return list(drives)


def download_kitti_eigen(
    raw_root: str | Path,
    split_file: str | Path,
    *,
    depth: bool = True,
    keep_archives: bool = False,
    **kwargs,
) -> list[str]:
    """Fetch the raw drives of a split list (left camera only) and, optionally, the annotated depth.

    Drives go to ``raw_root/<date>/<drive>_sync/image_02``; the annotated depth archive is extracted
    to ``raw_root/data_depth_annotated`` (its own ``train/`` and ``val/`` folders), keeping only the
    drives the list needs. Returns the drive names.
    """
    raw_root = Path(raw_root)
    archives = raw_root / "_downloads"
    drives = kitti_drives(split_file)
    for drive in drives:
        zpath = fetch(kitti_raw_resource(drive), archives, **kwargs)
        extract_archive(zpath, raw_root, members=lambda n: "/image_02/" in n)
        if not keep_archives:
            zpath.unlink()
    if depth:
        zpath = fetch(KITTI_DEPTH_ANNOTATED, archives, **kwargs)
        wanted = tuple(f"{d}_sync/" for d in drives)
        extract_archive(
            zpath,
            raw_root / "data_depth_annotated",
            members=lambda n: any(w in n for w in wanted) and "/image_02/" in n,
        )
        if not keep_archives:
            zpath.unlink()
    with contextlib.suppress(OSError):
        archives.rmdir()
    return drives
