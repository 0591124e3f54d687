"""Download helpers and split-list fetching against a local HTTP server (never the internet)."""

from __future__ import annotations

import hashlib
import io
import socket
import tarfile
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from clipdepth.data import DataError, splits
from clipdepth.data.download import DownloadError, download, extract_archive, kitti_drives

PAYLOAD = bytes(range(256)) * 400  # 102,400 bytes


class _Handler(BaseHTTPRequestHandler):
    """Serves PAYLOAD with Range support; /norange ignores Range; /flaky cuts the first reply short."""

    calls: list = []
    flaky_left = [1]

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        _Handler.calls.append((self.path, self.headers.get("Range")))
        if self.path.startswith("/missing"):
            self.send_error(404)
            return
        body = self.server.files.get(self.path.split("?")[0].rsplit("/", 1)[-1], PAYLOAD)
        start = 0
        rng = self.headers.get("Range")
        if rng and not self.path.startswith("/norange"):
            start = int(rng.split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        if self.path.startswith("/flaky") and _Handler.flaky_left[0] > 0:
            _Handler.flaky_left[0] -= 1
            self.wfile.write(body[start : start + 30000])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body[start:])


@pytest.fixture()
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.files = {}
    _Handler.calls = []
    _Handler.flaky_left = [1]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield httpd, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


SHA = hashlib.sha256(PAYLOAD).hexdigest()


def test_download_with_checksum_and_skip_when_present(server, tmp_path):
    _, base = server
    dest = download(f"{base}/file.bin", tmp_path / "file.bin", SHA, progress=False)
    assert dest.read_bytes() == PAYLOAD and not (tmp_path / "file.bin.part").exists()
    n = len(_Handler.calls)
    download(f"{base}/file.bin", dest, SHA, progress=False)  # already there and verified: no request
    assert len(_Handler.calls) == n


def test_resume_after_interrupted_transfer(server, tmp_path):
    _, base = server
    with pytest.raises(DownloadError, match=r"partial file kept at .*flaky\.bin\.part"):
        download(f"{base}/flaky.bin", tmp_path / "flaky.bin", SHA, progress=False)
    part = tmp_path / "flaky.bin.part"
    assert part.stat().st_size == 30000
    download(f"{base}/flaky.bin", tmp_path / "flaky.bin", SHA, progress=False)
    assert (tmp_path / "flaky.bin").read_bytes() == PAYLOAD
    assert _Handler.calls[-1] == ("/flaky.bin", "bytes=30000-")  # only the rest was requested


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    _, base = server
    (tmp_path / "f.bin.part").write_bytes(b"garbage-prefix")
    download(f"{base}/norange/f.bin", tmp_path / "f.bin", SHA, progress=False)
    assert (tmp_path / "f.bin").read_bytes() == PAYLOAD


def test_checksum_mismatch_deletes_download(server, tmp_path):
    _, base = server
    with pytest.raises(DownloadError, match=rf"x\.bin: checksum mismatch .*SHA-256 {SHA}, expected 0+"):
        download(f"{base}/x.bin", tmp_path / "x.bin", "0" * 64, progress=False)
    assert not (tmp_path / "x.bin").exists() and not (tmp_path / "x.bin.part").exists()


def test_file_url_and_resume(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(PAYLOAD)
    (tmp_path / "out.bin.part").write_bytes(PAYLOAD[:1000])
    out = download(src.as_uri(), tmp_path / "out.bin", SHA, progress=False)
    assert out.read_bytes() == PAYLOAD


@pytest.mark.parametrize("url", ["http://clipdepth-test.invalid/f.bin", "http://127.0.0.1:{port}/f.bin"])
def test_offline_fails_fast_with_message(tmp_path, url):
    url = url.format(port=_closed_port())
    t0 = time.monotonic()
    with pytest.raises(DownloadError, match=r"cannot download .*f\.bin .*offline.*place it at .*f\.bin"):
        download(url, tmp_path / "f.bin", timeout=2.0, progress=False)
    assert time.monotonic() - t0 < 5.0


def test_http_error_is_reported(server, tmp_path):
    _, base = server
    msg = r"cannot download .*missing/f\.bin: the server answered HTTP 404 .*place it at"
    with pytest.raises(DownloadError, match=msg):
        download(f"{base}/missing/f.bin", tmp_path / "f.bin", progress=False)


# ---- safe extraction -----------------------------------------------------------------------------


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_extract_zip_and_tar_with_member_filter(tmp_path):
    z = _zip(tmp_path / "a.zip", {"d/image_02/x.png": b"1", "d/image_03/y.png": b"2", "d/": b""})
    out = extract_archive(z, tmp_path / "out", members=lambda n: "image_03" not in n)
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in out) == ["d/image_02/x.png"]
    assert (tmp_path / "out/d/image_02/x.png").read_bytes() == b"1"
    t = tmp_path / "a.tar.gz"
    with tarfile.open(t, "w:gz") as tf:
        info = tarfile.TarInfo("sub/file.txt")
        info.size = 5
        tf.addfile(info, io.BytesIO(b"hello"))
    extract_archive(t, tmp_path / "tout")
    assert (tmp_path / "tout/sub/file.txt").read_text() == "hello"


