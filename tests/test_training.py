"""The training loop: exact resume, non-finite handling, logs."""

import json
import logging
import os
import re
import shutil
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import metajax
from metajax import algorithms
from metajax.data import sinusoid
from metajax.models import MLP
from metajax.checkpoint import restore_state
from test_checkpoint import save_format_1
from test_summary import Recorder

MODEL = MLP((16,), 1)


def _learner(lr=0.01, steps=1):
  return algorithms.maml(lambda k: MODEL.init(k, jnp.zeros((1, 1))),
                         MODEL.apply, algorithms.mse, steps=steps, lr=lr)


SAMPLER = sinusoid.sampler(4, 5, 5)


def _train(workdir, num_steps, learner=None, **kw):
  kw.setdefault("log_every", 5)
  kw.setdefault("checkpoint_every", 10)
  return metajax.train(learner or _learner(), optax.adam(1e-2), SAMPLER,
                       key=jax.random.PRNGKey(0), num_steps=num_steps,
                       workdir=workdir, progress=False, **kw)


def _log(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(l) for l in f]


def test_resume_reaches_the_same_parameters_as_an_uninterrupted_run(tmp_path):
  full = _train(str(tmp_path / "full"), 30)
  part = str(tmp_path / "part")
  first = _train(part, 20)
  assert int(first.step) == 20
  resumed = _train(part, 30)
  assert int(resumed.step) == 30
  chex.assert_trees_all_equal(resumed.meta_params, full.meta_params)
  chex.assert_trees_all_equal(resumed.opt_state, full.opt_state)
  np.testing.assert_array_equal(resumed.key, full.key)
  strip = lambda rows: [{k: v for k, v in r.items()
                         if k not in ("tasks_per_s", "compile_s", "train_s")}
                        for r in rows]
  assert strip(_log(part)) == strip(_log(str(tmp_path / "full")))
  assert [r["step"] for r in _log(part)] == [5, 10, 15, 20, 25, 30]
  # Training time accumulates across the interruption.
  times = [r["train_s"] for r in _log(part)]
  assert times == sorted(times) and times[0] > 0


def test_a_checkpoint_of_the_format_before_items_resumes_exactly(tmp_path):
  full = _train(str(tmp_path / "full"), 30)
  part = str(tmp_path / "part")
  first = _train(part, 20)
  # The workdir as the code before checkpoint items left it.
  directory = os.path.join(part, "checkpoints")
  shutil.rmtree(directory)
  save_format_1(directory, 20, first._asdict(), {"run_key": [0, 0]})
  chex.assert_trees_all_equal(
      metajax.restore_params(part, _learner().init(jax.random.PRNGKey(1))),
      first.meta_params)
  resumed = _train(part, 30)
  chex.assert_trees_all_equal(resumed.meta_params, full.meta_params)
  chex.assert_trees_all_equal(resumed.opt_state, full.opt_state)
  assert sorted(os.listdir(directory)) == ["20", "30"]  # none set aside
  assert [r["step"] for r in _log(part)] == [5, 10, 15, 20, 25, 30]


def test_extra_writers_get_every_record_and_stay_open(tmp_path):
  extra = Recorder()
  _train(str(tmp_path), 10, writers=[extra])
  assert extra.records == _log(str(tmp_path)) and not extra.closed


def test_a_finished_run_is_not_trained_again(tmp_path):
  done = _train(str(tmp_path), 10)
  again = _train(str(tmp_path), 10)
  chex.assert_trees_all_equal(done.meta_params, again.meta_params)
  assert len(_log(str(tmp_path))) == 2


def test_chunking_does_not_change_the_result(tmp_path):
  """A short last chunk (23 = 4 * 5 + 3) and other chunk sizes agree."""
  a = _train(None, 23, log_every=5)
  b = _train(None, 23, log_every=23)
  assert int(a.step) == int(b.step) == 23
  chex.assert_trees_all_close(a.meta_params, b.meta_params, rtol=1e-6)


@pytest.mark.parametrize("task_chunk", [1, 2, "auto"])
def test_task_chunks_give_the_vmapped_result(task_chunk):
  """Meta-gradients taken a chunk of tasks at a time (4 tasks a batch)."""
  whole = _train(None, 10)
  chunked = _train(None, 10, task_chunk=task_chunk)
  chex.assert_trees_all_close(whole.meta_params, chunked.meta_params,
                              rtol=1e-5, atol=1e-6)


def test_task_chunk_errors():
  with pytest.raises(ValueError, match="meta-batch of 4 tasks cannot be cut "
                     "into chunks of 3"):
    _train(None, 1, task_chunk=3)
  with pytest.raises(ValueError, match="task chunk must be"):
    _train(None, 1, task_chunk="fast")
  with pytest.raises(ValueError, match="pass task_chunk=None with a mesh"):
    _train(None, 1, task_chunk=2, mesh=metajax.task_mesh())


