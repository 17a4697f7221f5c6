"""Evaluation: confidence intervals and per-task scoring."""

import contextlib
import inspect
import os
import re
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import metajax
from metajax import adversarial
from metajax import algorithms
from metajax.evaluation import accuracy
from metajax.evaluation import task_metrics
from metajax.data import sinusoid
from metajax.models import Conv4
from conftest import ROOT, tiny_mlp, tiny_mlp_params


def test_mean_ci_is_the_normal_interval():
  values = np.array([1.0, 2.0, 4.0, 7.0])
  out = metajax.mean_ci(values)
  assert out["mean"] == pytest.approx(3.5)
  assert out["std"] == pytest.approx(np.std(values, ddof=1))
  assert out["ci95"] == pytest.approx(1.96 * np.std(values, ddof=1) / 2.0)
  assert out["n"] == 4


def test_mean_ci_rejects_bad_input():
  with pytest.raises(ValueError, match="at least 2"):
    metajax.mean_ci([1.0])
  with pytest.raises(ValueError, match="1 of 3 per-task values are not finite"):
    metajax.mean_ci([1.0, np.nan, 2.0])


def test_evaluate_scores_each_task_after_adaptation():
  learner = algorithms.maml(tiny_mlp_params, tiny_mlp, algorithms.mse,
                            steps=2, lr=0.1)
  meta_params = learner.init(jax.random.PRNGKey(0))
  sampler = sinusoid.sampler(8, 5, 10)
  values = metajax.evaluate(learner, meta_params, sampler, algorithms.mse,
                            key=jax.random.PRNGKey(1), num_tasks=20)
  assert values.shape == (20,) and values.dtype == np.float64
  # Recompute task 0 of the first batch by hand.
  _, sub = jax.random.split(jax.random.PRNGKey(1))
  task = jax.tree.map(lambda x: x[0], sampler(sub))
  adapted = metajax.adapt(algorithms.supervised_loss(tiny_mlp, algorithms.mse),
                          meta_params["params"], task.support, steps=2, lr=0.1)
  expected = algorithms.mse(tiny_mlp(adapted, task.query[0]), task.query[1])
  np.testing.assert_allclose(values[0], expected, rtol=1e-5)
  again = metajax.evaluate(learner, meta_params, sampler, algorithms.mse,
                           key=jax.random.PRNGKey(1), num_tasks=20)
  np.testing.assert_array_equal(values, again)


def _maml_tiny():
  learner = algorithms.maml(tiny_mlp_params, tiny_mlp, algorithms.mse,
                            steps=2, lr=0.1)
  return learner, learner.init(jax.random.PRNGKey(0))


def test_chunked_evaluation_equals_vmapped():
  # Batches of 8 tasks: 2 divides them, 3 leaves a short last chunk (padded),
  # 8 is one chunk, 50 is larger than the batch; 20 tasks are 2.5 batches.
  learner, meta_params = _maml_tiny()
  sampler = sinusoid.sampler(8, 5, 10)
  run = lambda c: metajax.evaluate(learner, meta_params, sampler,
                                   algorithms.mse, key=jax.random.PRNGKey(1),
                                   num_tasks=20, task_chunk=c)
  vmapped = run(0)
  for chunk in (2, 3, 8, 50, "auto"):
    chunked = run(chunk)
    assert chunked.shape == (20,) and chunked.dtype == np.float64
    np.testing.assert_allclose(chunked, vmapped, rtol=1e-5, atol=1e-7,
                               err_msg=f"task_chunk={chunk!r}")


def test_a_random_start_attack_draws_one_start_a_task_from_the_key():
  # An attack of no steps from a random start is its start alone: each
  # task's queries plus its own uniform draw in the ball.
  learner, meta_params = _maml_tiny()
  sampler = sinusoid.sampler(8, 5, 10)
  pgd = adversarial.PGD(eps=0.5, steps=0, step_size=0.1, low=-np.inf,
                        high=np.inf)
  start = adversarial.attack(learner.predict, algorithms.mse, pgd)
  run = lambda attack, chunk=0, key=1: metajax.evaluate(
      learner, meta_params, sampler, algorithms.mse,
      key=jax.random.PRNGKey(key), num_tasks=12, task_chunk=chunk,
      attack=attack)
  clean, attacked = run(None), run(start)
  assert np.all(attacked != clean)
  np.testing.assert_array_equal(attacked, run(start))
  assert np.all(run(start, key=2) != run(None, key=2))
  for chunk in (3, 5):  # 5 leaves a short last chunk, padded with tasks
    np.testing.assert_allclose(run(start, chunk), attacked, rtol=1e-5,
                               err_msg=f"task_chunk={chunk}")
  # By hand: the second batch's task 2 (task 10), from the key the batch's
  # sampler key yields for the attack.
  _, sub = jax.random.split(jax.random.split(jax.random.PRNGKey(1))[0])
  task = jax.tree.map(lambda x: x[2], sampler(sub))
  key = jax.random.split(jax.random.fold_in(sub, 1), 8)[2]
  x, y = task.query
  noisy = x + jax.random.uniform(key, x.shape, minval=-0.5, maxval=0.5)
  state = learner.adapt(meta_params, task.support)
  np.testing.assert_allclose(
      attacked[10], algorithms.mse(learner.predict(meta_params, state, noisy),
                                   y), rtol=1e-5)
  # Without a random start the attack of no steps changes nothing.
  still = adversarial.attack(learner.predict, algorithms.mse,
                             pgd._replace(random_start=False))
  np.testing.assert_array_equal(run(still), clean)