@pytest.mark.parametrize("name", ["../evil.txt", "ok/../../evil.txt", "/abs/evil.txt"])
def test_zip_paths_outside_target_are_refused(tmp_path, name):
    z = _zip(tmp_path / "bad.zip", {"fine.txt": b"x", name: b"evil"})
    with pytest.raises(DataError, match=r"bad\.zip: refusing (absolute )?member path"):
        extract_archive(z, tmp_path / "target")
    assert not (tmp_path / "evil.txt").exists()
    assert not (tmp_path / "target" / "fine.txt").exists()  # nothing written before the check


def test_tar_links_are_refused(tmp_path):
    t = tmp_path / "bad.tar"
    with tarfile.open(t, "w") as tf:
        link = tarfile.TarInfo("innocent")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        tf.addfile(link)
    with pytest.raises(DataError, match=r"bad\.tar: refusing link member 'innocent'"):
        extract_archive(t, tmp_path / "target")


def test_zip_symlink_member_refused(tmp_path):
    z = tmp_path / "link.zip"
    with zipfile.ZipFile(z, "w") as zf:
        info = zipfile.ZipInfo("lnk")
        info.external_attr = 0o120777 << 16
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(DataError, match=r"link\.zip: refusing symbolic link member 'lnk'"):
        extract_archive(z, tmp_path / "target")


def test_existing_symlink_escape_refused(tmp_path):
    (tmp_path / "target").mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "target" / "sneaky").symlink_to(tmp_path / "outside")
    z = _zip(tmp_path / "s.zip", {"sneaky/x.txt": b"x"})
    with pytest.raises(DataError, match=r"s\.zip: refusing member 'sneaky/x\.txt' that resolves outside"):
        extract_archive(z, tmp_path / "target")


def test_not_an_archive(tmp_path):
    (tmp_path / "x.zip").write_bytes(b"plain text")
    with pytest.raises(DataError, match=r"x\.zip: not a zip or tar archive"):
        extract_archive(tmp_path / "x.zip", tmp_path / "t")


def test_kitti_drives_from_list(tmp_path):
    lst = tmp_path / "eigen.txt"
    lst.write_text(
        "2011_09_26/2011_09_26_drive_0002_sync/image_02/data/0000000069.png None 721.5377\n"
        "2011_09_26/2011_09_26_drive_0002_sync/image_02/data/0000000070.png None 721.5377\n"
        "2011_09_28/2011_09_28_drive_0001_sync/image_02/data/0000000001.png None 721.5377\n"
    )
    assert kitti_drives(lst) == ["2011_09_26_drive_0002", "2011_09_28_drive_0001"]


# ---- canonical split lists --------------------------------------------------------------------------


def test_canonical_names_urls_and_checksums():
    assert splits.split_name("nyu", "train") == "nyudepthv2_train_files_with_gt.txt"
    assert splits.split_name("kitti", "test") == "eigen_test_files_with_gt.txt"
    assert splits.split_url("eigen_test_files_with_gt.txt") == (
        "https://raw.githubusercontent.com/cleinc/bts/master/train_test_inputs/eigen_test_files_with_gt.txt"
    )
    assert splits.CANONICAL_SHA256["eigen_train_files_with_gt.txt"].startswith("3655308ee4a01709")
    assert all(len(v) == 64 for v in splits.CANONICAL_SHA256.values())


