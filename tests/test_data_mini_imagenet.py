"""mini-ImageNet: the three on-disk layouts, their agreement and every check.

The files are written here in the real formats, at 8x8 with 3 classes of 4
images per split, so that each test takes milliseconds.
"""

import os
import pickle
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from metajax.data.vision import mini_imagenet
from test_data_safe_pickle import Py2Pickler

SPLITS = ("train", "val", "test")
SIZE = 8
PER_CLASS = 4
WNIDS = {"train": ("n01532829", "n01558993", "n01704323"),
         "val": ("n01855672", "n02091244", "n02114548"),
         "test": ("n01930112", "n01981276", "n02099601")}
SMALL = dict(image_size=SIZE, images_per_class=PER_CLASS,
             expected_classes={"train": 3, "val": 3, "test": 3})


@pytest.fixture(scope="module")
def pixels():
  """split -> uint8 `[3, PER_CLASS, SIZE, SIZE, 3]`, class order of WNIDS."""
  rng = np.random.default_rng(0)
  return {s: rng.integers(0, 256, (3, PER_CLASS, SIZE, SIZE, 3), np.uint8)
          for s in SPLITS}


def image_name(wnid, j, ext=".png"):
  """The Ravi naming: wnid and a 1-based 8-digit index."""
  return f"{wnid}{j + 1:08d}{ext}"


def pickle_data(images, names):
  """The cache dict, rows shuffled so that only class_dict says which is
  which."""
  flat = images.reshape((-1,) + images.shape[2:])
  order = np.random.default_rng(1).permutation(len(flat))
  row_of = np.argsort(order)  # row_of[k]: the row holding image k
  n = images.shape[1]
  return {"image_data": flat[order],
          "class_dict": {name: row_of[c * n:(c + 1) * n].tolist()
                         for c, name in enumerate(names)}}


def write_pickles(root, pixels, val_name="val"):
  os.makedirs(root, exist_ok=True)
  for s in SPLITS:
    name = val_name if s == "val" else s
    with open(os.path.join(root, f"mini-imagenet-cache-{name}.pkl"),
              "wb") as f:
      pickle.dump(pickle_data(pixels[s], WNIDS[s]), f)
  return str(root)


def write_folders(root, pixels):
  for s in SPLITS:
    for c, wnid in enumerate(WNIDS[s]):
      folder = os.path.join(root, s, wnid)
      os.makedirs(folder)
      for j in range(PER_CLASS):
        Image.fromarray(pixels[s][c, j]).save(
            os.path.join(folder, image_name(wnid, j)))
  return str(root)


def write_csv_layout(root, pixels):
  images = os.path.join(root, "images")
  os.makedirs(images)
  for s in SPLITS:
    lines = ["filename,label"]
    for c, wnid in enumerate(WNIDS[s]):
      for j in range(PER_CLASS):
        Image.fromarray(pixels[s][c, j]).save(
            os.path.join(images, image_name(wnid, j)))
        lines.append(f"{image_name(wnid, j)},{wnid}")
    with open(os.path.join(root, f"{s}.csv"), "w") as f:
      f.write("\n".join(lines) + "\n")
  return str(root)


WRITERS = {"pickle": write_pickles, "folders": write_folders,
           "csv": write_csv_layout}


def assert_same(datasets, pixels):
  assert set(datasets) == set(SPLITS)
  for s in SPLITS:
    d = datasets[s]
    assert d.class_names == WNIDS[s]
    assert d.images.dtype == np.uint8
    assert d.images.shape == (3, PER_CLASS, SIZE, SIZE, 3)
    np.testing.assert_array_equal(d.counts, [PER_CLASS] * 3)
    np.testing.assert_array_equal(d.images, pixels[s])


def error(kind, pattern, fn, *args, **kwargs):
  """Runs `fn`, expecting `kind` with `pattern` (a literal) in its message."""
  with pytest.raises(kind, match=re.escape(str(pattern))):
    fn(*args, **kwargs)


def load(root, **kwargs):
  return mini_imagenet.load(str(root), **{**SMALL, **kwargs})


# Round trips and agreement.


