"""Task PyTrees: validation messages, batching helpers."""

import jax.numpy as jnp
import numpy as np
import pytest

import metajax


def _task(n_tasks=None, s=5, q=7, feat=3):
  lead = () if n_tasks is None else (n_tasks,)
  return metajax.Task((jnp.zeros(lead + (s, feat)), jnp.zeros(lead + (s,), jnp.int32)),
                      (jnp.zeros(lead + (q, feat)), jnp.zeros(lead + (q,), jnp.int32)))


def test_well_formed_tasks_pass():
  metajax.validate_task(_task())
  metajax.validate_task(_task(4), batched=True)
  assert metajax.num_tasks(_task(4)) == 4


def test_per_example_shape_mismatch_names_the_leaf():
  t = _task()
  bad = metajax.Task(t.support, (jnp.zeros((7, 4)), t.query[1]))
  with pytest.raises(ValueError, match=r"support\[0\] has per-example shape "
                     r"\(3,\) but query\[0\] has \(4,\)"):
    metajax.validate_task(bad)


def test_dtype_mismatch_is_named():
  t = _task()
  bad = metajax.Task(t.support, (t.query[0], jnp.zeros((7,), jnp.float32)))
  with pytest.raises(ValueError, match=r"support\[1\] has dtype int32 but "
                     r"query\[1\] has float32"):
    metajax.validate_task(bad)


def test_batch_disagreeing_on_task_count_is_named():
  t = _task(4)
  bad = metajax.Task(t.support, (jnp.zeros((3, 7, 3)), jnp.zeros((3, 7), jnp.int32)))
  with pytest.raises(ValueError, match="support has 4 tasks but query has 3"):
    metajax.validate_task(bad, batched=True)


def test_missing_example_axis_is_named():
  with pytest.raises(ValueError, match=r"support\[0\] has shape \(\); expected"):
    metajax.validate_task(metajax.Task((jnp.float32(1.0),), (jnp.zeros(3),)))
  with pytest.raises(TypeError, match="expected a metajax.Task"):
    metajax.validate_task(((1,), (2,)))


def test_merge_sets_concatenates_support_then_query():
  t = metajax.Task((jnp.arange(2.0),), (jnp.arange(2.0, 5.0),))
  (merged,) = metajax.merge_sets(t)
  np.testing.assert_array_equal(merged, np.arange(5.0))
