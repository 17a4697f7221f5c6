"""The restricted unpickler: plain data and numpy arrays, nothing else."""

import codecs
import pickle
import re
import struct

import numpy as np
import pytest

from metajax.data import safe_pickle

DATA = {"image_data": np.arange(24, dtype=np.uint8).reshape(2, 3, 4),
        "class_dict": {"n01": [0], "n02": [1]},
        "scalar": np.float32(1.5), "text": "ok", "raw": b"\x00\xff"}


def assert_equal(got, want):
  assert set(got) == set(want)
  for key, value in want.items():
    if isinstance(value, np.ndarray):
      assert got[key].dtype == value.dtype
      np.testing.assert_array_equal(got[key], value)
    else:
      assert got[key] == value


def write(path, data, protocol=pickle.HIGHEST_PROTOCOL):
  with open(path, "wb") as f:
    pickle.dump(data, f, protocol=protocol)
  return str(path)


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_pickle_protocols(tmp_path, protocol):
  # Protocols 0-2 store bytes through _codecs.encode, 5 through _frombuffer.
  path = write(tmp_path / "p.pkl", DATA, protocol)
  assert_equal(safe_pickle.load(path), DATA)


class Py2Pickler(pickle._Pickler):  # pylint: disable=protected-access
  """Writes bytes as Python 2 `str` (BINSTRING), as Python 2 pickles hold
  strings and numpy's array data."""
  dispatch = pickle._Pickler.dispatch.copy()  # pylint: disable=protected-access

  def save_str(self, obj):
    self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
    self.memoize(obj)

  dispatch[bytes] = save_str


def test_python2_pickles(tmp_path):
  images = DATA["image_data"]
  with open(tmp_path / "p.pkl", "wb") as f:
    Py2Pickler(f, protocol=2).dump({b"image_data": images})
  got = safe_pickle.load(str(tmp_path / "p.pkl"))
  # A Python 2 `str` comes back as a str, decoded as latin-1.
  np.testing.assert_array_equal(got["image_data"], images)


def test_pickle_refuses_code(tmp_path):
  marker = tmp_path / "marker"

  class Payload:

    def __reduce__(self):
      return open, (str(marker), "w")

  path = write(tmp_path / "p.pkl", {"a": [Payload()]})
  with pytest.raises(ValueError, match=re.escape(
      f"{path}: not a readable mini-ImageNet pickle (UnpicklingError: "
      f"refusing to load io.open")):
    safe_pickle.load(path, "mini-ImageNet pickle")
  assert not marker.exists()


def test_only_the_latin1_codec(tmp_path):

  class OtherCodec:

    def __reduce__(self):
      return codecs.encode, ("text", "rot13")

  path = write(tmp_path / "p.pkl", OtherCodec())
  with pytest.raises(ValueError, match="refusing _codecs.encode with "
                     "encoding 'rot13'"):
    safe_pickle.load(path)


def test_numpy_1_names_are_accepted():
  allowed = safe_pickle.allowed_globals()
  for package in ("numpy.core", "numpy._core"):
    assert (f"{package}.multiarray", "_reconstruct") in allowed
  assert all(module in ("numpy", "_codecs") or module.startswith("numpy.")
             for module, _ in allowed)


def test_malformed_and_missing_files(tmp_path):
  path = tmp_path / "p.pkl"
  path.write_bytes(b"\x80\x04garbage")
  with pytest.raises(ValueError, match=re.escape(
      f"{path}: not a readable pickle (")):
    safe_pickle.load(str(path))
  with pytest.raises(FileNotFoundError):
    safe_pickle.load(str(tmp_path / "nowhere.pkl"))
