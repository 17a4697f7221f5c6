"""The on-device episode sampler and class datasets."""

import jax
import numpy as np
import pytest

from metajax.data.vision import episodes


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


def test_concat_pads_and_keeps_every_class():
  a = _dataset(classes=3, examples=6)
  b_images = np.zeros((2, 4, 2, 2), np.uint8)
  for c in range(2):
    for e in range(4):
      b_images[c, e] = 100 + c * 10 + e
  b = episodes.make_dataset(b_images, ["other0", "other1"], counts=[4, 3])
  both = episodes.concat([a, b])
  assert both.class_names == a.class_names + b.class_names
  np.testing.assert_array_equal(both.counts, [6, 6, 6, 4, 3])
  np.testing.assert_array_equal(both.images[:3], a.images)
  np.testing.assert_array_equal(both.images[3:, :4], b.images)
  sampler = episodes.episode_sampler(both, ways=5, shots=1, query=2,
                                     batch_size=200)
  (xs, _), (xq, _) = sampler(jax.random.PRNGKey(0))
  c, e = _origin(np.concatenate([xs, xq], 1))
  # Rows padded by concat (zeros, read as class 0 example 0) and other1's own
  # padding row are never drawn: each episode holds class 0 example 0 at
  # most once, and other1's three real examples every time.
  assert ((c == 0) & (e == 0)).sum(axis=1).max() <= 1
  assert set(e[c == 11]) == {0, 1, 2}
  with pytest.raises(ValueError, match="repeat across datasets.*class0"):
    episodes.concat([a, a])
  with pytest.raises(ValueError, match="image shapes"):
    episodes.concat([a, episodes.make_dataset(
        np.zeros((1, 2, 3, 3), np.uint8), ["x"])])


def test_class_batches_carry_each_image_s_own_class():
  ds = _dataset(classes=6, examples=6, counts=np.array([3, 6, 6, 6, 2, 6]))
  sampler = episodes.class_batch_sampler(ds, batch_size=400)
  task = jax.jit(lambda s, k: s(k))(sampler, jax.random.PRNGKey(0))
  (xs, ys), (xq, yq) = task
  assert xs.shape == (1, 200, 2, 2, 1) and yq.shape == (1, 200)
  x = np.concatenate([xs[0], xq[0]])
  y = np.concatenate([ys[0], yq[0]])
  classes, examples = _origin(x)
  np.testing.assert_array_equal(classes, y)  # global labels
  assert set(classes) == set(range(6))
  assert np.all(examples < ds.counts[classes])  # never a padding row


def test_class_batches_need_two_images():
  with pytest.raises(ValueError, match="batch_size must be an int >= 2"):
    episodes.class_batch_sampler(_dataset(), batch_size=1)


def test_a_trajectory_is_one_class_then_a_remember_set_of_all():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (7, 6, 3, 3, 1), np.uint8)
  counts = np.array([6, 5, 6, 6, 6, 6, 6], np.int32)
  ds = episodes.ClassDataset(images, counts, tuple(f"c{i}" for i in range(7)))
  sampler = episodes.trajectory_sampler(ds, length=5, remember=40,
                                        batch_size=3)
  tasks = sampler(jax.random.PRNGKey(0))
  (sx, sy), (qx, qy) = jax.device_get(tasks)
  assert sx.shape == (3, 5, 3, 3, 1) and qx.shape == (3, 45, 3, 3, 1)
  assert qy.shape == (3, 45) and sy.dtype == np.int32
  for t in range(3):
    c = sy[t, 0]
    assert np.all(sy[t] == c)
    rows = [r.tobytes() for r in images[c, :counts[c]]]
    assert len({rows.index(x.tobytes()) for x in sx[t]}) == 5  # distinct
    np.testing.assert_array_equal(qx[t, :5], sx[t])
    np.testing.assert_array_equal(qy[t, :5], sy[t])
    for x, y in zip(qx[t, 5:], qy[t, 5:]):
      assert x.tobytes() in [r.tobytes() for r in images[y, :counts[y]]]
  assert len(set(qy[:, 5:].ravel().tolist())) > 3  # drawn from all classes
  with pytest.raises(ValueError, match="class 'c1' has 5 examples, fewer "
                     "than the trajectory's length = 6"):
    episodes.trajectory_sampler(ds, length=6, remember=4)
  with pytest.raises(ValueError, match="remember must be an int >= 1"):
    episodes.trajectory_sampler(ds, length=2, remember=0)
