"""Student models for knowledge tracing, with explicit per-student parameters.

`StudentModel` predicts, for every position t of one student's sequence, the
logit of a correct answer to question q_t:

  logit_t = b[q_t]                                 item difficulty (IRT)
          + theta + u . v[q_t]                     the student's own terms
          + head([h_t, e[q_t]])                    when hidden > 0

where h_t sums up the visible answers before t: an LSTM's state (DKT,
`sequence="lstm"`) or self-attention from the question at t over the
earlier visible interactions (SAKT, Pandey & Karypis 2019,
`sequence="attention"`).

`theta` (ability) and `u` (a `personal_dim` profile matched against item
vectors v) live in the submodule named "student": they are what
personalisation adapts (`student_mask`), while everything else is shared by
all students. With `hidden=0` the model is a multidimensional IRT model; with
`hidden>0`, h_t reads only the answers before t whose position is
`visible`, so at a cold-start query position it holds exactly what the
support answers told it.
"""

import math


import flax.linen as nn
import jax
import jax.numpy as jnp

from metajax import inner
from metajax.data.students.sequences import KTInput
from metajax.models import attention

SEQUENCES = ("lstm", "attention")


class StudentTerms(nn.Module):
  """theta + u . v, the per-student part; v `[L, personal_dim]` is given."""
  personal_dim: int

  @nn.compact
  def __call__(self, v):
    theta = self.param("theta", nn.initializers.zeros, (1,))
    if not self.personal_dim:  # No empty `u`: orbax cannot save it.
      return jnp.broadcast_to(theta[0], v.shape[:-1])
    u = self.param("u", nn.initializers.zeros, (self.personal_dim,))
    return theta[0] + v @ u


class MaskedLSTM(nn.Module):
  """LSTM over `[L, D]` inputs that skips positions where `update` is False.

  Returns `[L, hidden]`: the state before each position (zeros at t = 0).
  """
  hidden: int

  @nn.compact
  def __call__(self, x, update):
    gates_x = nn.Dense(4 * self.hidden, name="input")(x)  # one matmul for all t
    w_h = self.param("recurrent", nn.initializers.orthogonal(),
                     (self.hidden, 4 * self.hidden))

    def step(carry, inputs):
      h, c = carry
      g, keep = inputs
      i, f, o, z = jnp.split(g + h @ w_h, 4)
      # +1 forget bias: remember by default early in training.
      c_new = jax.nn.sigmoid(f + 1.0) * c + jax.nn.sigmoid(i) * jnp.tanh(z)
      h_new = jax.nn.sigmoid(o) * jnp.tanh(c_new)
      carry = (jnp.where(keep, h_new, h), jnp.where(keep, c_new, c))
      return carry, h  # the state *before* this position

    zeros = jnp.zeros((self.hidden,), x.dtype)
    _, before = jax.lax.scan(step, (zeros, zeros), (gates_x, update))
    return before


class AttentionHistory(nn.Module):
  """Each position attends over the earlier visible interactions (SAKT).

  The query at t is the embedding of question t; keys and values are the
  interaction embeddings (question and answer) of the positions s < t whose
  answer is visible. Instead of SAKT's position embeddings, which fix a
  largest length, every head's logit falls linearly with the distance
  t - s at a learned rate, so that any length works and recent answers can
  count more. A position with no visible answer before it attends to
  nothing (a zero vector, `attention.masked_softmax`).

  Returns float `[L, width]`: `layer_norm(query + attention)`.
  """
  width: int
  num_heads: int = 4

  @nn.compact
  def __call__(self, interactions, queries, visible):
    length = interactions.shape[0]
    head = self.width // self.num_heads
    params = self.param("attention", lambda key: attention.attention_init(
        key, self.width, self.num_heads))
    # softplus(-3) = 0.05 per position: a gentle recency at the start.
    decay = self.param("decay", nn.initializers.constant(-3.0),
                       (self.num_heads,))

    def heads(layer, x):
      return attention.dense(params[layer], x).reshape(
          length, self.num_heads, head)

    pos = jnp.arange(length)
    distance = (pos[:, None] - pos[None, :]).astype(queries.dtype)
    logits = (jnp.einsum("thd,shd->hts", heads("query", queries),
                         heads("key", interactions)) / math.sqrt(head)
              - jax.nn.softplus(decay)[:, None, None] * distance)
    earlier = visible[None, :] & (pos[None, :] < pos[:, None])  # [t, s]
    weights = attention.masked_softmax(logits, earlier)
    attended = jnp.einsum("hts,shd->thd", weights,
                          heads("value", interactions))
    out = attention.dense(params["output"],
                          attended.reshape(length, self.width))
    return attention.layer_norm(params["norm"], queries + out)


