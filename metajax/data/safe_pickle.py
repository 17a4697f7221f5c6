"""A restricted unpickler for data files: plain containers and numpy arrays.

Unpickling a file can run any code its author chose, because a pickle names
the functions that rebuild its objects. `load` resolves only the numpy
functions that rebuild arrays, dtypes and scalars (plus a latin-1 string
encoder that Python 3 protocol 0-2 pickles need); any other name raises
`pickle.UnpicklingError`, so a pickle can yield nothing but built-in
containers, strings, numbers and numpy arrays. That closes the usual route to
running code; it does not bound the memory that a hostile file can make the
reader allocate, so prefer files from sources you trust.

Python 2 pickles (e.g. the mini-ImageNet caches of Ren et al., 2018) are
read too: their byte strings, numpy's array data among them, come back as the
same bytes.
"""

import pickle
from typing import Any, Callable, Dict, Tuple

import numpy as np


def _latin1_encode(text: str, encoding: str) -> bytes:
  # Python 3 pickles bytes as `_codecs.encode(text, "latin1")` under
  # protocols 0-2; nothing else needs this function, so no other codec is
  # allowed.
  if encoding not in ("latin1", "latin-1"):
    raise pickle.UnpicklingError(
        f"refusing _codecs.encode with encoding {encoding!r}.")
  return text.encode("latin1")


def allowed_globals() -> Dict[Tuple[str, str], Callable]:
  """The names a data pickle may refer to, and what they resolve to.

  numpy's rebuild functions are taken from numpy's own reductions, so they
  are right for the installed numpy; a pickle names them under
  `numpy.core` (numpy 1.x) or `numpy._core` (numpy 2), and both are accepted.

  Returns:
    {(module, name): the object that name resolves to}.
  """
  array = np.zeros(1, np.uint8)
  rebuilders = (("multiarray", array.__reduce__()[0]),
                ("multiarray", np.uint8(0).__reduce__()[0]),
                ("numeric", array.__reduce_ex__(5)[0]))  # protocol 5
  allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
             ("_codecs", "encode"): _latin1_encode}
  for module, function in rebuilders:
    for package in ("numpy.core", "numpy._core"):
      allowed[(f"{package}.{module}", function.__name__)] = function
  return allowed


class PlainDataUnpickler(pickle.Unpickler):
  """Unpickles dicts, lists and numpy arrays, and refuses anything else."""

  _allowed = allowed_globals()

  def find_class(self, module, name):
    found = self._allowed.get((module, name))
    if found is None:
      raise pickle.UnpicklingError(
          f"refusing to load {module}.{name}: only dicts, lists, strings, "
          f"numbers and numpy arrays are allowed.")
    return found


def load(path: str, what: str = "pickle") -> Any:
  """Reads the pickle at `path` with `PlainDataUnpickler`.

  Args:
    path: the pickle file.
    what: what the file should be, for error messages, e.g.
      "mini-ImageNet pickle".

  Returns:
    The unpickled object: built-in containers, strings, bytes, numbers and
    numpy arrays only.

  Raises:
    FileNotFoundError: `path` does not exist.
    ValueError: "<path>: not a readable <what> (<error>)" when the file is
      malformed or names anything outside `allowed_globals()`.
  """
  with open(path, "rb") as f:
    try:
      # latin1 turns the byte strings of Python 2 pickles (numpy's array
      # data among them) back into the same bytes; it changes nothing for
      # Python 3 pickles.
      return PlainDataUnpickler(f, encoding="latin1").load()
    except MemoryError:
      raise
    except Exception as e:  # Malformed pickles fail in many ways.
      raise ValueError(f"{path}: not a readable {what} "
                       f"({type(e).__name__}: {e})") from e
