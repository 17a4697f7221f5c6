"""Computerised adaptive testing: which question to ask a student next.

A test is one student's `Task` from `sequences.cat_task`: its support set is
the candidate pool (answered items the test may ask, their answers revealed
only once asked) and its query set the held-out items the test is scored on.
`administer` asks `num_asked` items, one at a time. Before each choice a
selector scores every position from a `CATState`, which `observe` builds
from the answers asked so far and nothing else, and the best-scoring
available position is asked. Everything is traced: one student's test is a
`lax.scan`, a batch of students a `vmap` of it, and the pool and the items
already asked are masks, so a whole batch runs in one compiled program on
any device.

A selector is `select(meta_params, state, key) -> float [L]` (higher: ask
sooner). The classical ones score with a response model adapted to the
answers so far, through a gradient learner's own `adapt` (e.g. fine-tuning
a jointly fitted IRT model, or MAML's init), so they and the meta-learned
policy of `metajax.algorithms.bobcat` are compared on the same model:

  random_selector        uniform over the available items;
  max_information        maximum Fisher information (D-optimal for a
                         multidimensional student: the item whose information
                         most increases the determinant of the posterior
                         precision; for one ability parameter, the classical
                         argmax p (1 - p));
  kl_information         posterior-weighted Kullback-Leibler information
                         (Chang & Ying 1996; van der Linden 1998): the
                         expected KL divergence between the item's predicted
                         answer at the current estimate and at abilities
                         drawn from the Laplace posterior.

Both information selectors use the Laplace (Gaussian) posterior of the
per-student parameters phi at the adapted estimate: precision
`A = prior_precision * I + sum over asked items of p (1 - p) g g^T`, with
`g` the gradient of the item's logit with respect to phi.
"""

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from metajax import inner
from metajax.algorithms.base import MetaLearner
from metajax.data.students.sequences import KTInput
from metajax.data.students.sequences import KTTarget
from metajax.tasks import Task

# Gauss-Hermite nodes and weights for E[f(z)], z ~ N(0, 1).
_NODES, _WEIGHTS = np.polynomial.hermite_e.hermegauss(20)
_WEIGHTS = _WEIGHTS / np.sqrt(2 * np.pi)


class CATState(NamedTuple):
  """What a selector may see of one student's test so far.

  Attributes:
    seen: `KTInput` with leaves `[L]`: every position's question id, the
      answers of the asked positions (0 elsewhere), `visible` = asked.
    available: bool `[L]`, pool positions not yet asked.
  """
  seen: KTInput
  available: jax.Array


Selector = Callable[[dict, CATState, jax.Array], jax.Array]


def observe(task: Task, asked: jax.Array) -> CATState:
  """The `CATState` of `task` once the positions `asked` (bool `[L]`) are.

  The only place a test reads answers: those of `asked` positions, which
  must lie in the pool.
  """
  questions, answers = task.support[0].questions, task.support[1].answers
  pool = task.support[1].target
  asked = asked & pool
  seen = KTInput(questions, jnp.where(asked, answers, 0).astype(jnp.int8),
                 asked)
  return CATState(seen, pool & ~asked)


def asked_support(state: CATState):
  """The answers asked so far as a support set `(KTInput, KTTarget)`."""
  return state.seen, KTTarget(state.seen.answers, state.seen.visible)


def administer(select: Selector, meta_params, task: Task, key: jax.Array,
               num_asked: int) -> jax.Array:
  """Asks `num_asked` items of one student's test, one at a time.

  Args:
    select: the selector.
    meta_params: what `select` takes (a learner's meta-parameters).
    task: one student's `cat_task`, leaves `[L]`.
    key: PRNG key; step t's selector gets its own key.
    num_asked: items to ask, a Python int.

  Returns:
    int32 `[num_asked]`: the position asked at each step, in order; -1 once
    the pool is exhausted.
  """
  pool = task.support[1].target

  def step(asked, step_key):
    state = observe(task, asked)
    scores = jnp.where(state.available,
                       select(meta_params, state, step_key), -jnp.inf)
    pos = jnp.argmax(scores)
    ok = state.available[pos]
    return asked.at[pos].set(asked[pos] | ok), jnp.where(ok, pos, -1)

  _, order = jax.lax.scan(step, jnp.zeros_like(pool),
                          jax.random.split(key, num_asked))
  return order.astype(jnp.int32)


def asked_mask(order: jax.Array, n, length: int) -> jax.Array:
  """bool `[length]`: the positions of `order[:n]` (-1 entries ignored).

  `n` may be traced; `order` is int `[num_asked]` from `administer`.
  """
  first_n = (jnp.arange(order.shape[0]) < n) & (order >= 0)
  return jnp.zeros(length, bool).at[jnp.where(first_n, order, length)].set(
      True, mode="drop")