def _conv_protonet(width=8):
  net = Conv4(num_outputs=None, width=width)
  learner = algorithms.protonet(
      lambda k: net.init(k, jnp.zeros((1, 28, 28, 1))),
      lambda p, x: net.apply(p, x.astype(jnp.float32) / 255.0), ways=5)
  # Jitted: initialising op by op would compile every op separately.
  return learner, jax.jit(learner.init)(jax.random.PRNGKey(0))


def _image_tasks(seed, n_tasks, ways=5, shots=1, query=5):
  """uint8 Omniglot-shaped episodes: x `[n_tasks, ways * n, 28, 28, 1]`."""
  rng = np.random.default_rng(seed)
  images = lambda n: rng.integers(0, 256, (n_tasks, ways * n, 28, 28, 1),
                                  dtype=np.uint8)
  labels = lambda n: np.broadcast_to(np.repeat(np.arange(ways), n),
                                     (n_tasks, ways * n))
  return metajax.Task((images(shots), labels(shots)),
                      (images(query), labels(query)))


def test_chunked_scoring_of_conv_tasks_equals_vmapped_in_less_memory():
  # ProtoNet's per-task batch norm makes every task's logits depend on all of
  # its images, so a chunking that mixed or reordered tasks would show.
  learner, meta_params = _conv_protonet()
  tasks = _image_tasks(1, 12)
  temp_bytes, values = {}, {}
  for chunk in (0, 1):
    fn = jax.jit(task_metrics(learner, algorithms.accuracy, task_chunk=chunk))
    compiled = fn.lower(meta_params, tasks).compile()
    stats = compiled.memory_analysis()
    temp_bytes[chunk] = None if stats is None else stats.temp_size_in_bytes
    values[chunk] = np.asarray(compiled(meta_params, tasks))
    assert values[chunk].shape == (12,)
  np.testing.assert_allclose(values[1], values[0], atol=1e-6)
  if temp_bytes[0] is None:
    pytest.skip("this backend reports no compiled memory analysis")
  # One task's activations instead of twelve's: XLA's buffers for the
  # chunked program are a fraction of the vmapped one's.
  assert temp_bytes[1] < temp_bytes[0] / 4, temp_bytes


@contextlib.contextmanager
def _fail_after(seconds):
  """Turns a hang (a loop that never ends) into a test failure."""
  def handler(signum, frame):
    raise TimeoutError(f"still running after {seconds} s")
  previous = signal.signal(signal.SIGALRM, handler)
  signal.alarm(seconds)
  try:
    yield
  finally:
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def _evaluate(sample_tasks=None, metric_fn=algorithms.mse, num_tasks=20,
              **kwargs):
  learner, meta_params = _maml_tiny()
  with _fail_after(120):
    return metajax.evaluate(
        learner, meta_params, sample_tasks or sinusoid.sampler(8, 5, 10),
        metric_fn, key=jax.random.PRNGKey(1), num_tasks=num_tasks, **kwargs)


def test_evaluate_rejects_a_metric_that_is_not_one_scalar_per_task():
  per_example = lambda p, y: jnp.mean((p - y) ** 2, axis=-1)  # [n_query]
  with pytest.raises(ValueError, match=re.escape(
      "metric_fn(predictions float32[10, 1], query targets float32[10, 1]) "
      "must return one scalar per task, got shape (10,)")):
    _evaluate(metric_fn=per_example)
  with pytest.raises(ValueError, match=r"per task, got shape \(1,\)"):
    _evaluate(metric_fn=lambda p, y: algorithms.mse(p, y)[None])
  with pytest.raises(ValueError, match="one scalar per task, got {'mse'"):
    _evaluate(metric_fn=lambda p, y: {"mse": algorithms.mse(p, y)})
  with pytest.raises(ValueError, match="must return a real number"):
    _evaluate(metric_fn=lambda p, y: algorithms.mse(p, y) + 1j)
  # Bool and int metrics are fine, and come back as float64 [num_tasks].
  hits = _evaluate(metric_fn=lambda p, y: algorithms.mse(p, y) < 1.0)
  assert hits.shape == (20,) and hits.dtype == np.float64
  assert set(np.unique(hits)) <= {0.0, 1.0}


