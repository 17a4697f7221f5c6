"""The on-device episode sampler and class datasets."""

import jax
import numpy as np
import pytest

from metajax.data import episodes


def _dataset(classes=12, examples=6, counts=None):
  # Every image is constant and encodes (class, example) so that a sampled
  # image tells where it came from.
  images = np.zeros((classes, examples, 2, 2), np.uint8)
  for c in range(classes):
    for e in range(examples):
      images[c, e] = c * 10 + e
  return episodes.make_dataset(images, [f"class{c}" for c in range(classes)],
                               counts)


def _origin(x):
  v = np.asarray(x)[..., 0, 0, 0].astype(int)
  return v // 10, v % 10


def test_episode_structure():
  ds = _dataset()
  sampler = episodes.episode_sampler(ds, ways=4, shots=2, query=3,
                                     batch_size=50)
  task = jax.jit(lambda s, k: s(k))(sampler, jax.random.PRNGKey(0))
  (xs, ys), (xq, yq) = task
  assert xs.shape == (50, 8, 2, 2, 1) and xq.shape == (50, 12, 2, 2, 1)
  assert xs.dtype == np.uint8 and ys.dtype == np.int32
  for t in range(50):
    cs, es = _origin(xs[t])
    cq, eq = _origin(xq[t])
    # Labels are positions: one class per label, the same in both sets.
    classes = [set(cs[np.asarray(ys[t]) == l]) | set(cq[np.asarray(yq[t]) == l])
               for l in range(4)]
    assert all(len(c) == 1 for c in classes)
    assert len(set.union(*classes)) == 4  # distinct classes
    for l in range(4):
      picked = list(es[np.asarray(ys[t]) == l]) + list(eq[np.asarray(yq[t]) == l])
      assert len(set(picked)) == 5  # no example twice in an episode


def test_padding_rows_are_never_sampled():
  ds = _dataset(classes=6, examples=6, counts=np.array([3, 6, 6, 6, 3, 6]))
  sampler = episodes.episode_sampler(ds, ways=6, shots=1, query=2,
                                     batch_size=200)
  (xs, _), (xq, _) = sampler(jax.random.PRNGKey(1))
  c, e = _origin(np.concatenate([xs, xq], 1))
  assert not np.any((np.isin(c, [0, 4])) & (e >= 3))
  # Every real example of a full class shows up somewhere.
  assert set(e[c == 1]) == set(range(6))


def test_sampling_is_uniform_over_classes():
  ds = _dataset(classes=10)
  sampler = episodes.episode_sampler(ds, ways=2, shots=1, query=0,
                                     batch_size=5000)
  (xs, _), _ = sampler(jax.random.PRNGKey(2))
  counts = np.bincount(_origin(xs)[0].ravel(), minlength=10)
  # 10,000 draws over 10 classes: each ~1000, binomial sd ~ 30.
  assert np.all(np.abs(counts - 1000) < 150)


def test_too_few_examples_names_the_class():
  ds = _dataset(counts=np.array([6] * 5 + [2] + [6] * 6))
  with pytest.raises(ValueError, match=r"class 'class5' of the train split "
                     r"has 2 examples, fewer than shots \+ query = 4"):
    episodes.episode_sampler(ds, ways=5, shots=1, query=3, batch_size=1,
                             split="train")
  with pytest.raises(ValueError, match="20-way episodes need 20 classes but "
                     "the val split has 12"):
    episodes.episode_sampler(_dataset(), ways=20, shots=1, query=1,
                             batch_size=1, split="val")


def test_make_dataset_and_subset_validate():
  with pytest.raises(ValueError, match="uint8"):
    episodes.make_dataset(np.zeros((2, 3, 4, 4), np.float32), ["a", "b"])
  with pytest.raises(ValueError, match="3 class names for 2 classes"):
    episodes.make_dataset(np.zeros((2, 3, 4, 4), np.uint8), ["a", "b", "c"])
  ds = _dataset()
  sub = episodes.subset(ds, ["class3", "class1"])
  assert sub.class_names == ("class3", "class1")
  np.testing.assert_array_equal(sub.images[0], ds.images[3])
  with pytest.raises(ValueError, match="not in the dataset"):
    episodes.subset(ds, ["nope"])
