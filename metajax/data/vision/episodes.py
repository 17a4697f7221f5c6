"""Class-indexed image datasets and the on-device N-way K-shot episode sampler.

A `ClassDataset` holds a whole split in memory as one uint8 array
`[classes, examples, H, W, C]`. `episode_sampler` turns it into a traceable
`key -> Task` function: class and example indices are drawn with `jax.random`
inside the compiled training step and gathered from the array already on the
device, so no episode is built on the host and nothing is copied per step.
"""

import collections
import functools
import os
import warnings
from typing import NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from metajax.tasks import Task


class ClassDataset(NamedTuple):
  """A split of an image dataset, indexed by class.

  Attributes:
    images: uint8 `[num_classes, max_examples, H, W, C]`. Rows past
      `counts[c]` are padding and are never sampled.
    counts: int32 `[num_classes]`, the number of real examples of each class.
    class_names: one name per class, e.g. "Angelic/character01/rot090".
  """
  images: np.ndarray
  counts: np.ndarray
  class_names: Tuple[str, ...]

  @property
  def num_classes(self) -> int:
    return int(self.images.shape[0])

  @property
  def image_shape(self) -> Tuple[int, int, int]:
    return tuple(int(d) for d in self.images.shape[2:])


def load_npy_cache(path: str, shape: Sequence[int],
                   dtype=np.uint8) -> Optional[np.ndarray]:
  """Reads a cache of `metajax.io.save_npy_atomic`, or None to rebuild it.

  A missing file gives None. A damaged one (unreadable, or of another shape
  or dtype than its name promises) also gives None, with a warning naming
  it: a cache is derived data, so the caller rebuilds and overwrites it
  rather than failing the run.

  Args:
    path: the .npy file.
    shape, dtype: what the cached array must be.
  """
  if not os.path.exists(path):
    return None
  try:
    with open(path, "rb") as f:
      # Not np.load: a cache is always .npy, and np.load would also open a
      # zip or refuse a pickle, failing in yet other ways.
      cached = np.lib.format.read_array(f, allow_pickle=False)
  except (OSError, EOFError, ValueError) as e:
    problem = f"unreadable ({e})"
  else:
    if cached.shape == tuple(shape) and cached.dtype == dtype:
      return cached
    problem = (f"holds {cached.dtype} {cached.shape}, expected "
               f"{np.dtype(dtype)} {tuple(shape)}")
  warnings.warn(f"{path}: damaged cache file, {problem}; rebuilding it.",
                stacklevel=3)
  return None


def make_dataset(images: np.ndarray, class_names: Sequence[str],
                 counts: Optional[np.ndarray] = None) -> ClassDataset:
  """Builds a `ClassDataset`, checking shapes and dtype.

  Args:
    images: uint8 `[classes, examples, H, W]` or `[classes, examples, H, W, C]`;
      a missing channel axis is added.
    class_names: one per class, unique.
    counts: real examples per class; defaults to all `examples`.
  """
  images = np.asarray(images)
  if images.dtype != np.uint8:
    raise ValueError(f"images must be uint8, got {images.dtype}.")
  if images.ndim == 4:
    images = images[..., None]
  if images.ndim != 5:
    raise ValueError(
        f"images must be [classes, examples, H, W(, C)], got shape "
        f"{images.shape}.")
  names = tuple(str(n) for n in class_names)
  if len(names) != images.shape[0]:
    raise ValueError(
        f"{len(names)} class names for {images.shape[0]} classes.")
  if len(set(names)) != len(names):
    raise ValueError("class names must be unique.")
  if counts is None:
    counts = np.full(images.shape[0], images.shape[1], np.int32)
  counts = np.asarray(counts, np.int32)
  if counts.shape != (images.shape[0],) or counts.min(initial=1) < 0 or (
      counts.max(initial=0) > images.shape[1]):
    raise ValueError(
        f"counts must be [{images.shape[0]}] values in [0, {images.shape[1]}].")
  return ClassDataset(images, counts, names)


def subset(dataset: ClassDataset, names: Sequence[str]) -> ClassDataset:
  """The classes `names` of `dataset`, in that order."""
  index = {n: i for i, n in enumerate(dataset.class_names)}
  missing = [n for n in names if n not in index]
  if missing:
    raise ValueError(
        f"{len(missing)} classes not in the dataset, e.g. {missing[:3]}.")
  rows = np.array([index[n] for n in names], np.int64)
  return ClassDataset(dataset.images[rows], dataset.counts[rows], tuple(names))


