"""PGD on adapted few-shot learners, and adversarial querying.

The attack is checked where its claims are: it stays in its ball and range,
it raises the loss it attacks and lowers the accuracy of a naturally
trained learner, and it attacks the *adapted* model. Adversarial querying
is checked to be the learner's own meta-gradient on attacked queries.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import metajax
from metajax import adversarial
from metajax import algorithms
import fewshot

WAYS, SHOTS, QUERY, FEATURES = 5, 1, 6, 8


def _episodes(seed, n_tasks):
  """Gaussian-blob episodes: each class a random mean in R^8 (norm about
  4), its examples the mean plus unit-variance noise / 2. float32 x
  `[n_tasks, ways * n, 8]`, int32 y, class by class."""
  rng = np.random.default_rng(seed)
  means = 1.5 * rng.normal(size=(n_tasks, WAYS, 1, FEATURES))
  def draw(n):
    x = means + 0.5 * rng.normal(size=(n_tasks, WAYS, n, FEATURES))
    y = np.broadcast_to(np.repeat(np.arange(WAYS, dtype=np.int32), n),
                        (n_tasks, WAYS * n))
    return (jnp.asarray(x.reshape(n_tasks, WAYS * n, FEATURES),
                        jnp.float32), jnp.asarray(y))
  return metajax.Task(draw(SHOTS), draw(QUERY))


def _embed(params, x):
  return jnp.tanh(x @ params["w1"]) @ params["w2"]


def _protonet():
  init = lambda k: {"w1": jax.random.normal(k, (FEATURES, 32)) / 3,
                    "w2": jax.random.normal(jax.random.fold_in(k, 1),
                                            (32, 16)) / 6}
  return algorithms.protonet(init, _embed, ways=WAYS)


@pytest.fixture(scope="module")
def natural():
  """A ProtoNets learner trained naturally (150 Adam steps) and test tasks."""
  learner = _protonet()
  _, _, params = fewshot.meta_train(learner, _TRAIN, optax.adam(3e-3), 150)
  return learner, params



_TRAIN = _episodes(0, 16)
TEST = _episodes(1, 40)
PGD = adversarial.PGD(eps=0.6, steps=10, step_size=0.15, low=-np.inf,
                      high=np.inf)


def _scores(learner, params, metric, attack=None):
  return metajax.evaluate(
      learner, params, metajax.HostTasks(lambda s: iter([TEST])), metric,
      num_tasks=40, attack=attack)


def test_the_attack_raises_the_loss_and_lowers_natural_accuracy(natural):
  learner, params = natural
  attack = adversarial.attack(learner.predict, algorithms.cross_entropy, PGD)
  clean_acc = _scores(learner, params, algorithms.accuracy)
  robust_acc = _scores(learner, params, algorithms.accuracy, attack)
  clean_loss = _scores(learner, params, algorithms.cross_entropy)
  robust_loss = _scores(learner, params, algorithms.cross_entropy, attack)
  assert clean_acc.mean() > 0.85  # a learner worth attacking
  assert robust_acc.mean() < clean_acc.mean() - 0.3
  assert np.all(robust_loss > clean_loss)
  # One step of the same size moves less than ten.
  one = adversarial.attack(learner.predict, algorithms.cross_entropy,
                           PGD._replace(steps=1))
  one_loss = _scores(learner, params, algorithms.cross_entropy, one)
  assert clean_loss.mean() < one_loss.mean() < robust_loss.mean()
  # A HostTasks pipeline draws each batch's random starts from its index:
  # a second pass repeats them, and the clean start gives other scores.
  np.testing.assert_array_equal(
      _scores(learner, params, algorithms.cross_entropy, attack), robust_loss)
  from_clean = adversarial.attack(learner.predict, algorithms.cross_entropy,
                                  PGD._replace(random_start=False))
  assert np.any(_scores(learner, params, algorithms.cross_entropy,
                        from_clean) != robust_loss)


@pytest.mark.parametrize("compiled", [False, True])
def test_the_attack_stays_in_its_ball_and_range(compiled):
  pgd = adversarial.PGD(eps=8.0, steps=5, step_size=3.0)  # 0-255 pixels
  predict = lambda w, state, x: x.reshape(x.shape[0], -1) @ w
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.integers(0, 256, (6, 4, 4, 1)), jnp.uint8)
  y = jnp.asarray(rng.integers(0, 3, 6), jnp.int32)
  w = jnp.asarray(rng.normal(size=(16, 3)), jnp.float32)
  run = adversarial.attack(predict, algorithms.cross_entropy, pgd)
  adv = (jax.jit(run) if compiled else run)(w, None, x, y,
                                             jax.random.PRNGKey(1))
  assert adv.dtype == jnp.float32 and adv.shape == x.shape
  moved = np.abs(np.asarray(adv) - np.asarray(x, np.float32))
  assert np.all(moved <= 8.0 + 1e-4)
  assert np.all((np.asarray(adv) >= 0) & (np.asarray(adv) <= 255))
  assert np.any(moved > 7.0)  # it moved to the ball's edge somewhere


def test_the_attacker_sees_the_adapted_model():
  """A 1-D two-class model whose one inner step flips the sign of its
  weight: the loss of class 1 rises by moving x against the *adapted*
  weight's sign, the opposite of what the unadapted model would ask."""
  apply_fn = lambda p, x: jnp.concatenate([jnp.zeros_like(x),
                                           p["w"] * x], -1)
  learner = algorithms.maml(lambda k: {"w": -jnp.ones(())}, apply_fn,
                            algorithms.cross_entropy, steps=1, lr=2.0)
  meta_params = learner.init(None)
  support = (jnp.array([[1.0], [2.0]]), jnp.array([1, 1]))
  adapted = learner.adapt(meta_params, support)
  assert float(adapted["w"]) > 0  # adaptation flipped the weight
  task = metajax.Task(support, (jnp.array([[0.5]]), jnp.array([1])))
  pgd = adversarial.PGD(eps=0.25, steps=1, step_size=0.25, low=-np.inf,
                        high=np.inf, random_start=False)
  attacked = adversarial.attack_queries(learner, algorithms.cross_entropy,
                                        pgd)(meta_params, task)
  np.testing.assert_allclose(attacked.query[0], [[0.25]])
  chex.assert_trees_all_equal(attacked.support, task.support)


