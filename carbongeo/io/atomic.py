"""Atomic file writes: write to a temporary name in the same folder, then rename.

A reader never sees a half-written output: every file is written under a hidden temporary name
next to its final path and moved into place with :func:`os.replace`, which is atomic on POSIX and
Windows when both names are on the same file system. On error the temporary file is removed.
:class:`AtomicGroup` commits several files together (e.g. the cubes of one tiling run), so a
failure leaves none of them behind.

Temporary names are safe on storage shared by several hosts: ``.<stem>.tmp-<writer><suffix>``,
where the writer is ``<host>-<pid>-<token>``, e.g. ``.X_2014.tmp-node7_4026531836-42-9f3a1c2b.npy``:
the host name with the PID namespace, the process id and a random token of the process. A
leftover temporary is removed as stale only when it is certainly dead: written on this host (and
PID namespace) by a process that no longer runs, or, from anywhere else, not modified for
:data:`FOREIGN_TEMP_MAX_AGE` seconds; a process id from another host means nothing here.

Every ``OSError`` raised while writing becomes an :class:`~carbongeo.errors.OutputError` naming the
file, so the CLI prints one line.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from carbongeo.errors import OutputError

# .<stem>.tmp-<host>-<pid>-<token><suffix>, and the older .<stem>.tmp-<pid><suffix>.
_TEMP_NAME = re.compile(
    r"^\..+\.tmp-(?:(?P<host>[A-Za-z0-9_.]+)-(?P<pid>\d+)-(?P<token>[0-9a-f]{8})"
    r"|(?P<old_pid>\d+))(\.[^.]+)?$"
)
FOREIGN_TEMP_MAX_AGE = 24 * 3600.0
"""Seconds without modification after which a temporary file of another host (or of an older
carbongeo that did not name its host) counts as abandoned."""

_token: tuple[int, str] | None = None


def host_id() -> str:
    """This host and PID namespace, as a file-name-safe string: ``<hostname>_<pid namespace>``.

    Two containers on one machine may share a host name but not their process ids, so the PID
    namespace (its inode on Linux) is part of the host.
    """
    name = re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname() or "host")[:48] or "host"
    try:
        namespace = os.readlink("/proc/self/ns/pid")  # "pid:[4026531836]"
    except OSError:
        return name
    return f"{name}_{re.sub(r'[^0-9]', '', namespace)}"


def writer_id() -> str:
    """``<host>-<pid>-<token>``: this process, unique across the hosts sharing a folder."""
    global _token
    pid = os.getpid()
    if _token is None or _token[0] != pid:  # a forked child draws its own token
        _token = (pid, secrets.token_hex(4))
    return f"{host_id()}-{pid}-{_token[1]}"


def temp_path(path: str | Path) -> Path:
    """The temporary name used while ``path`` is being written: ``.<stem>.tmp-<writer><suffix>``.

    The suffix is kept so that writers which choose a format (or append an extension) from the
    name, such as :func:`numpy.save` or GDAL, treat the temporary file like the final one.
    """
    path = Path(path)
    return path.with_name(f".{path.stem}.tmp-{writer_id()}{path.suffix}")


def output_error(path: str | Path, err: OSError) -> OutputError:
    """An :class:`OutputError` with one line that names ``path`` and the cause."""
    reason = err.strerror or str(err)
    return OutputError(
        f"cannot write {path}: {reason} (check that the folder is writable and has free space)"
    )


def fsync_file(path: str | Path) -> None:
    """Flush a file's content to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; not possible on every platform (e.g. Windows).
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_quietly(path: str | Path) -> None:
    """Delete a file if it exists; never raises."""
    with contextlib.suppress(OSError):
        Path(path).unlink(missing_ok=True)


def commit(tmp: str | Path, path: str | Path, *, fsync: bool = True) -> None:
    """Move a finished temporary file onto its final name.

    Args:
        tmp: The temporary file (same folder as ``path``).
        path: The final name; an existing file is replaced atomically.
        fsync: Flush the content to disk before the rename, so a crash cannot leave a truncated
            file under the final name.

    Raises:
        OutputError: The file cannot be flushed or renamed.
    """
    try:
        if fsync:
            fsync_file(tmp)
        os.replace(tmp, path)
    except OSError as err:
        remove_quietly(tmp)
        raise output_error(path, err) from err
    if fsync:
        _fsync_dir(Path(path).parent)