def test_a_learner_of_dependent_tasks_is_trained_on_whole_batches():
  """Reptile's sequential_tasks: "auto" keeps the batch whole, a chunk size
  is refused, since a chunk's tasks would start from another state."""
  learner = algorithms.reptile(
      lambda k: MODEL.init(k, jnp.zeros((1, 1))), MODEL.apply, algorithms.mse,
      steps=2, inner_optimizer=optax.adam(0.01), carry_inner_state=True,
      sequential_tasks=True)
  train = lambda chunk: metajax.train(
      learner, algorithms.reptile_lib.carry_state(optax.sgd(1.0)), SAMPLER,
      key=jax.random.PRNGKey(0), num_steps=3, log_every=3, progress=False,
      task_chunk=chunk)
  whole = train(None)
  chex.assert_trees_all_equal(train("auto").meta_params, whole.meta_params)
  assert int(whole.meta_params["inner_state"][0].count) == 3 * 2 * 4
  with pytest.raises(ValueError, match="tasks_independent=False"):
    train(1)


def test_compile_time_is_printed_with_the_progress_bar(capsys):
  metajax.train(_learner(), optax.adam(1e-2), SAMPLER,
                key=jax.random.PRNGKey(0), num_steps=2, log_every=1,
                desc="tiny", progress=True)
  assert re.search(r"tiny: compiled in \d+\.\d s", capsys.readouterr().out)


def test_without_the_bar_each_record_is_logged_as_one_line(caplog):
  caplog.set_level(logging.INFO)
  metajax.train(_learner(), optax.adam(1e-2), SAMPLER,
                key=jax.random.PRNGKey(0), num_steps=3, log_every=1,
                desc="tiny", progress=False)
  lines = [r.getMessage() for r in caplog.records
           if r.getMessage().startswith("tiny: step ")]
  assert [line.split(",")[0] for line in lines] == [
      "tiny: step 1/3", "tiny: step 2/3", "tiny: step 3/3"]
  assert all(re.search(r", loss=[\d.e+-]+", line) for line in lines)


def test_loss_decreases_on_sinusoids():
  state = _train(None, 1000, log_every=250)
  learner = _learner()
  before = metajax.evaluate(learner, learner.init(jax.random.split(
      jax.random.PRNGKey(0))[0]), SAMPLER, algorithms.mse,
      key=jax.random.PRNGKey(9), num_tasks=200)
  after = metajax.evaluate(learner, state.meta_params, SAMPLER,
                           algorithms.mse, key=jax.random.PRNGKey(9),
                           num_tasks=200)
  assert after.mean() < 0.75 * before.mean()


def test_non_finite_meta_gradient_fails_fast_and_keeps_the_last_good_state(
    tmp_path):
  # An inner learning rate of 1e4 makes the adapted parameters overflow.
  exploding = _learner(lr=1e4, steps=5)
  with pytest.raises(FloatingPointError,
                     match=r"meta-train: non-finite values at step 0 \(in: "
                     r"loss/metrics"):
    _train(str(tmp_path), 20, learner=exploding)
  mngr_dir = tmp_path / "checkpoints"
  assert sorted(os.listdir(mngr_dir)) == ["0"]
  # Nothing was lost: the checkpoint holds the finite initial parameters.
  init = metajax.init_state(exploding, optax.adam(1e-2), jax.random.PRNGKey(0))
  restored = restore_state(str(tmp_path), init)
  chex.assert_trees_all_equal(restored.meta_params, init.meta_params)
  assert int(restored.step) == 0 and int(restored.nonfinite_step) == 0
  # Resuming with the fault fixed retries the step that failed.
  fixed = _train(str(tmp_path), 10, learner=_learner(lr=0.01, steps=5))
  assert int(fixed.step) == 10
  log = _log(str(tmp_path))
  assert [r["step"] for r in log] == [0, 5, 10]
  assert log[0]["nonfinite_steps"] == 1 and "loss" not in log[0]


def test_without_a_workdir_the_last_finite_state_comes_with_the_error():
  with pytest.raises(FloatingPointError, match="error's `state` attribute"
                     ) as info:
    _train(None, 20, learner=_learner(lr=1e4, steps=5))
  state = info.value.state
  assert int(state.step) == 0 and int(state.nonfinite_step) == 0
  for leaf in jax.tree.leaves(state.meta_params):
    assert bool(jnp.all(jnp.isfinite(leaf)))


