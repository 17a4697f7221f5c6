"""mini-ImageNet with the Ravi & Larochelle (2017) class split.

mini-ImageNet (Vinyals et al., 2016) is 100 ImageNet classes of 600 colour
images each, used at 84x84. Ravi & Larochelle (2017) split its classes into
64 meta-train, 16 meta-validation and 20 meta-test classes. `load` returns
that split as {"train", "val", "test"} `ClassDataset`s, uint8
`[classes, 600, 84, 84, 3]`, classes sorted by ImageNet wnid (e.g.
"n01532829").

Getting the data
----------------
Nothing is downloaded here. The split is public: `train.csv`, `val.csv` and
`test.csv` in `data/miniImagenet/` of
https://github.com/twitter/meta-learning-lstm give each image's file name and
wnid, but no images. The images are derived from ImageNet, so ImageNet's
terms of access (https://image-net.org) govern them whatever copy you use;
make sure that you may use yours. `load` reads the three layouts in which
copies are kept, and finds out which one `root` holds (`detect_layout`)
unless told by `layout=`:

* "pickle": `mini-imagenet-cache-{train,val,test}.pkl`, each a dict with
  'image_data' (uint8 `[N, 84, 84, 3]`) and 'class_dict' ({wnid: [row
  indices into image_data]}). This is the cache written by the code of Ren
  et al. (2018; github.com/renmengye/few-shot-ssl-public) and read by
  learn2learn, which names the validation file
  `mini-imagenet-cache-validation.pkl`; either name is accepted.
* "folders": `<root>/{train,val,test}/<wnid>/<image>`, JPEG, PNG or any
  other format Pillow reads. `data/miniImagenet/proc_images.py` of
  github.com/cbfinn/maml turns the "csv" layout into this one, resizing the
  images to 84x84.
* "csv": the Ravi CSVs in `<root>` (header `filename,label`), with the files
  they name in `<root>/images/`.

Pickles are read with the restricted unpickler of `metajax.data.safe_pickle`,
which yields nothing but built-in containers, strings, numbers and numpy
arrays, so that a pickle cannot run code; it does not bound the memory that a
hostile file can make the reader allocate, so prefer files from sources you
trust.

Image files are decoded with Pillow. RGB is used as is; grayscale ("L") and
CMYK, the other modes Pillow gives JPEG files, are converted to RGB. Other
modes (alpha, palette, 16-bit, ...) are refused, naming the file, since
converting them would drop or reinterpret data. Files of another size than
`image_size` are resized with Lanczos filtering to a square, ignoring their
aspect ratio as proc_images.py does; with `resize=False` they are an error.
The same JPEG can decode to slightly different pixels under different
libjpeg builds, so the decoded arrays cached under `cache_dir` are keyed by
a hash of every file's bytes, the class layout, the size and Pillow's
version.

Checks, all raising before any dataset is returned (nothing is dropped
silently):

* Each split must have `expected_classes[split]` classes, by default the
  Ravi 64 / 16 / 20. A different count is an error rather than a warning:
  results on another class split are not comparable with published ones.
  `expected_classes=None` accepts any count.
* No class may be in two splits.
* Each class must have exactly `images_per_class` images (600), or with
  `images_per_class=None` at least one, shorter classes being padded (see
  `ClassDataset.counts`). The error names the class and the split.
* Unreadable, missing or wrongly shaped files and CSV rows naming unknown
  files raise errors naming the file, or the CSV line. In a pickle every row
  of 'image_data' must belong to exactly one class.

Names starting with "." (".DS_Store" and the like) are ignored in every
folder. Files in `images/` that no CSV lists are not part of the split:
they are left out with a warning that counts them.
"""

import concurrent.futures
import csv
import hashlib
import os
import types
import warnings
from typing import (AbstractSet, Callable, Dict, List, Mapping, Optional,
                    Sequence, Tuple)

import numpy as np
import PIL

from metajax import io as io_lib
from metajax.data import images as images_lib
from metajax.data import safe_pickle
from metajax.data.vision import episodes

SPLITS = ("train", "val", "test")
LAYOUTS = ("pickle", "folders", "csv")
RAVI_CLASSES = types.MappingProxyType({"train": 64, "val": 16, "test": 20})
IMAGES_PER_CLASS = 600
IMAGE_SIZE = 84
# Ren et al.'s code writes "-val", learn2learn reads "-validation".
PICKLE_FILES = {
    "train": ("mini-imagenet-cache-train.pkl",),
    "val": ("mini-imagenet-cache-val.pkl",
            "mini-imagenet-cache-validation.pkl"),
    "test": ("mini-imagenet-cache-test.pkl",),
}
CSV_FILES = {s: f"{s}.csv" for s in SPLITS}
CSV_HEADER = ("filename", "label")
IMAGES_DIR = "images"

