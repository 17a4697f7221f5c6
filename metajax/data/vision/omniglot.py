"""Omniglot (Lake et al., 2015): sources, preprocessing and the standard splits.

Every source produces the same `OmniglotRaw`: the 105x105 drawings of each
character, 255 = paper and 0 = ink, in canonical order (sorted by set,
alphabet and character). `preprocess` turns it into the standard few-shot
input with `transform`: resized to 28x28 (Lanczos, antialiased; cached on
disk), inverted so that ink is the bright foreground. `make_splits` builds the meta-train / meta-validation / meta-test
`ClassDataset`s of either protocol:

* "vinyals" (Vinyals et al., 2016; the ProtoNets split files): 1,200
  characters for training and validation and 423 for test, mixed across both
  official sets, each rotated by 0/90/180/270 degrees into four classes
  (4,112 / 688 / 1,692 classes).
* "lake" (Lake et al., 2015): meta-train on the 964 characters of the 30
  background alphabets, meta-test on the 659 characters of the 20 evaluation
  alphabets; no rotations and no validation split, so that no evaluation
  alphabet informs training.
"""

import functools
import hashlib
import os
import zipfile
import zlib
from typing import Dict, NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from metajax import io as io_lib
from metajax.data.vision import episodes

SETS = ("background", "evaluation")
NPZ_FILES = {s: f"omniglot_{s}_105.npz" for s in SETS}
VINYALS_FILES = ("train.txt", "val.txt", "test.txt")
SPLITS = ("vinyals", "lake")


class OmniglotRaw(NamedTuple):
  """All characters of one or both official sets, at full resolution.

  Attributes:
    images: uint8 `[characters, 20, 105, 105]`, 255 = paper, 0 = ink.
    sets: per character, "background" or "evaluation".
    alphabets: per character, e.g. "Angelic".
    characters: per character, e.g. "character01".
  """
  images: np.ndarray
  sets: Tuple[str, ...]
  alphabets: Tuple[str, ...]
  characters: Tuple[str, ...]

  @property
  def names(self) -> Tuple[str, ...]:
    """"Alphabet/characterNN" per character (unique across both sets)."""
    return tuple(f"{a}/{c}" for a, c in zip(self.alphabets, self.characters))


def canonical(raw: OmniglotRaw) -> OmniglotRaw:
  """Sorts characters by (set, alphabet, character), checking the layout."""
  images = np.asarray(raw.images)
  n = images.shape[0]
  if images.dtype != np.uint8 or images.ndim != 4 or images.shape[2:] != (
      105, 105):
    raise ValueError(
        f"Omniglot images must be uint8 [characters, drawings, 105, 105], got "
        f"{images.dtype} {images.shape}.")
  if not len(raw.sets) == len(raw.alphabets) == len(raw.characters) == n:
    raise ValueError(
        f"{n} characters but {len(raw.sets)} sets, {len(raw.alphabets)} "
        f"alphabets and {len(raw.characters)} character names.")
  bad = sorted(set(raw.sets) - set(SETS))
  if bad:
    raise ValueError(f"unknown Omniglot set(s) {bad}; expected {SETS}.")
  keys = list(zip(raw.sets, raw.alphabets, raw.characters))
  if len(set(keys)) != n:
    raise ValueError("duplicate (set, alphabet, character) entries.")
  order = sorted(range(n), key=keys.__getitem__)
  if order == list(range(n)):
    # As `load_npz` joins the two sorted sets: copying their 350 MB of
    # drawings once more took seconds of every run's start.
    return OmniglotRaw(images, tuple(raw.sets), tuple(raw.alphabets),
                       tuple(raw.characters))
  pick = lambda seq: tuple(seq[i] for i in order)
  return OmniglotRaw(images[order], pick(raw.sets), pick(raw.alphabets),
                     pick(raw.characters))


def concatenate(*parts: OmniglotRaw) -> OmniglotRaw:
  """Joins sources (e.g. background and evaluation) into one canonical set."""
  return canonical(OmniglotRaw(
      np.concatenate([p.images for p in parts]),
      sum((tuple(p.sets) for p in parts), ()),
      sum((tuple(p.alphabets) for p in parts), ()),
      sum((tuple(p.characters) for p in parts), ())))