def test_evaluate_rejects_a_bad_num_tasks():
  for bad in (20.5, "20", True, None):
    with pytest.raises(TypeError, match="num_tasks must be an int"):
      _evaluate(num_tasks=bad)
  for bad in (0, -3):
    with pytest.raises(ValueError, match=f"num_tasks must be >= 1, got {bad}"):
      _evaluate(num_tasks=bad)
  # Any integer type; fewer tasks than one batch holds, or not whole batches.
  few, some = _evaluate(num_tasks=np.int64(3)), _evaluate(num_tasks=9)
  assert few.shape == (3,) and some.shape == (9,)
  assert few.dtype == some.dtype == np.float64
  np.testing.assert_array_equal(few, some[:3])


def test_evaluate_rejects_bad_task_batches():
  sampler = sinusoid.sampler(8, 5, 10)
  with pytest.raises(TypeError, match="must return a metajax.Task batch, got "
                                      "tuple"):
    _evaluate(lambda k: tuple(sampler(k)))
  # One task instead of a batch: its example axes are taken for task axes.
  with pytest.raises(ValueError, match="support has 5 tasks but query has 10 "
                                       "on the task axis"):
    _evaluate(lambda k: jax.tree.map(lambda x: x[0], sampler(k)))
  with pytest.raises(ValueError, match="support has 8 tasks but query has 4"):
    _evaluate(lambda k: metajax.Task(
        sampler(k).support, jax.tree.map(lambda x: x[:4], sampler(k).query)))
  # A batch of no tasks would never fill num_tasks.
  with pytest.raises(ValueError, match=re.escape(
      "returned a batch of 0 tasks (support ('float32[0, 5, 1]'")):
    _evaluate(lambda k: jax.tree.map(lambda x: x[:0], sampler(k)))
  # Inputs with 3 features for a model of 1: named with the task's shapes.
  wide = lambda k: jax.tree.map(
      lambda x: jnp.concatenate([x] * 3, axis=-1), sampler(k))
  with pytest.raises(ValueError, match=re.escape(
      "failed to adapt to and predict one task of sample_tasks(key)'s batch "
      "of 8, shaped support ('float32[5, 3]', 'float32[5, 3]')")):
    _evaluate(wide)
  with pytest.raises(ValueError, match="task chunk must be"):
    _evaluate(task_chunk=-1)
  with pytest.raises(ValueError, match="task chunk must be"):
    _evaluate(task_chunk="fast")


def _api_section(title):
  with open(os.path.join(ROOT, "docs", "api.md")) as f:
    text = f.read()
  start = text.index(f"## {title}\n")
  end = text.find("\n## ", start + 1)
  return text[start:end if end >= 0 else None]


def _resolve(dotted):
  obj = metajax
  for name in dotted.split(".")[1:]:
    obj = getattr(obj, name)
  return obj


def _documented_params(listing, name):
  """Parameter names of `name(...)` as the signature listing writes them."""
  start = listing.index(name + "(") + len(name) + 1
  depth, end = 1, start
  while depth:
    depth += {"(": 1, ")": -1}.get(listing[end], 0)
    end += 1
  params = [p.strip().lstrip("*") for p in listing[start:end - 1].split(",")]
  return [re.match(r"\w+", p).group() for p in params if p]


def test_api_doc_training_and_evaluation_is_current(capsys):
  section = _api_section("Training and evaluation")
  # Every name the section mentions exists as written, after `import
  # metajax` (metajax.evaluation the module, metajax.evaluate the function).
  names = set(re.findall(r"\bmetajax(?:\.\w+)+", section))
  assert {"metajax.evaluate", "metajax.evaluation.auc"} <= names, names
  for dotted in sorted(names):
    _resolve(dotted)
  # The signature listing (`f(args) -> result`): every function's
  # parameters must be the real ones, in order.
  listings = re.findall(r"```text\n(.*?)```", section, re.S)
  checked = set()
  for block in listings:
    for name in re.findall(r"^(metajax(?:\.\w+)+)\(", block, re.M):
      real = list(inspect.signature(_resolve(name)).parameters)
      assert _documented_params(block, name) == real, name
      checked.add(name)
  assert {"metajax.train", "metajax.evaluate",
          "metajax.restore_params"} <= checked, checked
  runnable = [compile(block, "docs/api.md", "exec") for block in
              re.findall(r"```python\n(.*?)```", section, re.S)]
  assert runnable, "no runnable example in the section"
  for code in runnable:
    exec(code, {"__name__": "api_doc"})
  assert "(60,) float64" in capsys.readouterr().out


def test_accuracy():
  logits = jnp.array([[2.0, 1.0], [0.0, 3.0], [5.0, -1.0]])
  assert float(accuracy(logits, jnp.array([0, 1, 1]))) == pytest.approx(2 / 3)
