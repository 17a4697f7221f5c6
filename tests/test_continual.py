"""The continual protocol: ordered streams, online learning, rate selection."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metajax import algorithms
from metajax import continual
from metajax.data.vision.episodes import ClassDataset

CLASSES, SIDE = 12, 4


def _dataset(seed=0, counts=None):
  """Classes of noisy copies of one random template each (learnable)."""
  rng = np.random.default_rng(seed)
  templates = rng.integers(0, 256, (CLASSES, 1, SIDE, SIDE, 1))
  noise = rng.integers(-20, 21, (CLASSES, 20, SIDE, SIDE, 1))
  images = np.clip(templates + noise, 0, 255).astype(np.uint8)
  counts = np.full(CLASSES, 20, np.int32) if counts is None else counts
  return ClassDataset(images, counts,
                      tuple(f"class{i}" for i in range(CLASSES)))


def _init(key):
  k1, k2 = jax.random.split(key)
  return {"body": {"w": jax.random.normal(k1, (SIDE * SIDE, 16)) / 4},
          "head": {"kernel": jax.random.normal(k2, (16, 16)) / 4,
                   "bias": jnp.zeros((16,))}}


def _apply(params, x):
  z = jnp.tanh((x.reshape(x.shape[0], -1) / 255.0 - 0.5) @
               params["body"]["w"])
  return z @ params["head"]["kernel"] + params["head"]["bias"]


PARAMS = _init(jax.random.PRNGKey(0))
ALL = lambda path: True


def _learn(stream, lrs=(0.1,), checkpoints=(3, 6), **kw):
  return continual.learn_stream(
      _apply, algorithms.cross_entropy, PARAMS, stream, adapted=ALL,
      lrs=lrs, checkpoints=checkpoints, optimizer=optax.sgd, **kw)


def test_a_stream_draws_distinct_classes_and_splits_their_drawings():
  ds = _dataset()
  stream = continual.make_stream(ds, jax.random.PRNGKey(1), num_classes=8,
                                 train_per_class=15, test_per_class=5)
  assert stream.train.shape == (8, 15, SIDE, SIDE, 1)
  assert stream.test.shape == (8, 5, SIDE, SIDE, 1)
  assert len(set(stream.classes.tolist())) == 8
  for i, c in enumerate(stream.classes):
    rows = [r.tobytes() for r in ds.images[c]]
    picked = ([rows.index(r.tobytes()) for r in stream.train[i]] +
              [rows.index(r.tobytes()) for r in stream.test[i]])
    assert len(set(picked)) == 20  # no drawing both learnt and held out
  other = continual.make_stream(ds, jax.random.PRNGKey(2), num_classes=8)
  assert not np.array_equal(other.classes, stream.classes)


def test_streams_that_cannot_be_drawn_are_named():
  with pytest.raises(ValueError, match="needs that many; the dataset has 12"):
    continual.make_stream(_dataset(), jax.random.PRNGKey(0), num_classes=13)
  counts = np.full(CLASSES, 20, np.int32)
  counts[5] = 19
  with pytest.raises(ValueError, match="'class5' has 19 examples, fewer "
                     "than train_per_class"):
    continual.make_stream(_dataset(counts=counts), jax.random.PRNGKey(0),
                          num_classes=4)


@pytest.mark.parametrize("head_init", continual.HEAD_INITS)
def test_no_class_of_the_stream_is_seen_before_its_turn(head_init):
  kw = dict(head_init=head_init, key=jax.random.PRNGKey(3))
  stream = continual.make_stream(_dataset(), jax.random.PRNGKey(1),
                                 num_classes=10)
  # Classes 4.. replaced by other images: nothing learnt or scored after
  # 4 classes may change.
  rng = np.random.default_rng(5)
  later = stream._replace(
      train=np.concatenate([stream.train[:4], rng.integers(
          0, 256, stream.train[4:].shape, np.uint8)]),
      test=np.concatenate([stream.test[:4], rng.integers(
          0, 256, stream.test[4:].shape, np.uint8)]))
  a = _learn(stream, lrs=(0.1, 0.01), checkpoints=(2, 4, 10), **kw)
  b = _learn(later, lrs=(0.1, 0.01), checkpoints=(2, 4, 10), **kw)
  np.testing.assert_array_equal(a["train"][:, :2], b["train"][:, :2])
  np.testing.assert_array_equal(a["test"][:, :2], b["test"][:, :2])
  assert not np.array_equal(a["train"][:, 2], b["train"][:, 2])


def test_the_head_starts_at_zero_or_from_a_kaiming_draw():
  params = {"body": {"w": jnp.ones((3, 4))},
            "head": {"kernel": jnp.ones((400, 300)), "bias": jnp.ones(300)}}
  zeros = continual.reset_head(params, "zeros")
  assert not np.any(zeros["head"]["kernel"]) and not np.any(
      zeros["head"]["bias"])
  key = jax.random.PRNGKey(0)
  drawn = continual.reset_head(params, "kaiming", key)
  for reset in (zeros, drawn):
    np.testing.assert_array_equal(reset["body"]["w"], params["body"]["w"])
  kernel = np.asarray(drawn["head"]["kernel"])
  assert not np.any(drawn["head"]["bias"])
  # Variance 2 / fan-in, fan-in 400: a standard deviation of 0.0707.
  assert abs(kernel.std() - np.sqrt(2 / 400)) < 0.002
  assert abs(kernel.mean()) < 0.001
  np.testing.assert_array_equal(
      continual.reset_head(params, "kaiming", key)["head"]["kernel"], kernel)
  assert not np.array_equal(continual.reset_head(
      params, "kaiming", jax.random.PRNGKey(1))["head"]["kernel"], kernel)
  with pytest.raises(ValueError, match="needs a key"):
    continual.reset_head(params, "kaiming")
  with pytest.raises(ValueError, match="how must be one of"):
    continual.reset_head(params, "ones")
  with pytest.raises(ValueError, match="head='out', but no parameter path"):
    continual.reset_head(params, "zeros", head="out")


def test_the_online_learner_learns_the_stream_and_forgets_at_a_high_rate():
  stream = continual.make_stream(_dataset(), jax.random.PRNGKey(1),
                                 num_classes=10)
  result = _learn(stream, lrs=(0.3, 3.0), checkpoints=(5, 10))
  assert result["train"].shape == result["test"].shape == (2, 2)
  # Well above chance (1 / classes) at the moderate rate.
  assert result["test"][0, 1] > 0.6
  assert result["train"][0, 1] > 0.6


def test_the_grid_of_rates_equals_one_run_per_rate():
  stream = continual.make_stream(_dataset(), jax.random.PRNGKey(1),
                                 num_classes=6)
  grid = _learn(stream, lrs=(0.3, 0.03))
  for i, lr in enumerate((0.3, 0.03)):
    alone = _learn(stream, lrs=(lr,))
    np.testing.assert_allclose(grid["train"][i], alone["train"][0])
    np.testing.assert_allclose(grid["test"][i], alone["test"][0])


def test_only_the_adapted_parameters_learn_online():
  stream = continual.make_stream(_dataset(), jax.random.PRNGKey(1),
                                 num_classes=6)
  # The head is reset to zero; if it stays frozen every logit stays 0 and
  # the argmax is class 0 for every image: 1 in 6 right.
  body_only = continual.learn_stream(
      _apply, algorithms.cross_entropy, PARAMS, stream,
      adapted=lambda path: "body" in path.split("/"), lrs=(0.3,),
      checkpoints=(6,), optimizer=optax.sgd)
  np.testing.assert_allclose(body_only["train"], [[1 / 6]])
  np.testing.assert_allclose(body_only["test"], [[1 / 6]])
  assert _learn(stream, lrs=(0.3,), checkpoints=(6,))["test"][0, 0] > 0.5
  with pytest.raises(ValueError, match="selects no parameter"):
    continual.learn_stream(
        _apply, algorithms.cross_entropy, PARAMS, stream,
        adapted=lambda path: False, lrs=(0.3,), checkpoints=(6,))


def test_bad_checkpoints_and_too_few_outputs_are_named():
  stream = continual.make_stream(_dataset(), jax.random.PRNGKey(1),
                                 num_classes=6)
  with pytest.raises(ValueError, match="checkpoints must increase"):
    _learn(stream, checkpoints=(4, 2))
  with pytest.raises(ValueError, match="checkpoints must increase"):
    _learn(stream, checkpoints=(7,))
  few = jax.tree.map(lambda p: p[..., :4] if p.shape[-1] == 16 and
                     p.ndim <= 2 else p, PARAMS)
  few["body"] = PARAMS["body"]
  with pytest.raises(ValueError, match="4 output units, fewer than"):
    continual.learn_stream(_apply, algorithms.cross_entropy, few, stream,
                           adapted=ALL, lrs=(0.1,), checkpoints=(6,))


def test_the_protocol_picks_each_rate_on_separate_streams():
  lrs = (3.0, 0.3, 0.0003)
  result = continual.protocol(
      _apply, algorithms.cross_entropy, PARAMS, _dataset(),
      jax.random.PRNGKey(3), adapted=ALL, lrs=lrs, runs=2, selection_runs=1,
      checkpoints=(4, 8), optimizer=optax.sgd)
  keys = jax.random.split(jax.random.PRNGKey(3), 3)
  curves = [_learn(continual.make_stream(_dataset(), k, num_classes=8),
                   lrs=lrs, checkpoints=(4, 8)) for k in keys]
  chosen = np.argmax(curves[0]["train"], axis=0)
  assert result["selected_lr"] == [lrs[i] for i in chosen]
  for j, i in enumerate(chosen):
    for split in ("train", "test"):
      np.testing.assert_allclose(
          result[split][j]["mean"],
          np.mean([c[split][i, j] for c in curves[1:]]))
      assert result[split][j]["n"] == 2
  np.testing.assert_allclose(result["per_lr"]["test"],
                             np.mean([c["test"] for c in curves[1:]], 0))
  with pytest.raises(ValueError, match="runs >= 2"):
    continual.protocol(_apply, algorithms.cross_entropy, PARAMS, _dataset(),
                       jax.random.PRNGKey(3), adapted=ALL, lrs=lrs, runs=1,
                       selection_runs=1, checkpoints=(4,))
