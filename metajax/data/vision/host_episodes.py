"""N-way K-shot episodes built on the host, by NumPy or by tf.data.

The counterparts of `episodes.episode_sampler` for `metajax.HostTasks`: the
same episodes' layout (classes drawn without replacement, `shots + query`
distinct examples of each, labels 0..ways-1 in the drawn order, uint8
images `[batch, ways * shots, H, W, C]` and int32 labels), built on the CPU
while the device trains, from a pipeline that is a pure function of the
step: step `s`'s batch is drawn from the seed `(seed, s)` alone, so a
resumed run gets exactly the batches an uninterrupted one got.

* `numpy_episodes`: NumPy, `np.random.default_rng([seed, step])`.
* `tf_episodes`: a tf.data pipeline (`Dataset.range(start_step, ...)`
  mapped by stateless TensorFlow random ops, built in parallel and
  prefetched by tf.data), for data already in TensorFlow's hands: read
  from tfds, decoded or augmented by tf ops. TensorFlow is imported only
  when it runs (`pip install 'metajax[tfds]'`).

The two draw different episodes from the same seed (different generators);
each is deterministic.
"""

from typing import Iterator

import numpy as np

from metajax.data.vision.episodes import ClassDataset
from metajax.data.vision.episodes import check_episode_fits
from metajax.host_tasks import HostTasks
from metajax.tasks import Task

INSTALL_HINT = "pip install 'metajax[tfds]'"


def _check(dataset: ClassDataset, ways: int, shots: int, query: int,
           batch_size: int, seed: int, split: str) -> None:
  check_episode_fits(dataset, ways, shots, query, split)
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
  if not 0 <= seed < 2**63:
    raise ValueError(f"seed must be in [0, 2**63), got {seed}.")


def _split_sets(x: np.ndarray, ways: int, shots: int) -> Task:
  """`x` `[batch, ways, shots + query, ...]` as a Task of flat sets."""
  batch, _, per_class = x.shape[:3]
  labels = np.broadcast_to(np.arange(ways, dtype=np.int32)[None, :, None],
                           (batch, ways, per_class))
  flat = lambda a: a.reshape((batch, -1) + a.shape[3:])
  return Task((flat(x[:, :, :shots]), flat(labels[:, :, :shots])),
              (flat(x[:, :, shots:]), flat(labels[:, :, shots:])))


def numpy_episodes(dataset: ClassDataset, *, ways: int, shots: int,
                   query: int, batch_size: int, seed: int,
                   prefetch: int = 2, split: str = "split") -> HostTasks:
  """Batches of `batch_size` episodes drawn by NumPy on the host.

  Args:
    dataset: the split, kept in host memory.
    ways, shots, query: episode sizes.
    batch_size: episodes per batch (per meta-step).
    seed: with the step, fixes each batch.
    prefetch: batches placed on the device ahead (`HostTasks.prefetch`).
    split: the split's name, for error messages.

  Returns:
    A `HostTasks` whose batches are `Task((x, y), (x, y))` of uint8
    `[batch_size, ways * shots, H, W, C]` / `[batch_size, ways * query, H,
    W, C]` images and int32 labels.
  """
  _check(dataset, ways, shots, query, batch_size, seed, split)
  images, counts = dataset.images, dataset.counts

  def batch_of(step: int) -> Task:
    rng = np.random.default_rng([seed, step])
    classes = np.argsort(rng.random((batch_size, dataset.num_classes)),
                         axis=1)[:, :ways]
    # Each class's real examples in random order: padding rows sort last.
    scores = rng.random((batch_size, ways, images.shape[1]))
    valid = np.arange(images.shape[1]) < counts[classes][..., None]
    picked = np.argsort(np.where(valid, scores, 2.0),
                        axis=2)[..., :shots + query]
    return _split_sets(images[classes[..., None], picked], ways, shots)

  def make_iterator(start_step: int) -> Iterator[Task]:
    step = start_step
    while True:
      yield batch_of(step)
      step += 1

  return HostTasks(make_iterator, prefetch)


def _tensorflow():
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f"tf_episodes needs TensorFlow: {INSTALL_HINT}") from e
  return tf


def tf_episodes(dataset: ClassDataset, *, ways: int, shots: int, query: int,
                batch_size: int, seed: int, prefetch: int = 2,
                split: str = "split") -> HostTasks:
  """Batches of `batch_size` episodes built by a tf.data pipeline.

  The split's arrays become TensorFlow constants once per iterator; each
  step's batch is one `map` call of `tf.data.Dataset.range(start_step, ...)`
  with stateless random ops seeded by `(seed, step)`, run in parallel and
  prefetched by tf.data (`AUTOTUNE`), in step order. Arguments and output
  as in `numpy_episodes`.
  """
  _check(dataset, ways, shots, query, batch_size, seed, split)

  def make_iterator(start_step: int) -> Iterator[Task]:
    tf = _tensorflow()
    images = tf.constant(dataset.images)
    counts = tf.constant(dataset.counts)
    width = int(dataset.images.shape[1])

    def batch_of(step):
      seeds = tf.random.experimental.stateless_split(
          tf.stack([tf.constant(seed, tf.int64), step]), num=2)
      class_scores = tf.random.stateless_uniform(
          [batch_size, dataset.num_classes], seed=seeds[0])
      classes = tf.math.top_k(class_scores, k=ways).indices  # [B, ways]
      scores = tf.random.stateless_uniform([batch_size, ways, width],
                                           seed=seeds[1])
      valid = tf.range(width)[None, None, :] < tf.gather(counts,
                                                         classes)[..., None]
      picked = tf.argsort(tf.where(valid, scores, 2.0),
                          axis=2)[..., :shots + query]
      index = tf.stack([tf.broadcast_to(classes[..., None], tf.shape(picked)),
                        picked], axis=-1)
      return tf.gather_nd(images, index)  # [B, ways, shots + query, ...]

    steps = tf.data.Dataset.range(start_step, np.iinfo(np.int64).max)
    pipeline = steps.map(batch_of, num_parallel_calls=tf.data.AUTOTUNE,
                         deterministic=True).prefetch(tf.data.AUTOTUNE)
    for x in pipeline.as_numpy_iterator():
      yield _split_sets(x, ways, shots)

  return HostTasks(make_iterator, prefetch)