class StudentModel(nn.Module):
  """Knowledge-tracing model of one student's sequence.

  Attributes:
    num_questions: ids are 1..num_questions (0 is padding).
    hidden: width of the sequence part (the LSTM, and the layer that mixes
      h_t with the question); 0 gives the IRT-style model with no sequence
      state.
    embed_dim: width of the interaction and item embeddings of the sequence
      part (and of the attention).
    personal_dim: width of the per-student profile `u` (0: ability only).
    sequence: "lstm" (DKT) or "attention" (SAKT).
    num_heads: attention heads, dividing `embed_dim`.

  Input: a `KTInput` with leaves `[L]`. Output: float32 logits `[L]`.
  """
  num_questions: int
  hidden: int = 0
  embed_dim: int = 64
  personal_dim: int = 8
  sequence: str = "lstm"
  num_heads: int = 4

  @nn.compact
  def __call__(self, x: KTInput) -> jax.Array:
    q = x.questions
    n = self.num_questions + 1
    logit = nn.Embed(n, 1, embedding_init=nn.initializers.zeros,
                     name="difficulty")(q)[..., 0]
    v = nn.Embed(n, max(self.personal_dim, 1), name="item_profile",
                 embedding_init=nn.initializers.normal(0.1))(q)
    logit = logit + StudentTerms(self.personal_dim, name="student")(
        v[..., :self.personal_dim])
    if self.hidden:
      interaction = q + n * x.answers.astype(q.dtype)
      e_in = nn.Embed(2 * n, self.embed_dim, name="interaction")(interaction)
      e_q = nn.Embed(n, self.embed_dim, name="item")(q)
      if self.sequence == "lstm":
        h = MaskedLSTM(self.hidden, name="lstm")(e_in, x.visible)
      elif self.sequence == "attention":
        h = AttentionHistory(self.embed_dim, self.num_heads,
                             name="attention")(e_in, e_q, x.visible)
      else:
        raise ValueError(f"sequence must be one of {SEQUENCES}, got "
                         f"{self.sequence!r}.")
      z = nn.relu(nn.Dense(self.hidden, name="mix")(
          jnp.concatenate([h, e_q], -1)))
      logit = logit + nn.Dense(1, name="head")(z)[..., 0]
    return logit


def student_mask(params):
  """True on the per-student parameters (theta, u): what adaptation changes."""
  return inner.mask_by_path(params, lambda path: "/student/" in f"/{path}/")


def masked_bce(logits: jax.Array, y, prior_answers: float = 0.0
               ) -> jax.Array:
  """Binary cross-entropy over the `target` positions of `KTTarget` y.

  The sum over the n target answers divided by `n + prior_answers`. With
  `prior_answers = 0` this is the mean. With `prior_answers > 0` it is a
  mean over long sequences but close to a sum over a few answers, so an
  adaptation step grows with the evidence, as a posterior estimate of a
  student's ability should: three support answers move `theta` about
  3 / (3 + prior_answers) as far as a long history does, instead of as far.
  Zero (with zero gradient) when no position is a target, e.g. an empty
  support set, which leaves adapted parameters unchanged.
  """
  answers = y.answers.astype(logits.dtype)
  losses = jnp.where(y.target, jax.nn.softplus(logits) - answers * logits,
                     0.0)
  count = jnp.sum(y.target.astype(logits.dtype))
  return jnp.sum(losses) / jnp.maximum(count + prior_answers, 1.0)
