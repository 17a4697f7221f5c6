"""Omniglot from the npz arrays: canonical order, preprocessing, splits."""

import os
import shutil
import zipfile

import numpy as np
import pytest

from metajax.data.vision import omniglot


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


def test_canonical_sorts_names_with_their_drawings_and_keeps_sorted_ones(
    raw):
  few = raw._replace(images=raw.images[:4], sets=raw.sets[:4],
                     alphabets=raw.alphabets[:4],
                     characters=raw.characters[:4])
  order = [2, 0, 3, 1]
  shuffled = omniglot.OmniglotRaw(few.images[order],
                                  *(tuple(v[i] for i in order)
                                    for v in few[1:]))
  again = omniglot.canonical(shuffled)
  assert again[1:] == few[1:]
  np.testing.assert_array_equal(again.images, few.images)
  # Already in order, as two sorted sets joined: returned without a copy.
  assert omniglot.canonical(few).images is few.images


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


# Damaged files.


def _write_npz(path, compressed=False, rows=3, **arrays):
  """A small valid Omniglot npz, with any array replaced by `arrays`."""
  content = {"images": np.full((rows, 20, 105, 105), 255, np.uint8),
             "alphabet": np.array([f"Alphabet{i}" for i in range(rows)]),
             "character": np.array([f"character{i + 1:02d}"
                                    for i in range(rows)])}
  content.update(arrays)
  (np.savez_compressed if compressed else np.savez)(path, **content)
  return str(path)


def _flip_byte_of_member(path, member):
  """Inverts one byte in the middle of a zip member's stored data."""
  with zipfile.ZipFile(path) as archive:
    info = archive.getinfo(member)
  with open(path, "r+b") as f:
    f.seek(info.header_offset + 26)  # local header: name and extra lengths
    name_length, extra_length = np.frombuffer(f.read(4), "<u2")
    at = (info.header_offset + 30 + int(name_length) + int(extra_length) +
          info.compress_size // 2)
    f.seek(at)
    byte = f.read(1)[0]
    f.seek(at)
    f.write(bytes([byte ^ 0xFF]))


@pytest.mark.parametrize("compressed", [False, True])
def test_truncated_npz_is_named(tmp_path, compressed):
  path = _write_npz(tmp_path / "cut.npz", compressed)
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)
  with pytest.raises(ValueError, match=r"cut\.npz: not a readable \.npz "
                     r"file \(a truncated or damaged zip"):
    omniglot.read_npz(path, "background")


@pytest.mark.parametrize("key", ["images", "alphabet", "character"])
def test_npz_member_with_a_bad_crc_names_file_and_array(tmp_path, key):
  path = _write_npz(tmp_path / "flipped.npz")
  _flip_byte_of_member(path, f"{key}.npy")
  with pytest.raises(ValueError, match=rf"flipped\.npz: array '{key}' cannot "
                     r"be read, the file is damaged \(BadZipFile: Bad CRC"):
    omniglot.read_npz(path, "background")


def test_damaged_copy_of_the_real_npz_is_named(tmp_path, shared_data_dir):
  # The real files are deflated: a flipped byte breaks the stream (zlib) or
  # the CRC, depending on where it lands; either way the error is named.
  shutil.copy(os.path.join(shared_data_dir, "omniglot",
                           omniglot.NPZ_FILES["background"]), tmp_path)
  path = str(tmp_path / omniglot.NPZ_FILES["background"])
  os.chmod(path, 0o644)
  _flip_byte_of_member(path, "images.npy")
  with pytest.raises(ValueError, match=r"omniglot_background_105\.npz: array "
                     r"'images' cannot be read, the file is damaged"):
    omniglot.load_npz(str(tmp_path))


@pytest.mark.parametrize("content, what", [
    (b"", "empty"),
    (b"images,alphabet,character\n", "not a zip archive"),
    (None, "a single .npy array"),
])
def test_npz_that_is_not_a_zip_is_named(tmp_path, content, what):
  path = tmp_path / "other.npz"
  if content is None:
    with open(path, "wb") as f:  # np.save would append .npy to the name
      np.save(f, np.zeros((3, 20, 105, 105), np.uint8))
  else:
    path.write_bytes(content)
  with pytest.raises(ValueError, match=rf"other\.npz: not a readable \.npz "
                     rf"file \({what}\); expected a \.npz archive"):
    omniglot.read_npz(str(path), "background")


@pytest.mark.parametrize("arrays, message", [
    ({"alphabet": np.array(["A0", "A1", "A2", "A3"])},
     r"array 'alphabet' must hold one string per row of 'images' "
     r"\(3, 20, 105, 105\), i\.e\. \[3\] strings; got <U2 \(4,\)"),
    ({"character": np.array([["c1", "c2"], ["c3", "c4"], ["c5", "c6"]])},
     r"array 'character' must hold one string per row .* got <U2 \(3, 2\)"),
    ({"alphabet": np.arange(3)}, r"array 'alphabet' must hold one string"),
    ({"images": np.full((3, 105, 105), 255, np.uint8)},
     r"array 'images' must be uint8 \[characters, drawings, 105, 105\], got "
     r"uint8 \(3, 105, 105\)"),
])
def test_npz_arrays_that_disagree_are_named(tmp_path, arrays, message):
  path = _write_npz(tmp_path / "odd.npz", **arrays)
  with pytest.raises(ValueError, match=r"odd\.npz: " + message):
    omniglot.read_npz(path, "background")


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage",
                                    "wrong dtype"])
def test_damaged_preprocess_cache_warns_and_is_rebuilt(raw, images, tmp_path,
                                                       damage):
  small = raw._replace(images=raw.images[:2], sets=raw.sets[:2],
                       alphabets=raw.alphabets[:2],
                       characters=raw.characters[:2])
  omniglot.preprocess(small, 28, str(tmp_path))
  (name,) = os.listdir(tmp_path)
  path = tmp_path / name
  if damage == "empty":
    path.write_bytes(b"")
  elif damage == "truncated":
    path.write_bytes(path.read_bytes()[:-100])
  elif damage == "garbage":
    path.write_bytes(b"\x00" * 1000)
  else:
    np.save(path, images[:2].astype(np.float32))
  with pytest.warns(UserWarning, match=rf"{name}: damaged cache file, .*; "
                    r"rebuilding it"):
    out = omniglot.preprocess(small, 28, str(tmp_path))
  np.testing.assert_array_equal(out, images[:2])
  # The rebuilt file is whole again: read back without a warning.
  np.testing.assert_array_equal(np.load(path), images[:2])
