"""Files that are whole or absent: the one atomic writer of metajax.

Every writer here goes through `atomic_file`: the data goes to a temporary
file in the destination's folder, is flushed and fsynced, and only then
renamed over the destination with `os.replace`. A reader, or a run that
resumes after a crash or a full disk, therefore sees the previous version of
the file or the new one, never half of the new one; a failed write deletes
its temporary file.
"""

import contextlib
import json
import os
import secrets
import socket
from typing import IO, Any, Iterator, Union

import numpy as np

TEMPORARY_SUFFIX = ".tmp"


def temporary_path(path: str) -> str:
  """A fresh temporary name next to `path`, for writing it atomically.

  It is in the same folder, so that `os.replace` stays on one file system
  and is atomic. Host and PID name the writer of a file left by a killed
  process; the random part keeps concurrent writers (threads, or hosts
  sharing a file system) apart.
  """
  return (f"{path}.{socket.gethostname()}.{os.getpid()}."
          f"{secrets.token_hex(4)}{TEMPORARY_SUFFIX}")


@contextlib.contextmanager
def atomic_file(path: str, mode: str = "wb") -> Iterator[IO]:
  """Opens a temporary file that replaces `path` when the block succeeds.

  If the block raises, `path` is left as it was and the temporary file is
  deleted. The folder of `path` must exist.

  Args:
    path: the destination.
    mode: "wb" for bytes or "w" for text.

  Yields:
    The open temporary file.
  """
  if mode not in ("w", "wb"):
    raise ValueError(f"atomic_file({path!r}): mode must be 'w' or 'wb', got "
                     f"{mode!r}.")
  temporary = temporary_path(os.fspath(path))
  try:
    # "x": never write into a file that some other writer already owns.
    with open(temporary, mode.replace("w", "x")) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(temporary, path)
  finally:
    if os.path.exists(temporary):
      os.remove(temporary)


def write_atomic(path: str, data: Union[str, bytes]) -> None:
  """Writes `data` (text or bytes) to `path`, never leaving it half-written.

  Text is written in the platform's default encoding, as `open(path, "w")`
  does.
  """
  if not isinstance(data, (str, bytes)):
    raise TypeError(f"write_atomic({path!r}): data must be str or bytes, got "
                    f"{type(data).__name__}.")
  with atomic_file(path, "w" if isinstance(data, str) else "wb") as f:
    f.write(data)


def write_json(path: str, obj: Any) -> None:
  """Writes `obj` as indented, key-sorted JSON with `write_atomic`."""
  # Serialised before anything is written, so that an object JSON cannot
  # encode fails without touching the file system.
  write_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def save_npy_atomic(path: str, array: np.ndarray) -> None:
  """Writes `array` as a .npy file at `path`, creating its folder.

  Meant for caches of derived arrays: a crash never leaves a partial cache
  file that a later run would have to recognise as damaged.
  """
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with atomic_file(path) as f:
    # To an open file, np.save appends no ".npy" to the name.
    np.save(f, np.asarray(array), allow_pickle=False)