# 8-bit colour or gray, so with one meaning in RGB: the modes Pillow gives
# JPEG files.
_RGB_MODES = ("RGB", "L", "CMYK")
# Bumped whenever decoding changes, so that older cache files go unused.
_CACHE_VERSION = "1"


def _text(key, path: str) -> str:
  # A Python 2 pickle loaded with encoding="bytes" and saved again keeps
  # byte-string keys.
  if isinstance(key, bytes):
    key = key.decode("latin1")
  if not isinstance(key, str):
    raise ValueError(f"{path}: keys must be strings, got {key!r}.")
  return key


def read_pickle(path: str,
                image_size: int = IMAGE_SIZE) -> episodes.ClassDataset:
  """Reads one `mini-imagenet-cache-*.pkl`, refusing anything but plain data.

  Args:
    path: the pickle: a dict with 'image_data', uint8 `[N, image_size,
      image_size, 3]`, and 'class_dict', {wnid: [row indices]}. Other keys
      are ignored. Images are used as stored, never resized.
    image_size: the side the stored images must have.

  Returns:
    A `ClassDataset`, classes sorted by name, each class's images in the order
    of its row indices; classes with fewer images than the largest one are
    padded.

  Raises:
    FileNotFoundError: `path` does not exist.
    ValueError: naming `path`, when the file is not such a pickle, refers
      to anything but numpy arrays and plain data, or does not assign each
      row of 'image_data' to exactly one class.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"mini-ImageNet pickle not found: {path}")
  data = safe_pickle.load(path, "mini-ImageNet pickle")
  if not isinstance(data, dict):
    raise ValueError(f"{path}: expected a dict, got {type(data).__name__}.")
  data = {_text(k, path): v for k, v in data.items()}
  missing = sorted({"image_data", "class_dict"} - set(data))
  if missing:
    raise ValueError(f"{path}: no {missing} in the pickled dict (it has "
                     f"{sorted(data)}).")
  images, class_dict = data["image_data"], data["class_dict"]
  shape = (image_size, image_size, 3)
  if (not isinstance(images, np.ndarray) or images.dtype != np.uint8 or
      images.shape[1:] != shape):
    got = (f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray)
           else type(images).__name__)
    raise ValueError(
        f"{path}: 'image_data' must be uint8 [N, {image_size}, {image_size}, "
        f"3], got {got} (pickled images are not resized; image_size must "
        f"match them).")
  if not isinstance(class_dict, dict):
    raise ValueError(f"{path}: 'class_dict' must be a dict, got "
                     f"{type(class_dict).__name__}.")
  rows = {}
  for key, value in class_dict.items():
    name = _text(key, path)
    index = np.asarray(value)
    if index.ndim != 1 or (index.size and not np.issubdtype(index.dtype,
                                                           np.integer)):
      raise ValueError(f"{path}: class {name!r}: expected a list of row "
                       f"indices, got {type(value).__name__} {value!r:.60}.")
    outside = index[(index < 0) | (index >= len(images))]
    if outside.size:
      raise ValueError(f"{path}: class {name!r}: row {int(outside[0])} is "
                       f"outside image_data's {len(images)} rows.")
    if name in rows:
      raise ValueError(f"{path}: class {name!r} appears twice.")
    rows[name] = index.astype(np.int64)
  rows = dict(sorted(rows.items()))
  uses = np.zeros(len(images), np.int64)
  for index in rows.values():
    np.add.at(uses, index, 1)
  if (uses > 1).any():
    row = int(np.flatnonzero(uses > 1)[0])
    holders = [name for name, index in rows.items() if row in index]
    raise ValueError(f"{path}: row {row} of image_data is listed "
                     f"{int(uses[row])} times (classes {holders}); each image "
                     f"must belong to one class.")
  if (uses == 0).any():
    unused = np.flatnonzero(uses == 0)
    raise ValueError(f"{path}: {unused.size} of image_data's {len(images)} "
                     f"rows belong to no class of class_dict, e.g. row "
                     f"{int(unused[0])}.")
  counts = np.array([len(r) for r in rows.values()], np.int32)
  out = np.zeros((len(rows), counts.max(initial=0)) + shape, np.uint8)
  for i, index in enumerate(rows.values()):
    out[i, :len(index)] = images[index]
  return episodes.make_dataset(out, tuple(rows), counts)


def _has_entries(folder: str) -> bool:
  with os.scandir(folder) as entries:
    return any(not e.name.startswith(".") for e in entries)


def _visible(folder: str) -> List[str]:
  """Sorted entry names of `folder`, without hidden ones (".DS_Store")."""
  return sorted(n for n in os.listdir(folder) if not n.startswith("."))


def detect_layout(root: str) -> str:
  """Which of `LAYOUTS` the folder `root` holds.

  "pickle" if any `mini-imagenet-cache-*.pkl` is there, "folders" if any of
  `train/`, `val/`, `test/` is, "csv" if a split CSV is there and `images/`
  is not empty (proc_images.py of cbfinn/maml empties `images/` into the
  folder layout and leaves the CSVs behind).

  Raises:
    FileNotFoundError: `root` does not exist or holds none of the layouts.
    ValueError: it holds several; pass `layout=` to `load` to pick one.
  """
  if not os.path.isdir(root):
    raise FileNotFoundError(f"mini-ImageNet folder not found: {root}")
  found = []
  if any(os.path.isfile(os.path.join(root, name))
         for names in PICKLE_FILES.values() for name in names):
    found.append("pickle")
  if any(os.path.isdir(os.path.join(root, s)) for s in SPLITS):
    found.append("folders")
  images = os.path.join(root, IMAGES_DIR)
  if (any(os.path.isfile(os.path.join(root, f)) for f in CSV_FILES.values())
      and os.path.isdir(images) and _has_entries(images)):
    found.append("csv")
  if not found:
    raise FileNotFoundError(
        f"no mini-ImageNet data in {root}: expected "
        f"mini-imagenet-cache-{{train,val,test}}.pkl, folders "
        f"{{train,val,test}}/<wnid>/ of images, or {{train,val,test}}.csv "
        f"with the images in {IMAGES_DIR}/.")
  if len(found) > 1:
    raise ValueError(f"{root} holds several mini-ImageNet layouts "
                     f"({', '.join(found)}); pass layout= to choose one.")
  return found[0]


def _pickle_path(root: str, split: str) -> str:
  paths = [os.path.join(root, n) for n in PICKLE_FILES[split]]
  present = [p for p in paths if os.path.isfile(p)]
  if not present:
    raise FileNotFoundError(
        f"mini-ImageNet pickle of the {split} split not found: "
        f"{' or '.join(paths)}")
  if len(present) > 1:
    raise ValueError(f"both {present[0]} and {present[1]} exist; keep the "
                     f"one that holds the {split} split.")
  return present[0]


def _list_folders(split_dir: str) -> Dict[str, List[str]]:
  """{class folder name: sorted image paths} of `<root>/<split>/`."""
  if not os.path.isdir(split_dir):
    raise FileNotFoundError(f"split folder not found: {split_dir}")
  classes = {}
  for name in _visible(split_dir):
    class_dir = os.path.join(split_dir, name)
    if not os.path.isdir(class_dir):
      raise ValueError(f"{class_dir}: not a folder; {split_dir} must hold "
                       f"one folder of images per class.")
    paths = [os.path.join(class_dir, f) for f in _visible(class_dir)]
    for path in paths:
      if os.path.isdir(path):
        raise ValueError(f"{path}: a folder inside a class folder; expected "
                         f"image files only.")
    classes[name] = paths
  return classes


def _read_csv(path: str, images_dir: str, known: AbstractSet[str],
              seen: Dict[str, str]) -> Dict[str, List[str]]:
  """{label: image paths in row order} of one Ravi split CSV.

  Args:
    path: the CSV.
    images_dir: the folder of the images.
    known: the file names in `images_dir`.
    seen: file name -> "csv, line n" of the rows read so far, from any CSV;
      updated.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"split file not found: {path}")
  classes = {}
  header = None
  with open(path, newline="", encoding="utf-8-sig") as f:
    reader = csv.reader(f)
    for row in reader:
      where = f"{path}, line {reader.line_num}"
      fields = tuple(field.strip() for field in row)
      if not fields:
        continue
      if header is None:
        header = fields
        if header != CSV_HEADER:
          raise ValueError(f"{where}: expected the header "
                           f"{','.join(CSV_HEADER)!r}, got {','.join(row)!r}.")
        continue
      if len(fields) != 2 or not all(fields):
        raise ValueError(f"{where}: expected 'filename,label', got "
                         f"{','.join(row)!r}.")
      filename, label = fields
      if filename not in known:
        raise ValueError(f"{where}: {filename!r} is not in {images_dir}.")
      if filename in seen:
        raise ValueError(f"{where}: {filename!r} is listed again (first at "
                         f"{seen[filename]}).")
      seen[filename] = where
      classes.setdefault(label, []).append(os.path.join(images_dir, filename))
  if header is None:
    raise ValueError(f"{path}: empty; expected the header "
                     f"{','.join(CSV_HEADER)!r} and one row per image.")
  return dict(sorted(classes.items()))


