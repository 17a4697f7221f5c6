"""Omniglot from the npz arrays: canonical order, preprocessing, splits."""

import os

import jax
import numpy as np
import pytest

from metajax.data import omniglot


@pytest.fixture(scope="module")
def raw(omniglot_raw):
  return omniglot_raw


@pytest.fixture(scope="module")
def images(raw, omniglot_cache):
  return omniglot.preprocess(raw, 28, omniglot_cache)


def test_all_1623_characters_in_canonical_order(raw):
  assert raw.images.shape == (1623, 20, 105, 105)
  assert raw.sets.count("background") == 964
  assert raw.sets.count("evaluation") == 659
  assert len(set(a for a, s in zip(raw.alphabets, raw.sets)
                 if s == "background")) == 30
  keys = list(zip(raw.sets, raw.alphabets, raw.characters))
  assert keys == sorted(keys)
  assert set(np.unique(raw.images[:5])) <= {0, 255}


def test_transform_resizes_and_puts_ink_in_front(raw):
  drawing = raw.images[0, 0]
  out = np.asarray(omniglot.transform(drawing))
  assert out.shape == (28, 28) and out.dtype == np.uint8
  # Paper (255) becomes 0; the ink fraction is about preserved by the resize.
  ink_before = np.mean(drawing == 0)
  assert abs(np.mean(out) / 255.0 - ink_before) < 0.05
  assert out[0, 0] == 0


def test_preprocess_caches_by_content(raw, images, tmp_path):
  assert images.shape == (1623, 20, 28, 28)
  small = raw._replace(images=raw.images[:3], sets=raw.sets[:3],
                       alphabets=raw.alphabets[:3],
                       characters=raw.characters[:3])
  first = omniglot.preprocess(small, 28, str(tmp_path))
  (cached,) = os.listdir(tmp_path)
  np.testing.assert_array_equal(first, images[:3])
  # Tamper with the cache: a later call must read it, proving it is used.
  np.save(tmp_path / cached, first + 1)
  np.testing.assert_array_equal(omniglot.preprocess(small, 28, str(tmp_path)),
                                first + 1)


def test_vinyals_split_sizes_rotations_and_disjoint_characters(
    raw, images, shared_data_dir):
  splits = omniglot.make_splits(
      raw, images, "vinyals",
      os.path.join(shared_data_dir, "omniglot", "vinyals_splits"))
  assert {k: v.num_classes for k, v in splits.items()} == {
      "train": 4112, "val": 688, "test": 1692}
  chars = {k: {n.rsplit("/", 1)[0] for n in v.class_names}
           for k, v in splits.items()}
  assert len(chars["train"]) + len(chars["val"]) == 1200
  assert len(chars["test"]) == 423
  assert not (chars["train"] & chars["val"] or chars["train"] & chars["test"]
              or chars["val"] & chars["test"])
  # A rot090 class is the rot000 class turned by 90 degrees.
  names = splits["train"].class_names
  i0 = names.index("Angelic/character01/rot000")
  i1 = names.index("Angelic/character01/rot090")
  np.testing.assert_array_equal(
      splits["train"].images[i1, :, :, :, 0],
      np.rot90(splits["train"].images[i0, :, :, :, 0], 1, axes=(1, 2)))


def test_lake_split_is_background_against_evaluation(raw, images):
  splits = omniglot.make_splits(raw, images, "lake")
  assert set(splits) == {"train", "test"}
  assert splits["train"].num_classes == 964
  assert splits["test"].num_classes == 659
  train_alphabets = {n.split("/")[0] for n in splits["train"].class_names}
  test_alphabets = {n.split("/")[0] for n in splits["test"].class_names}
  assert len(train_alphabets) == 30 and len(test_alphabets) == 20
  assert not train_alphabets & test_alphabets


def test_bad_files_are_named(tmp_path, raw, images):
  with pytest.raises(FileNotFoundError, match="omniglot_background_105.npz"):
    omniglot.load_npz(str(tmp_path))
  bad = tmp_path / "bad.npz"
  bad.write_bytes(b"not a zip at all")
  with pytest.raises(ValueError, match="bad.npz: not a readable .npz"):
    omniglot.read_npz(str(bad), "background")
  np.savez(tmp_path / "partial.npz", images=np.zeros((1, 20, 105, 105),
                                                     np.uint8))
  with pytest.raises(ValueError, match=r"partial.npz: missing arrays "
                     r"\['alphabet', 'character'\]"):
    omniglot.read_npz(str(tmp_path / "partial.npz"), "background")
  split_dir = tmp_path / "splits"
  split_dir.mkdir()
  (split_dir / "train.txt").write_text("Angelic/character01/rot000\n"
                                       "Angelic/character01/rot045\n")
  with pytest.raises(ValueError, match=r"train.txt, line 2: expected"):
    omniglot.make_splits(raw, images, "vinyals", str(split_dir))
  (split_dir / "train.txt").write_text("Klingon/character01/rot000\n")
  (split_dir / "val.txt").write_text("")
  (split_dir / "test.txt").write_text("")
  with pytest.raises(ValueError, match="no character 'Klingon/character01'"):
    omniglot.make_splits(raw, images, "vinyals", str(split_dir))
  with pytest.raises(ValueError, match="split must be one of"):
    omniglot.make_splits(raw, images, "random")