def scored_task(task: Task, order: jax.Array, n) -> Task:
  """The task after the first `n` asked items: adapt on them, score held out.

  Returns `Task(support, query)`, leaves `[L]`: the support holds the asked
  answers, and the query scores the held-out answers from an input that
  reads the asked answers only.
  """
  asked = asked_mask(order, n, task.support[1].target.shape[-1])
  state = observe(task, asked)
  support = asked_support(state)
  return Task(support, (state.seen, task.query[1]))


def _uniform_scores(meta_params, state, key):
  del meta_params
  return jax.random.uniform(key, state.available.shape)


def random_selector() -> Selector:
  """Uniformly random among the available items.

  Always the same function, so that compiled tests that use it are reused.
  """
  return _uniform_scores


def laplace_logits(learner: MetaLearner, adapt_mask, meta_params,
                   state: CATState, prior_precision: float = 1.0):
  """Each item's logit at the adapted estimate and its posterior variance.

  The learner adapts to the answers asked so far; its adapted parameters'
  `adapt_mask` part phi is the student's. With `g_j` the gradient of item
  j's logit with respect to phi and `A` the Laplace posterior precision
  (module docstring), the logit's posterior variance is `g_j^T A^-1 g_j`.

  Args:
    learner: a gradient learner whose `adapt` returns model parameters.
    adapt_mask: `adapt_mask(params) -> PyTree of bools`, the student's part.
    meta_params: the learner's meta-parameters.
    state: the test so far.
    prior_precision: precision of the N(init, I / prior_precision) prior.

  Returns:
    `(logits, variance)`, float `[L]` each.
  """
  adapted = learner.adapt(meta_params, asked_support(state))
  student, frozen = inner.partition(adapted, inner.resolve_mask(adapt_mask,
                                                                adapted))
  flat, unravel = ravel_pytree(student)

  def logits_of(phi):
    return learner.predict(meta_params, inner.combine(unravel(phi), frozen),
                           state.seen)

  logits = logits_of(flat)
  grads = jax.jacfwd(logits_of)(flat)  # [L, dim phi]
  p = jax.nn.sigmoid(logits)
  weight = jnp.where(state.seen.visible, p * (1 - p), 0.0)
  precision = (prior_precision * jnp.eye(flat.size, dtype=grads.dtype)
               + grads.T @ (weight[:, None] * grads))
  solved = jnp.linalg.solve(precision, grads.T)  # [dim phi, L]
  return logits, jnp.sum(grads * solved.T, axis=-1)


def max_information(learner: MetaLearner, adapt_mask,
                    prior_precision: float = 1.0) -> Selector:
  """Maximum Fisher information at the adapted estimate (D-optimal).

  Item j's score is `p_j (1 - p_j) g_j^T A^-1 g_j`: by the matrix
  determinant lemma, the item that most increases `det A`. With one ability
  parameter (`g_j = 1`) it is the classical `argmax p_j (1 - p_j)`.
  """
  def select(meta_params, state, key):
    del key
    logits, variance = laplace_logits(learner, adapt_mask, meta_params, state,
                                      prior_precision)
    p = jax.nn.sigmoid(logits)
    return p * (1 - p) * variance
  return select


def bernoulli_kl(logit_p: jax.Array, logit_q: jax.Array) -> jax.Array:
  """KL(Bernoulli(sigmoid(logit_p)) || Bernoulli(sigmoid(logit_q)))."""
  p = jax.nn.sigmoid(logit_p)
  return (p * (jax.nn.log_sigmoid(logit_p) - jax.nn.log_sigmoid(logit_q))
          + (1 - p) * (jax.nn.log_sigmoid(-logit_p)
                       - jax.nn.log_sigmoid(-logit_q)))


def kl_information(learner: MetaLearner, adapt_mask,
                   prior_precision: float = 1.0) -> Selector:
  """Posterior-weighted Kullback-Leibler information.

  Item j's score is `E KL(answer at the estimate || answer at phi)` over the
  Laplace posterior of phi, under which the logit is `N(l_j, v_j)`: a
  20-node Gauss-Hermite sum. It weighs an item by how differently the
  plausible students would answer it, over the whole posterior, where
  Fisher information looks only at the estimate; as the posterior narrows
  the two agree.
  """
  def select(meta_params, state, key):
    del key
    logits, variance = laplace_logits(learner, adapt_mask, meta_params, state,
                                      prior_precision)
    shifted = logits[:, None] + jnp.sqrt(variance)[:, None] * _NODES
    return bernoulli_kl(logits[:, None], shifted) @ _WEIGHTS.astype(
        logits.dtype)
  return select
