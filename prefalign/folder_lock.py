"""One run per folder: a stage holds an exclusive lock on its output folder while it writes there.

Two runs into one folder would mix their files (``config.yaml`` of one, ``metrics.json`` of the other). Each stage
(``train.py``, ``score.py``, ``select.py``, ``evaluate.py``, ``sample.py``) therefore holds ``<folder>/.lock``, an
``flock`` lock that the system drops when its process ends (a killed run leaves none held), for as long as it
writes into the folder, and removes the file when it ends. The file holds the holder's pid, host, command and
start time, so that a second run into the folder fails at once naming them (:class:`FolderInUse`).

Only the process that owns a run takes the lock: the other processes of a multi-device run (torchrun's ranks > 0,
the processes Lightning's DDP starts, SLURM's tasks > 0; :func:`prefalign.config.launched_rank`) write nothing of
their own and take none. A job that SLURM requeued waits up to :data:`REQUEUE_WAIT_S` for the lock of its killed
predecessor, which a network file system may keep until its lease runs out. A process that holds a folder may
enter it again (the selection pipeline's final training writes into the pipeline's own folder); its stages'
sub-folders are other folders, with locks of their own.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

try:
    import fcntl
except ImportError:  # Windows: no flock; runs go unguarded there
    fcntl = None

LOCK_NAME = ".lock"
# what flock answers when another process holds the lock; anything else (ENOLCK, EOPNOTSUPP: a file system without
# flock, such as NFS without lockd or Lustre without -o flock) means the lock cannot guard this folder at all
CONTENDED = (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)

log = logging.getLogger(__name__)


class FolderInUse(RuntimeError):
    """Another run holds the output folder's lock.

    Attributes:
        folder: the folder.
        holder: what the holder wrote into the lock file (pid, host, command, started), empty if unknown.
    """

    def __init__(self, folder: Path, holder: dict[str, Any]) -> None:
        self.folder = folder
        self.holder = holder
        who = (
            f"pid {holder.get('pid')} on host {holder.get('host')}, started {holder.get('started')}: {holder.get('command')}"
            if holder
            else "a process that has not written its name yet"
        )
        super().__init__(
            f"{folder} is in use by another run ({who}). Two runs into one folder would mix their files: wait for it "
            f"to end, or give this run a folder of its own (hydra.run.dir=...). The lock: {folder / LOCK_NAME}"
        )


class FolderLock:
    """An exclusive, non-blocking ``flock`` on ``<folder>/.lock`` that records its holder in the file.

    Each instance opens the file itself, so two instances exclude each other even in one process.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None

    def acquire(self, wait_s: float = 0.0) -> None:
        """Take the lock at once (or within ``wait_s`` seconds), or fail.

        Raises:
            FolderInUse: another run holds it.
        """
        if fcntl is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + wait_s
        for _ in range(100):
            # no O_TRUNC: the holder's record must survive a contender's open; the mode follows the umask
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
            try:
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except OSError as error:
                        if error.errno not in CONTENDED or time.monotonic() >= deadline:
                            raise
                        time.sleep(min(1.0, max(0.01, deadline - time.monotonic())))
            except OSError as error:
                os.close(fd)
                if error.errno not in CONTENDED:
                    log.warning("%s: this file system cannot lock files (%s); the folder runs unguarded", self.path, error)
                    return
                raise FolderInUse(self.folder, self.holder()) from None
            try:
                current = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                current = False
            if current:
                break
            # the holder ended and removed the file between our open and our lock: that lock guards nothing
            os.close(fd)
        else:
            raise RuntimeError(f"could not take the lock {self.path}: it keeps being replaced")
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": " ".join(sys.argv),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Remove the lock file, then drop the lock (closing the file drops it): a finished run leaves none."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            self.path.unlink(missing_ok=True)  # while still held, so that no contender locks a file being removed
        finally:
            os.close(fd)

    def holder(self) -> dict[str, Any]:
        """The record of the process holding the lock (``{}`` while it has not written it yet)."""
        for _ in range(20):  # the holder writes its record right after taking the lock
            try:
                text = self.path.read_text()
            except OSError:
                return {}
            if text.strip():
                try:
                    return json.loads(text)
                except ValueError:
                    pass
            time.sleep(0.05)
        return {}


_HELD: dict[str, list[Any]] = {}  # resolved folder -> [its FolderLock, how many holds of this process]

# a job SLURM requeued (after a time limit or a preemption) may find its killed predecessor's lock still held for a
# while: a network file system keeps a dead client's locks until its lease runs out (NFSv4: 90 s by default)
REQUEUE_WAIT_S = 180.0


def _wait_s() -> float:
    return REQUEUE_WAIT_S if os.environ.get("SLURM_RESTART_COUNT", "0") not in ("", "0") else 0.0


@contextmanager
def hold_folder(folder: str | os.PathLike | None) -> Iterator[None]:
    """Hold ``folder``'s lock for the duration of the block (module docstring); ``None``: nothing to hold.

    Raises:
        FolderInUse: another run holds the folder.
    """
    from prefalign.config import launched_rank

    if folder is None or launched_rank() != 0:
        yield
        return
    key = str(Path(folder).expanduser().resolve())
    entry = _HELD.get(key)
    if entry is None:
        lock = FolderLock(key)
        lock.acquire(wait_s=_wait_s())
        entry = _HELD[key] = [lock, 0]
    entry[1] += 1
    try:
        yield
    finally:
        entry[1] -= 1
        if entry[1] == 0:
            del _HELD[key]
            entry[0].release()


def held_by_another(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The holder's record (possibly ``{}``) if another process holds ``folder``'s lock now, else ``None``.

    Only looks: it takes the lock for an instant when it is free and creates no file when there is none.
    """
    path = Path(folder).expanduser() / LOCK_NAME
    if fcntl is None or not path.is_file():
        return None
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        return FolderLock(path.parent).holder() if error.errno in CONTENDED else None
    finally:
        os.close(fd)  # closing drops the lock, if taken
    return None


class RefuseHeldFolder(Callback):
    """Hydra callback of every entry point: a run into a folder another run holds fails before Hydra writes into it.

    Hydra writes ``.hydra/`` (the config and the command line's overrides) and opens the job's log in the run folder
    before the entry point starts, so the stage's own lock (:func:`hold_folder`) would come after the holder's
    ``.hydra/overrides.yaml`` had been overwritten. ``on_run_start`` comes first. A ``SystemExit`` (exit status 1),
    since Hydra turns an ``Exception`` raised by a callback into a warning. The other processes of a multi-device
    run share their rank 0's folder and are let through, as :func:`hold_folder` lets them.
    """

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        from prefalign.config import launched_rank

        if launched_rank() != 0 or _wait_s():
            return  # a requeued SLURM job waits for its predecessor's lock in hold_folder instead
        folder = Path(str(config.hydra.run.dir))
        holder = held_by_another(folder)
        if holder is not None:
            raise SystemExit(f"Error: {FolderInUse(folder, holder)}")
