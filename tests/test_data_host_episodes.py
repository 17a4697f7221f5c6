"""Episodes built on the host by NumPy and by tf.data: layout, padding never
drawn, each batch a pure function of (seed, step)."""

import sys

import chex
import numpy as np
import pytest

from metajax.data.vision import episodes
from metajax.data.vision import host_episodes

BUILDERS = [host_episodes.numpy_episodes, host_episodes.tf_episodes]
WAYS, SHOTS, QUERY, BATCH = 5, 2, 3, 4


@pytest.fixture(scope="module")
def dataset():
  """12 classes of up to 9 distinct 3x3 images; class 11 has only 5 real
  ones, its padding rows are all 255."""
  rng = np.random.default_rng(0)
  images = rng.permutation(12 * 9 * 9 * 250)[:12 * 9 * 9] % 250
  images = images.reshape(12, 9, 3, 3, 1).astype(np.uint8)
  images[11, 5:] = 255
  counts = np.array([9] * 11 + [5], np.int32)
  return episodes.make_dataset(images, [f"c{i}" for i in range(12)], counts)


def _where(dataset, image):
  """(class, example) of `image` in `dataset`."""
  hits = np.argwhere((dataset.images == image).all(axis=(2, 3, 4)))
  assert len(hits) == 1
  return tuple(hits[0])


@pytest.mark.parametrize("build", BUILDERS, ids=["numpy", "tf"])
def test_episodes_draw_distinct_classes_and_examples(dataset, build):
  tasks = build(dataset, ways=WAYS, shots=SHOTS, query=QUERY,
                batch_size=BATCH, seed=3)
  batches = [b for b, _ in zip(tasks.make_iterator(0), range(20))]
  (sx, sy), (qx, qy) = batches[0]
  assert sx.shape == (BATCH, WAYS * SHOTS, 3, 3, 1) and sx.dtype == np.uint8
  assert qx.shape == (BATCH, WAYS * QUERY, 3, 3, 1)
  np.testing.assert_array_equal(sy[0], np.repeat(np.arange(WAYS), SHOTS))
  np.testing.assert_array_equal(qy[0], np.repeat(np.arange(WAYS), QUERY))
  assert sy.dtype == qy.dtype == np.int32
  drawn = set()
  for (sx, _), (qx, _) in batches:
    for b in range(BATCH):
      per_class = np.concatenate(
          [sx[b].reshape(WAYS, SHOTS, 3, 3, 1),
           qx[b].reshape(WAYS, QUERY, 3, 3, 1)], axis=1)
      where = [[_where(dataset, x) for x in row] for row in per_class]
      classes = [{c for c, _ in row} for row in where]
      assert all(len(c) == 1 for c in classes)  # one class per label
      assert len(set.union(*classes)) == WAYS   # distinct classes
      for row in where:
        examples = [e for _, e in row]
        assert len(set(examples)) == SHOTS + QUERY
        assert all(e < dataset.counts[c] for c, e in row)  # no padding
      drawn |= set.union(*classes)
  assert drawn == set(range(12))


@pytest.mark.parametrize("build", BUILDERS, ids=["numpy", "tf"])
def test_each_batch_is_a_function_of_seed_and_step(dataset, build):
  make = lambda seed: build(dataset, ways=WAYS, shots=SHOTS, query=QUERY,
                            batch_size=BATCH, seed=seed).make_iterator
  from_zero = make(7)(0)
  batches = [next(from_zero) for _ in range(6)]
  resumed = next(make(7)(5))
  chex.assert_trees_all_equal(resumed, batches[5])
  assert not np.array_equal(batches[4].support[0], batches[5].support[0])
  assert not np.array_equal(next(make(8)(5)).support[0],
                            batches[5].support[0])


@pytest.mark.parametrize("build", BUILDERS, ids=["numpy", "tf"])
def test_impossible_episodes_are_refused_when_built(dataset, build):
  with pytest.raises(ValueError, match="13-way episodes need 13 classes"):
    build(dataset, ways=13, shots=1, query=1, batch_size=2, seed=0,
          split="train")
  with pytest.raises(ValueError, match="class 'c11' of the train split has "
                     "5 examples"):
    build(dataset, ways=2, shots=3, query=3, batch_size=2, seed=0,
          split="train")
  with pytest.raises(ValueError, match="batch_size must be >= 1"):
    build(dataset, ways=2, shots=1, query=1, batch_size=0, seed=0)
  with pytest.raises(ValueError, match="seed must be in"):
    build(dataset, ways=2, shots=1, query=1, batch_size=1, seed=-1)


def test_tf_episodes_without_tensorflow_says_how_to_install(dataset,
                                                            monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorflow", None)
  tasks = host_episodes.tf_episodes(dataset, ways=2, shots=1, query=1,
                                    batch_size=1, seed=0)
  with pytest.raises(ImportError, match=r"pip install 'metajax\[tfds\]'"):
    next(tasks.make_iterator(0))