def test_non_finite_steps_can_be_skipped_instead(tmp_path):
  exploding = _learner(lr=1e4, steps=5)
  state = _train(str(tmp_path), 10, learner=exploding,
                 halt_on_nonfinite=False)
  assert int(state.step) == 10 and int(state.nonfinite_step) == 0
  assert [r["nonfinite_steps"] for r in _log(str(tmp_path))] == [5, 5]
  for leaf in jax.tree.leaves(state.meta_params):
    assert bool(jnp.all(jnp.isfinite(leaf)))


def test_bad_arguments_are_rejected():
  with pytest.raises(ValueError, match="log_every must be >= 1, got 0"):
    _train(None, 10, log_every=0)
  bad_sampler = lambda key: metajax.Task((jnp.zeros((4, 5, 1)),),
                                         (jnp.zeros((3, 5, 1)),))
  with pytest.raises(ValueError, match="support has 4 tasks but query has 3"):
    metajax.train(_learner(), optax.adam(1e-3), bad_sampler,
                  key=jax.random.PRNGKey(0), num_steps=1, progress=False)


def test_tensorboard_events_hold_the_logged_metrics(tmp_path):
  accumulator = pytest.importorskip(
      "tensorboard.backend.event_processing.event_accumulator")
  _train(str(tmp_path), 10)
  _train(str(tmp_path), 20)  # resumed: its events go to a file of their own
  events = accumulator.EventAccumulator(str(tmp_path / "tensorboard"))
  events.Reload()
  loss = events.Scalars("loss")
  assert [e.step for e in loss] == [5, 10, 15, 20]
  assert [pytest.approx(e.value) for e in loss] == [
      r["loss"] for r in _log(str(tmp_path))]


def test_training_with_a_workdir_does_not_import_tensorflow(tmp_path):
  # TensorFlow takes seconds to import; the event files must not need it.
  pytest.importorskip("tensorboard")
  code = (f"import json, sys; sys.path.insert(0, {os.path.dirname(__file__)!r})"
          f"; import test_training; test_training._train({str(tmp_path)!r}, 5); "
          f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0]"
          f" in ('tensorflow', 'tensorboard'))))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                       text=True, timeout=300, check=True).stdout
  modules = json.loads(out.strip().splitlines()[-1])
  assert "tensorboard.summary.writer.record_writer" in modules
  assert not [m for m in modules if m.startswith("tensorflow")]
  assert any(n.startswith("events.out.tfevents.")
             for n in os.listdir(tmp_path / "tensorboard"))


def _scored_eval(scores):
  """An eval_fn reporting the next of `scores`, and the parameters it saw."""
  calls = []

  def eval_fn(meta_params):
    calls.append(jax.tree.map(np.asarray, meta_params))
    return {"score": scores[len(calls) - 1]}
  return eval_fn, calls


def test_keep_best_keeps_the_best_scoring_parameters_across_a_resume(
    tmp_path):
  scores = [0.1, 0.5, 0.3, 0.2, 0.4, 0.0]
  eval_fn, seen = _scored_eval(scores)
  part = str(tmp_path / "part")
  _train(part, 15, eval_fn=eval_fn, eval_every=5, keep_best="score")
  # The resumed call evaluates at steps 20, 25, 30 with the later scores.
  resumed_fn, resumed_seen = _scored_eval(scores[3:])
  final = _train(part, 30, eval_fn=resumed_fn, eval_every=5,
                 keep_best="score")
  assert [r["step"] for r in _log(part) if "score" in r] == [5, 10, 15, 20,
                                                             25, 30]
  params, info = metajax.restore_best(part, final.meta_params)
  assert info == {"step": 10, "metric": "score", "score": 0.5}
  chex.assert_trees_all_close(params, seen[1])
  assert len(seen) + len(resumed_seen) == 6


def test_keep_best_errors(tmp_path):
  eval_fn, _ = _scored_eval([0.0] * 10)
  with pytest.raises(ValueError, match="keep_best='score' needs workdir"):
    _train(None, 10, eval_fn=eval_fn, eval_every=5, keep_best="score")
  with pytest.raises(KeyError, match="'auc' is not among"):
    _train(str(tmp_path / "a"), 10, eval_fn=eval_fn, eval_every=5,
           keep_best="auc")
  with pytest.raises(FileNotFoundError, match="no best meta-parameters"):
    metajax.restore_best(str(tmp_path / "b"), {})


def _checkpoint_files(folder):
  found = []
  for root, _, files in os.walk(folder):
    found += [os.path.join(root, n) for n in files
              if n != metajax.checkpoint.MANIFEST]
  return sorted(found, key=os.path.getsize, reverse=True)


