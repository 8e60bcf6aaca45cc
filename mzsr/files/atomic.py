"""Atomic file writes: a file either does not exist or is complete, even if the process is killed.

Every writer of the package and of the rule scripts goes through here: `atomic_path` (a temp path
to hand to a library), `atomic_open`, `atomic_write_text`, `atomic_write_bytes`, `atomic_copy` for
files, `atomic_folder` for a folder of files, and `durable_replace` for the one rename step (also
of the download's resumable `.part` file).

File-system faults (no space left, a read-only or missing parent, a path that is a file or a folder,
permission denied) become one MZSRError naming the path and the problem, and leave nothing behind.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path

from mzsr import MZSRError, MZSRFileError

_UMASK = os.umask(0)
os.umask(_UMASK)
_HOST = socket.gethostname()
_ERRNO_IN_TEXT = re.compile(r"errno\s*=?\s*(\d+)", re.IGNORECASE)


def os_problem(exc: BaseException) -> str:
    """What went wrong in a few words: the errno's text (also when a library, e.g. HDF5 or torch,
    buried it in its message), else the message's first line."""
    code = getattr(exc, "errno", None)
    if not isinstance(code, int):
        m = _ERRNO_IN_TEXT.search(str(exc))
        code = int(m.group(1)) if m else None
    if isinstance(code, int) and code in errno.errorcode:
        return os.strerror(code)
    text = " ".join(str(exc).split())
    if "No space left" in text or "file write failed" in text:  # torch's stream writer says no more
        return os.strerror(errno.ENOSPC) if "No space left" in text else "write failed (disk full?)"
    return text[:200] or type(exc).__name__


def _existing_ancestor(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _probe(folder: Path, shown: Path) -> None:
    """Create and delete a temp file in `folder`: the only test of writability that root, read-only
    mounts and network file systems all answer truthfully."""
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".mzsr-probe.", suffix=".tmp")
    except OSError as e:
        raise MZSRError(f"{shown}: cannot write in {folder}: {os_problem(e)}") from None
    os.close(fd)
    os.unlink(tmp)


def check_output_folder(folder: str | Path) -> None:
    """Before any work: `folder` is (or can become) a writable folder. Creates nothing."""
    folder = Path(folder)
    if folder.exists():
        if not folder.is_dir():
            raise MZSRError(f"{folder}: exists and is a file, not a folder")
        _probe(folder, folder)
        return
    base = _existing_ancestor(folder.parent)
    if not base.is_dir():
        raise MZSRError(f"{folder}: cannot create the folder: {base} is a file, not a folder")
    _probe(base, folder)


