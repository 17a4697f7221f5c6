"""Host-fed task batches: the sampled run's result, exact resume, one
compilation, clear errors, evaluation."""

import threading

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import metajax
from metajax import algorithms
from metajax import host_tasks
from metajax import training
from metajax.data import sinusoid
from metajax.models import MLP

MODEL = MLP((16,), 1)
SAMPLER = sinusoid.sampler(4, 5, 5)
KEY = jax.random.PRNGKey(0)


def _learner(traces=None):
  def apply_fn(params, x):
    if traces is not None:
      traces.append(1)  # runs once per trace, not per call
    return MODEL.apply(params, x)
  return algorithms.maml(lambda k: MODEL.init(k, jnp.zeros((1, 1))),
                         apply_fn, algorithms.mse, steps=1, lr=0.01)


def _train(tasks, num_steps, workdir=None, learner=None, **kw):
  kw.setdefault("log_every", 3)
  kw.setdefault("checkpoint_every", 3)
  return metajax.train(learner or _learner(), optax.adam(1e-2), tasks,
                       key=KEY, num_steps=num_steps, workdir=workdir,
                       progress=False, **kw)


def _numpy_pipeline(seed=0, bad_step=None, end=None, fail_at=None):
  """Sinusoid batches from (seed, step) alone: a pure function of the step.
  `bad_step` gets one example too many, the pipeline stops before `end`,
  and raises at `fail_at`."""
  def make_iterator(start):
    step = start
    while end is None or step < end:
      if step == fail_at:
        raise OSError(f"disk gone at step {step}")
      n = 6 if step == bad_step else 5
      rng = np.random.default_rng([seed, step])
      x = rng.uniform(-5, 5, (4, 2 * n, 1)).astype(np.float32)
      y = np.sin(x + rng.uniform(0, 3, (4, 1, 1))).astype(np.float32)
      yield metajax.Task((x[:, :n], y[:, :n]), (x[:, n:], y[:, n:]))
      step += 1
  return host_tasks.HostTasks(make_iterator)


def test_fed_run_equals_the_sampled_run():
  sampled = _train(SAMPLER, 7)
  fed = _train(training.replay_tasks(SAMPLER, KEY), 7)
  assert int(fed.step) == 7
  chex.assert_trees_all_close(fed.meta_params, sampled.meta_params,
                              rtol=1e-6, atol=1e-7)
  chex.assert_trees_all_close(fed.opt_state, sampled.opt_state, rtol=1e-6,
                              atol=1e-7)
  np.testing.assert_array_equal(fed.key, sampled.key)


# A batch of SAMPLER's is four float32[4, 5, 1] leaves: 320 bytes.
@pytest.mark.parametrize("max_bytes,stack", [(0, 1), (700, 2), (1 << 20, 4)])
def test_stacked_fed_calls_equal_the_sampled_run(monkeypatch, max_bytes,
                                                 stack):
  """However many steps one fed call scans over (a 7-step run ends in a
  padded stack), the run is the sampled one."""
  assert training.fed_stack(host_tasks.signature(SAMPLER(KEY)), 4,
                            max_bytes) == stack
  monkeypatch.setattr(training, "FED_STACK_BYTES", max_bytes)
  sampled = _train(SAMPLER, 7, log_every=4, checkpoint_every=4)
  fed = _train(training.replay_tasks(SAMPLER, KEY), 7, log_every=4,
               checkpoint_every=4)
  assert int(fed.step) == 7
  chex.assert_trees_all_close(fed.meta_params, sampled.meta_params,
                              rtol=1e-6, atol=1e-7)
  np.testing.assert_array_equal(fed.key, sampled.key)


def test_fed_stack_is_the_largest_divisor_that_fits():
  sig = {"x": jax.ShapeDtypeStruct((10, 25), np.float32)}  # 1,000 bytes
  assert training.fed_stack(sig, 100, max_bytes=10**6) == 100
  assert training.fed_stack(sig, 100, max_bytes=30_000) == 25
  assert training.fed_stack(sig, 7, max_bytes=6_999) == 1
  assert training.fed_stack(sig, 100, max_bytes=10) == 1  # never below 1


def test_prefetcher_stacks_pads_and_reads_nothing_past_stop():
  pipeline = _numpy_pipeline(fail_at=7)  # raises if read at step 7
  batches = [b for b, _ in zip(_numpy_pipeline().make_iterator(2), range(5))]
  with host_tasks.Prefetcher(pipeline, 2, stack=2, stop_step=7) as feed:
    stacks = [next(feed) for _ in range(3)]
    assert feed.step == 8
  for i, stacked in enumerate(stacks):
    assert stacked.support[0].shape == (2, 4, 5, 1)
    for slot in range(2):
      want = batches[min(2 * i + slot, 4)]  # the last slot repeats step 6
      np.testing.assert_array_equal(stacked.support[0][slot],
                                    want.support[0])