def test_a_corrupt_newest_checkpoint_is_skipped_and_the_run_still_exact(
    tmp_path):
  full = _train(str(tmp_path / "full"), 30)
  part = str(tmp_path / "part")
  _train(part, 20)  # checkpoints at 10 and 20
  # A flipped byte in the newest checkpoint's largest array file.
  victim = _checkpoint_files(os.path.join(part, "checkpoints", "20"))[0]
  with open(victim, "r+b") as f:
    data = bytearray(f.read())
    data[len(data) // 2] ^= 0x40
    f.seek(0)
    f.write(data)
  resumed = _train(part, 30)  # from step 10, not from the corrupt 20
  chex.assert_trees_all_equal(resumed.meta_params, full.meta_params)
  chex.assert_trees_all_equal(resumed.opt_state, full.opt_state)
  assert [r["step"] for r in _log(part)] == [5, 10, 15, 20, 25, 30]
  assert len(os.listdir(os.path.join(part, "checkpoints", "corrupt"))) == 1


def test_the_last_finite_state_checkpointed_is_finite(tmp_path):
  # Finite gradients, but an outer rate that sends the parameters to inf.
  with pytest.raises(FloatingPointError, match=r"updated parameters"):
    metajax.train(_learner(), optax.sgd(1e38), SAMPLER,
                  key=jax.random.PRNGKey(0), num_steps=20,
                  workdir=str(tmp_path), log_every=5, progress=False)
  init = metajax.init_state(_learner(), optax.sgd(1e38),
                            jax.random.PRNGKey(0))
  restored = restore_state(str(tmp_path), init)
  for leaf in jax.tree.leaves((restored.meta_params, restored.opt_state)):
    assert bool(jnp.all(jnp.isfinite(leaf)))


def _huge_gradient_learner():
  """Finite loss and gradients whose norm overflows float32 (a divergence)."""
  def meta_grad(params, tasks, key):
    del tasks, key
    loss, grads = jax.value_and_grad(lambda p: 1e19 * jnp.sum(p))(params)
    return grads, {"loss": loss}
  return algorithms.MetaLearner(
      init=lambda key: jnp.ones((4,)), meta_grad=meta_grad,
      adapt=lambda params, support: params,
      predict=lambda params, state, x: x)


def test_divergence_stops_at_the_first_non_finite_gradient_norm(tmp_path):
  with pytest.raises(FloatingPointError,
                     match=r"huge: non-finite values at step 0 \(in: "
                           r"loss/metrics/gradient norm\)"):
    metajax.train(_huge_gradient_learner(), optax.adam(1e-3), SAMPLER,
                  key=jax.random.PRNGKey(0), num_steps=10,
                  workdir=str(tmp_path), log_every=5, progress=False,
                  desc="huge")
  assert os.listdir(tmp_path / "checkpoints") == ["0"]


def test_a_resume_with_another_key_or_shape_or_fewer_steps_is_refused(
    tmp_path):
  _train(str(tmp_path), 10)
  with pytest.raises(ValueError, match="another seed"):
    metajax.train(_learner(), optax.adam(1e-2), SAMPLER,
                  key=jax.random.PRNGKey(1), num_steps=20,
                  workdir=str(tmp_path), log_every=5, progress=False)
  wider = MLP((32,), 1)
  learner = algorithms.maml(lambda k: wider.init(k, jnp.zeros((1, 1))),
                            wider.apply, algorithms.mse, steps=1, lr=0.01)
  with pytest.raises(metajax.checkpoint.CheckpointMismatchError,
                     match=r"Dense_0'\]\['kernel'\]: checkpoint "
                           r"float32\[1, 16\], now float32\[1, 32\]"):
    _train(str(tmp_path), 20, learner=learner)
  with pytest.raises(ValueError, match="at step 10, past num_steps=5"):
    _train(str(tmp_path), 5)
  # None of these touched the run: it resumes as if never interrupted.
  assert _train(str(tmp_path), 10).step == 10
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["10"]


@pytest.mark.parametrize("bad", [2.5, "10", True])
def test_step_counts_must_be_integers(bad):
  with pytest.raises(TypeError, match="num_steps must be an integer"):
    _train(None, bad)


def test_a_workdir_held_by_another_run_is_refused(tmp_path):
  code = ("import time; from metajax import workdir\n"
          f"with workdir.hold({str(tmp_path)!r}):\n"
          "  print('held', flush=True); time.sleep(600)\n")
  proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                          text=True, cwd=os.path.dirname(os.path.dirname(
                              os.path.abspath(__file__))))
  try:
    assert proc.stdout.readline().strip() == "held"
    with pytest.raises(metajax.workdir.WorkdirBusyError,
                       match=f"PID {proc.pid}"):
      _train(str(tmp_path), 10)
    assert not os.path.exists(tmp_path / "checkpoints")
  finally:
    proc.kill()
    proc.wait()
