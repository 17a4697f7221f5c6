"""The student neural process: what it reads, its gradient, and that it learns.

Tiny widths throughout: on a small CPU compiling is what costs, so every
check compiles little and the one training run takes a few hundred steps of
a model with a few hundred parameters.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metajax import algorithms
from metajax.data.students import sequences
from metajax.evaluation import students as kt_eval

NQ, L, VISIBLE = 12, 16, 7


def _learner(**options):
  return algorithms.student_np(NQ, embed_dim=4, width=8, **options)


@pytest.fixture(scope="module")
def model():
  """(learner, meta_params) whose decoder reads everything it is given.

  The fresh decoder's output layer is zero, so its logits would be the
  difficulties alone and hide what the representation holds; random
  weights there make every check below see the whole model.
  """
  learner = _learner()
  meta_params = learner.init(jax.random.PRNGKey(0))
  head = meta_params["params"]["decoder"][-1]
  head["w"] = jax.random.normal(jax.random.PRNGKey(1), head["w"].shape)
  meta_params["params"]["difficulty"] = jax.random.normal(
      jax.random.PRNGKey(2), (NQ + 1,))
  return learner, meta_params


def _student(seed=0, visible=VISIBLE):
  """One student's `KTInput` `[L]`, the first `visible` answers readable."""
  rng = np.random.default_rng(seed)
  seen = np.arange(L) < visible
  answers = rng.integers(0, 2, L)
  return sequences.KTInput(
      jnp.asarray(rng.integers(1, NQ + 1, L), jnp.int32),
      jnp.asarray(np.where(seen, answers, 0), jnp.int8), jnp.asarray(seen))


def _encode(learner, meta_params, x):
  """`adapt` on x as a support set (its targets are its visible answers)."""
  return learner.adapt(meta_params,
                       (x, sequences.KTTarget(x.answers, x.visible)))


def test_the_order_of_the_answers_does_not_matter(model):
  learner, meta_params = model
  x = _student()
  perm = np.random.default_rng(1).permutation(L)
  shuffled = jax.tree.map(lambda v: v[perm], x)
  state = _encode(learner, meta_params, x)
  chex.assert_trees_all_close(_encode(learner, meta_params, shuffled), state,
                              rtol=1e-5, atol=1e-6)
  assert float(state.count) == VISIBLE
  # Each question gets the same logit wherever it stands.
  logits = learner.predict(meta_params, state, x)
  chex.assert_shape(logits, (L,))
  chex.assert_trees_all_close(
      learner.predict(meta_params, state, shuffled), logits[perm],
      rtol=1e-5, atol=1e-6)


def test_hidden_answers_and_padding_change_nothing(model):
  learner, meta_params = model
  x = _student()
  state = _encode(learner, meta_params, x)
  # Another question and a right answer where nothing may be read.
  hidden = x._replace(questions=x.questions.at[VISIBLE + 2].set(1),
                      answers=x.answers.at[VISIBLE + 2].set(1))
  chex.assert_trees_all_equal(_encode(learner, meta_params, hidden), state)
  # predict reads the questions only, never the answers it may be scoring.
  every_answer = x._replace(answers=jnp.ones(L, jnp.int8),
                            visible=jnp.ones(L, bool))
  chex.assert_trees_all_equal(
      learner.predict(meta_params, state, every_answer),
      learner.predict(meta_params, state, x))
  padded = sequences.KTInput(
      jnp.concatenate([x.questions, jnp.zeros(5, jnp.int32)]),
      jnp.concatenate([x.answers, jnp.zeros(5, jnp.int8)]),
      jnp.concatenate([x.visible, jnp.zeros(5, bool)]))
  padded_state = _encode(learner, meta_params, padded)
  chex.assert_trees_all_close(padded_state, state, rtol=1e-6, atol=1e-7)
  chex.assert_trees_all_close(
      learner.predict(meta_params, padded_state, padded)[:L],
      learner.predict(meta_params, state, x), rtol=1e-6, atol=1e-6)


