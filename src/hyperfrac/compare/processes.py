"""Safety of a comparison under signals and concurrency.

* :class:`FolderLock`: an exclusive ``flock`` on ``OUT/.compare.lock`` for the whole run, so
  two ``hyperfrac compare`` on one folder never train the same arm at once; the second one
  stops with the holder's pid. The kernel drops the lock when its process dies, however it
  dies, so a stale lock file never blocks a re-run.
* :func:`run_child`: the worker of one arm is tied to its parent: on Linux it gets
  ``PR_SET_PDEATHSIG`` (SIGTERM when the parent dies, even by ``kill -9``); on Ctrl-C (which the
  terminal sends to both) the parent waits a few seconds for the worker to stop, then ends it,
  and says how to resume. SIGTERM to the parent is handled like Ctrl-C.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

LOCK_NAME = ".compare.lock"
_PR_SET_PDEATHSIG = 1
_GRACE_S = 20.0


class CompareLocked(RuntimeError):
    """Another process holds the comparison folder."""


class FolderLock:
    """``with FolderLock(out):`` holds ``out`` exclusively (non-blocking; raises
    :class:`CompareLocked` naming the holder)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None

    def __enter__(self) -> FolderLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise CompareLocked(
                f"{self.folder} is in use by another hyperfrac compare (pid {holder}); wait for "
                "it to finish, stop it, or use another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _die_with_parent() -> None:
    """preexec_fn of a worker: SIGTERM when the parent dies (Linux; elsewhere a no-op)."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within this context SIGTERM raises KeyboardInterrupt (cleanup runs as for Ctrl-C)."""
    def handler(signum, frame):
        raise KeyboardInterrupt

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _stop(proc: subprocess.Popen) -> None:
    """Interrupt the worker (a no-op if Ctrl-C reached it already), give it a few seconds to
    stop by itself, then end it."""
    for sig, wait in ((signal.SIGINT, _GRACE_S), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        if proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_child(cmd: list[str], *, log_path: Path | None = None,
              tick: Callable[[], None] | None = None) -> int:
    """Run a worker tied to this process; returns its exit code. On KeyboardInterrupt the
    worker is stopped before the interrupt propagates. ``log_path``: append the worker's
    stdout and stderr there instead of this terminal; ``tick`` is called about twice a
    second while the worker runs (the progress line)."""
    with contextlib.ExitStack() as stack:
        out = None
        if log_path is not None:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            out = stack.enter_context(log_path.open("ab"))
        proc = subprocess.Popen(cmd, preexec_fn=_die_with_parent, stdout=out,
                                stderr=subprocess.STDOUT if out is not None else None)
        try:
            while True:
                try:
                    return proc.wait(timeout=0.5)
                except subprocess.TimeoutExpired:
                    if tick is not None:
                        tick()
        except KeyboardInterrupt:
            _stop(proc)
            raise
