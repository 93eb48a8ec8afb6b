"""One writer per run folder: an OS lock that a training process holds while it writes.

A process that trains in a run folder holds ``fcntl.flock`` on the folder's lock file,
``.lock``, from before it writes anything until it is done. The operating system releases
the lock when the process ends, however it ends (a crash, SIGKILL, a node lost), so a stale
lock never blocks a later resume, and nothing needs cleaning up. A second process that wants
to write there (``resume=`` of the same run, a new run forced into the folder with
``hydra.run.dir``) is refused at once, before Hydra writes anything, with the PID of the
holder (found in ``/proc/locks``). Under DDP only rank 0 holds it. Reading a run folder
(``fmnist-evaluate``, ``fmnist-predict``) takes no lock. A sweep folder has a lock of its own, held
by the process that runs the sweep, so a second sweep into the same folder is refused before
any of its jobs starts.

The lock file is created empty by the first run in a folder and never written to, so a
refused process changes nothing in the folder.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from fmnist_lightning.errors import FolderInUseError, RunError

#: The lock file inside a run folder.
LOCK_FILE = ".lock"

#: The run folders this process holds, with the open file descriptor that holds each.
_held: dict[Path, int] = {}


def holder_pid(path: Path) -> int | None:
    """The PID holding an ``flock`` on ``path``, read from Linux's ``/proc/locks``; ``None``
    where that is not known (no such file, or another operating system)."""
    try:
        st = os.stat(path)
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    device = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in lines:
        fields = line.split()
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == device and fields[4].lstrip("-").isdigit():
            return int(fields[4])
    return None


#: What the holder of a folder's lock is doing there, by the kind of folder, for the refusal.
_HOLDERS = {"run": "training in it", "sweep": "running a sweep in it"}


def lock_run_folder(folder: str | Path, kind: str = "run") -> None:
    """Takes the folder's lock for this process, until ``release_run_folder`` or the end of
    the process; nothing happens if this process holds it already.

    Args:
        folder: A run folder, or a sweep folder.
        kind: ``"run"`` or ``"sweep"``: what the refusal calls the folder.

    Raises:
        FolderInUseError: Another process holds it (the message names the folder and the PID).
        RunError: The folder or its lock file cannot be created.
    """
    folder = Path(folder).resolve()
    if folder in _held:
        return
    path = folder / LOCK_FILE
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as err:
        raise RunError(f"cannot create the run folder's lock file {path}: {err.strerror or err}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        pid = holder_pid(path)
        who = f"process {pid}" if pid is not None else "another process"
        raise FolderInUseError(
            f"the {kind} folder {folder} is in use: {who} is {_HOLDERS[kind]} (it holds {path}). "
            "Wait for it to finish or stop it (Ctrl-C, or kill), then continue with resume= if needed."
        ) from None
    _held[folder] = fd


def release_run_folder(folder: str | Path) -> None:
    """Gives up this process's lock on the folder, if it holds it."""
    fd = _held.pop(Path(folder).resolve(), None)
    if fd is not None:
        os.close(fd)  # closing the only descriptor releases the flock