def concat(datasets: Sequence[ClassDataset]) -> ClassDataset:
  """The classes of all `datasets` in one, e.g. meta-train plus meta-val.

  Datasets with fewer examples per class are padded (padding is never
  sampled); image shapes must agree and class names must not repeat.
  """
  if not datasets:
    raise ValueError("concat needs at least one dataset.")
  shapes = {d.image_shape for d in datasets}
  if len(shapes) != 1:
    raise ValueError(f"cannot concatenate datasets of image shapes {shapes}.")
  names = [n for d in datasets for n in d.class_names]
  dup = sorted(n for n, c in collections.Counter(names).items() if c > 1)
  if dup:
    raise ValueError(f"class names repeat across datasets, e.g. {dup[:3]}.")
  width = max(d.images.shape[1] for d in datasets)
  images = np.concatenate([
      np.pad(d.images, [(0, 0), (0, width - d.images.shape[1])] +
             [(0, 0)] * 3) for d in datasets])
  counts = np.concatenate([d.counts for d in datasets])
  return ClassDataset(images, counts, tuple(names))


def check_episode_fits(dataset: ClassDataset, ways: int, shots: int,
                       query: int, split: str = "split") -> None:
  """Raises a ValueError naming the class when an episode cannot be drawn."""
  if min(ways, shots) < 1 or query < 0:
    raise ValueError(
        f"need ways >= 1, shots >= 1 and query >= 0; got {ways}, {shots}, "
        f"{query}.")
  if ways > dataset.num_classes:
    raise ValueError(
        f"{ways}-way episodes need {ways} classes but the {split} split has "
        f"{dataset.num_classes}.")
  check_class_sizes(dataset, shots + query, "shots + query",
                    f" of the {split} split")


def check_class_sizes(dataset: ClassDataset, need: int, what: str,
                      where: str = "") -> None:
  """Raises a ValueError naming the first class with fewer than `need`
  examples; `what` says what needs them (e.g. "shots + query"), `where`
  which split the class is in (e.g. " of the train split")."""
  short = np.flatnonzero(dataset.counts < need)
  if short.size:
    c = int(short[0])
    raise ValueError(
        f"class {dataset.class_names[c]!r}{where} has "
        f"{int(dataset.counts[c])} examples, fewer than {what} = {need} "
        f"({short.size} classes are short).")


def sample_episode(key: jax.Array, images: jax.Array, counts: jax.Array, *,
                   ways: int, shots: int, query: int) -> Task:
  """Draws one episode from device arrays; traceable.

  Classes are drawn without replacement, then `shots + query` distinct
  examples of each. Labels are the positions 0..ways-1 of the drawn classes,
  so they carry no information about the class identity.

  Args:
    key: PRNG key.
    images: uint8 `[classes, examples, H, W, C]`.
    counts: int32 `[classes]`.
    ways, shots, query: episode sizes.

  Returns:
    `Task(support=(x, y), query=(x, y))`: x uint8 `[ways * shots, H, W, C]`
    and `[ways * query, H, W, C]`, y int32 labels, ordered class by class.
  """
  k_cls, k_ex = jax.random.split(key)
  classes = jax.random.choice(k_cls, images.shape[0], (ways,), replace=False)
  # A random permutation of each class's real examples: sort random scores,
  # sending padding rows (index >= count) to the end.
  scores = jax.random.uniform(k_ex, (ways, images.shape[1]))
  valid = jnp.arange(images.shape[1])[None, :] < counts[classes][:, None]
  order = jnp.argsort(jnp.where(valid, scores, 2.0), axis=1)
  picked = order[:, :shots + query]
  x = images[classes[:, None], picked]  # [ways, shots + query, H, W, C]
  labels = jnp.broadcast_to(jnp.arange(ways, dtype=jnp.int32)[:, None],
                            (ways, shots + query))
  flat = lambda a: a.reshape((-1,) + a.shape[2:])
  return Task((flat(x[:, :shots]), flat(labels[:, :shots])),
              (flat(x[:, shots:]), flat(labels[:, shots:])))


def _sample_batch(images, counts, key, *, ways, shots, query, batch_size):
  keys = jax.random.split(key, batch_size)
  return jax.vmap(lambda k: sample_episode(
      k, images, counts, ways=ways, shots=shots, query=query))(keys)