def check_output_file(path: str | Path) -> None:
    """Before any work: `path` can be written (its folder writable or creatable, not a folder itself)."""
    path = Path(path)
    if path.is_dir():
        raise MZSRError(f"{path}: is a folder, expected a file name")
    base = _existing_ancestor(path.parent)
    if not base.is_dir():
        raise MZSRError(f"{path}: cannot create its folder: {base} is a file, not a folder")
    _probe(base, path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        pass
    return True


def remove_stale_temps(path: str | Path) -> list[Path]:
    """Delete the temporary files that killed writers of `path` left behind; return them.

    A temp file is stale when the process named in it (same host, see `atomic_path`) is gone. Temps
    of live processes and of other hosts are kept. Without this a killed patch-store job would leave
    its (possibly gigabytes large) half-written store behind on every attempt.
    """
    path = Path(path)
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(.+)-(\d+)\.\w+\.tmp")
    removed = []
    if path.parent.is_dir():
        for tmp in path.parent.iterdir():
            m = pattern.fullmatch(tmp.name)
            if m and m.group(1) == _HOST and not _alive(int(m.group(2))):
                if tmp.is_dir() and not tmp.is_symlink():  # an `atomic_folder`'s
                    shutil.rmtree(tmp, ignore_errors=True)
                else:
                    tmp.unlink(missing_ok=True)
                removed.append(tmp)
    return removed


def _fsync_dir(folder: Path) -> None:
    try:  # persist the rename itself; not possible on every platform/filesystem
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def durable_replace(src: str | Path, dst: str | Path) -> None:
    """Rename a finished file (or folder) `src` onto `dst`, after flushing it to disk (fsync), and
    persist the rename: even after a power loss `dst` is absent, the old one, or complete. The one
    rename step of every writer here (`atomic_path`, `atomic_folder`, the download's `.part`)."""
    src, dst = Path(src), Path(dst)
    if src.is_dir():
        for p in sorted(src.rglob("*"), reverse=True):  # files first, then their folders
            if p.is_file() and not p.is_symlink():
                _fsync(p)
            elif p.is_dir():
                _fsync_dir(p)
        _fsync_dir(src)
    else:
        _fsync(src)
    os.replace(src, dst)
    _fsync_dir(dst.parent)


def _prepare_parent(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise MZSRError(
            f"{path}: cannot create its folder: {_existing_ancestor(path.parent)} is a file, not a folder"
        ) from None
    remove_stale_temps(path)


def _temp_prefix(path: Path) -> str:
    return f".{path.name}.{_HOST}-{os.getpid()}."


@contextmanager
def _file_errors(path: Path):
    """An OSError of the file system becomes `<path>: cannot write: <problem>` (MZSRFileError)."""
    try:
        yield
    except MZSRError:
        raise
    except OSError as e:
        raise MZSRFileError(f"{path}: cannot write: {os_problem(e)}") from None
    except Exception as e:  # torch/safetensors wrap some OSErrors in their own types; only I/O ones
        if not any(w in str(e).lower() for w in ("write", "space", "i/o", "ioerror", "storagefull")):
            raise
        raise MZSRFileError(f"{path}: cannot write: {os_problem(e)}") from None


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    The data are flushed to disk (fsync) before the rename, so that even after a power loss the
    file under the final name is complete. The temp file is `.<name>.<host>-<pid>.<random>.tmp`,
    so that the next writer of `path` can remove it if this process is killed. An OSError of the
    file system (here or in the block: no space left, read-only, permission denied, ...) becomes
    an MZSRError `<path>: cannot write: <problem>`, and the temp file is removed.
    """
    path = Path(path)
    tmp = None
    try:
        with _file_errors(path):
            if path.is_dir():
                raise MZSRError(f"{path}: is a folder, cannot write a file there")
            _prepare_parent(path)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(path), suffix=".tmp")
            os.close(fd)
            os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; results should read like any other file
            yield Path(tmp)
            durable_replace(tmp, path)
    finally:
        if tmp is not None and os.path.exists(tmp):
            try:
                os.unlink(tmp)
            except OSError:
                pass


@contextmanager
def atomic_open(path: str | Path, mode: str = "w", **kwargs):
    """`open()` for writing, atomically (`atomic_path`): yields the open file; `path` appears,
    complete, only when the block succeeds. `mode` "w"/"wb" (and `newline`, `encoding`, ...)."""
    if "w" not in mode:
        raise ValueError(f"atomic_open writes a new file: mode {mode!r} must contain 'w'")
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as f:
        yield f


@contextmanager
def atomic_folder(path: str | Path):
    """Yield a temporary folder beside `path`; rename it onto `path` only if the block succeeds.

    For outputs that are folders of files (downloaded, extracted or generated images): until the
    block has written every file, nothing is under the final name, so a half-filled folder never
    looks finished. The temp folder is named as `atomic_path`'s temp files (a killed writer's is
    removed by the next one), its files are flushed to disk before the rename, errors are the same
    one line (an MZSRError that names a file in the temp folder names it under `path` instead),
    and it is removed on any failure. `path` must not exist or be an empty folder.
    """
    path = Path(path)
    tmp = None
    try:
        with _file_errors(path):
            if path.exists() and (not path.is_dir() or any(path.iterdir())):
                raise MZSRError(f"{path}: already exists and is not an empty folder")
            _prepare_parent(path)
            tmp = tempfile.mkdtemp(dir=path.parent, prefix=_temp_prefix(path), suffix=".tmp")
            os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes 0700 folders
            try:
                yield Path(tmp)
            except MZSRError as e:  # a writer inside named its file in the temp folder: name the final one
                if tmp not in str(e):
                    raise
                raise type(e)(str(e).replace(tmp, str(path))) from None
            if path.is_dir():
                path.rmdir()  # empty, checked above
            durable_replace(tmp, path)
    finally:
        if tmp is not None and os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` to `path` atomically (`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` atomically (`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_copy(src: str | Path, dst: str | Path) -> None:
    """Copy a file so that `dst` is either absent or complete."""
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def set_aside(path: str | Path, why: str) -> Path:
    """Move a bad project file out of the way (`<name>.<why>`: a corrupt store, a stale checkpoint), so
    that a rerun rebuilds it instead of reading it again; the file is kept for inspection (safe to
    delete). Returns where it is now (the same path if it could not be moved)."""
    path = Path(path)
    aside = path.with_name(path.name + f".{why}")
    try:
        os.replace(path, aside)
    except OSError:
        return path
    return aside
