"""Students as tasks: cold-start support/query sets and an on-device sampler.

One student is one task. With support size k, the support set is the
student's first k answers and the query set every answer after them; a model
may read the answers of the support positions only (`visible`), so it
predicts the query from what the first k answers tell about the student.

Both sets hold the student's whole padded sequence and differ in their masks,
so that sequence models (DKT) and static ones (IRT) read the same data:

  x = KTInput(questions, answers, visible)   which answers may be read
  y = KTTarget(answers, target)              which answers are scored

`pool_sets` turns a task into ordinary next-answer training data (every real
answer visible and scored): what joint training and Reptile use.
"""

import functools
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from metajax.data.students import knowledge_tracing as kt
from metajax.tasks import Task


class KTInput(NamedTuple):
  """Model input for one student (leading batch axes allowed).

  Attributes:
    questions: int32 `[L]`, 1-based ids, 0 on padding.
    answers: int8 `[L]`, the answers, zeroed where not `visible`.
    visible: bool `[L]`, positions whose answers the model may read.
  """
  questions: jax.Array
  answers: jax.Array
  visible: jax.Array


class KTTarget(NamedTuple):
  """What is scored: int8 `answers` `[L]` at bool `target` positions `[L]`."""
  answers: jax.Array
  target: jax.Array


class StudentArrays(NamedTuple):
  """Students packed for the device.

  Attributes:
    questions: int32 `[students, L]`, 0 on padding.
    answers: int8 `[students, L]`.
    lengths: int32 `[students]`, real interactions of each row.
  """
  questions: np.ndarray
  answers: np.ndarray
  lengths: np.ndarray

  @property
  def num_students(self) -> int:
    return int(self.questions.shape[0])


def pack(seqs: kt.Sequences, window: int = 0) -> StudentArrays:
  """Pads `seqs` (first cut into pieces of `window` if > 0) to arrays."""
  if window:
    seqs = kt.window(seqs, window)
  questions, answers, mask = kt.pad(seqs)
  return StudentArrays(questions, answers, mask.sum(1).astype(np.int32))


def cold_start_task(questions: jax.Array, answers: jax.Array,
                    length: jax.Array, k: jax.Array) -> Task:
  """One student's task with support size `k`; traceable, `k` may be traced.

  Args:
    questions: int32 `[L]`; answers: int8 `[L]`; length: real interactions.
    k: support size; support = positions < k, query = positions k..length-1.

  Returns:
    `Task(support=(KTInput, KTTarget), query=(KTInput, KTTarget))`, leaves
    `[L]`. A student with no more than k answers has an empty query.
  """
  pos = jnp.arange(questions.shape[-1])
  real = pos < length
  seen = real & (pos < k)
  x = _read(questions, answers, seen)
  return Task((x, KTTarget(answers, seen)),
              (x, KTTarget(answers, real & ~seen)))


def online_task(questions: jax.Array, answers: jax.Array, length: jax.Array,
                start: jax.Array, every: int) -> Task:
  """One block of the usual next-answer protocol; traceable.

  The support is the answers before `start`; the query reads every earlier
  answer and scores answers `start .. start + every - 1`, so a learner that
  adapts on the support re-adapts once per block of `every` answers.
  """
  pos = jnp.arange(questions.shape[-1])
  real = pos < length
  before = real & (pos < start)
  scored = real & (pos >= start) & (pos < start + every)
  return Task((_read(questions, answers, before), KTTarget(answers, before)),
              (_read(questions, answers, real), KTTarget(answers, scored)))


def _read(questions, answers, seen) -> KTInput:
  """The input that may read the answers at `seen` positions only."""
  return KTInput(questions, jnp.where(seen, answers, 0).astype(jnp.int8), seen)


def cold_start_tasks(arrays: StudentArrays, k: int) -> Task:
  """`cold_start_task` for every student of `arrays`; leaves `[students, L]`."""
  return jax.vmap(cold_start_task, in_axes=(0, 0, 0, None))(
      jnp.asarray(arrays.questions), jnp.asarray(arrays.answers),
      jnp.asarray(arrays.lengths), k)


def pool_sets(task: Task):
  """One task's support and query as one next-answer training set.

  Every position that either set reads or scores becomes readable and
  scored, so a sequence model is trained to predict each answer from all
  earlier ones (the usual knowledge-tracing objective).
  """
  (xs, ys), (xq, yq) = task.support, task.query
  seen = xs.visible | xq.visible | ys.target | yq.target
  return _read(xs.questions, ys.answers, seen), KTTarget(ys.answers, seen)


def _sample(questions, answers, lengths, support_sizes, key, *, batch_size):
  k_rows, k_sizes = jax.random.split(key)
  rows = jax.random.choice(k_rows, questions.shape[0], (batch_size,),
                           replace=False)
  ks = jax.random.choice(k_sizes, support_sizes, (batch_size,))
  return jax.vmap(cold_start_task)(questions[rows], answers[rows],
                                   lengths[rows], ks)