def _read_csvs(root: str) -> Tuple[Dict[str, Dict[str, List[str]]],
                                   Dict[str, str]]:
  """The listings and CSV paths of all splits of the "csv" layout."""
  images_dir = os.path.join(root, IMAGES_DIR)
  if not os.path.isdir(images_dir):
    raise FileNotFoundError(f"image folder not found: {images_dir}")
  known = set(_visible(images_dir))
  seen = {}
  paths = {s: os.path.join(root, CSV_FILES[s]) for s in SPLITS}
  listings = {s: _read_csv(paths[s], images_dir, known, seen)
              for s in SPLITS}
  unlisted = sorted(known - set(seen))
  if unlisted:
    warnings.warn(
        f"{len(unlisted)} files in {images_dir} are in none of "
        f"{', '.join(CSV_FILES.values())} and are not loaded, e.g. "
        f"{unlisted[0]!r}.", stacklevel=3)
  return listings, paths


def _map_threads(function: Callable, items: Sequence) -> list:
  """`[function(x) for x in items]` on threads, raising the first failure.

  Pillow's decoding and hashlib release the GIL, so threads use all cores.
  """
  pool = concurrent.futures.ThreadPoolExecutor(min(32, os.cpu_count() or 1))
  try:
    return list(pool.map(function, items))
  finally:
    # After a failure, report it without first working through the rest.
    pool.shutdown(cancel_futures=True)


