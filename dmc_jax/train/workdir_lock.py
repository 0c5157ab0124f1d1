"""One live job per workdir (SHELL): an exclusive ``flock`` on ``WORKDIR/.lock``.

The lock is taken atomically by the kernel and released by it when the holder exits, however
it exits (a SIGKILL included), so a stale lock file from a killed run is simply taken over;
the file holds the holder's pid and host so that a second job can name it. Known limit:
``flock`` is local to a machine (on NFS two hosts may not see each other's locks).
"""
import contextlib
import fcntl
import os
import socket

import jax

LOCK_NAME = ".lock"


class WorkdirBusyError(RuntimeError):
  """Another live process holds the workdir."""


def _holder(path) -> str:
  try:
    with open(path) as f:
      return f.read().strip() or "unknown"
  except OSError:
    return "unknown"


@contextlib.contextmanager
def hold(workdir: str):
  """Holds ``workdir`` for the block; raises :class:`WorkdirBusyError` at once (naming the
  other process) if a live process holds it. With several processes
  (:mod:`dmc_jax.train.distributed`) process 0 holds it for the job."""
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() != 0:
    yield
    return
  path = os.path.join(workdir, LOCK_NAME)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    os.close(fd)
    pid, _, host = _holder(path).partition(" ")
    raise WorkdirBusyError(
        f"workdir {workdir} is in use by another job (pid {pid} on {host or 'this host'}, "
        f"lock {path}); wait for it to finish, stop it, or use another --workdir") from None
  try:
    previous = _holder(path)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
    os.fsync(fd)
    if previous != "unknown" and not previous.startswith(f"{os.getpid()} "):
      print(f"took over the lock of {workdir} (left by pid {previous.split(' ')[0]}, no longer "
            "running)", flush=True)
    yield
  finally:
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)
