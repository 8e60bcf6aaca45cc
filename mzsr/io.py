"""Atomic file writes: a file either does not exist or is complete, even if the process is killed."""
from __future__ import annotations

import os
import re
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path


_UMASK = os.umask(0)
os.umask(_UMASK)
_HOST = socket.gethostname()


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
                tmp.unlink(missing_ok=True)
                removed.append(tmp)
    return removed


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    The data are flushed to disk (fsync) before the rename, so that even after a power loss the
    file under the final name is complete. The temp file is `.<name>.<host>-<pid>.<random>.tmp`,
    so that the next writer of `path` can remove it if this process is killed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{_HOST}-{os.getpid()}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; results should read like any other file
    try:
        yield Path(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
