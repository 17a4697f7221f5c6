"""Students as tasks: cold-start sets, pooling and the on-device sampler."""

import jax
import numpy as np
import pytest

from metajax.data.students import knowledge_tracing as kt
from metajax.data.students import sequences


def _arrays():
  seqs = kt.Sequences(
      (np.array([3, 1, 2, 2, 5, 4], np.int32), np.array([7, 7], np.int32),
       np.array([1, 2, 3, 4], np.int32)),
      (np.array([1, 0, 1, 1, 0, 1], np.int8), np.array([0, 1], np.int8),
       np.array([1, 1, 0, 0], np.int8)))
  return sequences.pack(seqs)


def test_cold_start_sets_split_at_k_and_hide_later_answers():
  arrays = _arrays()
  tasks = sequences.cold_start_tasks(arrays, 3)
  (xs, ys), (xq, yq) = jax.device_get(tasks)
  np.testing.assert_array_equal(ys.target[0], [1, 1, 1, 0, 0, 0])
  np.testing.assert_array_equal(yq.target[0], [0, 0, 0, 1, 1, 1])
  # Only the first k answers can be read, in both sets.
  for x in (xs, xq):
    np.testing.assert_array_equal(x.visible[0], [1, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(x.answers[0], [1, 0, 1, 0, 0, 0])
    np.testing.assert_array_equal(x.questions[0], [3, 1, 2, 2, 5, 4])
  np.testing.assert_array_equal(yq.answers[0], [1, 0, 1, 1, 0, 1])
  # A student with 2 answers: support both, nothing left to score.
  np.testing.assert_array_equal(ys.target[1], [1, 1, 0, 0, 0, 0])
  assert not yq.target[1].any()
  # Padding is never a target.
  np.testing.assert_array_equal(yq.target[2], [0, 0, 0, 1, 0, 0])


def test_support_size_zero_has_an_empty_support():
  (xs, ys), (_, yq) = sequences.cold_start_tasks(_arrays(), 0)
  assert not np.asarray(ys.target).any() and not np.asarray(xs.visible).any()
  np.testing.assert_array_equal(np.asarray(yq.target).sum(1), [6, 2, 4])


def test_pool_sets_is_next_answer_training_on_every_answer():
  arrays = _arrays()
  task = jax.tree.map(lambda a: a[0], sequences.cold_start_tasks(arrays, 2))
  x, y = sequences.pool_sets(task)
  np.testing.assert_array_equal(x.visible, [1] * 6)
  np.testing.assert_array_equal(x.answers, arrays.answers[0])
  np.testing.assert_array_equal(y.target, [1] * 6)
  short = jax.tree.map(lambda a: a[2], sequences.cold_start_tasks(arrays, 2))
  x, y = sequences.pool_sets(short)
  np.testing.assert_array_equal(y.target, [1, 1, 1, 1, 0, 0])


def test_pack_windows_keep_every_answer():
  arrays = sequences.pack(kt.Sequences((np.arange(1, 8, dtype=np.int32),),
                                      (np.ones(7, np.int8),)), window=3)
  np.testing.assert_array_equal(arrays.lengths, [3, 3, 1])
  np.testing.assert_array_equal(arrays.questions,
                                [[1, 2, 3], [4, 5, 6], [7, 0, 0]])


def test_sampler_draws_distinct_students_and_listed_support_sizes():
  seqs = kt.Sequences(tuple(np.full(5, i + 1, np.int32) for i in range(40)),
                      tuple(np.ones(5, np.int8) for _ in range(40)))
  sampler = sequences.student_sampler(sequences.pack(seqs), batch_size=16,
                                     support_sizes=[0, 2, 4])
  sizes = []
  for seed in range(5):
    (xs, ys), _ = jax.jit(lambda s, k: s(k))(sampler, jax.random.PRNGKey(seed))
    who = np.asarray(xs.questions)[:, 0]
    assert len(set(who.tolist())) == 16  # no student twice in a batch
    sizes += np.asarray(ys.target).sum(1).tolist()
  assert set(sizes) == {0, 2, 4}
  with pytest.raises(ValueError, match="batch_size 41 exceeds the 40"):
    sequences.student_sampler(sequences.pack(seqs), batch_size=41,
                             support_sizes=[1])
  with pytest.raises(ValueError, match="non-negative"):
    sequences.student_sampler(sequences.pack(seqs), batch_size=4,
                             support_sizes=[-1])


def test_online_task_reads_all_history_and_scores_one_block():
  arrays = _arrays()
  (xs, ys), (xq, yq) = jax.device_get(sequences.online_task(
      arrays.questions[0], arrays.answers[0], arrays.lengths[0], 2, 3))
  np.testing.assert_array_equal(ys.target, [1, 1, 0, 0, 0, 0])
  np.testing.assert_array_equal(xs.answers, [1, 0, 0, 0, 0, 0])
  # The query may read every answer (a causal model reads those before t)
  # and scores positions 2, 3, 4 only.
  np.testing.assert_array_equal(xq.visible, [1] * 6)
  np.testing.assert_array_equal(xq.answers, arrays.answers[0])
  np.testing.assert_array_equal(yq.target, [0, 0, 1, 1, 1, 0])
  # The last block stops at the student's length.
  (_, _), (_, yq) = sequences.online_task(
      arrays.questions[2], arrays.answers[2], arrays.lengths[2], 3, 3)
  np.testing.assert_array_equal(yq.target, [0, 0, 0, 1, 0, 0])


@pytest.mark.parametrize("length", [5, 25, 26, 40])
def test_cat_task_splits_real_answers_into_pool_and_held_out(length):
  q = jax.numpy.arange(1, 41, dtype=jax.numpy.int32)
  a = jax.numpy.asarray(np.arange(40) % 2, jax.numpy.int8)
  task = sequences.cat_task(q, a, length, jax.random.PRNGKey(length), 0.2)
  (xs, ys), (xq, yq) = task.support, task.query
  pool, heldout = np.asarray(ys.target), np.asarray(yq.target)
  assert not (pool & heldout).any()
  np.testing.assert_array_equal(pool | heldout, np.arange(40) < length)
  # ceil(0.2 * length) held out (float32 must not make 0.2 * 25 into 6).
  assert heldout.sum() == -(-length // 5)
  assert pool.sum() == sequences.cat_pool_size(length, 0.2)
  # The pool's input reads the pool's answers; the query's reads none.
  np.testing.assert_array_equal(xs.visible, pool)
  np.testing.assert_array_equal(xs.answers, np.where(pool, a, 0))
  assert not np.asarray(xq.visible).any() and not np.asarray(xq.answers).any()


def test_cat_sampler_resplits_students_each_draw():
  arrays = sequences.pack(kt.Sequences(
      tuple(np.arange(1, 31, dtype=np.int32) for _ in range(8)),
      tuple(np.zeros(30, np.int8) for _ in range(8))))
  sample = sequences.cat_sampler(arrays, batch_size=4, heldout_fraction=0.3)
  one, two = (jax.jit(sample)(jax.random.PRNGKey(s)) for s in (0, 1))
  assert one.query[1].target.shape == (4, 30)
  np.testing.assert_array_equal(np.asarray(one.query[1].target).sum(1), 9)
  assert not np.array_equal(one.query[1].target, two.query[1].target)
  with pytest.raises(ValueError, match="heldout_fraction must be in"):
    sequences.cat_sampler(arrays, batch_size=4, heldout_fraction=1.0)