def test_split_list_fetched_verified_and_cached(server, tmp_path, monkeypatch):
    httpd, base = server
    content = b"bathroom/rgb_00045.jpg bathroom/sync_depth_00045.png 518.8579\n"
    name = "nyudepthv2_test_files_with_gt.txt"
    httpd.files[name] = content
    monkeypatch.setenv("CLIPDEPTH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(splits, "BTS_BASE_URL", f"{base}/train_test_inputs/")
    monkeypatch.setitem(splits.CANONICAL_SHA256, name, hashlib.sha256(content).hexdigest())
    path = splits.get_split_file(name)
    assert path == tmp_path / "cache" / "splits" / name and path.read_bytes() == content
    httpd.shutdown()  # cached copy is used without the network
    assert splits.get_split_file(name) == path


def test_split_list_offline_message(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPDEPTH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(splits, "BTS_BASE_URL", f"http://127.0.0.1:{_closed_port()}/train_test_inputs/")
    t0 = time.monotonic()
    with pytest.raises(
        DataError,
        match=r"eigen_test_files_with_gt\.txt could not be fetched .*cleinc/bts, folder "
        r"train_test_inputs/.*--split-file",
    ):
        splits.get_split_file("eigen_test_files_with_gt.txt", timeout=2.0)
    assert time.monotonic() - t0 < 5.0


def test_kitti_and_nyu_download_helpers_end_to_end(tmp_path, monkeypatch):
    """Drive zips + annotated-depth zip served from file:// URLs land in the layout KITTIEigen reads."""
    import numpy as np
    from PIL import Image

    from clipdepth.data import KITTIEigen
    from clipdepth.data import download as dl

    src = tmp_path / "server"
    src.mkdir()
    drive = "2011_09_26_drive_0002"
    img_rel = f"2011_09_26/{drive}_sync/image_02/data/0000000069.png"
    gt_rel = f"{drive}_sync/proj_depth/groundtruth/image_02/0000000069.png"

    def png(array) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(array).save(buf, format="PNG")
        return buf.getvalue()

    _zip(
        src / f"{drive}_sync.zip",
        {
            img_rel: png(np.zeros((40, 70, 3), np.uint8)),
            img_rel.replace("image_02", "image_03"): b"right camera",
        },
    )
    depth = np.full((40, 70), 512, np.uint16)
    _zip(src / "data_depth_annotated.zip", {f"val/{gt_rel}": png(depth), "train/other_drive/x.png": b"x"})
    monkeypatch.setattr(
        dl, "KITTI_RAW_URL", (src / "{drive}_sync.zip").as_uri().replace("%7B", "{").replace("%7D", "}")
    )
    monkeypatch.setattr(
        dl,
        "KITTI_DEPTH_ANNOTATED",
        dl.Resource("data_depth_annotated.zip", (src / "data_depth_annotated.zip").as_uri()),
    )
    lst = tmp_path / "eigen_test.txt"
    lst.write_text(f"{img_rel} {gt_rel} 721.5377\n")
    raw = tmp_path / "kitti"
    assert dl.download_kitti_eigen(raw, lst, progress=False) == [drive]
    assert not (raw / "2011_09_26" / f"{drive}_sync" / "image_03").exists()  # left camera only
    assert not (raw / "data_depth_annotated/train").exists() and not (raw / "_downloads").exists()
    sample = KITTIEigen(raw, split="test", split_file=lst)[0]
    assert sample.depth.shape == (32, 64) and np.all(sample.depth == 2.0)

    (src / "nyu_depth_v2_labeled.mat").write_bytes(b"mat")
    (src / "splits.mat").write_bytes(b"splits")
    monkeypatch.setattr(
        dl,
        "NYU_LABELED",
        dl.Resource("nyu_depth_v2_labeled.mat", (src / "nyu_depth_v2_labeled.mat").as_uri()),
    )
    monkeypatch.setattr(dl, "NYU_SPLITS", dl.Resource("splits.mat", (src / "splits.mat").as_uri()))
    mat, spl = dl.download_nyu_labeled(tmp_path / "nyu", progress=False)
    assert mat.read_bytes() == b"mat" and spl.read_bytes() == b"splits"
