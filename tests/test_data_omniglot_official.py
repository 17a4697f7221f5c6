"""The official Omniglot zips and folders, checked against the npz source."""

import io
import os
import re
import shutil
import zipfile

import numpy as np
import pytest
from PIL import Image

from metajax.data.vision import omniglot
from metajax.data.vision import omniglot_official as official

SMALL = ("images_background_small1.zip", "images_background_small2.zip")
# One real character of small1, re-rooted under images_background/.
CHARACTER = "Latin/character01"


@pytest.fixture(scope="module")
def omniglot_dir(shared_data_dir):
  return os.path.join(shared_data_dir, "omniglot")


@pytest.fixture(scope="module")
def small(omniglot_dir):
  return official.load_official([os.path.join(omniglot_dir, n) for n in SMALL])


@pytest.fixture(scope="module")
def members(omniglot_dir):
  """{"images_background/Latin/character01/<id>_<drawer>.png": PNG bytes}."""
  prefix = f"images_background_small1/{CHARACTER}/"
  with zipfile.ZipFile(os.path.join(omniglot_dir, SMALL[0])) as archive:
    out = {f"images_background/{CHARACTER}/{n[len(prefix):]}": archive.read(n)
           for n in archive.namelist()
           if n.startswith(prefix) and n.endswith(".png")}
  assert len(out) == 20
  return out


def write_zip(path, entries):
  """Writes {member name: bytes} uncompressed, so that data stays in view."""
  with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
    for name, data in entries.items():
      archive.writestr(name, data)
  return str(path)


def png(image):
  out = io.BytesIO()
  image.save(out, format="PNG")
  return out.getvalue()


def drawing(name):
  """The member name of drawer `name` ("05") of CHARACTER."""
  return f"images_background/{CHARACTER}/0683_{name}.png"


def test_small_zips_hold_the_npz_drawings(small, omniglot_dir):
  # The small zips are background characters; load_npz reads the same file
  # for its background set.
  npz = omniglot.read_npz(
      os.path.join(omniglot_dir, omniglot.NPZ_FILES["background"]),
      "background")
  index = {name: i for i, name in enumerate(npz.names)}
  # small1 and small2 share the 50 characters of Greek and Latin.
  assert len(small.names) == 136 + 156 - 50 == len(set(small.names))
  assert set(small.sets) == {"background"}
  assert small.images.dtype == np.uint8
  assert small.images.shape == (242, 20, 105, 105)
  for i, name in enumerate(small.names):
    ours = sorted(d.tobytes() for d in small.images[i])
    theirs = sorted(d.tobytes() for d in npz.images[index[name]])
    assert ours == theirs, name
  keys = list(zip(small.alphabets, small.characters))
  assert keys == sorted(keys)


def test_each_small_zip_alone(small, omniglot_dir):
  one, two = (official.load_official(os.path.join(omniglot_dir, n))
              for n in SMALL)
  assert (len(one.names), len(two.names)) == (136, 156)
  assert sorted(set(one.names) | set(two.names)) == sorted(small.names)
  assert {n.split("/")[0] for n in set(one.names) & set(two.names)} == {
      "Greek", "Latin"}
  rows = {n: i for i, n in enumerate(small.names)}
  for part in (one, two):
    np.testing.assert_array_equal(
        part.images, small.images[[rows[n] for n in part.names]])


def test_drawer_order_and_polarity(small, omniglot_dir):
  # Decode Balinese/character01 by hand: drawer NN is drawing NN - 1, white
  # 1-bit pixels are paper (255) and black ones ink (0).
  prefix = "images_background_small1/Balinese/character01/0108_"
  with zipfile.ZipFile(os.path.join(omniglot_dir, SMALL[0])) as archive:
    expected = [np.asarray(Image.open(io.BytesIO(
        archive.read(f"{prefix}{d:02d}.png")))) for d in range(1, 21)]
  assert expected[0].dtype == bool
  expected = np.where(np.stack(expected), 255, 0).astype(np.uint8)
  got = small.images[small.names.index("Balinese/character01")]
  np.testing.assert_array_equal(got, expected)
  assert set(np.unique(small.images)) == {0, 255}
  assert (small.images == 255).mean() > 0.9  # mostly paper