@contextlib.contextmanager
def atomic_path(path: str | Path, *, fsync: bool = True) -> Iterator[Path]:
    """Context manager yielding a temporary path that becomes ``path`` on success.

    Example::

        with atomic_path(out) as tmp:
            np.save(tmp, array)

    On an exception inside the block the temporary file is deleted and ``path`` is untouched.
    """
    path = Path(path)
    tmp = temp_path(path)
    try:
        yield tmp
    except BaseException:
        remove_quietly(tmp)
        raise
    commit(tmp, path, fsync=fsync)


def write_bytes_atomic(path: str | Path, data: bytes, *, fsync: bool = True) -> None:
    """Write ``data`` to ``path`` atomically.

    Raises:
        OutputError: The file cannot be written.
    """
    with atomic_path(path, fsync=fsync) as tmp:
        try:
            tmp.write_bytes(data)
        except OSError as err:
            raise output_error(path, err) from err


def write_text_atomic(path: str | Path, text: str, *, fsync: bool = True) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    write_bytes_atomic(path, text.encode("utf-8"), fsync=fsync)


def write_json_atomic(path: str | Path, obj: Any, *, indent: int | None = 2) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (with a trailing newline)."""
    write_text_atomic(path, json.dumps(obj, indent=indent) + "\n")


class AtomicGroup:
    """Several files written under temporary names and committed together.

    Use as a context manager: the files are committed, in the order they were added, when the
    block exits normally, and every temporary file is deleted when it raises::

        with AtomicGroup() as group:
            tmp_x = group.add(x_path)
            tmp_y = group.add(y_path)
            ...  # write tmp_x, tmp_y

    Commit early with :meth:`commit` (e.g. before writing an index that must come last).
    """

    def __init__(self, *, fsync: bool = True) -> None:
        self._pairs: list[tuple[Path, Path]] = []
        self._fsync = fsync
        self._done = False

    def add(self, path: str | Path) -> Path:
        """Register a final path; returns the temporary path to write instead."""
        path = Path(path)
        tmp = temp_path(path)
        self._pairs.append((tmp, path))
        return tmp

    @property
    def temporaries(self) -> list[Path]:
        """The temporary paths registered so far."""
        return [tmp for tmp, _ in self._pairs]

    def commit(self) -> None:
        """Rename every temporary file onto its final name (no-op when already done).

        Raises:
            OutputError: A file cannot be renamed; the temporaries not yet renamed are deleted.
        """
        if self._done:
            return
        try:
            for tmp, path in self._pairs:
                commit(tmp, path, fsync=self._fsync)
        except BaseException:
            self.discard()
            raise
        self._done = True

    def discard(self) -> None:
        """Delete every temporary file that has not been committed."""
        for tmp, _ in self._pairs:
            remove_quietly(tmp)
        self._done = True

    def __enter__(self) -> AtomicGroup:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists but belongs to someone else, or we cannot tell: keep its files
    return True


def is_stale_temp(path: Path, *, now: float | None = None) -> bool:
    """Whether ``path`` is a temporary file whose writer is certainly gone.

    Written on this host and PID namespace: its process no longer runs. Written elsewhere (or
    with the older name without a host): not modified for :data:`FOREIGN_TEMP_MAX_AGE` seconds.
    """
    match = _TEMP_NAME.match(path.name)
    if match is None:
        return False
    if match.group("host") == host_id():
        return not _pid_alive(int(match.group("pid")))
    try:
        modified = path.stat().st_mtime
    except OSError:
        return False
    return (time.time() if now is None else now) - modified > FOREIGN_TEMP_MAX_AGE


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Delete temporary files left in ``folder`` by writers that are no longer running.

    A file (or a folder, such as a Zarr store) counts as stale as :func:`is_stale_temp` says;
    safe when several hosts share ``folder``.

    Returns:
        The files removed.
    """
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    now = time.time()
    for entry in folder.iterdir():
        if is_stale_temp(entry, now=now):
            if entry.is_dir():  # a store written as a folder (Zarr)
                shutil.rmtree(entry, ignore_errors=True)
            elif entry.is_file():
                remove_quietly(entry)
            else:
                continue
            removed.append(entry)
    return removed


@contextlib.contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (created if missing) for the block.

    Serialises read-modify-write updates of a shared file (such as ``tiles/index.json``) between
    processes. Where ``fcntl`` is unavailable (Windows) the lock is a no-op.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise output_error(path, err) from err
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
