"""One writer per workdir: `WorkdirLock`, an flock on WORKDIR/.lock held while a run lives."""
from __future__ import annotations

import errno
import fcntl
import os
import pathlib
import socket
import time

import jax

LOCK_FILE = ".lock"


class WorkdirLock:
  """One writer per workdir: an exclusive `flock` on WORKDIR/.lock, held while the run lives.

  The operating system drops the lock when the process ends, however it ends (kill -9
  included), so there is nothing to clean up; the file only says who holds it (host, pid,
  start time). Only process 0 of a multi-host run takes it: every process of one run writes the
  same workdir, and a second run is refused by its own process 0. On NFS, Linux implements flock
  with POSIX byte-range locks, which the server arbitrates between hosts; a filesystem without
  locks (e.g. Lustre mounted without `flock`) gets one warning and no lock.
  """

  def __init__(self, workdir: str | os.PathLike, log=print):
    self.path = pathlib.Path(workdir) / LOCK_FILE
    self._log = log
    self._fd = None

  def __enter__(self) -> "WorkdirLock":
    if jax.process_index() != 0:
      return self
    self.path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "another process"
      os.close(fd)
      raise ValueError(f"workdir {self.path.parent} is in use by {holder}; wait for that run "
                       "to end (or stop it), or use another --workdir") from None
    except OSError as e:
      if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
        os.close(fd)
        raise
      self._log(f"warning: {self.path}: this filesystem has no file locks ({e.strerror}); "
                "nothing stops a second run on this workdir")
    os.ftruncate(fd, 0)
    os.pwrite(fd, (f"host {socket.gethostname()} pid {os.getpid()} (since "
                   f"{time.strftime('%Y-%m-%d %H:%M:%S')})\n").encode(), 0)
    self._fd = fd
    return self

  def __exit__(self, *exc) -> None:
    if self._fd is not None:
      os.close(self._fd)  # releases the lock; the file stays (removing it would race)
      self._fd = None