def read_npz_arrays(path: str, keys: Sequence[str]) -> Dict[str, np.ndarray]:
  """Reads the arrays `keys` of a .npz file, every error naming the file.

  `np.load` opens the zip lazily, so a damaged member only fails when its
  array is read, and not as a ValueError: a bad CRC raises
  `zipfile.BadZipFile` and broken compressed data `zlib.error`. Every array
  is read here, and any failure becomes a ValueError naming `path` and the
  array.

  Raises:
    FileNotFoundError: `path` does not exist.
    ValueError: `path` is not a readable .npz archive, lacks one of `keys`
      or one of them cannot be read.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f"file not found: {path}")
  with open(path, "rb") as f:
    head = f.read(6)
  # np.load takes any file that is not a zip for a .npy or a pickle, and
  # would answer "pickled data" or hand back a bare array.
  if head[:4] not in (b"PK\x03\x04", b"PK\x05\x06"):
    what = ("empty" if not head else "a single .npy array"
            if head == b"\x93NUMPY" else "not a zip archive")
    raise ValueError(f"{path}: not a readable .npz file ({what}); expected "
                     f"a .npz archive of the arrays {list(keys)}.")
  errors = (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error,
            NotImplementedError)  # the last: an unknown zip compression
  try:
    archive = np.load(path, allow_pickle=False)
  except errors as e:
    raise ValueError(f"{path}: not a readable .npz file (a truncated or "
                     f"damaged zip: {e}).") from None
  with archive:
    missing = sorted(set(keys) - set(archive.files))
    if missing:
      raise ValueError(f"{path}: missing arrays {missing}.")
    arrays = {}
    for key in keys:
      try:
        arrays[key] = archive[key]
      except errors as e:
        raise ValueError(f"{path}: array {key!r} cannot be read, the file is "
                         f"damaged ({type(e).__name__}: {e}).") from None
  return arrays


def read_npz(path: str, which: str) -> OmniglotRaw:
  """Reads one `omniglot_{background,evaluation}_105.npz` file.

  Args:
    path: the .npz file, with keys `images` (uint8 [n, 20, 105, 105]),
      `alphabet` and `character` (one string per row).
    which: "background" or "evaluation".

  Raises:
    FileNotFoundError: `path` does not exist.
    ValueError: naming `path`, and the array where one is at fault, when
      the file is damaged or its arrays do not fit that layout.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f"Omniglot file not found: {path}")
  arrays = read_npz_arrays(path, ("images", "alphabet", "character"))
  images = arrays["images"]
  if images.dtype != np.uint8 or images.ndim != 4 or images.shape[2:] != (
      105, 105):
    raise ValueError(f"{path}: array 'images' must be uint8 [characters, "
                     f"drawings, 105, 105], got {images.dtype} "
                     f"{images.shape}.")
  for key in ("alphabet", "character"):
    names = arrays[key]
    # Names of another rank or type would be turned into strings like
    # "['a' 'b']" by str() and silently mislabel the characters.
    if names.ndim != 1 or names.dtype.kind != "U" or len(names) != len(
        images):
      raise ValueError(
          f"{path}: array {key!r} must hold one string per row of 'images' "
          f"{images.shape}, i.e. [{len(images)}] strings; got {names.dtype} "
          f"{names.shape}.")
  try:
    return canonical(OmniglotRaw(images, (which,) * len(images),
                                 tuple(map(str, arrays["alphabet"])),
                                 tuple(map(str, arrays["character"]))))
  except ValueError as e:
    raise ValueError(f"{path}: {e}") from None


def load_npz(data_dir: str) -> OmniglotRaw:
  """Both official sets from `data_dir/omniglot_*_105.npz`."""
  return concatenate(*(read_npz(os.path.join(data_dir, NPZ_FILES[s]), s)
                       for s in SETS))


def fingerprint(raw: OmniglotRaw) -> str:
  """A short content hash: the cache key of preprocessed arrays."""
  h = hashlib.sha256()
  h.update(np.ascontiguousarray(raw.images).tobytes())
  h.update("\n".join(raw.names).encode())
  return h.hexdigest()[:16]