def episode_sampler(dataset: ClassDataset, *, ways: int, shots: int,
                    query: int, batch_size: int,
                    split: str = "split") -> jax.tree_util.Partial:
  """`key -> Task` batch of `batch_size` episodes, sampled on the device.

  The dataset's arrays are put on the device once, here, and bound into a
  `jax.tree_util.Partial`, so the training step receives them as arguments
  rather than as constants compiled into the program.

  Returns:
    A callable PyTree; its Task has leading axis `batch_size` on every leaf.
  """
  check_episode_fits(dataset, ways, shots, query, split)
  sizes = dict(ways=ways, shots=shots, query=query, batch_size=batch_size)
  return jax.tree_util.Partial(functools.partial(_sample_batch, **sizes),
                               jax.device_put(dataset.images),
                               jax.device_put(dataset.counts))


def _uniform_images(images, counts, key, n):
  """`n` labelled images: a uniform class, then a uniform real example."""
  k_cls, k_ex = jax.random.split(key)
  classes = jax.random.randint(k_cls, (n,), 0, images.shape[0])
  examples = jnp.floor(jax.random.uniform(k_ex, (n,)) *
                       counts[classes]).astype(jnp.int32)
  return images[classes, examples], classes.astype(jnp.int32)


def _sample_images(images, counts, key, *, batch_size):
  x, y = _uniform_images(images, counts, key, batch_size)
  half = batch_size // 2
  # One task of labelled images; whole-class learners pool its two sets.
  return jax.tree.map(lambda a: a[None],
                      Task((x[:half], y[:half]), (x[half:], y[half:])))


def class_batch_sampler(dataset: ClassDataset, *,
                        batch_size: int) -> jax.tree_util.Partial:
  """`key -> Task` of `batch_size` labelled images, for whole-class training.

  Each image is a uniform draw of a class, then of one of its real
  examples (with replacement); its label is the class's index in
  `dataset`, in [0, num_classes). The batch is one task (leading axis 1)
  whose support holds the first `batch_size // 2` images and whose query
  the rest, each x uint8 `[n, H, W, C]`, y int32 `[n]`. The arrays are
  bound as in `episode_sampler`.
  """
  if isinstance(batch_size, bool) or not isinstance(batch_size, int) or (
      batch_size < 2):
    raise ValueError(f"batch_size must be an int >= 2, got {batch_size!r}.")
  return jax.tree_util.Partial(
      functools.partial(_sample_images, batch_size=batch_size),
      jax.device_put(dataset.images), jax.device_put(dataset.counts))


def _sample_trajectories(images, counts, key, *, length, remember,
                         batch_size):
  def one(k):
    k_cls, k_ex, k_mem = jax.random.split(k, 3)
    c = jax.random.randint(k_cls, (), 0, images.shape[0])
    # Distinct examples of class c, in random order (padding rows last).
    scores = jax.random.uniform(k_ex, (images.shape[1],))
    valid = jnp.arange(images.shape[1]) < counts[c]
    picked = jnp.argsort(jnp.where(valid, scores, 2.0))[:length]
    x = images[c, picked]
    y = jnp.full((length,), c, jnp.int32)
    mx, my = _uniform_images(images, counts, k_mem, remember)
    return Task((x, y), (jnp.concatenate([x, mx]), jnp.concatenate([y, my])))
  return jax.vmap(one)(jax.random.split(key, batch_size))


def trajectory_sampler(dataset: ClassDataset, *, length: int, remember: int,
                       batch_size: int = 1) -> jax.tree_util.Partial:
  """`key -> Task` batch of continual-learning trajectories (OML, ANML).

  Each task's support is a trajectory: `length` distinct examples of one
  uniformly drawn class, in random order, labelled by the class's index in
  `dataset`. Its query is the trajectory followed by a "remember set" of
  `remember` images drawn as in `class_batch_sampler` (uniform class, then
  uniform example, with their class indices), so the meta-loss asks for the
  new class learnt without the others forgotten. The arrays are bound as in
  `episode_sampler`.

  Returns:
    A callable PyTree; its Task has leading axis `batch_size`: support x
    uint8 `[batch_size, length, H, W, C]`, y int32 `[batch_size, length]`;
    query `[batch_size, length + remember, ...]`.
  """
  for name, value, least in (("length", length, 1),
                             ("remember", remember, 1),
                             ("batch_size", batch_size, 1)):
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
      raise ValueError(f"{name} must be an int >= {least}, got {value!r}.")
  check_class_sizes(dataset, length, "the trajectory's length")
  return jax.tree_util.Partial(
      functools.partial(_sample_trajectories, length=length,
                        remember=remember, batch_size=batch_size),
      jax.device_put(dataset.images), jax.device_put(dataset.counts))