def test_extracted_folder_reads_like_the_zip(tmp_path, omniglot_dir, small):
  zip_path = os.path.join(omniglot_dir, SMALL[0])
  with zipfile.ZipFile(zip_path) as archive:
    archive.extractall(tmp_path)
  got = official.load_official(tmp_path / "images_background_small1")
  with zipfile.ZipFile(zip_path) as archive:
    in_zip = {"/".join(n.split("/")[1:3]) for n in archive.namelist()
              if n.endswith(".png")}
  assert sorted(got.names) == sorted(in_zip) and len(got.names) == 136
  assert set(got.sets) == {"background"}
  rows = [small.names.index(n) for n in got.names]
  np.testing.assert_array_equal(got.images, small.images[rows])
  # A folder holding extracted folders and zips reads all of them.
  shutil.copy(os.path.join(omniglot_dir, SMALL[1]), tmp_path)
  got = official.load_official(tmp_path)
  assert got.names == small.names
  np.testing.assert_array_equal(got.images, small.images)


def test_evaluation_set_and_both_sets(tmp_path, members):
  evaluation = {n.replace("images_background/", "images_evaluation_x/"): d
                for n, d in members.items()}
  a = write_zip(tmp_path / "a.zip", members)
  b = write_zip(tmp_path / "b.zip", evaluation)
  raw = official.load_official([b, a])
  assert raw.sets == ("background", "evaluation")
  assert raw.names == (CHARACTER, CHARACTER)
  np.testing.assert_array_equal(raw.images[0], raw.images[1])


def test_black_and_white_grayscale_reads_like_1bit(tmp_path, members):
  gray = dict(members)
  gray[drawing("05")] = png(Image.open(io.BytesIO(members[drawing("05")]))
                            .convert("L"))
  assert Image.open(io.BytesIO(gray[drawing("05")])).mode == "L"
  np.testing.assert_array_equal(
      official.load_official(write_zip(tmp_path / "gray.zip", gray)).images,
      official.load_official(write_zip(tmp_path / "bits.zip", members)).images)


def test_clutter_is_skipped(tmp_path, members):
  entries = dict(members, **{
      "__MACOSX/images_background/._x": b"junk",
      "images_background/Latin/.DS_Store": b"junk",
      f"images_background/{CHARACTER}/._0683_01.png": b"junk"})
  assert official.load_official(
      write_zip(tmp_path / "x.zip", entries)).names == (CHARACTER,)


def test_differing_duplicates_raise(tmp_path, members):
  changed = dict(members)
  image = Image.open(io.BytesIO(members[drawing("05")])).convert("L")
  changed[drawing("05")] = png(image.point(lambda v: 255 - v))
  a = write_zip(tmp_path / "a.zip", members)
  b = write_zip(tmp_path / "b.zip", changed)
  assert official.load_official([a, a]).names == (CHARACTER,)
  with pytest.raises(ValueError, match=CHARACTER) as error:
    official.load_official([a, b])
  assert a in str(error.value) and b in str(error.value)


