"""Adaptive testing: what selectors see, and what they choose."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metajax import adaptive_testing as cat
from metajax import algorithms
from metajax.data.students import sequences
from metajax.models.student import StudentModel
from metajax.models.student import masked_bce
from metajax.models.student import student_mask

L, Q = 30, 12


def _learner(personal_dim, steps=3):
  model = StudentModel(Q, personal_dim=personal_dim)
  dummy = sequences.KTInput(jnp.zeros(L, jnp.int32), jnp.zeros(L, jnp.int8),
                            jnp.zeros(L, bool))
  loss = functools.partial(masked_bce, prior_answers=3.0)
  return algorithms.maml(lambda k: model.init(k, dummy), model.apply, loss,
                         adapt_mask=student_mask, steps=steps, lr=1.0), loss


def _random_params(learner, seed):
  """Meta-parameters with every parameter drawn at random (not zero)."""
  params = learner.init(jax.random.PRNGKey(seed))
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
  return tree.unflatten([0.7 * jax.random.normal(k, x.shape)
                         for k, x in zip(keys, leaves)])


def _task(seed, length=L):
  rng = np.random.default_rng(seed)
  q = jnp.asarray(rng.integers(1, Q + 1, L), jnp.int32)
  a = jnp.asarray(rng.integers(0, 2, L), jnp.int8)
  return sequences.cat_task(q, a, length, jax.random.PRNGKey(seed), 0.25)


def _selectors(personal_dim=2):
  learner, loss = _learner(personal_dim)
  bob = algorithms.bobcat(learner, loss, num_questions=Q,
                          test_lengths=(1, 3, 6), hidden=16)
  params = _random_params(bob.learner, 0)
  return {"random": cat.random_selector(),
          "fisher": cat.max_information(learner, student_mask),
          "kl": cat.kl_information(learner, student_mask),
          "policy": bob.select}, params


def _with_answers(task, answers):
  """`task` with every answer replaced (pool input, targets, held out)."""
  pool = task.support[1].target
  answers = jnp.asarray(answers, jnp.int8)
  return task._replace(
      support=(task.support[0]._replace(
          answers=jnp.where(pool, answers, 0).astype(jnp.int8)),
               task.support[1]._replace(answers=answers)),
      query=(task.query[0], task.query[1]._replace(answers=answers)))


def _steps_that_read_unasked_answers(select, params_of, task, num_asked):
  """The steps t whose choice moves when answers not yet asked change.

  For each t, every answer outside the first t asked positions is flipped
  (held-out answers, unasked pool answers, padding) and the test rerun; the
  (t+1)-th choice must not move. `params_of(task)` gives the selector's
  meta-parameters for a task.
  """
  run = jax.jit(lambda t: cat.administer(select, params_of(t), t,
                                         jax.random.PRNGKey(5), num_asked))
  order = np.asarray(run(task))
  answers = np.asarray(task.support[1].answers)
  moved = []
  for t in range(num_asked):
    unseen = np.ones(L, bool)
    unseen[order[:t]] = False
    flipped = np.where(unseen, 1 - answers, answers)
    if not np.array_equal(np.asarray(run(_with_answers(task, flipped)))[
        :t + 1], order[:t + 1]):
      moved.append(t)
  return order, moved


@pytest.mark.slow
@pytest.mark.parametrize("name", ["random", "fisher", "kl", "policy"])
def test_no_selector_reads_an_answer_before_asking_it(name):
  selectors, params = _selectors()
  task = _task(1, length=26)
  order, moved = _steps_that_read_unasked_answers(
      selectors[name], lambda t: params, task, 8)
  assert moved == []
  pool = np.asarray(task.support[1].target)
  assert (order >= 0).all() and pool[order].all()
  assert len(set(order.tolist())) == len(order)


def test_the_leakage_check_catches_a_selector_that_peeks():
  """A selector handed the true answers (here as its parameters) is caught."""
  def peek(answers, state, key):
    del key
    return jnp.where(state.available, answers, 0).astype(jnp.float32)
  _, moved = _steps_that_read_unasked_answers(
      peek, lambda t: t.support[1].answers, _task(2), 5)
  assert moved


def test_observe_reveals_only_asked_pool_answers():
  task = _task(3)
  pool = np.asarray(task.support[1].target)
  asked = np.zeros(L, bool)
  asked[np.flatnonzero(pool)[:3]] = True
  asked[np.flatnonzero(~pool)[0]] = True  # not in the pool: never revealed
  state = cat.observe(task, jnp.asarray(asked))
  shown = asked & pool
  np.testing.assert_array_equal(state.seen.visible, shown)
  np.testing.assert_array_equal(
      state.seen.answers, np.where(shown, task.support[1].answers, 0))
  np.testing.assert_array_equal(state.available, pool & ~shown)


def test_pool_exhausted_gives_minus_one():
  task = _task(4, length=5)  # 2 held out, a pool of 3
  order = cat.administer(cat.random_selector(), {}, task,
                         jax.random.PRNGKey(0), 5)
  assert (np.asarray(order[:3]) >= 0).all()
  np.testing.assert_array_equal(order[3:], [-1, -1])
  assert cat.asked_mask(order, 5, L).sum() == 3


def test_scored_task_adapts_on_the_first_n_and_scores_held_out():
  task = _task(5)
  order = cat.administer(cat.random_selector(), {}, task,
                         jax.random.PRNGKey(1), 6)
  scored = cat.scored_task(task, order, 4)
  first4 = np.zeros(L, bool)
  first4[np.asarray(order[:4])] = True
  np.testing.assert_array_equal(scored.support[1].target, first4)
  np.testing.assert_array_equal(scored.query[0].visible, first4)
  np.testing.assert_array_equal(scored.query[1].target, task.query[1].target)
  assert not (np.asarray(scored.query[0].visible) &
              np.asarray(task.query[1].target)).any()


def _state_after(task, asked_positions):
  asked = np.zeros(L, bool)
  asked[list(asked_positions)] = True
  return cat.observe(task, jnp.asarray(asked))


@pytest.mark.parametrize("personal_dim", [0, 3])
def test_max_information_is_the_closed_form(personal_dim):
  """p (1 - p) x^T A^-1 x with x = d logit / d (theta, u) = (1, v_q)."""
  learner, _ = _learner(personal_dim)
  params = _random_params(learner, 7)
  task = _task(6)
  pool = np.flatnonzero(np.asarray(task.support[1].target))
  state = _state_after(task, pool[:4])
  adapted = learner.adapt(params, cat.asked_support(state))
  logits = np.asarray(learner.predict(params, adapted, state.seen),
                      np.float64)
  p = 1 / (1 + np.exp(-logits))
  q = np.asarray(task.support[0].questions)
  profile = np.asarray(params["params"]["params"]["item_profile"]
                       ["embedding"])[q, :personal_dim]
  x = np.concatenate([np.ones((L, 1)), profile], axis=1)
  asked = np.asarray(state.seen.visible)
  precision = np.eye(1 + personal_dim) + (x[asked] * (p * (1 - p))[asked, None]
                                          ).T @ x[asked]
  expected = p * (1 - p) * np.einsum("li,ij,lj->l", x,
                                     np.linalg.inv(precision), x)
  got = cat.max_information(learner, student_mask)(params, state, None)
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-7)
  available = np.asarray(state.available)
  if personal_dim == 0:  # the classical rule: p closest to one half
    expected = np.where(available, -np.abs(p - 0.5), -np.inf)
  assert int(np.argmax(np.where(available, got, -np.inf))) == int(
      np.argmax(np.where(available, expected, -np.inf)))


def test_max_information_agrees_with_catsim():
  """catsim (a CAT simulator we did not write) picks the same items.

  Rasch model: our logit is difficulty_q + theta, catsim's 1PL is
  a (theta - b) with a = 1, so b = -difficulty_q; catsim is given our
  adapted ability as its estimate and the asked positions as administered.
  """
  catsim_selection = pytest.importorskip("catsim.selection")
  item_bank = pytest.importorskip("catsim.item_bank")
  learner, _ = _learner(0)
  select = cat.max_information(learner, student_mask)
  for seed in range(5):
    params = _random_params(learner, 10 + seed)
    params["params"]["params"]["difficulty"]["embedding"] *= 3
    task = _task(20 + seed)
    order = np.asarray(cat.administer(select, params, task,
                                      jax.random.PRNGKey(0), 8))
    q = np.asarray(task.support[0].questions)
    b = -np.asarray(params["params"]["params"]["difficulty"]["embedding"]
                    )[q, 0]
    bank = item_bank.ItemBank(np.asarray(b, np.float64)[:, None])
    outside = np.flatnonzero(~np.asarray(task.support[1].target))
    ties = np.bincount(q)[q] > 1
    for t in range(len(order)):
      state = _state_after(task, order[:t])
      adapted = learner.adapt(params, cat.asked_support(state))
      theta = float(adapted["params"]["student"]["theta"][0])
      # Held-out positions count as administered: catsim must not pick them.
      chosen = catsim_selection.MaxInfoSelector().select(
          item_bank=bank, administered_items=list(order[:t]) + list(outside),
          est_theta=theta)
      # Positions of one question tie; catsim and we may break ties apart.
      assert q[int(chosen)] == q[int(order[t])], (seed, t)
      assert int(chosen) == int(order[t]) or ties[int(chosen)], (seed, t)


def test_kl_information_is_the_posterior_expectation():
  """Gauss-Hermite against a fine Riemann sum; tends to Fisher ranking."""
  logits = jnp.array([-2.0, -0.3, 0.4, 1.5])
  variance = jnp.array([0.2, 1.0, 0.5, 2.0])
  z = np.linspace(-9, 9, 200001)
  density = np.exp(-z ** 2 / 2) / np.sqrt(2 * np.pi)
  for l, v in zip(logits, variance):
    kl = np.asarray(cat.bernoulli_kl(jnp.full(z.shape, l),
                                     l + jnp.sqrt(v) * z), np.float64)
    expected = np.sum(kl * density) * (z[1] - z[0])
    shifted = l + jnp.sqrt(v) * cat._NODES
    got = float(cat.bernoulli_kl(jnp.full(shifted.shape, l), shifted)
                @ cat._WEIGHTS)
    np.testing.assert_allclose(got, expected, rtol=1e-4)
  # KL(p_l || p_{l+d}) = p (1 - p) d^2 / 2 + O(d^3): small posteriors rank
  # items like Fisher information.
  l = jnp.linspace(-3, 3, 13)
  np.testing.assert_allclose(cat.bernoulli_kl(l, l + 0.05) / 0.05 ** 2 * 2,
                             jax.nn.sigmoid(l) * (1 - jax.nn.sigmoid(l)),
                             rtol=5e-2)


def test_selectors_run_vmapped_and_jitted_like_a_loop():
  selectors, params = _selectors()
  tasks = [_task(30 + i) for i in range(4)]
  batch = jax.tree.map(lambda *x: jnp.stack(x), *tasks)
  keys = jax.random.split(jax.random.PRNGKey(0), 4)
  for name, select in selectors.items():
    run = functools.partial(cat.administer, select, params, num_asked=5)
    vmapped = jax.jit(jax.vmap(run))(batch, keys)
    for i, task in enumerate(tasks):
      np.testing.assert_array_equal(vmapped[i], run(task, keys[i]),
                                    err_msg=name)
