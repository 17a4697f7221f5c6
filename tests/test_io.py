"""Files written whole or not at all."""

import json
import os
import threading

import numpy as np
import pytest

from metajax import io


def test_write_json_leaves_the_old_file_when_it_fails(tmp_path):
  path = str(tmp_path / "results.json")
  io.write_json(path, {"a": 1})
  with pytest.raises(TypeError):
    io.write_json(path, {"a": object()})
  with open(path) as f:
    assert json.load(f) == {"a": 1}
  assert os.listdir(tmp_path) == ["results.json"]


def test_write_atomic_text_and_bytes(tmp_path):
  path = str(tmp_path / "f")
  io.write_atomic(path, "héllo\n")
  with open(path) as f:
    assert f.read() == "héllo\n"
  io.write_atomic(path, b"\x00\xff")
  with open(path, "rb") as f:
    assert f.read() == b"\x00\xff"
  with pytest.raises(TypeError, match=f"{path}.*got list"):
    io.write_atomic(path, [1])
  assert os.listdir(tmp_path) == ["f"]


def test_a_failing_block_keeps_the_old_file_and_no_temporary(tmp_path):
  path = str(tmp_path / "f")
  io.write_atomic(path, "old")
  with pytest.raises(RuntimeError):
    with io.atomic_file(path, "w") as f:
      f.write("half of the new")
      raise RuntimeError("crash")
  with open(path) as f:
    assert f.read() == "old"
  assert os.listdir(tmp_path) == ["f"]
  with pytest.raises(ValueError, match="mode must be"):
    with io.atomic_file(path, "a"):
      pass


def test_concurrent_writers_never_mix(tmp_path):
  path = str(tmp_path / "f")
  texts = [str(i) * 100_000 for i in range(8)]
  threads = [threading.Thread(target=io.write_atomic, args=(path, t))
             for t in texts]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  with open(path) as f:
    assert f.read() in texts
  assert os.listdir(tmp_path) == ["f"]


def test_save_npy_atomic_creates_the_folder(tmp_path):
  path = str(tmp_path / "cache" / "a.npy")
  array = np.arange(6, dtype=np.uint8).reshape(2, 3)
  io.save_npy_atomic(path, array)
  np.testing.assert_array_equal(np.load(path), array)
  assert os.listdir(tmp_path / "cache") == ["a.npy"]