@pytest.mark.parametrize("layout", sorted(WRITERS))
def test_layout_round_trip_and_detection(tmp_path, pixels, layout):
  root = WRITERS[layout](tmp_path / layout, pixels)
  assert mini_imagenet.detect_layout(root) == layout
  assert_same(load(root), pixels)
  assert_same(load(root, layout=layout), pixels)


def test_three_layouts_give_equal_datasets(tmp_path, pixels):
  loaded = [load(writer(tmp_path / name, pixels))
            for name, writer in WRITERS.items()]
  for other in loaded[1:]:
    for s in SPLITS:
      np.testing.assert_array_equal(other[s].images, loaded[0][s].images)
      np.testing.assert_array_equal(other[s].counts, loaded[0][s].counts)
      assert other[s].class_names == loaded[0][s].class_names


def test_python2_pickles_and_byte_string_keys(tmp_path, pixels):
  for s in SPLITS:
    data = pickle_data(pixels[s], WNIDS[s])
    data = {b"image_data": data["image_data"],
            b"class_dict": {k.encode(): v
                            for k, v in data["class_dict"].items()}}
    with open(tmp_path / f"mini-imagenet-cache-{s}.pkl", "wb") as f:
      Py2Pickler(f, protocol=2).dump(data)
  assert_same(load(tmp_path), pixels)


def test_learn2learn_validation_name(tmp_path, pixels):
  root = write_pickles(tmp_path, pixels, val_name="validation")
  assert_same(load(root), pixels)
  shutil.copy(os.path.join(root, "mini-imagenet-cache-validation.pkl"),
              os.path.join(root, "mini-imagenet-cache-val.pkl"))
  error(ValueError, "mini-imagenet-cache-validation.pkl exist", load, root)


def test_read_pickle_keeps_class_dict_order(tmp_path, pixels):
  path = tmp_path / "p.pkl"
  data = pickle_data(pixels["train"], WNIDS["train"])
  first = data["class_dict"][WNIDS["train"][0]]
  data["class_dict"][WNIDS["train"][0]] = first[::-1]
  with open(path, "wb") as f:
    pickle.dump(data, f)
  d = mini_imagenet.read_pickle(str(path), SIZE)
  np.testing.assert_array_equal(d.images[0], pixels["train"][0, ::-1])


# Image decoding.


def test_jpeg_grayscale_and_resize(tmp_path, pixels):
  root = write_folders(tmp_path, pixels)
  wnid = WNIDS["train"][0]
  folder = os.path.join(root, "train", wnid)
  rng = np.random.default_rng(2)
  # Replace images 0 and 1 by a 12x10 colour JPEG and a grayscale JPEG.
  paths = [os.path.join(folder, image_name(wnid, j, ".jpg")) for j in (0, 1)]
  for j, path in enumerate(paths):
    os.remove(os.path.join(folder, image_name(wnid, j)))
  Image.fromarray(rng.integers(0, 256, (10, 12, 3), np.uint8)).save(paths[0])
  Image.fromarray(rng.integers(0, 256, (SIZE, SIZE), np.uint8)).save(paths[1])
  d = load(root)["train"]
  with Image.open(paths[0]) as image:
    want = np.asarray(image.resize((SIZE, SIZE), Image.LANCZOS))
  np.testing.assert_array_equal(d.images[0, 0], want)
  with Image.open(paths[1]) as image:
    assert image.mode == "L"
    gray = np.asarray(image)
  np.testing.assert_array_equal(d.images[0, 1], np.stack([gray] * 3, -1))
  np.testing.assert_array_equal(d.images[1:], pixels["train"][1:])
  error(ValueError, f"{paths[0]}: image is 12x10, expected 8x8", load, root,
        resize=False)


