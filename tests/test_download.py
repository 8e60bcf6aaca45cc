"""Tests for mzsr.data.download against a real local HTTP server (127.0.0.1, no internet)."""

from __future__ import annotations

import hashlib
import http.server
import io
import re
import socket
import stat
import struct
import subprocess
import sys
import threading
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from mzsr import MZSRError
from mzsr.data import download
from mzsr.data.download import extract_zip, fetch, prepare_images

HTML_PAGE = b"<!DOCTYPE html>\n<html><head><title>Login</title></head><body>Please log in</body></html>\n"


# ----------------------------------------------------------------------------- helpers


def png_bytes(h: int = 8, w: int = 8, seed: int = 0) -> bytes:
    """A valid RGB PNG written by hand (no PIL needed)."""
    rgb = np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    raw = b"".join(b"\x00" + rgb[y].tobytes() for y in range(h))  # filter type 0 per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def make_zip(path: Path, n: int = 5, folder: str = "DIV2K_train_HR", extra=()) -> Path:
    """Zip with ``n`` PNGs in ``folder``; ``extra`` = iterable of (ZipInfo | name, data) added verbatim."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for i in range(n):
            zf.writestr(f"{folder}/{i + 1:04d}.png", png_bytes(seed=i))
        for info, data in extra:
            zf.writestr(info, data)
    return path


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


# ----------------------------------------------------------------------------- server


class ServerState:
    def __init__(self, root: Path):
        self.root = root
        self.cut_after: int | None = None  # cut the first request after this many bytes
        self.cut_always = False  # cut every request (with cut_after bytes)
        self.ignore_range = False  # answer 200 with the full file even for a Range request
        self.html = False  # always answer with an HTML page (Content-Type text/html)
        self.html_as_octet = False  # HTML body but Content-Type application/octet-stream
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.lock = threading.Lock()


def make_handler(state: ServerState):
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep pytest output clean
            pass

        def do_GET(self):
            with state.lock:
                first = not state.requests
                state.requests.append((self.path, self.headers.get("Range")))
            if state.html or state.html_as_octet:
                ctype = "text/html; charset=utf-8" if state.html else "application/octet-stream"
                self._send(200, HTML_PAGE, {"Content-Type": ctype})
                return
            path = state.root / self.path.lstrip("/")
            if not path.is_file():
                self._send(404, b"not found", {"Content-Type": "text/plain"})
                return
            data = path.read_bytes()
            size = len(data)
            rng = self.headers.get("Range")
            start = 0
            if rng and not state.ignore_range:
                m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng)
                start = int(m.group(1))
                if start >= size:
                    self._send(416, b"", {"Content-Range": f"bytes */{size}"})
                    return
                end = int(m.group(2)) if m.group(2) else size - 1
                body = data[start : end + 1]
                status, headers = 206, {"Content-Range": f"bytes {start}-{end}/{size}"}
            else:
                body, status, headers = data, 200, {}
            headers["Content-Type"] = "application/zip"
            if state.cut_after is not None and (first or state.cut_always):
                # announce everything, send only part of it, then drop the connection
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: state.cut_after])
                self.close_connection = True
                return
            self._send(status, body, headers)

        def _send(self, status, body, headers):
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    state = ServerState(root)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch):
    monkeypatch.setattr(download, "RETRY_BACKOFF_S", 0.0)
    monkeypatch.setattr(download, "TIMEOUT_S", 5.0)


@pytest.fixture
def served_zip(server):
    """A 6-image zip published at <url>/DIV2K_train_HR.zip; returns (url, bytes)."""
    make_zip(server.root / "DIV2K_train_HR.zip", n=6)
    data = (server.root / "DIV2K_train_HR.zip").read_bytes()
    return f"{server.url}/DIV2K_train_HR.zip", data


# ----------------------------------------------------------------------------- fetch


def test_png_helper_is_a_real_png():
    data = png_bytes(4, 5)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    try:
        from PIL import Image
    except ImportError:
        return
    img = Image.open(io.BytesIO(data))
    img.load()
    assert img.size == (5, 4) and img.mode == "RGB"


def test_full_download_and_extract(tmp_path, server, served_zip):
    url, data = served_zip
    dest = tmp_path / "dl" / "DIV2K_train_HR.zip"
    out = fetch(url, dest, expected_size=len(data), sha256=sha(data), progress=False)
    assert out == dest and dest.read_bytes() == data
    assert not dest.with_suffix(".zip.part").exists()
    assert server.requests == [("/DIV2K_train_HR.zip", None)]

    target = tmp_path / "data" / "train_hr"
    images = extract_zip(dest, target, expected_count=6)
    assert len(images) == 6 and images == sorted(images)
    assert all(p.is_file() and p.suffix == ".png" and target in p.parents for p in images)
    assert images[0].read_bytes() == png_bytes(seed=0)
    assert not (tmp_path / "data" / "train_hr.tmp").exists()


def test_resume_after_cut_connection(tmp_path, server, served_zip):
    url, data = served_zip
    cut = len(data) // 3
    server.cut_after = cut
    dest = tmp_path / "DIV2K_train_HR.zip"
    fetch(url, dest, sha256=sha(data), progress=False, chunk_size=1000, retries=2)
    assert sha(dest.read_bytes()) == sha(data)
    assert len(server.requests) == 2
    assert server.requests[0][1] is None
    assert server.requests[1][1] == f"bytes={cut}-"


def test_resume_existing_part_file(tmp_path, server, served_zip):
    url, data = served_zip
    dest = tmp_path / "DIV2K_train_HR.zip"
    dest.with_suffix(".zip.part").write_bytes(data[:1234])
    fetch(url, dest, expected_size=len(data), sha256=sha(data), progress=False)
    assert dest.read_bytes() == data
    assert server.requests == [("/DIV2K_train_HR.zip", "bytes=1234-")]


def test_server_ignoring_range_restarts_from_zero(tmp_path, server, served_zip):
    url, data = served_zip
    server.ignore_range = True
    dest = tmp_path / "DIV2K_train_HR.zip"
    dest.with_suffix(".zip.part").write_bytes(b"garbage that must not survive")
    fetch(url, dest, sha256=sha(data), progress=False)
    assert dest.read_bytes() == data
    assert server.requests == [("/DIV2K_train_HR.zip", "bytes=29-")]


def test_complete_part_answered_416(tmp_path, server, served_zip):
    url, data = served_zip
    dest = tmp_path / "DIV2K_train_HR.zip"
    dest.with_suffix(".zip.part").write_bytes(data)
    fetch(url, dest, sha256=sha(data), progress=False)
    assert dest.read_bytes() == data
    assert not dest.with_suffix(".zip.part").exists()
    assert server.requests == [("/DIV2K_train_HR.zip", f"bytes={len(data)}-")]


def test_existing_verified_dest_is_not_downloaded_again(tmp_path, server, served_zip):
    url, data = served_zip
    dest = tmp_path / "DIV2K_train_HR.zip"
    dest.write_bytes(data)
    assert fetch(url, dest, expected_size=len(data), sha256=sha(data), progress=False) == dest
    assert server.requests == []


def test_existing_bad_dest_is_downloaded_again(tmp_path, server, served_zip):
    url, data = served_zip
    dest = tmp_path / "DIV2K_train_HR.zip"
    dest.write_bytes(b"old junk")
    fetch(url, dest, sha256=sha(data), progress=False)
    assert dest.read_bytes() == data and len(server.requests) == 1


def test_wrong_sha256_raises_and_leaves_nothing(tmp_path, server, served_zip):
    url, data = served_zip
    wrong = "0" * 64
    target = tmp_path / "data" / "train_hr"
    with pytest.raises(MZSRError) as err:
        prepare_images(url, target, sha256=wrong, expected_count=6, progress=False)
    msg = str(err.value)
    assert url in msg and wrong in msg and sha(data) in msg
    downloads = tmp_path / "data" / "downloads"
    assert not (downloads / "DIV2K_train_HR.zip").exists()
    assert not (downloads / "DIV2K_train_HR.zip.part").exists()
    assert not target.exists() and not (tmp_path / "data" / "train_hr.tmp").exists()


def test_wrong_expected_size_raises(tmp_path, server, served_zip):
    url, data = served_zip
    dest = tmp_path / "DIV2K_train_HR.zip"
    with pytest.raises(MZSRError) as err:
        fetch(url, dest, expected_size=len(data) + 1, progress=False)
    msg = str(err.value)
    assert url in msg and str(len(data) + 1) in msg and str(len(data)) in msg
    assert not dest.exists() and not dest.with_suffix(".zip.part").exists()


def test_html_instead_of_zip(tmp_path, server):
    server.html = True
    dest = tmp_path / "DIV2K_train_HR.zip"
    url = f"{server.url}/DIV2K_train_HR.zip"
    with pytest.raises(MZSRError, match="got an HTML page instead of a zip") as err:
        fetch(url, dest, progress=False)
    assert url in str(err.value)
    assert not dest.exists() and not dest.with_suffix(".zip.part").exists()


def test_html_body_detected_without_content_type(tmp_path, server):
    server.html_as_octet = True
    dest = tmp_path / "DIV2K_train_HR.zip"
    with pytest.raises(MZSRError, match="got an HTML page instead of a zip"):
        fetch(f"{server.url}/DIV2K_train_HR.zip", dest, progress=False)
    assert not dest.exists() and not dest.with_suffix(".zip.part").exists()


def test_http_404_names_url(tmp_path, server):
    url = f"{server.url}/missing.zip"
    with pytest.raises(MZSRError, match="404") as err:
        fetch(url, tmp_path / "missing.zip", progress=False)
    assert url in str(err.value)
    assert not (tmp_path / "missing.zip").exists()


def test_retries_exhausted_keeps_part_for_later_resume(tmp_path, server, served_zip):
    url, data = served_zip
    server.cut_after = 100
    server.cut_always = True
    dest = tmp_path / "DIV2K_train_HR.zip"
    with pytest.raises(MZSRError, match="failed after 2 attempts") as err:
        fetch(url, dest, progress=False, retries=1)
    assert url in str(err.value)
    assert [r for _, r in server.requests] == [None, "bytes=100-"]
    assert dest.with_suffix(".zip.part").read_bytes() == data[:200]
    assert not dest.exists()
    # the server recovers: the next call resumes where the last one stopped
    server.cut_after = None
    fetch(url, dest, sha256=sha(data), progress=False)
    assert dest.read_bytes() == data
    assert server.requests[-1][1] == "bytes=200-"


# ----------------------------------------------------------------------------- extract


def test_truncated_archive(tmp_path):
    full = make_zip(tmp_path / "full.zip", n=4).read_bytes()
    archive = tmp_path / "trunc.zip"
    archive.write_bytes(full[: len(full) // 2])
    target = tmp_path / "out"
    with pytest.raises(MZSRError, match="not a zip archive") as err:
        extract_zip(archive, target, expected_count=4)
    assert str(archive) in str(err.value)
    assert not target.exists() and not (tmp_path / "out.tmp").exists()


def test_corrupt_member_crc(tmp_path):
    archive = make_zip(tmp_path / "a.zip", n=3)
    with zipfile.ZipFile(archive) as zf:
        info = zf.infolist()[1]
    raw = bytearray(archive.read_bytes())
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26 : info.header_offset + 30])
    data_start = info.header_offset + 30 + name_len + extra_len
    raw[data_start + info.compress_size // 2] ^= 0xFF  # flip one byte in the stored data
    archive.write_bytes(bytes(raw))
    target = tmp_path / "out"
    with pytest.raises(MZSRError, match="CRC") as err:
        extract_zip(archive, target)
    assert info.filename in str(err.value)
    assert not target.exists() and not (tmp_path / "out.tmp").exists()


@pytest.mark.parametrize(
    "name, problem",
    [
        ("../evil.png", "'..'"),
        ("DIV2K/../../evil.png", "'..'"),
        ("..\\evil.png", "'..'"),
        ("/tmp/mzsr_abs_evil.png", "absolute"),
        ("\\evil.png", "absolute"),
        ("C:/evil.png", "drive"),
        ("C:evil.png", "drive"),
    ],
)
def test_unsafe_entry_names_refused(tmp_path, name, problem):
    work = tmp_path / "work"
    work.mkdir()
    archive = make_zip(work / "a.zip", n=2, extra=[(zipfile.ZipInfo(name), png_bytes(seed=9))])
    before = files_under(tmp_path)
    target = work / "sub" / "out"
    with pytest.raises(MZSRError, match="refusing to extract") as err:
        extract_zip(archive, target, expected_count=3)
    assert problem in str(err.value) and str(archive) in str(err.value)
    assert files_under(tmp_path) == before  # nothing written inside or outside the target
    assert not Path("/tmp/mzsr_abs_evil.png").exists()


def test_symlink_entry_refused(tmp_path):
    info = zipfile.ZipInfo("DIV2K_train_HR/link.png")
    info.create_system = 3  # Unix
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    archive = make_zip(tmp_path / "a.zip", n=2, extra=[(info, "/etc/passwd")])
    target = tmp_path / "out"
    with pytest.raises(MZSRError, match="symbolic link"):
        extract_zip(archive, target)
    assert not target.exists() and not (tmp_path / "out.tmp").exists()


def test_wrong_image_count_leaves_nothing(tmp_path):
    archive = make_zip(tmp_path / "a.zip", n=5, extra=[("DIV2K_train_HR/readme.txt", "hi")])
    target = tmp_path / "out"
    with pytest.raises(MZSRError) as err:
        extract_zip(archive, target, expected_count=800)
    msg = str(err.value)
    assert "800" in msg and "5" in msg and str(archive) in msg
    assert not target.exists() and not (tmp_path / "out.tmp").exists()


def test_a_killed_extractions_temp_folder_is_removed(tmp_path):
    archive = make_zip(tmp_path / "a.zip", n=3)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    killed = (
        tmp_path / f".out.{socket.gethostname()}-{int(dead.stdout)}.abc123.tmp"
    )  # a killed extraction's (mzsr.files.atomic)
    (killed / "DIV2K_train_HR").mkdir(parents=True)
    (killed / "DIV2K_train_HR" / "0001.png").write_bytes(b"half")
    images = extract_zip(archive, tmp_path / "out", expected_count=3)
    assert len(images) == 3
    assert not killed.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["a.zip", "out"]


def test_not_a_zip_and_existing_target(tmp_path):
    bogus = tmp_path / "bogus.zip"
    bogus.write_bytes(HTML_PAGE)
    with pytest.raises(MZSRError, match="not a zip"):
        extract_zip(bogus, tmp_path / "out")
    archive = make_zip(tmp_path / "a.zip", n=2)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(MZSRError, match="already exists"):
        extract_zip(archive, tmp_path / "full")
    assert files_under(tmp_path / "full") == {"keep.txt"}


# ----------------------------------------------------------------------------- prepare_images


def test_prepare_images_from_url(tmp_path, server, served_zip):
    url, data = served_zip
    target = tmp_path / "data" / "train_hr"
    images = prepare_images(url, target, expected_count=6, sha256=sha(data), progress=False)
    assert len(images) == 6
    assert (tmp_path / "data" / "downloads" / "DIV2K_train_HR.zip").read_bytes() == data
    # a second call finds the finished folder and does not download again
    assert prepare_images(url, target, expected_count=6, progress=False) == images
    assert len(server.requests) == 1


def test_prepare_images_from_zip_and_dir(tmp_path):
    archive = make_zip(tmp_path / "a.zip", n=3)
    from_zip = prepare_images(str(archive), tmp_path / "z", expected_count=3)
    assert len(from_zip) == 3

    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        (src / f"{i}.png").write_bytes(png_bytes(seed=i))
    (src / "link.png").symlink_to(src / "0.png")
    (src / "notes.txt").write_text("ignored")
    copied = prepare_images(str(src), tmp_path / "copy", expected_count=4)
    assert [p.name for p in copied] == ["0.png", "1.png", "2.png", "link.png"]
    assert all(p.is_file() and not p.is_symlink() for p in copied)
    assert (tmp_path / "copy" / "link.png").read_bytes() == png_bytes(seed=0)
    assert not (tmp_path / "copy" / "notes.txt").exists()

    with pytest.raises(MZSRError, match="expected 5 images, found 4"):
        prepare_images(str(src), tmp_path / "copy2", expected_count=5)
    assert not (tmp_path / "copy2").exists()


def test_prepare_images_bad_source(tmp_path):
    with pytest.raises(MZSRError, match="not an existing folder"):
        prepare_images(str(tmp_path / "nope"), tmp_path / "out")
    with pytest.raises(TypeError):
        prepare_images(str(tmp_path), tmp_path / "out", bogus=1)


def test_div2k_constants():
    assert set(download.DIV2K_URLS) == set(download.DIV2K_COUNTS) == {"train_hr", "valid_hr"}
    assert download.DIV2K_COUNTS == {"train_hr": 800, "valid_hr": 100}
    assert all(u.startswith("http://") and u.endswith(".zip") for u in download.DIV2K_URLS.values())
