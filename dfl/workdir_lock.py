"""One run per workdir: an exclusive lock held for the run's whole lifetime.

Two processes on one workdir (a double launch, or a scheduler requeueing a job whose first copy
is still alive) would both append to metrics.jsonl, both write summary.json and both save and
prune checkpoints, leaving a workdir that no single run produced. So a run takes
`fcntl.flock(LOCK_EX | LOCK_NB)` on `<workdir>/.lock` before it writes anything there (before
checkpoint.fresh deletes anything, too) and keeps it until it exits; a second process fails at
once with `WorkdirLocked`, naming the holder.

The kernel drops a flock when the holder's process ends in any way, SIGKILL and crashes
included, so a dead run never blocks the next one. The file records the holder (pid, host,
start time, command); a holder that exits normally clears it before unlocking. A record found by
the process that gets the lock is therefore that of a run that died holding it: the new run says
so in one line ("took over the stale lock of pid ...") and goes on.

The file itself is never deleted (deleting it would let two processes lock two different files
of the same name). On filesystems without working locks (flock fails with ENOLCK, EOPNOTSUPP or
ENOSYS; e.g. Lustre mounted without `-o flock`) the run warns and goes on unlocked. NFSv4 on
Linux emulates flock with byte-range locks, which do work across hosts.

Multi-host runs (dfl/train.py): process 0 holds the lock for the whole job; the other processes
only write their parts of checkpoints in step with it.
"""
from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket
import sys
import time
from typing import Iterator, Optional, Sequence

from dfl.errors import UserError

LOCK_NAME = ".lock"
_UNSUPPORTED = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)
_TRIES = 20  # x 50 ms while the holder has not written its record yet


def _describe(holder: dict) -> str:
  return (f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} "
          f"(started {holder.get('started', '?')})")


class WorkdirLocked(UserError):
  """Another live process holds the workdir's lock."""

  def __init__(self, workdir: str, holder: Optional[dict]):
    self.workdir, self.holder = workdir, holder
    if holder:  # its command is in <workdir>/.lock
      who = f"by {_describe(holder)}"
      stop = f"stop it (kill {holder.get('pid', '?')} on {holder.get('host', '?')})"
    else:  # it has just taken the lock and not yet written who it is
      who, stop = "by another process that is just starting", "stop it"
    super().__init__(
        f"{workdir} is in use {who}. Two runs in one workdir would overwrite each other's "
        f"outputs: wait for that run to finish, {stop}, or use another --workdir.")


def read_holder(workdir: str) -> Optional[dict]:
  """What `<workdir>/.lock` says about its holder; None if it names none."""
  try:
    with open(os.path.join(workdir, LOCK_NAME)) as f:
      text = f.read()
  except OSError:
    return None
  try:
    holder = json.loads(text)
  except json.JSONDecodeError:
    return None  # empty (released) or being written
  return holder if isinstance(holder, dict) else None


def _holder_record() -> dict:
  return {"pid": os.getpid(), "host": socket.gethostname(),
          "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
          "command": " ".join(sys.argv)}


class WorkdirLock:
  """The lock of one workdir; `acquire()` raises WorkdirLocked if a live process holds it."""

  def __init__(self, workdir: str):
    self.workdir = workdir
    self.path = os.path.join(workdir, LOCK_NAME)
    self._fd: Optional[int] = None
    self.took_over: Optional[dict] = None  # the stale holder's record, if there was one

  @property
  def held(self) -> bool:
    return self._fd is not None

  def acquire(self) -> "WorkdirLock":
    os.makedirs(self.workdir, exist_ok=True)
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
      for attempt in range(_TRIES):
        try:
          fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
          break
        except BlockingIOError:
          holder = read_holder(self.workdir)
          # A holder without a record has just locked (or is a sweep's probe): ask again shortly.
          if holder or attempt == _TRIES - 1:
            raise WorkdirLocked(self.workdir, holder) from None
          time.sleep(0.05)
    except WorkdirLocked:
      os.close(fd)
      raise
    except OSError as e:
      os.close(fd)
      if e.errno not in _UNSUPPORTED:
        raise
      print(f"warning: cannot lock {self.path} ({os.strerror(e.errno)}: the filesystem does not "
            "support file locks); running without protection against a second run in this "
            "workdir.", file=sys.stderr, flush=True)
      return self
    self._fd = fd
    stale = read_holder(self.workdir)
    if stale:
      self.took_over = stale
      print(f"took over the stale lock of {self.workdir}: {_describe(stale)} ended without "
            "releasing it (killed or crashed).", file=sys.stderr, flush=True)
    data = json.dumps(_holder_record()).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    return self

  def release(self) -> None:
    """Clears the holder record (so the next run sees a clean release), then unlocks."""
    if self._fd is None:
      return
    fd, self._fd = self._fd, None
    try:
      os.ftruncate(fd, 0)
    except OSError:
      pass  # e.g. the disk went away: the next run then reports a stale lock, which is harmless
    finally:
      os.close(fd)  # drops the flock

  def __enter__(self) -> "WorkdirLock":
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()


def locked_by_other(workdir: str) -> Optional[dict]:
  """The holder's record ({} if it wrote none yet) when a live process holds the workdir's lock,
  else None. Probes with a non-blocking flock that is dropped at once; creates nothing."""
  try:
    fd = os.open(os.path.join(workdir, LOCK_NAME), os.O_RDONLY | os.O_CLOEXEC)
  except OSError:
    return None  # no lock file: never locked
  try:
    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
  except BlockingIOError:
    return read_holder(workdir) or {}
  except OSError:
    return None  # locks unsupported: nothing to learn
  finally:
    os.close(fd)
  return None


@contextlib.contextmanager
def hold(workdirs: Sequence[str]) -> Iterator[list[WorkdirLock]]:
  """Locks every workdir (all or none: a locked one releases those already taken) until exit."""
  locks: list[WorkdirLock] = []
  try:
    for workdir in workdirs:
      locks.append(WorkdirLock(workdir).acquire())
    yield locks
  finally:
    for lock in reversed(locks):
      lock.release()