def test_a_student_with_no_visible_answer_gets_finite_logits(model):
  learner, meta_params = model
  x = _student(visible=0)
  state = _encode(learner, meta_params, x)
  chex.assert_trees_all_equal(state.r, jnp.zeros_like(state.r))
  assert float(state.count) == 0.0
  logits = learner.predict(meta_params, state, x)
  chex.assert_shape(logits, (L,))
  chex.assert_tree_all_finite(logits)


def test_adapt_takes_no_steps(model):
  learner, meta_params = model
  x = _student()
  for steps in (0, 5):
    with pytest.raises(ValueError, match=rf"adapts nothing by gradient: .* "
                       rf"steps=None only; got steps={steps}"):
      learner.adapt(meta_params, (x, None), steps=steps)


def test_bad_arguments_are_refused():
  with pytest.raises(ValueError, match="num_questions must be a positive"):
    algorithms.student_np(0)
  with pytest.raises(ValueError, match="width must be a positive int"):
    algorithms.student_np(NQ, width=0)
  with pytest.raises(ValueError, match="prior_answers must be >= 0"):
    algorithms.student_np(NQ, prior_answers=-1.0)


def _students(n, length, seed):
  """n synthetic students: answer i right with p = sigmoid(ability - b[q_i]).

  Abilities vary much more between students than difficulties between
  questions, so knowing the student is most of what predicts an answer.
  The difficulties are the same for every call.
  """
  difficulty = np.random.default_rng(0).normal(0.0, 0.5, NQ + 1)
  rng = np.random.default_rng(seed)
  ability = rng.normal(0.0, 2.0, (n, 1))
  questions = rng.integers(1, NQ + 1, (n, length))
  right = rng.random((n, length)) < 1 / (1 + np.exp(
      difficulty[questions] - ability))
  return sequences.StudentArrays(questions.astype(np.int32),
                                 right.astype(np.int8),
                                 np.full(n, length, np.int32))


def test_meta_grad_is_finite_like_the_params_compiled_or_not():
  # One layer each: uncompiled, every operation compiles on its own.
  learner = _learner(prior_answers=5.0, encoder_layers=1, decoder_layers=1)
  meta_params = learner.init(jax.random.PRNGKey(0))
  tasks = sequences.cold_start_tasks(_students(3, L, seed=1), 4)
  grads, metrics = learner.meta_grad(meta_params, tasks, None)
  chex.assert_trees_all_equal_shapes_and_dtypes(grads, meta_params)
  chex.assert_tree_all_finite(grads)
  chex.assert_shape(metrics["loss"], ())
  chex.assert_trees_all_close(
      jax.jit(learner.meta_grad)(meta_params, tasks, jax.random.PRNGKey(3)),
      (grads, metrics), rtol=1e-5, atol=1e-6)


def test_training_learns_to_personalise():
  learner = _learner()
  train, test = _students(256, 30, seed=1), _students(64, 30, seed=2)
  sample = sequences.student_sampler(train, batch_size=32,
                                     support_sizes=(0, 5, 10))
  optimizer = optax.adam(1e-2)

  @jax.jit
  def steps(meta_params, key):
    def step(carry, key):
      meta_params, opt_state = carry
      grads, _ = learner.meta_grad(meta_params, sample(key), None)
      updates, opt_state = optimizer.update(grads, opt_state, meta_params)
      return (optax.apply_updates(meta_params, updates), opt_state), None
    carry = (meta_params, optimizer.init(meta_params))
    (meta_params, _), _ = jax.lax.scan(step, carry,
                                       jax.random.split(key, 100))
    return meta_params

  def auc(meta_params):
    predictions = kt_eval.cold_start_predictions(
        learner, meta_params, test, support_sizes=(0, 10), adapt=True,
        batch=64)
    return {k: kt_eval.binary_metrics(p, y)["auc"]
            for k, (p, y, _) in predictions.items()}

  fresh = learner.init(jax.random.PRNGKey(0))
  before, after = auc(fresh), auc(steps(fresh, jax.random.PRNGKey(1)))
  # Untrained, every answer gets the same logit: AUC one half.
  assert before[10] == pytest.approx(0.5)
  # Ten answers tell the student's ability, which is most of the signal.
  assert after[10] > before[10] + 0.15
  assert after[10] > after[0] + 0.1