def test_replay_from_a_later_step_is_the_same_batch():
  whole = training.replay_tasks(SAMPLER, KEY).make_iterator(0)
  batches = [next(whole) for _ in range(4)]
  later = next(training.replay_tasks(SAMPLER, KEY).make_iterator(3))
  chex.assert_trees_all_equal(later, batches[3])
  assert not np.array_equal(batches[2].support[0], batches[3].support[0])


def test_resumed_fed_run_equals_an_uninterrupted_one(tmp_path):
  pipeline = _numpy_pipeline()
  full = _train(pipeline, 9)
  workdir = str(tmp_path / "run")
  assert int(_train(pipeline, 6, workdir).step) == 6
  resumed = _train(pipeline, 9, workdir)
  assert int(resumed.step) == 9
  chex.assert_trees_all_equal(resumed.meta_params, full.meta_params)
  chex.assert_trees_all_equal(resumed.opt_state, full.opt_state)
  # A finished run reads nothing more from a pipeline that has ended.
  again = _train(_numpy_pipeline(end=9), 9, workdir)
  chex.assert_trees_all_equal(again.meta_params, full.meta_params)


def test_the_step_is_compiled_once_however_many_steps():
  counts = []
  for num_steps in (2, 11):
    traces = []
    _train(_numpy_pipeline(), num_steps, learner=_learner(traces))
    counts.append(len(traces))
  assert counts[0] == counts[1] > 0


def test_a_batch_of_other_shapes_is_named_by_step_and_leaf(tmp_path):
  workdir = str(tmp_path / "run")
  with pytest.raises(ValueError, match=(
      r"host task batch of step 4: leaf \.support\[0\] is float32\[4, 6, 1\], "
      r"but the step was compiled for float32\[4, 5, 1\]")):
    _train(_numpy_pipeline(bad_step=4), 9, workdir)
  # The steps before it were checkpointed, and resuming past it works.
  state = _train(_numpy_pipeline(), 9, workdir)
  chex.assert_trees_all_equal(state.meta_params,
                              _train(_numpy_pipeline(), 9).meta_params)


def test_a_short_pipeline_and_a_failing_one_are_reported():
  with pytest.raises(ValueError, match="pipeline ended before step 5"):
    _train(_numpy_pipeline(end=5), 9)
  with pytest.raises(OSError, match="disk gone at step 4"):
    _train(_numpy_pipeline(fail_at=4), 9)
  with pytest.raises(ValueError, match="yielded no batch for step 0"):
    _train(_numpy_pipeline(end=0), 9)


@pytest.mark.parametrize("batch,message", [
    ((np.zeros((4, 5, 1)),), "expected a Task"),
    (metajax.Task((np.zeros((4, 5, 1)), np.zeros((4, 5, 1))),
                  (np.zeros((4, 5, 1)), np.zeros((3, 5, 1)))),
     "host task batch of step 0: .*disagree"),
])
def test_a_malformed_first_batch_fails_before_compiling(batch, message):
  pipeline = host_tasks.HostTasks(lambda start: iter([batch]))
  traces = []
  with pytest.raises((TypeError, ValueError), match=message):
    _train(pipeline, 3, learner=_learner(traces))
  assert not traces


@pytest.mark.parametrize("prefetch", [0, True, 1.5])
def test_bad_prefetch_is_named(prefetch):
  with pytest.raises(ValueError, match="prefetch must be an integer >= 1"):
    _train(host_tasks.HostTasks(_numpy_pipeline().make_iterator, prefetch),
           3)


def test_prefetcher_stops_its_thread_on_close():
  before = threading.active_count()
  with host_tasks.Prefetcher(_numpy_pipeline(), 0) as feed:
    batch = next(feed)
    assert isinstance(batch.support[0], jax.Array)
    assert feed.step == 1
  assert threading.active_count() == before


def test_evaluate_on_fed_batches_equals_the_sampled_batches():
  learner = _learner()
  params = learner.init(jax.random.PRNGKey(1))
  metric = lambda p, y: jnp.mean((p - y) ** 2)
  # evaluate splits its key once per batch; replay those batches on the host.
  keys = []
  key = jax.random.PRNGKey(5)
  for _ in range(3):
    key, sub = jax.random.split(key)
    keys.append(sub)
  batches = [jax.device_get(SAMPLER(k)) for k in keys]
  fed = metajax.evaluate(learner, params,
                         host_tasks.HostTasks(lambda s: iter(batches[s:])),
                         metric, num_tasks=10)
  sampled = metajax.evaluate(learner, params, SAMPLER, metric,
                             key=jax.random.PRNGKey(5), num_tasks=10)
  assert fed.shape == (10,)
  np.testing.assert_allclose(fed, sampled, rtol=1e-6)


def test_evaluate_names_a_missing_or_needless_key():
  learner = _learner()
  params = learner.init(jax.random.PRNGKey(1))
  metric = lambda p, y: jnp.mean((p - y) ** 2)
  with pytest.raises(ValueError, match="a task sampler needs a PRNG key"):
    metajax.evaluate(learner, params, SAMPLER, metric, num_tasks=4)
  with pytest.raises(ValueError, match="pass key=None"):
    metajax.evaluate(learner, params, _numpy_pipeline(), metric,
                     key=KEY, num_tasks=4)