def _decode(path: str, size: int, resize: bool) -> np.ndarray:
  """One image file as uint8 `[size, size, 3]`; errors name `path`."""
  return images_lib.decode_image(
      path, mode="RGB", modes=_RGB_MODES, size=size, resize=resize,
      mode_hint=("Grayscale and CMYK are converted to RGB; convert the file "
                 "to RGB yourself if dropping its alpha channel or palette "
                 "is what you want."))


def _file_digest(path: str) -> bytes:
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).digest()


def _cache_key(classes: Dict[str, List[str]], size: int, resize: bool) -> str:
  """A hash of the files' bytes and names, their classes and the decoding."""
  paths = [p for ps in classes.values() for p in ps]
  digests = iter(_map_threads(_file_digest, paths))
  h = hashlib.sha256(f"mini-imagenet {_CACHE_VERSION} {size} {resize} "
                     f"pillow {PIL.__version__}\n".encode())
  for name, class_paths in classes.items():
    h.update(f"class {name}\n".encode())
    for path in class_paths:
      h.update(os.path.basename(path).encode() + b"\0" + next(digests))
  return h.hexdigest()[:16]


def _decode_split(split: str, classes: Dict[str, List[str]], size: int,
                  resize: bool, cache_dir: Optional[str]) -> np.ndarray:
  """uint8 `[classes, max images, size, size, 3]`, padded with zeros."""
  longest = max((len(p) for p in classes.values()), default=0)
  shape = (len(classes), longest, size, size, 3)
  cache = None
  if cache_dir:
    key = _cache_key(classes, size, resize)
    cache = os.path.join(cache_dir,
                         f"mini_imagenet_{split}_{size}px_{key}.npy")
    cached = episodes.load_npy_cache(cache, shape)
    if cached is not None:
      return cached
  out = np.zeros(shape, np.uint8)

  def fill(job):
    i, j, path = job
    out[i, j] = _decode(path, size, resize)

  _map_threads(fill, [(i, j, path)
                      for i, paths in enumerate(classes.values())
                      for j, path in enumerate(paths)])
  if cache:
    io_lib.save_npy_atomic(cache, out)
  return out


