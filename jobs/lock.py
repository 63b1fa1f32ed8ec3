"""One job per output: a lock file (`<output>/_LOCK`) naming the host, pid and start time of its holder.

Two jobs writing one output would share `_work/` and commit each other's rows (every row twice, with an
accounting check that still passes), so a second job exits at once, writing and deleting nothing.

- Local disks (and shared POSIX filesystems): the lock is created with O_CREAT | O_EXCL, which is atomic.
  A lock whose holder ran on this host and is no longer running (killed, crashed) is stale: it is moved
  aside atomically (only one contender can) and taken over, with a warning.
- Object stores: pyarrow has no conditional create, so the lock is written, then read back to see who won.
  Two jobs started within the same second on one prefix can both pass; this limit is documented in
  docs/architecture.md. A lock held on another host is never taken over automatically: its holder cannot
  be checked from here, and the message says how to remove it.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import socket
import uuid

import pyarrow.fs as pafs

from operators.write import LOCK, Output

logger = logging.getLogger(__name__)


class OutputLockedError(RuntimeError):
    pass


def _process_start(pid: int) -> str | None:
    """The kernel's start time of `pid` (clock ticks since boot), so a reused pid is not taken for its
    predecessor; None where /proc is not available."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            # Field 22; the command name (field 2) may hold spaces, so count from its closing parenthesis.
            return stat.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return None


def _alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    return started is None or _process_start(pid) in (None, started)


class OutputLock:
    def __init__(self, output: Output, purpose: str):
        self.output = output
        self.path = output.child_path(LOCK)
        self.token = uuid.uuid4().hex
        self.record = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "process_start": _process_start(os.getpid()),
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "job": purpose,
            "token": self.token,
        }
        self.local = isinstance(output.fs, pafs.LocalFileSystem)

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        for _ in range(3):
            if self._create():
                return
            holder = self._read()
            if holder is None:
                continue  # released between our attempt and the read: try again
            if not self._stale(holder):
                raise OutputLockedError(self._busy_message(holder))
            logger.warning(
                "taking over the lock of %s: its job (pid %s on %s, started %s) is no longer running",
                self.output.uri, holder.get("pid"), holder.get("host"), holder.get("started"),
            )
            self._remove_stale(holder)
        raise OutputLockedError(f"could not take the lock {self.output.child_uri(LOCK)}: other jobs keep taking it")

    def release(self) -> None:
        holder = self._read()
        if holder is not None and holder.get("token") == self.token:
            self.output.fs.delete_file(self.path)

    def _create(self) -> bool:
        data = (json.dumps(self.record, indent=2) + "\n").encode()
        if self.local:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as stream:
                stream.write(data)
            return True
        if self._read() is not None:
            return False
        with self.output.fs.open_output_stream(self.path) as stream:
            stream.write(data)
        holder = self._read()
        return holder is not None and holder.get("token") == self.token

    def _read(self) -> dict | None:
        if not self.output.exists(LOCK):
            return None
        try:
            with self.output.fs.open_input_stream(self.path) as stream:
                text = stream.read().decode(errors="replace")
        except FileNotFoundError:  # released since the check
            return None
        try:
            holder = json.loads(text)
        except ValueError:
            holder = None
        # A lock cut short while being written (a crash in the microseconds between create and write):
        # nobody can be identified as its holder, so it is treated as held by a dead process of this host.
        return holder if isinstance(holder, dict) else {"host": socket.gethostname(), "pid": -1}

    def _stale(self, holder: dict) -> bool:
        if holder.get("host") != socket.gethostname():
            return False
        pid = holder.get("pid")
        return not isinstance(pid, int) or pid <= 0 or not _alive(pid, holder.get("process_start"))

    def _remove_stale(self, holder: dict) -> None:
        if not self.local:
            self.output.fs.delete_file(self.path)
            return
        aside = f"{self.path}.stale-{self.token}"
        try:
            os.rename(self.path, aside)  # atomic: of two jobs taking over, one moves it, the other retries
        except FileNotFoundError:
            return
        os.unlink(aside)

    def _busy_message(self, holder: dict) -> str:
        where = f"pid {holder.get('pid')} on host {holder.get('host')}, started {holder.get('started')}"
        advice = (
            "wait for it to finish"
            if holder.get("host") == socket.gethostname()
            else f"wait for it, or if that job is dead, delete {self.output.child_uri(LOCK)}"
        )
        return f"output {self.output.uri} is being written by another chatsieve job ({where}); {advice}"
