"""File safety shared by training, evaluation and data tools: atomic writes and an exclusive output-folder lock.

``write_atomic(path, data)``: the file appears complete under its name or not at all (temp file in the same
folder, fsync, ``os.replace``, fsync of the folder), so a killed process never leaves half a file that a later
run reads as whole.

``OutputLock(folder)``: one run per output folder. Two runs writing into one folder mix their predictions or
delete each other's checkpoints; the lock refuses the second with a message naming the holder. The lock is a
file ``.zaya-vl.lock`` holding the owner's host and pid, created with ``O_CREAT | O_EXCL``; it is removed on
release (and at interpreter exit). A lock whose pid no longer runs on this host (a killed run) is stale and
taken over, so a SIGKILL never blocks the next run.
"""

from __future__ import annotations

import atexit
import errno
import json
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["LOCK_NAME", "OutputLock", "OutputLockedError", "atomic_path", "fsync_dir", "write_atomic"]

LOCK_NAME = ".zaya-vl.lock"
# Locks this process holds, by lock path -> nesting depth: an inner acquire of a held folder must not let the
# inner release delete the file the outer holder still relies on.
_HELD: dict[str, int] = {}


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename or a new entry in ``path`` durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; on success it replaces ``path`` (readers see the old file or
    the whole new one), on failure it is removed and ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        yield Path(temp_name)
        with open(temp_name, "rb+") as temp:
            os.fsync(temp.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_atomic(path: str | os.PathLike, data: str | bytes, *, encoding: str = "utf-8") -> None:
    """Write ``data`` (text or bytes) to ``path``: readers see the old file or the whole new one, never a part.

    Text is encoded before anything touches the disk, so a string that cannot be encoded (a lone surrogate)
    raises with ``path`` unchanged.
    """
    payload = data.encode(encoding) if isinstance(data, str) else bytes(data)
    with atomic_path(path) as temp:
        temp.write_bytes(payload)


class OutputLockedError(RuntimeError):
    """Another live process holds the output folder."""


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    return True


class OutputLock:
    """Exclusive lock on an output folder; a context manager, or ``acquire()`` / ``release()``.

    ``what`` names the job in the refusal message ("zaya-vl eval", "zaya-vl train"). Re-entrant within one
    process: acquiring a folder this process already holds succeeds (a notebook that reruns a cell after an
    exception; the runner called twice in one script).
    """

    def __init__(self, folder: str | os.PathLike, what: str = "zaya-vl"):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.what = what
        self._held = False

    def _owner(self) -> dict:
        return {"pid": os.getpid(), "host": socket.gethostname(), "what": self.what}

    def _read_holder(self) -> dict | None:
        try:
            holder = json.loads(self.path.read_text(encoding="utf-8"))
            return holder if isinstance(holder, dict) else {}
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # unreadable / half-written: judged by age below

    def _is_stale(self, holder: dict) -> bool:
        pid, host = holder.get("pid"), holder.get("host")
        if not isinstance(pid, int):
            # A lock file without a pid: a writer killed between create and write. Give such a writer a
            # moment (it writes right after creating), then treat the file as abandoned.
            try:
                return time.time() - self.path.stat().st_mtime > 10
            except FileNotFoundError:
                return True
        if host not in (None, socket.gethostname()):
            return False  # cannot check a pid on another machine: assume it runs (shared file systems)
        return not _pid_alive(pid)

    def acquire(self) -> "OutputLock":
        self.folder.mkdir(parents=True, exist_ok=True)
        owner = json.dumps(self._owner()).encode()
        for _ in range(10):
            try:
                descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._read_holder()
                if holder is None:
                    continue  # released between our open and our read: try again
                if _HELD.get(str(self.path)) and holder.get("pid") == os.getpid():
                    _HELD[str(self.path)] += 1  # this process holds it already
                    self._held = True
                    return self
                if not self._is_stale(holder):
                    raise OutputLockedError(
                        f"{self.folder} is in use by {holder.get('what', 'another run')} (pid {holder.get('pid')} "
                        f"on {holder.get('host')}; lock file {self.path}). Two runs in one output folder would mix "
                        "or delete each other's files: wait for it to finish, or use another output folder. If "
                        "that process is gone, delete the lock file.") from None
                # Stale: a killed run. Remove it by renaming it away first, so two takers cannot both win.
                trash = self.path.with_name(f"{LOCK_NAME}.stale.{os.getpid()}")
                try:
                    os.rename(self.path, trash)
                    trash.unlink(missing_ok=True)
                except FileNotFoundError:
                    pass
                continue
            try:
                os.write(descriptor, owner)
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
            self._held = True
            _HELD[str(self.path)] = 1
            atexit.register(self.release)
            return self
        raise OutputLockedError(f"could not take the lock {self.path}: it keeps changing hands")

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        key = str(self.path)
        _HELD[key] = _HELD.get(key, 1) - 1
        if _HELD[key] > 0:
            return
        del _HELD[key]
        holder = self._read_holder()
        if holder and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
            try:
                self.path.unlink()
            except OSError as error:
                if error.errno != errno.ENOENT:
                    raise
        try:
            atexit.unregister(self.release)
        except Exception:
            pass

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