@pytest.mark.parametrize("how", ["truncated", "not_a_zip"])
def test_unreadable_zip_names_the_file(tmp_path, omniglot_dir, how):
  path = tmp_path / "images_background.zip"
  with open(os.path.join(omniglot_dir, SMALL[0]), "rb") as f:
    data = f.read()
  path.write_bytes(data[:len(data) // 2] if how == "truncated" else
                   b"these are not the drawings you are looking for")
  with pytest.raises(ValueError, match="not a readable zip") as error:
    official.load_official(path)
  assert str(path) in str(error.value)


def test_corrupt_member_names_it(tmp_path, members):
  path = write_zip(tmp_path / "x.zip", members)
  data = bytearray(open(path, "rb").read())
  start = data.find(members[drawing("07")])
  data[start + 100] ^= 0xFF  # breaks the member's CRC-32
  open(path, "wb").write(bytes(data))
  with pytest.raises(ValueError, match="cannot be read") as error:
    official.load_official(path)
  assert f"{path}:{drawing('07')}" in str(error.value)


def bad_png(kind):
  if kind == "garbage":
    return b"\x89PNG but not really"
  if kind == "size":
    return png(Image.new("1", (50, 50), 1))
  if kind == "mode":
    return png(Image.new("RGB", (105, 105), (255, 255, 255)))
  return png(Image.new("L", (105, 105), 128))  # gray


@pytest.mark.parametrize("kind, message", [
    ("garbage", "not a readable PNG"), ("size", "50x50"),
    ("mode", "mode 'RGB'"), ("gray", r"gray levels \[128\]")])
def test_bad_png_names_the_file(tmp_path, members, kind, message):
  path = write_zip(tmp_path / "x.zip", dict(members,
                                            **{drawing("13"): bad_png(kind)}))
  with pytest.raises(ValueError, match=message) as error:
    official.load_official(path)
  assert f"{path}:{drawing('13')}" in str(error.value)


@pytest.mark.parametrize("count", [19, 21])
def test_wrong_drawing_count_names_the_character(tmp_path, members, count):
  entries = dict(members)
  if count == 19:
    del entries[drawing("20")]
  else:
    entries[drawing("21")] = entries[drawing("01")]
  path = write_zip(tmp_path / "x.zip", entries)
  with pytest.raises(ValueError, match=f"{count} drawings, expected 20"
                     ) as error:
    official.load_official(path)
  assert f"{path}:images_background/{CHARACTER}" in str(error.value)


def renamed(members, old, new):
  return {n.replace(old, new): d for n, d in members.items()}


@pytest.mark.parametrize("change, message", [
    (("images_background/", "omniglot/"), "outside an images_background"),
    (("images_background/", ""), "outside an images_background"),
    (("Latin/", "Latin/extra/"), "does not match the layout"),
    (("character01", "letter01"), "does not match the layout"),
    (("0683_05", "0026-05"), "not a drawing named"),
    (("0683_05", "0027_05"), "character id 0027 differs"),
])
def test_layout_errors_name_the_member(tmp_path, members, change, message):
  path = write_zip(tmp_path / "x.zip", renamed(members, *change))
  with pytest.raises(ValueError, match=message) as error:
    official.load_official(path)
  assert path in str(error.value)


def test_duplicate_drawer_names_both_files(tmp_path, members):
  entries = dict(members)
  entries[drawing("5")] = entries.pop(drawing("06"))
  path = write_zip(tmp_path / "x.zip", entries)
  with pytest.raises(ValueError, match="second drawing of drawer 5") as error:
    official.load_official(path)
  assert drawing("05") in str(error.value) and drawing("5") in str(
      error.value)


def test_folder_errors_name_the_folder(tmp_path, members):
  root = tmp_path / "data"
  with zipfile.ZipFile(write_zip(tmp_path / "x.zip", members)) as archive:
    archive.extractall(root)
  folder = root / "images_background" / "Latin" / "character01"
  assert official.load_official(root).names == (CHARACTER,)
  empty = root / "images_background" / "Latin" / "character02"
  empty.mkdir()
  with pytest.raises(ValueError, match=re.escape(f"{empty}: 0 drawings")):
    official.load_official(root)
  empty.rmdir()
  os.remove(folder / "0683_03.png")
  with pytest.raises(ValueError, match=re.escape(f"{folder}: 19 drawings")):
    official.load_official(root)
  shutil.rmtree(root / "images_background")
  (root / "notes.txt").write_text("no drawings here")
  with pytest.raises(ValueError, match="no images_background") as error:
    official.load_official(root)
  assert str(root) in str(error.value)
  with pytest.raises(FileNotFoundError, match="nowhere"):
    official.load_official(tmp_path / "nowhere")
  with pytest.raises(ValueError, match="no Omniglot sources"):
    official.load_official([])
  write_zip(tmp_path / "images_background_empty.zip",
            {"images_background/Latin/": b""})
  with pytest.raises(ValueError, match="no Omniglot characters"):
    official.load_official(tmp_path / "images_background_empty.zip")