def test_adversarial_querying_is_the_learners_gradient_on_attacked_queries(
    natural):
  learner, params = natural
  tasks = jax.tree.map(lambda a: a[:4], TEST)
  robust = adversarial.adversarial_querying(learner,
                                            algorithms.cross_entropy, PGD)
  key = jax.random.PRNGKey(3)
  grads, metrics = jax.jit(robust.meta_grad)(params, tasks, key)
  # The same attack, by hand, from the keys adversarial_querying uses.
  attack_key, rest = jax.random.split(key)
  attacked = jax.vmap(adversarial.attack_queries(
      learner, algorithms.cross_entropy, PGD), in_axes=(None, 0, 0))(
          params, tasks, jax.random.split(attack_key, 4))
  want_grads, want = jax.jit(learner.meta_grad)(params, attacked, rest)
  chex.assert_trees_all_close(grads, want_grads, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(metrics["loss"], want["loss"], rtol=1e-5)
  _, clean = jax.jit(learner.meta_grad)(params, tasks, rest)
  assert metrics["loss"] > clean["loss"]
  # With a ball of radius 0 there is nothing to attack.
  none = adversarial.adversarial_querying(
      learner, algorithms.cross_entropy, PGD._replace(eps=0.0))
  chex.assert_trees_all_close(jax.jit(none.meta_grad)(params, tasks, key)[0],
                              jax.jit(learner.meta_grad)(params, tasks,
                                                         rest)[0],
                              rtol=1e-5, atol=1e-6)


def test_adversarial_querying_runs_maml_on_uint8_images():
  """Attacked queries are float32 where the episode's images are uint8;
  MAML, which checks that its two sets agree, gets float32 support images
  of the same values."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.integers(0, 256, (2, 6, 4, 4, 1)), jnp.uint8)
  y = jnp.asarray(np.tile(np.arange(3, dtype=np.int32), (2, 2)))
  tasks = metajax.Task((x[:, :3], y[:, :3]), (x[:, 3:], y[:, 3:]))
  apply_fn = lambda p, x: (x.reshape(x.shape[0], -1).astype(jnp.float32)
                           / 255.0) @ p["w"]
  learner = algorithms.maml(
      lambda k: {"w": jax.random.normal(k, (16, 3))}, apply_fn,
      algorithms.cross_entropy, steps=1, lr=0.5)
  robust = adversarial.adversarial_querying(
      learner, algorithms.cross_entropy,
      adversarial.PGD(eps=8.0, steps=2, step_size=4.0))
  params = learner.init(jax.random.PRNGKey(0))
  grads, metrics = jax.jit(robust.meta_grad)(params, tasks,
                                             jax.random.PRNGKey(1))
  assert np.all(np.isfinite(grads["params"]["w"]))
  _, clean = jax.jit(learner.meta_grad)(params, tasks, jax.random.PRNGKey(1))
  assert metrics["loss"] > clean["loss"]
  attacked = adversarial.attack_queries(
      learner, algorithms.cross_entropy,
      adversarial.PGD(eps=8.0, steps=2, step_size=4.0))(
          params, jax.tree.map(lambda a: a[0], tasks))
  assert attacked.support[0].dtype == jnp.float32
  np.testing.assert_array_equal(attacked.support[0], np.asarray(x[0, :3]))


@pytest.mark.parametrize("field,value,message", [
    ("eps", -1.0, "PGD.eps must be a finite number >= 0"),
    ("step_size", float("nan"), "PGD.step_size must be a finite number"),
    ("steps", 2.5, "PGD.steps must be an integer >= 0"),
    ("low", 300.0, r"PGD.low \(300.0\) must be below PGD.high"),
])
def test_bad_attack_settings_are_named(field, value, message):
  pgd = adversarial.PGD(eps=8.0, steps=7, step_size=2.0)._replace(
      **{field: value})
  with pytest.raises(ValueError, match=message):
    adversarial.attack(lambda *a: a[-1], algorithms.cross_entropy, pgd)