def transform(images: jax.Array, size: int = 28) -> jax.Array:
  """The training preprocessing, as a pure JAX function.

  Lanczos-3 antialiased resize, then inversion so that ink is the bright
  foreground. `load_predictor` applies the same function to a user's raw
  drawings, so what a model sees at test time matches training exactly.

  Args:
    images: uint8 `[..., H, W]` drawings, 255 = paper, 0 = ink (any H, W).
    size: output side.

  Returns:
    uint8 `[..., size, size]`, 255 = ink, 0 = paper.
  """
  x = jnp.asarray(images).astype(jnp.float32)
  if x.shape[-2:] != (size, size):
    x = jax.image.resize(x, x.shape[:-2] + (size, size), "lanczos3",
                         antialias=True)
  return (255 - jnp.clip(jnp.round(x), 0, 255)).astype(jnp.uint8)


def preprocess(raw: OmniglotRaw, size: int = 28,
               cache_dir: Optional[str] = None) -> np.ndarray:
  """`transform` of every drawing: `size` x `size`, ink as the foreground.

  Returns:
    uint8 `[characters, 20, size, size]` with 255 = ink, 0 = paper. With
    `cache_dir`, the result is stored there under a content hash of `raw` and
    reused by later calls; a damaged cache file is rebuilt, with a warning.
  """
  path = None
  if cache_dir:
    path = os.path.join(cache_dir,
                        f"omniglot_{size}px_lanczos3_{fingerprint(raw)}.npy")
    cached = episodes.load_npy_cache(path, raw.images.shape[:2] + (size, size))
    if cached is not None:
      return cached
  resize = jax.jit(functools.partial(transform, size=size))
  out = np.concatenate([np.asarray(resize(raw.images[i:i + 256]))
                        for i in range(0, len(raw.images), 256)])
  if path:
    io_lib.save_npy_atomic(path, out)
  return out


def read_split_file(path: str) -> Tuple[str, ...]:
  """Reads a Vinyals split file: one "Alphabet/characterNN/rotDDD" per line."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"split file not found: {path}")
  names = []
  with open(path) as f:
    for number, line in enumerate(f, 1):
      line = line.strip()
      if not line:
        continue
      parts = line.split("/")
      if len(parts) != 3 or parts[2] not in ("rot000", "rot090", "rot180",
                                             "rot270"):
        raise ValueError(
            f"{path}, line {number}: expected Alphabet/characterNN/rotDDD with "
            f"DDD in 000, 090, 180, 270; got {line!r}.")
      names.append(line)
  return tuple(names)


def _rotated(images: np.ndarray, names, index, class_names) -> np.ndarray:
  out = np.empty((len(class_names), images.shape[1]) + images.shape[2:],
                 images.dtype)
  for i, name in enumerate(class_names):
    char, rot = name.rsplit("/", 1)
    if char not in index:
      raise ValueError(f"split class {name!r}: no character {char!r} in the "
                       f"data.")
    out[i] = np.rot90(images[index[char]], k=int(rot[3:]) // 90, axes=(1, 2))
  return out


def make_splits(raw: OmniglotRaw, images: np.ndarray, split: str = "vinyals",
                split_dir: Optional[str] = None
                ) -> Dict[str, episodes.ClassDataset]:
  """The meta-train/val/test datasets of a protocol.

  Args:
    raw: the canonical characters (for their names and sets).
    images: `preprocess(raw)`, uint8 `[characters, 20, H, W]`.
    split: "vinyals" or "lake".
    split_dir: folder with the Vinyals `train.txt`, `val.txt`, `test.txt`
      (needed for "vinyals").

  Returns:
    {"train", "val", "test"} for vinyals; {"train", "test"} for lake. Class
    names are "Alphabet/characterNN[/rotDDD]".
  """
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
  names = raw.names
  if split == "lake":
    out = {}
    for part, which in (("train", "background"), ("test", "evaluation")):
      rows = [i for i, s in enumerate(raw.sets) if s == which]
      out[part] = episodes.make_dataset(images[rows], [names[i] for i in rows])
    return out
  if not split_dir:
    raise ValueError("the vinyals split needs split_dir, the folder of its "
                     "train.txt, val.txt and test.txt.")
  index = {n: i for i, n in enumerate(names)}
  out = {}
  for part, file in zip(("train", "val", "test"), VINYALS_FILES):
    classes = read_split_file(os.path.join(split_dir, file))
    out[part] = episodes.make_dataset(
        _rotated(images, names, index, classes), classes)
  return out