def student_sampler(arrays: StudentArrays, *, batch_size: int,
                    support_sizes: Sequence[int]) -> jax.tree_util.Partial:
  """`key -> Task` batch of `batch_size` distinct students, on the device.

  Each task's support size is drawn uniformly from `support_sizes`. The
  arrays are bound into a `jax.tree_util.Partial`, so a jit-compiled step
  takes them as arguments, not constants.
  """
  if batch_size > arrays.num_students:
    raise ValueError(f"batch_size {batch_size} exceeds the "
                     f"{arrays.num_students} students available.")
  sizes = np.asarray(support_sizes, np.int32)
  if sizes.ndim != 1 or sizes.size == 0 or (sizes < 0).any():
    raise ValueError(f"support_sizes must be non-negative integers, got "
                     f"{list(support_sizes)}.")
  return jax.tree_util.Partial(
      functools.partial(_sample, batch_size=batch_size),
      jax.device_put(arrays.questions), jax.device_put(arrays.answers),
      jax.device_put(arrays.lengths), jax.device_put(sizes))


def cat_task(questions: jax.Array, answers: jax.Array, length: jax.Array,
             key: jax.Array, heldout_fraction: float) -> Task:
  """One student as an adaptive test: candidate pool and held-out answers.

  The student's real positions are shuffled with `key`; the first
  `ceil(heldout_fraction * length)` (at least one) are held out and the
  rest form the pool a test may ask from. Traceable, `length` and `key` may
  be traced.

  Args:
    questions: int32 `[L]`; answers: int8 `[L]`; length: real interactions.
    key: PRNG key of the split.
    heldout_fraction: in (0, 1).

  Returns:
    `Task(support=(KTInput, KTTarget), query=(KTInput, KTTarget))`, leaves
    `[L]`. The support is the pool: its input reads every pool answer, which
    only an adapter given the whole pool may use (an adaptive test reveals
    them one at a time, see `metajax.adaptive_testing.observe`). The query
    scores the held-out answers and reads none.
  """
  pos = jnp.arange(questions.shape[-1])
  real = pos < length
  order = jnp.argsort(jnp.where(real, jax.random.uniform(key, pos.shape), 2.0))
  rank = jnp.zeros_like(pos).at[order].set(pos)
  heldout = real & (rank < _num_heldout(length, heldout_fraction))
  pool = real & ~heldout
  nothing = jnp.zeros_like(real)
  return Task((_read(questions, answers, pool), KTTarget(answers, pool)),
              (_read(questions, answers, nothing), KTTarget(answers, heldout)))


def _num_heldout(length, heldout_fraction: float) -> jax.Array:
  # One float32 formula for the device and for `cat_pool_size`, so the two
  # never round 0.2 * 25 differently.
  wanted = jnp.ceil(jnp.float32(heldout_fraction) *
                    jnp.asarray(length, jnp.float32) - 1e-3)
  return jnp.maximum(1, wanted).astype(jnp.int32)


def cat_pool_size(length, heldout_fraction: float) -> np.ndarray:
  """Pool sizes of students with `length` answers under `cat_task`."""
  length = np.asarray(length)
  return length - np.asarray(_num_heldout(length, heldout_fraction))


def _sample_cat_tasks(questions, answers, lengths, key, *, batch_size,
                      heldout_fraction):
  k_rows, k_split = jax.random.split(key)
  rows = jax.random.choice(k_rows, questions.shape[0], (batch_size,),
                           replace=False)
  return jax.vmap(cat_task, in_axes=(0, 0, 0, 0, None))(
      questions[rows], answers[rows], lengths[rows],
      jax.random.split(k_split, batch_size), heldout_fraction)


def cat_sampler(arrays: StudentArrays, *, batch_size: int,
                heldout_fraction: float) -> jax.tree_util.Partial:
  """`key -> Task` batch of `cat_task`s of distinct students, on the device.

  Every call splits each drawn student anew, so training sees many pools
  and held-out sets per student.
  """
  if batch_size > arrays.num_students:
    raise ValueError(f"batch_size {batch_size} exceeds the "
                     f"{arrays.num_students} students available.")
  if not 0 < heldout_fraction < 1:
    raise ValueError(f"heldout_fraction must be in (0, 1), got "
                     f"{heldout_fraction}.")
  return jax.tree_util.Partial(
      functools.partial(_sample_cat_tasks, batch_size=batch_size,
                        heldout_fraction=float(heldout_fraction)),
      jax.device_put(arrays.questions), jax.device_put(arrays.answers),
      jax.device_put(arrays.lengths))