def _check_splits(counts: Dict[str, Dict[str, int]], sources: Dict[str, str],
                  expected_classes: Optional[Mapping[str, int]],
                  images_per_class: Optional[int]) -> None:
  """Class counts, disjointness and images per class, in that order.

  Args:
    counts: split -> {class name: number of images}.
    sources: split -> the file or folder it came from, for messages.
    expected_classes, images_per_class: as for `load`.
  """
  expected = dict(expected_classes or {})
  for split in SPLITS:
    want = expected.get(split)
    if want is None or len(counts[split]) == want:
      continue
    hint = ""
    if split != "train" and expected.get("val") != expected.get("test") and (
        len(counts["val"]), len(counts["test"])) == (
            expected.get("test"), expected.get("val")):
      hint = " The val and test files look swapped."
    raise ValueError(
        f"the {split} split ({sources[split]}) has {len(counts[split])} "
        f"classes, expected {want} (expected_classes, by default the Ravi & "
        f"Larochelle split's 64 / 16 / 20); pass expected_classes=None to "
        f"accept any number.{hint}")
  first = {}
  for split in SPLITS:
    for name in counts[split]:
      if name in first:
        raise ValueError(f"class {name!r} is in both the {first[name]} and "
                         f"the {split} split; the splits must be disjoint.")
      first[name] = split
  for split in SPLITS:
    for name, n in counts[split].items():
      if n == 0 or (images_per_class is not None and n != images_per_class):
        want = ("at least 1" if images_per_class is None else
                images_per_class)
        raise ValueError(
            f"class {name!r} of the {split} split ({sources[split]}) has {n} "
            f"images, expected {want} (images_per_class).")


def load(root: str, *, layout: Optional[str] = None,
         image_size: int = IMAGE_SIZE,
         images_per_class: Optional[int] = IMAGES_PER_CLASS,
         expected_classes: Optional[Mapping[str, int]] = RAVI_CLASSES,
         resize: bool = True,
         cache_dir: Optional[str] = None) -> Dict[str, episodes.ClassDataset]:
  """The meta-train / meta-validation / meta-test splits of mini-ImageNet.

  Args:
    root: the folder holding one of the layouts of the module docstring.
    layout: one of `LAYOUTS`; by default `detect_layout(root)`.
    image_size: the side of the returned images. Image files of another size
      are resized; pickled images must already have it.
    images_per_class: how many images every class must have; None accepts
      any positive number, padding shorter classes.
    expected_classes: {split: number of classes} to check, by default the
      Ravi split's; None (or a split left out) checks nothing.
    resize: with False, image files of another size are an error.
    cache_dir: for image files, a folder for the decoded arrays of each
      split, kept as .npy under a hash of the files' contents and reused
      while they are unchanged (a damaged cache file is rebuilt, with a
      warning). Pickles are not cached: they load as fast.

  Returns:
    {"train", "val", "test"}: `ClassDataset`s with images uint8 `[classes,
    images_per_class (or the most any class has), image_size, image_size,
    3]`, class names the wnids (folder names, CSV labels or pickle keys) in
    sorted order. Within a class, images come in file-name order (folders),
    row order (CSV) or class_dict order (pickle).

  Raises:
    FileNotFoundError: a split's pickle, folder or CSV, or `images/`, is
      missing.
    ValueError: a check of the module docstring fails; the message names
      the split, class, file or CSV line.
  """
  if layout is None:
    layout = detect_layout(root)
  elif layout not in LAYOUTS:
    raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}.")
  unknown = sorted(set(expected_classes or {}) - set(SPLITS))
  if unknown:
    raise ValueError(f"expected_classes has unknown splits {unknown}; the "
                     f"splits are {SPLITS}.")
  if layout == "pickle":
    paths = {s: _pickle_path(root, s) for s in SPLITS}
    datasets = {s: read_pickle(paths[s], image_size) for s in SPLITS}
    _check_splits(
        {s: dict(zip(d.class_names, d.counts.tolist()))
         for s, d in datasets.items()},
        paths, expected_classes, images_per_class)
    return datasets
  if layout == "folders":
    sources = {s: os.path.join(root, s) for s in SPLITS}
    listings = {s: _list_folders(sources[s]) for s in SPLITS}
  else:
    listings, sources = _read_csvs(root)
  _check_splits({s: {c: len(p) for c, p in listing.items()}
                 for s, listing in listings.items()},
                sources, expected_classes, images_per_class)
  return {
      s: episodes.make_dataset(
          _decode_split(s, listing, image_size, resize, cache_dir),
          tuple(listing), np.array([len(p) for p in listing.values()]))
      for s, listing in listings.items()}
