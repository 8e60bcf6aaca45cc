"""Download and unpack image data sets (DIV2K) safely and resumably.

* :func:`fetch` streams a URL into ``<dest>.part`` and resumes an interrupted
  download with an HTTP ``Range`` request; the finished file is verified (size,
  SHA-256) and only then renamed to ``dest`` (:func:`mzsr.files.atomic.durable_replace`), so
  ``dest`` never holds a partial file.
* :func:`extract_zip` validates a zip archive completely (CRCs, no absolute paths,
  no ``..``, no symlinks) before writing anything, extracts it into a hidden temp
  folder beside the target and renames that to the target
  (:func:`mzsr.files.atomic.atomic_folder`), so a half-extracted folder never looks finished.
* :func:`prepare_images` turns a directory, a local zip or an http(s) URL into a
  folder of images.

Only the standard library and tqdm are used.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import shutil
import stat
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from pathlib import Path, PurePosixPath, PureWindowsPath

from tqdm import tqdm

from mzsr import MZSRError, __version__
from mzsr.files.atomic import atomic_folder, durable_replace

__all__ = [
    "DIV2K_URLS",
    "DIV2K_COUNTS",
    "fetch",
    "extract_zip",
    "prepare_images",
]

DIV2K_URLS = {
    "train_hr": "http://data.vision.ee.ethz.ch/cvl/DIV2K/DIV2K_train_HR.zip",
    "valid_hr": "http://data.vision.ee.ethz.ch/cvl/DIV2K/DIV2K_valid_HR.zip",
}
#: Number of PNG images in each DIV2K archive.
DIV2K_COUNTS = {"train_hr": 800, "valid_hr": 100}

#: Socket timeout (seconds) for connecting and for each read.
TIMEOUT_S = 60.0
#: Pause before retry number k is ``k * RETRY_BACKOFF_S`` seconds (tests set it to 0).
RETRY_BACKOFF_S = 2.0

_HTML_MSG = "got an HTML page instead of a zip"


class _ShortRead(ConnectionError):
    """The server closed the connection before sending everything it announced."""


# Failures that a new request (resuming from the .part file) may cure.
_RETRYABLE = (
    ConnectionError,  # includes _ShortRead, RemoteDisconnected, ConnectionResetError
    TimeoutError,  # socket.timeout is an alias since Python 3.10
    http.client.IncompleteRead,
    http.client.BadStatusLine,
)


# --------------------------------------------------------------------------- fetch


def fetch(
    url: str,
    dest: Path,
    expected_size: int | None = None,
    sha256: str | None = None,
    progress: bool = True,
    chunk_size: int = 1 << 20,
    retries: int = 3,
) -> Path:
    """Download ``url`` to ``dest`` and return ``dest``.

    The data go to ``dest.with_suffix(dest.suffix + ".part")`` first; an existing
    ``.part`` is resumed with ``Range: bytes=N-``. A cut connection is resumed up to
    ``retries`` times. After the download the size (as announced by the server and
    ``expected_size``) and ``sha256`` are checked; on a mismatch the ``.part`` is
    deleted and :class:`MZSRError` is raised. On success ``.part`` is renamed to
    ``dest`` atomically. If ``dest`` already exists and passes the given checks it is
    returned at once (if no checks are given, an existing ``dest`` is trusted).
    """
    dest = Path(dest)
    part = dest.with_suffix(dest.suffix + ".part")
    sha256 = sha256.strip().lower() if sha256 else None
    expect_zip = dest.suffix.lower() == ".zip" or urllib.parse.urlparse(url).path.lower().endswith(".zip")

    if dest.exists():
        if _verifies(dest, expected_size, sha256):
            return dest
        dest.unlink()  # stale or corrupt earlier download: fetch it again

    dest.parent.mkdir(parents=True, exist_ok=True)
    if expected_size is not None and part.exists() and part.stat().st_size > expected_size:
        part.unlink()  # longer than the file can be: not resumable

    attempt = 0
    while True:
        try:
            _download_once(url, dest, part, expected_size, expect_zip, progress, chunk_size)
            break
        except _RETRYABLE as exc:
            attempt += 1
            if attempt > retries:
                have = part.stat().st_size if part.exists() else 0
                raise MZSRError(
                    f"download of {url} failed after {attempt} attempts ({type(exc).__name__}: {exc}); "
                    f"{have} bytes are kept in {part}, run again to resume"
                ) from exc
            if RETRY_BACKOFF_S > 0:
                time.sleep(RETRY_BACKOFF_S * attempt)

    size = part.stat().st_size
    if expected_size is not None and size != expected_size:
        part.unlink(missing_ok=True)
        raise MZSRError(
            f"download of {url}: size mismatch, expected {expected_size} bytes, got {size} bytes "
            f"(partial file {part} deleted; run again)"
        )
    if sha256 is not None:
        actual = _sha256_file(part)
        if actual != sha256:
            part.unlink(missing_ok=True)
            raise MZSRError(
                f"download of {url}: SHA-256 mismatch, expected {sha256}, got {actual} "
                f"(partial file {part} deleted; run again, or check the expected checksum)"
            )
    durable_replace(part, dest)
    return dest


def _download_once(
    url: str,
    dest: Path,
    part: Path,
    expected_size: int | None,
    expect_zip: bool,
    progress: bool,
    chunk_size: int,
) -> None:
    """One HTTP request appending to (or restarting) ``part``; raises a _RETRYABLE on a cut."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": f"mzsr/{__version__}", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and offset:
            _, total = _parse_content_range(exc.headers.get("Content-Range"))
            if offset == total or (total is None and offset == expected_size):
                return  # the .part is already complete
            part.unlink()  # cannot resume this .part: start again from zero (no Range, so no 416)
            return _download_once(url, dest, part, expected_size, expect_zip, progress, chunk_size)
        raise MZSRError(f"could not download {url}: HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, (ConnectionError, TimeoutError)):
            raise exc.reason
        raise MZSRError(f"could not download {url}: {exc.reason}") from exc

    with response:
        ctype = (response.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if expect_zip and ctype in ("text/html", "application/xhtml+xml"):
            raise MZSRError(f"download of {url}: {_HTML_MSG} (Content-Type {ctype}); check the URL")

        status = response.status
        if status == 206:
            start, total = _parse_content_range(response.headers.get("Content-Range"))
            if start != offset:
                response.close()
                part.unlink(missing_ok=True)  # restart from zero without Range
                return _download_once(url, dest, part, expected_size, expect_zip, progress, chunk_size)
            mode = "ab"
        elif status == 200:
            offset, total, mode = 0, None, "wb"  # no resume support: start again from zero
        else:
            raise MZSRError(f"could not download {url}: unexpected HTTP status {status}")
        length = response.headers.get("Content-Length")
        if total is None and length is not None and length.strip().isdigit():
            total = offset + int(length)
        if expected_size is not None and total is not None and total != expected_size:
            part.unlink(missing_ok=True)
            raise MZSRError(
                f"download of {url}: size mismatch, expected {expected_size} bytes, "
                f"the server announces {total} bytes (check the URL and the expected size)"
            )

        first = response.read(chunk_size)
        if expect_zip and offset == 0 and _looks_like_html(first):
            raise MZSRError(f"download of {url}: {_HTML_MSG} (the body starts with {first[:15]!r}); check the URL")

        received = offset
        with (
            open(part, mode) as fh,
            tqdm(
                total=total,
                initial=offset,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=dest.name,
                disable=not progress,
            ) as bar,
        ):
            chunk = first
            while chunk:
                fh.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
                chunk = response.read(chunk_size)
            fh.flush()
            os.fsync(fh.fileno())
        if total is not None and received < total:
            raise _ShortRead(f"connection closed after {received} of {total} bytes")


def _parse_content_range(value: str | None) -> tuple[int | None, int | None]:
    """``'bytes 10-99/100'`` -> (10, 100); ``'bytes */100'`` -> (None, 100); unknown parts are None."""
    if not value:
        return None, None
    m = re.fullmatch(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*", value)
    if not m:
        return None, None
    start = int(m.group(1)) if m.group(1) is not None else None
    total = int(m.group(2)) if m.group(2) != "*" else None
    return start, total


def _looks_like_html(data: bytes) -> bool:
    head = data[:512].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    return head.startswith((b"<!doctype", b"<html"))


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _verifies(path: Path, expected_size: int | None, sha256: str | None) -> bool:
    if expected_size is not None and path.stat().st_size != expected_size:
        return False
    return sha256 is None or _sha256_file(path) == sha256


# --------------------------------------------------------------------------- extract


def extract_zip(
    archive: Path,
    target: Path,
    expected_count: int | None = None,
    suffixes: tuple[str, ...] = (".png",),
) -> list[Path]:
    """Validate ``archive`` completely, extract it to ``target`` atomically, return its images.

    Every entry is checked (CRC, no absolute path or drive, no ``..``, no symlink or
    other special file) before anything is written. The archive is extracted into a
    temp folder beside ``target`` (:func:`mzsr.files.atomic.atomic_folder`; a killed
    extraction's is removed first), the files ending in ``suffixes`` are counted and
    compared with ``expected_count``, and only then the folder is renamed to
    ``target``. On any error nothing is left behind.
    ``target`` must not exist or be an empty directory. Returns the sorted image paths
    (inside ``target``, keeping the archive's sub-folders).
    """
    archive, target = Path(archive), Path(target)
    if not archive.is_file():
        raise MZSRError(f"{archive}: archive not found")
    if not zipfile.is_zipfile(archive):
        raise MZSRError(
            f"{archive}: not a zip archive (truncated or corrupt download, or not a zip at all); "
            "delete it and download it again"
        )
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise MZSRError(f"{target}: already exists and is not an empty folder; remove it before extracting {archive}")

    try:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                _check_member(archive, info)
            bad = zf.testzip()
            if bad is not None:
                raise MZSRError(
                    f"{archive}: corrupt entry {bad!r} (CRC mismatch); delete the archive and download it again"
                )
            with atomic_folder(target) as tmp:
                try:
                    zf.extractall(tmp)
                except OSError as exc:
                    raise MZSRError(f"{archive}: extracting into {tmp} failed: {exc}") from exc
                images = _find_images(tmp, suffixes)
                if expected_count is not None and len(images) != expected_count:
                    raise MZSRError(
                        f"{archive}: expected {expected_count} images ({', '.join(suffixes)}), "
                        f"the archive holds {len(images)}; wrong or incomplete archive, nothing was extracted"
                    )
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
        raise MZSRError(f"{archive}: corrupt zip archive ({exc}); delete it and download it again") from exc
    return sorted(target / p.relative_to(tmp) for p in images)


def _check_member(archive: Path, info: zipfile.ZipInfo) -> None:
    name = info.filename
    problem = None
    parts = re.split(r"[\\/]", name)
    if PureWindowsPath(name).drive or ":" in parts[0]:
        problem = "path with a drive"
    elif name.startswith(("/", "\\")) or PurePosixPath(name).is_absolute() or PureWindowsPath(name).is_absolute():
        problem = "absolute path"
    elif ".." in parts:
        problem = "path with '..'"
    else:
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            problem = "symbolic link"
        elif stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
            problem = "special file"
    if problem:
        raise MZSRError(f"{archive}: refusing to extract entry {name!r} ({problem}); nothing was extracted")


def _find_images(root: Path, suffixes) -> list[Path]:
    if isinstance(suffixes, str):
        suffixes = (suffixes,)
    wanted = tuple(s.lower() for s in suffixes)
    return sorted(p for p in root.rglob("*") if p.name.lower().endswith(wanted) and p.is_file())


# --------------------------------------------------------------------------- prepare

_FETCH_KW = {"expected_size", "sha256", "progress", "chunk_size", "retries"}
_EXTRACT_KW = {"expected_count", "suffixes"}


def prepare_images(source: str, target: Path, **kw) -> list[Path]:
    """Make ``target`` a folder of images from ``source`` and return the sorted image paths.

    ``source`` is a directory (its images are copied, links dereferenced; if it *is*
    ``target`` it is only validated), a local ``.zip`` (see :func:`extract_zip`) or an
    ``http(s)://`` URL of a zip (downloaded with :func:`fetch` into
    ``target.parent / "downloads"``, then extracted). Keyword arguments go to
    :func:`fetch` (expected_size, sha256, progress, chunk_size, retries) and
    :func:`extract_zip` (expected_count, suffixes). If ``target`` already holds the
    expected images it is returned as is.
    """
    unknown = set(kw) - _FETCH_KW - _EXTRACT_KW
    if unknown:
        raise TypeError(f"prepare_images() got unexpected keyword arguments: {', '.join(sorted(unknown))}")
    fetch_kw = {k: v for k, v in kw.items() if k in _FETCH_KW}
    extract_kw = {k: v for k, v in kw.items() if k in _EXTRACT_KW}
    expected_count = extract_kw.get("expected_count")
    suffixes = extract_kw.get("suffixes", (".png",))
    target = Path(target)
    src = str(source)

    if target.is_dir() and any(target.iterdir()):  # done before, or source is target
        images = _find_images(target, suffixes)
        _check_count(target, images, expected_count, "remove it and run again")
        return images

    if src.startswith(("http://", "https://")):
        name = PurePosixPath(urllib.parse.urlparse(src).path).name
        if not name:
            raise MZSRError(f"{src}: URL does not end in a file name")
        archive = fetch(src, target.parent / "downloads" / name, **fetch_kw)
        return extract_zip(archive, target, **extract_kw)

    path = Path(src)
    if path.is_dir():
        images = _find_images(path, suffixes)
        _check_count(path, images, expected_count, "point the source at the right folder")
        with atomic_folder(target) as tmp:
            for img in images:
                out = tmp / img.relative_to(path)
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(img, out)  # follows links: the copy holds real files
        return sorted(target / p.relative_to(path) for p in images)
    if path.is_file():
        return extract_zip(path, target, **extract_kw)
    raise MZSRError(f"{src}: not an existing folder or zip file, nor an http(s):// URL")


def _check_count(where: Path, images: list[Path], expected_count: int | None, hint: str) -> None:
    if not images:
        raise MZSRError(f"{where}: no images found; {hint}")
    if expected_count is not None and len(images) != expected_count:
        raise MZSRError(f"{where}: expected {expected_count} images, found {len(images)}; {hint}")
