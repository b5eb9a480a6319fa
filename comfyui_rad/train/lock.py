"""One rad-train run per run folder: ``<out>/rad-train.lock`` holds the owner's PID and host.

The lock is held with ``flock`` on that file (POSIX), so the kernel frees it when its process dies, however it dies;
the PID and host inside are for the messages. A lock left by a dead process on this host is taken over with a
warning; a live one, or one from another host that cannot be checked, is refused naming its PID and host. Where
``flock`` does not exist (Windows), the file itself is the lock: created exclusively, removed on release. A
released flock lock stays as an empty file.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

__all__ = ["LOCK_NAME", "RunLocked", "RunLock"]

log = logging.getLogger(__name__)

LOCK_NAME = "rad-train.lock"


class RunLocked(OSError):
    """Another rad-train run holds the run folder."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _owner(path: Path) -> dict:
    try:
        owner = json.loads(path.read_text() or "{}")
        return owner if isinstance(owner, dict) else {}
    except (OSError, ValueError):
        return {}


class RunLock:
    """``RunLock(out)`` takes the run folder ``out`` (which must exist) or raises ``RunLocked``; ``release()``."""

    def __init__(self, out: str | os.PathLike):
        self.path = Path(out) / LOCK_NAME
        self.me = {"pid": os.getpid(), "host": socket.gethostname()}
        self.fd = self._take_flock() if fcntl is not None else self._take_file()
        os.ftruncate(self.fd, 0)
        os.write(self.fd, json.dumps(self.me).encode())
        os.fsync(self.fd)

    def _refuse(self, owner: dict) -> RunLocked:
        return RunLocked(f"--out {self.path.parent} is in use by another rad-train run (PID {owner.get('pid', '?')} "
                         f"on {owner.get('host', '?')}, lock {self.path}): wait for it to finish, stop it, or choose "
                         "another --out; delete the lock file only if that run is gone")

    def _take_flock(self) -> int:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise self._refuse(_owner(self.path)) from None
        owner = _owner(self.path)
        if owner.get("pid") and owner.get("host") not in (None, self.me["host"]):
            os.close(fd)  # another host's run: its process cannot be checked from here
            raise self._refuse(owner)
        if owner.get("pid"):
            log.warning("%s: took over the stale lock of PID %s on %s (that run is no longer running)", self.path,
                        owner["pid"], owner.get("host", "?"))
        return fd

    def _take_file(self) -> int:
        for _ in range(2):
            try:
                return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                owner = _owner(self.path)
                if owner.get("host") != self.me["host"] or _alive(int(owner.get("pid", 0))):
                    raise self._refuse(owner) from None
                log.warning("%s: took over the stale lock of PID %s (that run is no longer running)", self.path,
                            owner.get("pid"))
                self.path.unlink(missing_ok=True)
        raise self._refuse(_owner(self.path))

    def release(self) -> None:
        """Give the folder back (a second call does nothing). With flock the file stays, emptied (removing it would
        let a run that opened it just before lock a file no one else sees); without, it is removed."""
        if self.fd is None:
            return
        if fcntl is not None:
            os.ftruncate(self.fd, 0)
        else:
            self.path.unlink(missing_ok=True)
        os.close(self.fd)  # closing frees the flock
        self.fd = None
