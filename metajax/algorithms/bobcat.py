"""BOBCAT: a question-selection policy meta-learned with the response model.

Bilevel optimisation-based computerised adaptive testing (Ghosh & Lan,
IJCAI 2021), each student a task (a `sequences.cat_task`: candidate pool as
support, held-out answers as query):

  inner level   the response model adapts its per-student parameters to the
                answers of the items the policy asked (the base learner's
                own `adapt`, e.g. MAML's gradient steps from a learned init);
  outer level   the held-out loss after n asked items, averaged over the
                test lengths n in `test_lengths`, trains the response
                model's initialisation (exactly, through the inner loop) and
                the selection policy.

The policy maps what has been seen of the student (per question id, how
many asked answers were right and how many wrong) to a logit per question;
every position of the pool takes its question's logit. The choice of item
is discrete, so the policy is trained by policy gradient (REINFORCE, the
paper's unbiased estimator), with two choices of ours to tame its variance:

  reward to go      the choice at step t is credited only with the losses
                    after it: `R_t = -sum over n > t of L_n`;
  greedy baseline   each student's sampled test is compared with the
                    policy's own greedy test of the same student (self-
                    critical training, Rennie et al. 2017), so the baseline
                    needs no other student and the gradient is the same
                    whether tasks are vmapped or mapped one at a time.

At test time the policy is greedy (`select` returns its logits, which
`adaptive_testing.administer` maximises): a forward pass per question, no
adaptation while the test runs.
"""

from typing import NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from metajax import adaptive_testing as cat
from metajax import tasks as tasks_lib
from metajax.algorithms.base import MetaLearner
from metajax.data.students.sequences import KTInput


class SelectionPolicy(nn.Module):
  """Logits over a student's positions from the answers seen so far.

  Input: a `KTInput` with leaves `[L]` (question ids 1..num_questions, the
  visible answers). Output: float32 `[L]`, each position its question's
  logit.
  """
  num_questions: int
  hidden: int = 256

  @nn.compact
  def __call__(self, seen: KTInput) -> jax.Array:
    n = self.num_questions + 1
    right = seen.visible & (seen.answers == 1)
    wrong = seen.visible & (seen.answers == 0)
    counts = jnp.concatenate([
        jax.ops.segment_sum(right.astype(jnp.float32), seen.questions, n),
        jax.ops.segment_sum(wrong.astype(jnp.float32), seen.questions, n)])
    h = nn.relu(nn.Dense(self.hidden, name="hidden")(counts))
    return nn.Dense(n, name="logits")(h)[seen.questions]


class Bobcat(NamedTuple):
  """The trained pair.

  Attributes:
    learner: a `MetaLearner` over `cat_task`s. Its meta-parameters are the
      base learner's plus "policy"; `adapt` and `predict` are the base's.
    select: the greedy policy as an `adaptive_testing.Selector`.
  """
  learner: MetaLearner
  select: cat.Selector


def bobcat(base: MetaLearner, loss, *, num_questions: int,
           test_lengths: Sequence[int], hidden: int = 256,
           entropy_weight: float = 0.0) -> Bobcat:
  """Builds BOBCAT over a gradient response model.

  Args:
    base: the response model's learner, e.g. `maml(...)` with the student
      mask; its `adapt` must be differentiable in its meta-parameters.
    loss: `loss(logits, KTTarget) -> scalar`, the held-out loss (e.g.
      `masked_bce`).
    num_questions: question ids are 1..num_questions.
    test_lengths: the numbers n of asked items whose held-out losses are
      averaged; the policy asks `max(test_lengths)` items per student.
    hidden: the policy's hidden width.
    entropy_weight: weight of an entropy bonus on the policy's choices.

  Returns:
    A `Bobcat`.
  """
  lengths = tuple(sorted(set(int(n) for n in test_lengths)))
  if not lengths or lengths[0] < 1:
    raise ValueError(f"test_lengths must be positive, got {test_lengths}.")
  num_asked = lengths[-1]
  policy = SelectionPolicy(num_questions, hidden)

  def init(key):
    k_base, k_policy = jax.random.split(key)
    dummy = KTInput(jnp.ones(1, jnp.int32), jnp.zeros(1, jnp.int8),
                    jnp.zeros(1, bool))
    return dict(base.init(k_base), policy=policy.init(k_policy, dummy))

  def logits(meta_params, state):
    return policy.apply(meta_params["policy"], state.seen)

  def greedy(meta_params, state, key):
    del key
    return logits(meta_params, state)

  def sampled(meta_params, state, key):
    return logits(meta_params, state) + jax.random.gumbel(
        key, state.available.shape)

  def heldout_loss(meta_params, task):
    adapted = base.adapt(meta_params, task.support)
    x, y = task.query
    return loss(base.predict(meta_params, adapted, x), y)

  def losses_after(meta_params, task, order):
    """`[len(lengths)]` held-out losses after each test length."""
    return jnp.stack([heldout_loss(meta_params,
                                   cat.scored_task(task, order, n))
                      for n in lengths])

  def rewards_to_go(losses):
    # Choice t (0-based) is in the first n items for every n > t.
    after = jnp.arange(num_asked)[:, None] < jnp.asarray(lengths)[None, :]
    return -(after * losses[None, :]).sum(-1)

  def log_probs(policy_meta_params, task, order):
    """Log-probability `[num_asked]` of each asked item, and the entropy."""
    length = task.support[1].target.shape[-1]

    def one(t):
      state = cat.observe(task, cat.asked_mask(order, t, length))
      # A finite floor, not -inf: the gradient of a `where` over -inf
      # entries is NaN even where they are not selected.
      log_p = jax.nn.log_softmax(
          jnp.where(state.available, logits(policy_meta_params, state),
                    -1e9))
      chosen = jnp.where(order[t] >= 0, log_p[jnp.maximum(order[t], 0)], 0.0)
      p = jnp.exp(log_p)
      entropy = -jnp.sum(jnp.where(state.available, p * log_p, 0.0))
      return chosen, entropy

    return jax.vmap(one)(jnp.arange(num_asked))

  def task_terms(meta_params, task, key):
    frozen = jax.lax.stop_gradient(meta_params)
    order = cat.administer(sampled, frozen, task, key, num_asked)
    baseline_order = cat.administer(greedy, frozen, task, key, num_asked)
    losses = losses_after(meta_params, task, order)
    baseline = losses_after(frozen, task, baseline_order)
    advantage = jax.lax.stop_gradient(rewards_to_go(losses) -
                                      rewards_to_go(baseline))
    chosen, entropy = log_probs(meta_params, task, order)
    model_loss = jnp.mean(losses)
    policy_loss = -jnp.sum(chosen * advantage) - entropy_weight * jnp.sum(
        entropy)
    return model_loss + policy_loss, {
        "heldout_loss": model_loss, "greedy_heldout_loss": jnp.mean(baseline),
        "policy_entropy": jnp.mean(entropy)}

  def meta_grad(meta_params, tasks, key):
    keys = jax.random.split(key, tasks_lib.num_tasks(tasks))

    def mean_terms(mp):
      totals, aux = jax.vmap(task_terms, in_axes=(None, 0, 0))(mp, tasks,
                                                               keys)
      return jnp.mean(totals), jax.tree.map(jnp.mean, aux)

    (_, aux), grads = jax.value_and_grad(mean_terms, has_aux=True)(
        meta_params)
    return grads, dict(aux, loss=aux["heldout_loss"])

  return Bobcat(MetaLearner(init, meta_grad, base.adapt, base.predict),
                greedy)
