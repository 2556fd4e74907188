"""One lock file per run directory: two atzoo runs never write the same directory.

``<run dir>/.atzoo.lock`` holds the holder's PID, host, process start time and command.
Where the OS has ``flock`` (Linux, macOS, BSD) the holder keeps an exclusive ``flock`` on
the file for the whole run; the kernel drops it when the process dies, however it dies
(``kill -9`` included), so a lock file left behind is stale by construction. The PID
and host are checked as well, for file systems on which ``flock`` is a no-op and for
systems without it: a lock naming a process on this host that is no longer running
(or whose PID now belongs to a process started later) is stale and taken over; a lock
naming another host is respected, and the message says how to remove it.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from atzoo.files.common import check_int_range, open_no_follow
from atzoo.errors import AtzooError, RunDirError

try:
    import fcntl
except ImportError:  # Windows: O_EXCL creation and the PID check only
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".atzoo.lock"
#: Largest PID a lock record may name (Linux allows at most 2**22; a C ``int`` bounds ``os.kill``).
MAX_PID = 2**31 - 1
#: Bytes of a lock file read at most (it holds one short JSON object).
_MAX_LOCK_BYTES = 4096


@dataclass(frozen=True)
class Holder:
    """Who holds (or held) a run directory."""

    pid: int
    host: str
    started: str = ""
    process_start: str | None = None

    def describe(self) -> str:
        where = "this host" if self.host == socket.gethostname() else f"host {self.host}"
        since = f" since {self.started}" if self.started else ""
        return f"atzoo process {self.pid} on {where}{since}"


def process_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (Linux ``/proc``), to tell a reused PID apart."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
        return fields[19].decode()
    except (OSError, IndexError):
        return None


def pid_running(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except (OSError, OverflowError):  # OverflowError: beyond a C int, no process has it
        return False
    return True


def read_holder(path: Path) -> Holder | None:
    """The holder recorded in a lock file (None when absent or unreadable)."""
    try:
        with open(path, "rb") as handle:
            payload = json.loads(handle.read(_MAX_LOCK_BYTES).decode("utf-8"))
        pid = check_int_range(payload["pid"], "pid", 1, MAX_PID)  # os.kill overflows beyond C int
        return Holder(pid=pid, host=str(payload["host"])[:255],
                      started=str(payload.get("started", ""))[:40], process_start=payload.get("process_start"))
    except (OSError, ValueError, KeyError, TypeError, AtzooError):  # not a record atzoo wrote: no holder
        return None


def is_stale(holder: Holder) -> bool:
    """A holder on this host whose process is gone (or whose PID was reused) is stale."""
    if holder.host != socket.gethostname():
        return False  # cannot be checked from here
    if not pid_running(holder.pid):
        return True
    now = process_start(holder.pid)
    return holder.process_start is not None and now is not None and now != holder.process_start


class RunLock:
    """The lock of one run directory; :meth:`acquire` it before writing, :meth:`release` after."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_FILE
        self._fd: int | None = None

    # ------------------------------------------------------------------ read-only
    def live_holder(self) -> Holder | None:
        """The process that holds the directory now, or None (checked without writing)."""
        if not self.path.is_file():
            return None
        holder = read_holder(self.path)
        if fcntl is not None:
            if not self._locked_by_other():
                return holder if holder is not None and self._flock_unreliable(holder) else None
            return holder or Holder(pid=0, host="unknown host")
        return holder if holder is not None and not is_stale(holder) else None

    def _locked_by_other(self) -> bool:
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            return exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)
        finally:
            os.close(fd)
        return False

    @staticmethod
    def _flock_unreliable(holder: Holder) -> bool:
        """A live holder on this host that is not us, yet no flock: flock is a no-op here."""
        return holder.host == socket.gethostname() and holder.pid != os.getpid() and not is_stale(holder)

    # ------------------------------------------------------------------ acquire/release
    def acquire(self) -> "RunLock":
        """Takes the lock.

        Raises:
            RunDirError: another live process holds it (the message names its PID and host).
        """
        use_flock = fcntl is not None
        for _ in range(10):  # a few retries: the file may be replaced while we open it
            if use_flock:
                try:
                    if self._acquire_flock():
                        return self
                except OSError as exc:  # a file system without flock (some network mounts)
                    if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                        raise
                    use_flock = False
            elif self._acquire_exclusive():
                return self
        raise RunDirError(f"cannot lock the run directory {self.directory}: its lock file keeps changing")

    def _acquire_flock(self) -> bool:
        fd = open_no_follow(self.path, os.O_RDWR | os.O_CREAT)  # a planted link is refused, not written through
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            self._refuse(read_holder(self.path))
        try:
            same_file = os.fstat(fd).st_ino == os.stat(self.path).st_ino
        except FileNotFoundError:
            same_file = False  # the previous holder removed it after we opened it
        holder = read_holder(self.path) if same_file else None
        if not same_file or (holder is not None and self._flock_unreliable(holder)):
            os.close(fd)
            if same_file:
                self._refuse(holder)
            return False
        self._fd = fd
        self._write_record(fd)
        return True

    def _acquire_exclusive(self) -> bool:
        try:
            fd = open_no_follow(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL)
        except FileExistsError:
            holder = read_holder(self.path)
            if holder is not None and not is_stale(holder):
                self._refuse(holder)
            self.path.unlink(missing_ok=True)  # stale (or unreadable): take it over
            return False
        self._fd = fd
        self._write_record(fd)
        return True

    def _write_record(self, fd: int) -> None:
        record = {"pid": os.getpid(), "host": socket.gethostname(), "process_start": process_start(os.getpid()),
                  "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv)[:500]}
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, (json.dumps(record) + "\n").encode("utf-8"))

    def _refuse(self, holder: Holder | None) -> None:
        who = holder.describe() if holder is not None else "another atzoo process"
        raise RunDirError(
            f"run directory {self.directory} is in use by {who}; wait for it to finish "
            f"(or, if that process is gone, remove {self.path})"
        )

    def release(self) -> None:
        """Removes the lock file and drops the lock (idempotent)."""
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        except OSError:
            pass  # e.g. the directory was removed with the file in it
        os.close(self._fd)
        self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()
