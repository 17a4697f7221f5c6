"""Whole-class pretraining, its linear probe, and born-again distillation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import metajax
from metajax import algorithms
import fewshot

pretrain_lib = algorithms.pretrain_lib

CLASSES, FEATURES, EMBED = 20, 8, 16


def _blobs(seed, n_per_class, means):
  rng = np.random.default_rng(seed)
  x = means[:, None] + 0.6 * rng.normal(size=(len(means), n_per_class,
                                              FEATURES))
  y = np.repeat(np.arange(len(means), dtype=np.int32), n_per_class)
  return (jnp.asarray(x.reshape(-1, FEATURES), jnp.float32), jnp.asarray(y))


MEANS = 1.5 * np.random.default_rng(0).normal(size=(CLASSES, FEATURES))
TRAIN = _blobs(1, 30, MEANS)  # 600 images of the 20 training classes


def _init(key):
  k1, k2 = jax.random.split(key)
  return {"w1": jax.random.normal(k1, (FEATURES, 32)) / 3,
          "w2": jax.random.normal(k2, (32, EMBED)) / 6}


def _embed(params, x):
  return jnp.tanh(x @ params["w1"]) @ params["w2"]


def _learner(**kw):
  return algorithms.pretrain(_init, _embed, num_classes=CLASSES,
                             embed_dim=EMBED, ways=5, **kw)


def _train(learner, steps=300):
  """`(final meta-parameters, metrics)` of full-batch Adam on TRAIN
  (support = even images, query = odd)."""
  x, y = TRAIN
  tasks = metajax.Task((x[None, ::2], y[None, ::2]),
                       (x[None, 1::2], y[None, 1::2]))
  metrics, _, final = fewshot.meta_train(learner, tasks, optax.adam(1e-2),
                                         steps)
  return final, metrics


@pytest.fixture(scope="module")
def teacher():
  return _train(_learner())


def test_the_probe_solves_regularised_logistic_regression():
  rng = np.random.default_rng(3)
  z = jnp.asarray(rng.normal(size=(15, 6)), jnp.float32)
  y = jnp.asarray(np.repeat(np.arange(5), 3), jnp.int32)
  probe = jax.jit(lambda z, y: pretrain_lib.fit_probe(
      z, y, ways=5, steps=100, c=1.0))(z, y)
  def objective(p):
    log_p = jax.nn.log_softmax(z @ p["w"] + p["b"])
    return (-jnp.sum(jnp.take_along_axis(log_p, y[:, None], -1))
            + jnp.sum(p["w"] ** 2) / 2.0)
  grad = jax.grad(objective)(probe)
  # Strictly convex: a vanishing gradient is the unique minimum.
  assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grad)) < 1e-4
  assert float(objective(probe)) < float(objective(
      jax.tree.map(jnp.zeros_like, probe)))


def test_whole_class_training_gives_an_embedding_for_new_classes(teacher):
  params, metrics = teacher
  assert metrics["accuracy"][-1] > 0.95 > metrics["accuracy"][0]
  # Episodes of five classes never trained on, one shot each: the probe
  # on the learned embedding labels the queries.
  new_means = 1.5 * np.random.default_rng(9).normal(size=(5, FEATURES))
  support, query = _blobs(10, 1, new_means), _blobs(11, 10, new_means)
  learner = _learner()
  out = learner.predict(params, learner.adapt(params, support), query[0])
  assert out.shape == (50, 5)
  assert float(algorithms.accuracy(out, query[1])) > 0.8


def test_the_born_again_student_matches_its_teacher(teacher):
  """The stated margin: the student distilled with the default weight and
  temperature agrees with its teacher's predicted class on at least 95% of
  the training images, and its KL to the teacher's softened outputs
  falls by at least 10 times in training."""
  teacher_params, _ = teacher
  student = _learner(teacher=teacher_params)
  params, metrics = _train(student)
  x, _ = TRAIN
  logits = lambda p: _embed(p["params"], x) @ p["head"]["w"] + p["head"]["b"]
  agree = np.mean(np.argmax(logits(params), -1) ==
                  np.argmax(logits(teacher_params), -1))
  assert agree >= 0.95
  np.testing.assert_allclose(metrics["agreement"][-1], agree, atol=1e-6)
  assert metrics["distill_kl"][-1] < metrics["distill_kl"][0] / 10


@pytest.mark.parametrize("kw,message", [
    (dict(distill_weight=1.5), "distill_weight must be in"),
    (dict(temperature=0.0), "temperature must be > 0"),
    (dict(probe_c=-1.0), "probe_c must be > 0"),
    (dict(probe_steps=0), "probe_steps must be an int >= 1"),
])
def test_bad_settings_are_named(kw, message):
  with pytest.raises(ValueError, match=message):
    _learner(**kw)