def test_wrong_channels_named_by_file(tmp_path, pixels):
  root = write_folders(tmp_path, pixels)
  path = os.path.join(root, "val", WNIDS["val"][1],
                      image_name(WNIDS["val"][1], 2))
  Image.fromarray(np.zeros((SIZE, SIZE, 4), np.uint8)).save(path)
  error(ValueError, f"{path}: image mode 'RGBA' (4 channels)", load, root)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_image_named_by_path(tmp_path, pixels, damage):
  root = write_folders(tmp_path, pixels)
  path = os.path.join(root, "test", WNIDS["test"][2],
                      image_name(WNIDS["test"][2], 3))
  with open(path, "rb") as f:
    data = f.read()
  with open(path, "wb") as f:
    f.write(b"not an image" if damage == "garbage" else data[:len(data) // 2])
  error(ValueError, f"{path}: not a readable image", load, root)


def test_missing_image_named_by_path(tmp_path, pixels):
  root = write_folders(tmp_path, pixels)
  path = os.path.join(root, "train", WNIDS["train"][1],
                      image_name(WNIDS["train"][1], 0))
  os.remove(path)
  os.symlink(os.path.join(root, "nowhere.png"), path)  # dangling
  error(FileNotFoundError, f"image file not found: {path}", load, root)


def test_cache_reused_and_keyed_by_content(tmp_path, pixels, monkeypatch):
  root = write_folders(tmp_path / "data", pixels)
  cache = tmp_path / "cache"
  assert_same(load(root, cache_dir=str(cache)), pixels)
  files = sorted(os.listdir(cache))
  assert len(files) == 3 and all(f.endswith(".npy") for f in files)

  def no_decoding(*args):
    raise AssertionError(f"decoded {args[0]} although it is cached")

  monkeypatch.setattr(mini_imagenet, "_decode", no_decoding)
  assert_same(load(root, cache_dir=str(cache)), pixels)
  monkeypatch.undo()
  # New content under the same file name: a new key, so it is decoded.
  wnid = WNIDS["val"][1]
  new = 255 - pixels["val"][1, 2]
  Image.fromarray(new).save(
      os.path.join(root, "val", wnid, image_name(wnid, 2)))
  d = load(root, cache_dir=str(cache))
  np.testing.assert_array_equal(d["val"].images[1, 2], new)
  assert len(os.listdir(cache)) == 4


@pytest.mark.parametrize("damage", ["empty", "truncated", "wrong dtype"])
def test_damaged_cache_warns_and_is_rebuilt(tmp_path, pixels, damage):
  root = write_folders(tmp_path / "data", pixels)
  cache = tmp_path / "cache"
  load(root, cache_dir=str(cache))
  (name,) = [f for f in os.listdir(cache) if "_val_" in f]
  path = cache / name
  if damage == "empty":
    path.write_bytes(b"")
  elif damage == "truncated":
    path.write_bytes(path.read_bytes()[:-10])
  else:
    np.save(path, pixels["val"].astype(np.int16))
  with pytest.warns(UserWarning, match=rf"{name}: damaged cache file, .*; "
                    r"rebuilding it"):
    assert_same(load(root, cache_dir=str(cache)), pixels)
  np.testing.assert_array_equal(np.load(path), pixels["val"])


# Folder structure.


def test_folder_structure_errors(tmp_path, pixels):
  root = write_folders(tmp_path, pixels)
  # Hidden clutter is ignored.
  for folder in (os.path.join(root, "train"),
                 os.path.join(root, "train", WNIDS["train"][0])):
    with open(os.path.join(folder, ".DS_Store"), "w") as f:
      f.write("x")
  assert_same(load(root), pixels)
  stray = os.path.join(root, "val", "README.txt")
  with open(stray, "w") as f:
    f.write("x")
  error(ValueError, f"{stray}: not a folder", load, root)
  os.remove(stray)
  nested = os.path.join(root, "test", WNIDS["test"][0], "more")
  os.makedirs(nested)
  error(ValueError, f"{nested}: a folder inside a class folder", load, root)
  os.rmdir(nested)
  shutil.rmtree(os.path.join(root, "test"))
  error(FileNotFoundError, os.path.join(root, "test"), load, root,
        layout="folders")


def test_non_image_file_named(tmp_path, pixels):
  root = write_folders(tmp_path, pixels)
  wnid = WNIDS["train"][2]
  path = os.path.join(root, "train", wnid, image_name(wnid, 1))
  os.remove(path)
  path = os.path.join(root, "train", wnid, "notes.txt")
  with open(path, "w") as f:
    f.write("not a picture")
  error(ValueError, f"{path}: not a readable image", load, root)


# CSV layout.


def append(path, line):
  with open(path, "a") as f:
    f.write(line + "\n")


def test_csv_unknown_file_named_by_line(tmp_path, pixels):
  root = write_csv_layout(tmp_path, pixels)
  csv_path = os.path.join(root, "val.csv")
  append(csv_path, f"n0185567200000099.jpg,{WNIDS['val'][0]}")
  # Header, 12 rows, then the new row.
  error(ValueError, f"{csv_path}, line 14: 'n0185567200000099.jpg' is not in "
        f"{os.path.join(root, 'images')}", load, root)


def test_csv_malformed_rows_named_by_line(tmp_path, pixels):
  root = write_csv_layout(tmp_path, pixels)
  csv_path = os.path.join(root, "test.csv")
  with open(csv_path) as f:
    lines = f.read().splitlines()
  with open(csv_path, "w") as f:
    f.write("\n".join(["file,label"] + lines[1:]) + "\n")
  error(ValueError, f"{csv_path}, line 1: expected the header", load, root)
  with open(csv_path, "w") as f:
    f.write("\n".join(lines[:3] + ["a,b,c"] + lines[3:]) + "\n")
  error(ValueError, f"{csv_path}, line 4: expected 'filename,label', got "
        f"'a,b,c'", load, root)
  with open(csv_path, "w") as f:
    f.write("")
  error(ValueError, f"{csv_path}: empty", load, root)
  os.remove(csv_path)
  error(FileNotFoundError, csv_path, load, root, layout="csv")


def test_csv_file_listed_twice(tmp_path, pixels):
  root = write_csv_layout(tmp_path, pixels)
  name = image_name(WNIDS["train"][0], 0)
  append(os.path.join(root, "test.csv"), f"{name},{WNIDS['test'][0]}")
  error(ValueError, f"{os.path.join(root, 'test.csv')}, line 14: {name!r} is "
        f"listed again (first at {os.path.join(root, 'train.csv')}, line 2)",
        load, root)


def test_csv_unlisted_images_warn(tmp_path, pixels):
  root = write_csv_layout(tmp_path, pixels)
  Image.fromarray(pixels["val"][0, 0]).save(
      os.path.join(root, "images", "extra.png"))
  with pytest.warns(UserWarning, match="1 files in .* are in none of"):
    assert_same(load(root), pixels)


# Pickle checks.


def write_one(root, data, split="train"):
  path = os.path.join(root, f"mini-imagenet-cache-{split}.pkl")
  with open(path, "wb") as f:
    pickle.dump(data, f)
  return path


def test_pickle_content_errors(tmp_path, pixels):
  root = write_pickles(tmp_path, pixels)
  good = pickle_data(pixels["train"], WNIDS["train"])
  wnid = WNIDS["train"][1]
  cases = [
      ([1, 2], "expected a dict, got list"),
      ({"image_data": good["image_data"]}, "no ['class_dict']"),
      ({**good, "image_data": good["image_data"][..., :2]},
       "'image_data' must be uint8 [N, 8, 8, 3], got uint8 (12, 8, 8, 2)"),
      ({**good, "image_data": good["image_data"].astype(np.float32)},
       "'image_data' must be uint8 [N, 8, 8, 3], got float32 (12, 8, 8, 3)"),
      ({**good, "class_dict": [1]}, "'class_dict' must be a dict"),
      ({**good, "class_dict": {**good["class_dict"], wnid: [0, 99]}},
       f"class {wnid!r}: row 99 is outside image_data's 12 rows"),
      ({**good, "class_dict": {**good["class_dict"], wnid: "rows"}},
       f"class {wnid!r}: expected a list of row indices"),
      ({**good, "class_dict": {**good["class_dict"], "n09999999": [
          good["class_dict"][wnid][0]]}},
       f"row {good['class_dict'][wnid][0]} of image_data is listed 2 times "
       f"(classes ['n01558993', 'n09999999'])"),
      ({**good, "class_dict": {**good["class_dict"], wnid: good["class_dict"][
          wnid][1:]}},
       f"1 of image_data's 12 rows belong to no class of class_dict, e.g. "
       f"row {good['class_dict'][wnid][0]}"),
  ]
  for data, message in cases:
    path = write_one(root, data)
    error(ValueError, f"{path}: {message}", load, root)
  path = write_one(root, good)
  with open(path, "wb") as f:
    f.write(b"\x80\x04garbage")
  error(ValueError, f"{path}: not a readable mini-ImageNet pickle", load,
        root)
  write_one(root, good)
  error(ValueError, "pickled images are not resized", load, root,
        image_size=6)
  os.remove(os.path.join(root, "mini-imagenet-cache-val.pkl"))
  error(FileNotFoundError, "mini-imagenet-cache-val.pkl or "
        f"{os.path.join(root, 'mini-imagenet-cache-validation.pkl')}", load,
        root, layout="pickle")


# Split checks.


def test_class_counts_default_to_ravi(tmp_path, pixels):
  root = write_folders(tmp_path, pixels)
  error(ValueError, f"the train split ({os.path.join(root, 'train')}) has 3 "
        f"classes, expected 64", mini_imagenet.load, root, image_size=SIZE,
        images_per_class=PER_CLASS)
  assert_same(load(root, expected_classes=None), pixels)


def test_swapped_val_and_test_hinted(tmp_path, pixels):
  root = write_pickles(tmp_path, pixels)
  write_one(root, pickle_data(pixels["val"][:2], WNIDS["val"][:2]), "val")
  error(ValueError, "has 2 classes, expected 3", load, root)
  error(ValueError, "The val and test files look swapped.", load, root,
        expected_classes={"train": 3, "val": 3, "test": 2})


def test_splits_must_be_disjoint(tmp_path, pixels):
  root = write_folders(tmp_path, pixels)
  wnid = WNIDS["train"][0]
  shutil.copytree(os.path.join(root, "train", wnid),
                  os.path.join(root, "test", wnid))
  error(ValueError, f"class {wnid!r} is in both the train and the test split",
        load, root, expected_classes=None)


def test_images_per_class(tmp_path, pixels):
  root = write_folders(tmp_path, pixels)
  wnid = WNIDS["val"][2]
  folder = os.path.join(root, "val", wnid)
  os.remove(os.path.join(folder, image_name(wnid, 3)))
  error(ValueError, f"class {wnid!r} of the val split "
        f"({os.path.join(root, 'val')}) has 3 images, expected 4", load, root)
  # images_per_class=None accepts it, padding the short class.
  d = load(root, images_per_class=None)["val"]
  np.testing.assert_array_equal(d.counts, [4, 4, 3])
  np.testing.assert_array_equal(d.images[2, :3], pixels["val"][2, :3])
  assert not d.images[2, 3].any()
  for j in (3, 4):
    Image.fromarray(pixels["val"][0, 0]).save(
        os.path.join(folder, image_name(wnid, j)))
  error(ValueError, f"class {wnid!r} of the val split "
        f"({os.path.join(root, 'val')}) has 5 images, expected 4", load, root)
  shutil.rmtree(folder)
  os.makedirs(folder)
  error(ValueError, f"class {wnid!r} of the val split "
        f"({os.path.join(root, 'val')}) has 0 images, expected at least 1",
        load, root, images_per_class=None, expected_classes=None)


# Layout detection and options.


def test_detect_layout(tmp_path, pixels):
  error(FileNotFoundError, "mini-ImageNet folder not found",
        mini_imagenet.detect_layout, str(tmp_path / "absent"))
  error(FileNotFoundError, "no mini-ImageNet data in",
        mini_imagenet.detect_layout, str(tmp_path))
  root = write_folders(tmp_path / "both", pixels)
  write_pickles(root, pixels)
  error(ValueError, "holds several mini-ImageNet layouts (pickle, folders); "
        "pass layout=", load, root)
  assert_same(load(root, layout="folders"), pixels)
  assert_same(load(root, layout="pickle"), pixels)
  # What proc_images.py of cbfinn/maml leaves: CSVs, an empty images/ and the
  # folder layout.
  root = write_folders(tmp_path / "maml", pixels)
  for s in SPLITS:
    append(os.path.join(root, f"{s}.csv"), "filename,label")
  os.makedirs(os.path.join(root, "images"))
  assert mini_imagenet.detect_layout(root) == "folders"


def test_bad_options(tmp_path, pixels):
  root = write_pickles(tmp_path, pixels)
  error(ValueError, "layout must be one of", load, root, layout="zip")
  error(ValueError, "expected_classes has unknown splits ['valid']", load,
        root, expected_classes={"valid": 16})
