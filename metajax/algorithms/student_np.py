"""A conditional neural process over students, for knowledge tracing.

The student-performance counterpart of `neural_process.conditional_np`: a
student's answers so far are the context, and personalising to a student is
encoding them, one forward pass with no gradient step. For one student's
sequence (a `sequences.KTInput`, leaves `[L]`)::

  e_q      = E[q]                          a question embedding, row 0 padding
  r_i      = encoder([e_{q_i}, s_i, s_i * e_{q_i}])   s_i = +1 right, -1 wrong
  r        = mean of r_i over the visible positions i     (zero if none)
  n        = number of visible positions
  logit_t  = b[q_t] + decoder([e_{q_t}, r, log(1 + n)])  at every position t

Why these inputs: `s * e_q` lets a linear first layer tie an answer to the
question it was given to (a right answer to a hard question says more than
one to an easy question) without the MLP having to learn the product; `b` is
the IRT item difficulty, a free scalar per question as in `StudentModel`, so
the population part is learned as fast as the joint model learns it; and
the mean `r` alone looks the same after one answer as after twenty, so the
decoder also reads `log(1 + n)` and can trust `r` as much as the evidence
behind it warrants (a shrinkage a gradient learner gets from
`masked_bce`'s `prior_answers`).

What is read. `adapt(meta_params, (x, y))` encodes the support's `x` at its
`visible` positions only: a hidden position's question and answer and the
padding change nothing, and the order of the visible answers changes
nothing (the representation is a mean; this is a model of a student's
state, not of learning over the sequence). `predict(meta_params, state, x)`
reads only `x.questions`, never `x.answers`: the usual protocol's query
input may read the very answers it scores (see `sequences.online_task`),
which a sequence model shifts by one position and this one must ignore.

Training (`meta_grad`): per task, `loss(predict(adapt(support)), query
target)` with `loss = masked_bce(..., prior_answers)`, the query loss every
meta-learner of the student experiment is trained on, averaged over the
batch (`batch_mean_grad`, tasks vmapped).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from metajax import tasks as tasks_lib
from metajax.algorithms.base import MetaLearner
from metajax.algorithms.base import batch_mean_grad
from metajax.algorithms.base import refuse_steps
from metajax.algorithms.neural_process import masked_mean
from metajax.algorithms.neural_process import mlp
from metajax.algorithms.neural_process import mlp_init
from metajax.data.students.sequences import KTInput
from metajax.models.student import masked_bce


class StudentContext(NamedTuple):
  """One student's encoded answers, the task state of `student_np`.

  Attributes:
    r: float `[width]`, the mean of the visible answers' encodings (zeros
      when none is visible).
    count: float scalar, the number of visible answers.
  """
  r: jax.Array
  count: jax.Array


def _check_positive(name: str, value) -> None:
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ValueError(f"{name} must be a positive int, got {value!r}.")


def student_np(num_questions: int, *, embed_dim: int = 64, width: int = 128,
               encoder_layers: int = 2, decoder_layers: int = 2,
               count_feature: bool = True, prior_answers: float = 0.0,
               dtype=jnp.float32) -> MetaLearner:
  """The student conditional neural process as a `MetaLearner`.

  See the module docstring for the model. Its functions:

  * `adapt(meta_params, (x, y), *, steps=None) -> StudentContext` encodes
    the visible answers of the support's `KTInput` x; any `steps` but None
    raises a ValueError, as nothing is adapted by gradient.
  * `predict(meta_params, state, x) -> [L]` gives float logits of a right
    answer to every question of the `KTInput` x (its answers unread).
  * `meta_grad(meta_params, tasks, key)` ignores the key (None is
    accepted) and reports the metric "loss".

  Args:
    num_questions: question ids are 1..num_questions, 0 is padding.
    embed_dim: width of the question embedding.
    width: width of the hidden layers and of the representation `r`.
    encoder_layers: dense layers of the encoder (>= 1; the last outputs `r`).
    decoder_layers: hidden layers of the decoder (>= 1), before its output
      layer.
    count_feature: whether the decoder reads `log(1 + n)`, n the number of
      visible answers.
    prior_answers: of the training loss `masked_bce`: the sum over the n
      query answers is divided by `n + prior_answers`.
    dtype: the parameters' float dtype.

  Returns:
    A `MetaLearner` with meta-parameters `{"params": {"embed" [Q + 1,
    embed_dim], "difficulty" [Q + 1], "encoder", "decoder"}}`, Q being
    `num_questions`; encoder and decoder are lists of dense layers (see
    `neural_process.mlp_init`).
  """
  for name, value in (("num_questions", num_questions),
                      ("embed_dim", embed_dim), ("width", width),
                      ("encoder_layers", encoder_layers),
                      ("decoder_layers", decoder_layers)):
    _check_positive(name, value)
  if not prior_answers >= 0:
    raise ValueError(f"prior_answers must be >= 0, got {prior_answers!r}.")
  rows = num_questions + 1
  decoder_in = embed_dim + width + (1 if count_feature else 0)

  def init(key):
    k_embed, k_enc, k_dec = jax.random.split(key, 3)
    decoder = mlp_init(k_dec, (decoder_in,) + (width,) * decoder_layers + (1,),
                       dtype)
    # A zero output layer: the untrained model predicts b[q] = 0 for every
    # student, not a random function of the context, and the first steps
    # learn the difficulties before the decoder's head grows.
    decoder[-1]["w"] = jnp.zeros_like(decoder[-1]["w"])
    return {"params": {
        # Unit-scale rows, the input scale `mlp_init`'s layers expect.
        "embed": jax.random.normal(k_embed, (rows, embed_dim), dtype),
        "difficulty": jnp.zeros((rows,), dtype),
        "encoder": mlp_init(k_enc, (2 * embed_dim + 1,) +
                            (width,) * encoder_layers, dtype),
        "decoder": decoder}}

  def encode(params, x: KTInput) -> StudentContext:
    e = params["embed"][x.questions]
    sign = (2 * x.answers.astype(e.dtype) - 1)[..., None]
    r_i = mlp(params["encoder"], jnp.concatenate([e, sign, sign * e], -1))
    visible = x.visible.astype(e.dtype)
    return StudentContext(masked_mean(r_i, visible), jnp.sum(visible))

  def adapt(meta_params, support, *, steps=None):
    refuse_steps("student_np", "adapting encodes the support's visible "
                 "answers by a forward pass", steps)
    x, _ = support
    return encode(meta_params["params"], x)

  def predict(meta_params, state: StudentContext, x: KTInput):
    params = meta_params["params"]
    e = params["embed"][x.questions]
    length = x.questions.shape[-1]
    parts = [e, jnp.broadcast_to(state.r, (length,) + state.r.shape)]
    if count_feature:
      parts.append(jnp.broadcast_to(jnp.log1p(state.count), (length, 1)))
    out = mlp(params["decoder"], jnp.concatenate(parts, -1))[..., 0]
    return params["difficulty"][x.questions] + out

  def task_loss(meta_params, task: tasks_lib.Task):
    state = adapt(meta_params, task.support)
    x, y = task.query
    return masked_bce(predict(meta_params, state, x), y,
                      prior_answers=prior_answers)

  return MetaLearner(init=init, meta_grad=batch_mean_grad(task_loss),
                     adapt=adapt, predict=predict)

