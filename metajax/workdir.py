"""One run per workdir.

Two runs writing into one workdir would corrupt each other's checkpoints and
interleave their logs. `hold(workdir)` takes an exclusive `flock` on
`workdir/.lock` for as long as the run lasts and writes the holder's PID and
host into the file, so a second run is refused at once with a message naming
both. The kernel releases a `flock` when its process dies, however it dies, so
a lock left behind by a killed run is simply taken over: there is no stale
lock to clean up.
Files in a workdir are written with `metajax.io.write_atomic` and
`write_json`, which leave the previous version of a file, never half of a
new one, when a run crashes or the disk fills up.
"""

import contextlib
import fcntl
import json
import os
import socket
import threading
from typing import Dict, Iterator

LOCK_NAME = ".lock"

# Workdirs this process holds, with their open lock file and a hold count: an
# experiment holds its workdir and then calls `train` on the same one, and a
# second flock by the same process on a new file descriptor would conflict
# with its own first one.
_held: Dict[str, list] = {}
_held_guard = threading.Lock()


class WorkdirBusyError(RuntimeError):
  """Another live process holds the workdir."""


def _holder(path: str) -> str:
  try:
    with open(path) as f:
      info = json.load(f)
    return f"PID {info['pid']} on {info['host']}"
  except (OSError, ValueError, KeyError, TypeError):
    return "a process that has not written its PID yet"


@contextlib.contextmanager
def hold(workdir: str) -> Iterator[None]:
  """Holds `workdir` for one run; re-entrant within a process.

  Raises:
    WorkdirBusyError: another process holds it; the message names the
      workdir and the holder's PID and host.
  """
  os.makedirs(workdir, exist_ok=True)
  key = os.path.realpath(workdir)
  with _held_guard:
    if key in _held:
      _held[key][1] += 1
      acquired = None
    else:
      acquired = _acquire(key)
      _held[key] = [acquired, 1]
  try:
    yield
  finally:
    with _held_guard:
      _held[key][1] -= 1
      if _held[key][1] == 0:
        f = _held.pop(key)[0]
        # The file stays: removing it would let a third process lock a new
        # inode while a second still waits on the old one.
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


def _acquire(workdir: str):
  path = os.path.join(workdir, LOCK_NAME)
  f = open(path, "a+")
  try:
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    f.close()
    raise WorkdirBusyError(
        f"{workdir} is in use by another run ({_holder(path)}); wait for it "
        f"to finish or use another --workdir. Two runs in one workdir would "
        f"overwrite each other's checkpoints and logs.") from None
  f.seek(0)
  f.truncate()
  json.dump({"pid": os.getpid(), "host": socket.gethostname()}, f)
  f.flush()
  return f
