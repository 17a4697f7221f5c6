"""BOBCAT: the policy learns which questions tell about a student."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metajax import adaptive_testing as cat
from metajax import algorithms
from metajax import training
from metajax.data.students import sequences
from metajax.models.student import StudentModel
from metajax.models.student import masked_bce
from metajax.models.student import student_mask

L, Q = 24, 8
INFORMATIVE = (1, 2)  # answered right exactly by the able students


def _students(num, seed):
  """Half the students able; questions 1-2 say which, 3-8 are coin flips."""
  rng = np.random.default_rng(seed)
  questions = rng.integers(1, Q + 1, (num, L)).astype(np.int32)
  able = rng.random(num) < 0.5
  answers = np.where(np.isin(questions, INFORMATIVE), able[:, None],
                     rng.random((num, L)) < 0.5).astype(np.int8)
  return sequences.StudentArrays(questions, answers,
                                 np.full(num, L, np.int32))


def _bobcat(**kwargs):
  model = StudentModel(Q, personal_dim=0)
  dummy = sequences.KTInput(jnp.zeros(L, jnp.int32), jnp.zeros(L, jnp.int8),
                            jnp.zeros(L, bool))
  loss = functools.partial(masked_bce, prior_answers=1.0)
  base = algorithms.maml(lambda k: model.init(k, dummy), model.apply, loss,
                         adapt_mask=student_mask, steps=3, lr=2.0)
  return algorithms.bobcat(base, loss, num_questions=Q, **kwargs)


def _first_choices(select, params, arrays, seed=0):
  tasks = jax.vmap(sequences.cat_task, in_axes=(0, 0, 0, 0, None))(
      jnp.asarray(arrays.questions), jnp.asarray(arrays.answers),
      jnp.asarray(arrays.lengths),
      jax.random.split(jax.random.PRNGKey(seed), arrays.num_students), 0.25)
  orders = jax.vmap(lambda t, k: cat.administer(select, params, t, k, 1))(
      tasks, jax.random.split(jax.random.PRNGKey(seed + 1),
                              arrays.num_students))
  return np.take_along_axis(arrays.questions, np.asarray(orders), axis=1)[:, 0]


@pytest.mark.slow
def test_policy_learns_to_ask_the_informative_questions():
  bob = _bobcat(test_lengths=(1, 2), hidden=32)
  sampler = sequences.cat_sampler(_students(256, 0), batch_size=32,
                                  heldout_fraction=0.25)
  state = training.train(bob.learner, optax.adam(0.03), sampler,
                         key=jax.random.PRNGKey(0), num_steps=300,
                         log_every=50, progress=False)
  test = _students(200, 1)
  informative = lambda ids: float(np.mean(np.isin(ids, INFORMATIVE)))
  by_policy = informative(_first_choices(bob.select, state.meta_params, test))
  by_chance = informative(_first_choices(cat.random_selector(), None, test))
  assert by_chance < 0.4  # a quarter of the questions are informative
  assert by_policy > 0.95, by_policy


@pytest.mark.slow
def test_meta_grad_trains_both_parts_and_is_finite():
  bob = _bobcat(test_lengths=(1, 3), hidden=16)
  params = bob.learner.init(jax.random.PRNGKey(0))
  tasks = sequences.cat_sampler(_students(16, 2), batch_size=8,
                                heldout_fraction=0.25)(jax.random.PRNGKey(1))
  grads, metrics = jax.jit(bob.learner.meta_grad)(params, tasks,
                                                  jax.random.PRNGKey(2))
  assert set(grads) == {"params", "policy"}
  for part in ("params", "policy"):
    norm = float(optax.tree.norm(grads[part]))
    assert np.isfinite(norm) and norm > 0, part
  assert {"loss", "heldout_loss", "greedy_heldout_loss",
          "policy_entropy"} <= set(metrics)


def test_test_lengths_are_checked():
  with pytest.raises(ValueError, match="test_lengths must be positive"):
    _bobcat(test_lengths=(0, 3))
