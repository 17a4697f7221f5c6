"""The few-shot vision experiment: files, exact resume after a kill, reuse.

The main run is tested on the real Omniglot, or, on a clone without the
real data, on synthetic files in its formats (`synthetic.VARIANT`).
"""

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import metajax
from metajax import checkpoint
from metajax.data.vision import omniglot
from metajax.experiments import fewshot_vision as fv
import synthetic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(data_dir, cache_dir, **kw):
  base = dict(algorithm="protonet", ways=5, shots=1, query=2,
              test_ways=(5, 20), test_query=3, width=8, num_steps=20,
              log_every=5, eval_every=10, val_episodes=10, eval_episodes=20,
              checkpoint_every=10, data_dir=data_dir, cache_dir=cache_dir,
              progress=False)
  base.update(kw)
  return fv.Config(**base)


@pytest.fixture(scope="module", params=[synthetic.VARIANT])
def data(request, tmp_path_factory):
  """(data folder, cache folder) of synthetic or real Omniglot."""
  if request.param == "synthetic":
    root = str(tmp_path_factory.mktemp("synthetic_data"))
    return synthetic.write_omniglot(root), os.path.join(root, "cache")
  return (request.getfixturevalue("shared_data_dir"),
          request.getfixturevalue("omniglot_cache"))


@pytest.fixture(scope="module")
def protonet_run(tmp_path_factory, data):
  workdir = str(tmp_path_factory.mktemp("protonet"))
  results = fv.train_and_evaluate(_config(*data), workdir)
  return workdir, results


@pytest.mark.slow
def test_run_writes_results_curves_logs_and_checkpoints(protonet_run):
  workdir, results = protonet_run
  with open(os.path.join(workdir, "results.json")) as f:
    assert json.load(f) == json.loads(json.dumps(results))
  assert results["steps"] == 20 and results["experiment"] == "fewshot_vision"
  assert 0 < results["train_time_s"][""] < results["wall_time_s"]
  assert [(t["ways"], t["shots"], t["episodes"]) for t in results["test"]] == [
      (5, 1, 20), (20, 1, 20)]
  for t in results["test"]:
    assert 0.0 <= t["accuracy"] <= 1.0 and t["ci95"] > 0
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(l) for l in f]
  assert [r["step"] for r in rows] == [5, 10, 15, 20]
  assert "val_accuracy" in rows[1] and "accuracy" in rows[0]
  with open(os.path.join(workdir, "curves.png"), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "20"))
  assert "20-way 1-shot" in fv.format_results(results)


@pytest.mark.slow
def test_predictor_takes_raw_drawings_of_a_custom_episode(protonet_run,
                                                          data):
  """A 10-way 1-shot episode of raw drawings of the data folder."""
  workdir, _ = protonet_run
  raw = omniglot.load_npz(os.path.join(data[0], "omniglot"))
  support_x = raw.images[:10, 0]              # uint8 [10, 105, 105], 255 paper
  query_x = raw.images[:10, 1:4].reshape(30, 105, 105)
  support_y = np.arange(10)
  predict = fv.load_predictor(workdir)
  logits = predict(support_x, support_y, query_x)
  assert logits.shape == (30, 10)
  # The same numbers through the training path on preprocessed arrays.
  config = fv.read_config(workdir)
  learner = fv.make_learner(config, 10)
  like = learner.init(jax.random.PRNGKey(0))
  meta_params = checkpoint.restore_params(workdir, like)
  prep = lambda x: omniglot.transform(x)[..., None]
  state = learner.adapt(meta_params, (prep(support_x), jnp.asarray(support_y)))
  np.testing.assert_allclose(
      logits, learner.predict(meta_params, state, prep(query_x)), rtol=1e-5,
      atol=1e-4)
  # A query identical to a support image sits on its prototype.
  own = predict(support_x, support_y, support_x[::-1])
  np.testing.assert_array_equal(np.argmax(own, -1), support_y[::-1])
  jitted = jax.jit(predict, static_argnames="ways")
  np.testing.assert_allclose(jitted(support_x, support_y, query_x, ways=10),
                             logits, rtol=1e-5, atol=1e-4)


@pytest.mark.slow
def test_predictor_names_inputs_it_would_misread(protonet_run):
  """Each error comes at the call, before any image reaches the network."""
  workdir, _ = protonet_run
  predict = fv.load_predictor(workdir)
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (5, 105, 105), dtype=np.uint8)
  y = np.arange(5)
  assert predict(x, y, x[:3]).shape == (3, 5)
  with pytest.raises(ValueError, match=r"support_x must be uint8 \[n, 105, "
                     r"105\] omniglot images .*; got float32 \[5, 105, 105\]"):
    predict(x.astype(np.float32) / 255, y, x)
  with pytest.raises(ValueError, match=r"query_x must be uint8 \[n, 105, 105\]"
                     r".*; got uint8 \[3, 105, 105, 1\]"):
    predict(x, y, x[:3, ..., None])
  with pytest.raises(ValueError, match=r"query_x .*; got uint8 \[3, 28, 28\]"):
    predict(x, y, x[:3, :28, :28])
  # 1-based labels used to make a 6-way episode with an empty class 0.
  with pytest.raises(ValueError, match=r"support_y has no example of class "
                     r"\[0\] of the 6-way episode \(labels from 1 to 5\)"):
    predict(x, y + 1, x)
  with pytest.raises(ValueError, match=r"support_y must hold labels in "
                     r"\[0, 5\).*got labels from 1 to 5"):
    predict(x, y + 1, x, ways=5)
  with pytest.raises(ValueError, match=r"support_y has no example of classes "
                     r"\[5, 6\] of the 7-way episode"):
    predict(x, y, x, ways=7)
  with pytest.raises(ValueError, match=r"support_y must be integer labels "
                     r"\[n_support\] = \[5\].*got float64 \[5\]"):
    predict(x, y.astype(np.float64), x)
  with pytest.raises(ValueError, match=r"support_y must be integer labels.*got "
                     r"int64 \[4\]"):
    predict(x, y[:4], x)
  with pytest.raises(TypeError, match=r"ways must be a Python int >= 1.*got "
                     r"float 5.0"):
    predict(x, y, x, ways=5.0)
  with pytest.raises(TypeError, match=r"pass ways=\.\.\. explicitly"):
    jax.jit(predict)(x, y, x)


def test_predictor_inputs_of_colour_datasets_keep_their_channels():
  config = fv.Config(dataset="mini_imagenet", data_dir="unused")
  images = np.zeros((4, 84, 84, 3), np.uint8)
  assert fv._check_episode(config, images, np.arange(4) % 2, images,
                           None) == 2
  with pytest.raises(ValueError, match=r"support_x must be uint8 \[n, 84, 84, "
                     r"3\] mini_imagenet images .*; got uint8 \[4, 84, 84\]"):
    fv._check_episode(config, images[..., 0], np.arange(4), images, None)
  cifar = fv.Config(dataset="cifar_fs", data_dir="unused")
  with pytest.raises(ValueError, match=r"query_x must be uint8 \[n, 32, 32, "
                     r"3\].*got uint8 \[4, 84, 84, 3\]"):
    fv._check_episode(cifar, images[:, :32, :32], np.arange(4), images, None)


def _flags(workdir, data_dir, cache_dir, num_steps, compilation_cache):
  return [sys.executable, os.path.join(ROOT, "experiments",
                                       "fewshot_vision.py"),
          f"--workdir={workdir}", f"--data_dir={data_dir}",
          f"--cache_dir={cache_dir}",
          f"--compilation_cache={compilation_cache}",
          "--algorithm=protonet", "--ways=5", "--query=2", "--width=8",
          "--test_ways=5", "--test_query=2", f"--num_steps={num_steps}",
          "--log_every=10", "--checkpoint_every=50", "--eval_every=1000",
          "--val_episodes=0", "--eval_episodes=10", "--progress=false"]


def _restore_state(workdir, config):
  learner = fv.make_learner(config, config.ways)
  like = metajax.init_state(learner, fv.make_optimizer(config),
                            jax.random.PRNGKey(0))
  return checkpoint.restore_state(workdir, like)


@pytest.mark.slow
def test_killed_run_resumes_to_the_parameters_of_an_uninterrupted_run(
    tmp_path, shared_data_dir, omniglot_cache):
  steps = 600
  killed = str(tmp_path / "killed")
  # The resumed run loads what the killed one compiled, as a rerun would;
  # so does the uninterrupted run in this process, from the tests' cache.
  cache = os.environ.get("METAJAX_TEST_XLA_CACHE") or str(tmp_path / "xla")
  flags = _flags(killed, shared_data_dir, omniglot_cache, steps, cache)
  proc = subprocess.Popen(flags, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
  log = os.path.join(killed, "metrics.jsonl")
  deadline = time.time() + 300
  last = 0
  while time.time() < deadline and proc.poll() is None:
    if os.path.exists(log):
      with open(log) as f:
        lines = f.readlines()
      last = json.loads(lines[-1])["step"] if lines else 0
      if last >= 100:
        break
    time.sleep(0.02)
  assert proc.poll() is None, "the run ended before it could be killed"
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert 100 <= last < steps
  resumed = subprocess.run(flags, capture_output=True, text=True,
                           timeout=600, check=False)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  # The uninterrupted run, in this process, with the same configuration.
  config = fv.read_config(killed)
  full = str(tmp_path / "full")
  fv.train_and_evaluate(config, full)
  a, b = _restore_state(killed, config), _restore_state(full, config)
  assert int(a.step) == int(b.step) == steps
  chex.assert_trees_all_equal(a.meta_params, b.meta_params)
  chex.assert_trees_all_equal(a.opt_state, b.opt_state)
  with open(os.path.join(killed, "results.json")) as f1, open(
      os.path.join(full, "results.json")) as f2:
    assert json.load(f1)["test"] == json.load(f2)["test"]


def _check_exact_resume(config, tmp_path):
  """Trains `config` (6 steps) in two runs of 3 and in one; returns the
  state of the first after checking both reach the same parameters and
  test scores."""
  part = str(tmp_path / "part")
  fv.train_and_evaluate(dataclasses.replace(config, num_steps=3), part)
  resumed = fv.train_and_evaluate(config, part)
  full = str(tmp_path / "full")
  assert fv.train_and_evaluate(config, full)["test"] == resumed["test"]
  a, b = _restore_state(part, config), _restore_state(full, config)
  assert int(a.step) == 6
  chex.assert_trees_all_equal(a.meta_params, b.meta_params)
  return a


@pytest.mark.slow
@pytest.mark.parametrize("pipeline", ["numpy", "tf"])
def test_host_built_episodes_train_and_resume_exactly(tmp_path, data,
                                                      pipeline):
  config = _config(*data, pipeline=pipeline, val_episodes=0, test_ways=(5,),
                   eval_episodes=10, num_steps=6, log_every=3,
                   checkpoint_every=3)
  _check_exact_resume(config, tmp_path)


def test_bad_configurations_are_named(shared_data_dir, omniglot_cache,
                                      tmp_path):
  with pytest.raises(ValueError, match=r"tested 5-way only; got "
                     r"test_ways=\(20,\)"):
    fv.train_and_evaluate(_config(shared_data_dir, omniglot_cache,
                                  algorithm="maml", test_ways=(20,)),
                          str(tmp_path))
  with pytest.raises(ValueError, match=r"of the train split has 20 examples, "
                     r"fewer than shots \+ query = 21"):
    fv.train_and_evaluate(_config(shared_data_dir, omniglot_cache, shots=1,
                                  query=20), str(tmp_path))
  with pytest.raises(FileNotFoundError, match="omniglot_background_105.npz"):
    fv.train_and_evaluate(_config(str(tmp_path), omniglot_cache),
                          str(tmp_path / "w"))
  with pytest.raises(FileNotFoundError, match="holds no run of this "
                     "experiment"):
    fv.load_predictor(str(tmp_path / "nothing"))


@pytest.mark.slow
def test_docs_example_runs_on_a_trained_workdir(protonet_run,
                                                shared_data_dir):
  # The example only reads the workdir, so the module's run serves; it was
  # trained on the real drawings whenever they are here to test with.
  workdir = protonet_run[0]
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, "docs", "examples",
                                    "custom_episode.py"),
       f"--workdir={workdir}",
       f"--images={shared_data_dir}/omniglot/images_background_small1.zip"],
      capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "20-way 1-shot episode from Balinese/character01" in proc.stdout
  assert "accuracy" in proc.stdout and "on 60 query drawings" in proc.stdout


def test_episodes_that_cannot_be_drawn_are_refused_before_training(
    shared_data_dir, omniglot_cache, tmp_path):
  workdir = str(tmp_path / "w")
  # 1,692 test classes (Vinyals split), 20 drawings of each.
  with pytest.raises(ValueError, match=r"2000-way episodes need 2000 classes "
                     r"but the test split has 1692"):
    fv.train_and_evaluate(_config(shared_data_dir, omniglot_cache,
                                  test_ways=(5, 2000)), workdir)
  with pytest.raises(ValueError, match=r"of the test split has 20 examples, "
                     r"fewer than shots \+ query = 22"):
    fv.train_and_evaluate(_config(shared_data_dir, omniglot_cache,
                                  test_shots=2, test_query=20,
                                  val_episodes=0), workdir)
  # Refused before anything was trained or written.
  assert not os.path.exists(os.path.join(workdir, "checkpoints"))
  assert not os.path.exists(os.path.join(workdir, "config.json"))


@pytest.mark.parametrize("field,value,message", [
    ("meta_batch_size", 0, "meta_batch_size must be >= 1"),
    ("query", -1, "query must be >= 1"),
    ("width", 0, "width must be >= 1"),
    ("ways", 1, "ways must be >= 2"),
    ("outer_lr", 0.0, "outer_lr must be a finite learning rate > 0"),
    ("inner_lr", -0.4, "inner_lr must be a finite learning rate > 0"),
    ("outer_lr", float("nan"), "outer_lr must be a finite learning rate"),
    ("imaml_reg", 0.0, "imaml_reg must be finite and > 0, got 0.0"),
    ("imaml_damping", -1.0, "imaml_damping must be finite and >= 0, got -1.0"),
    ("cg_steps", 0, "cg_steps must be >= 1"),
    ("aq_eps", -1.0, "aq_eps must be finite and >= 0, got -1.0"),
    ("test_attack_step_size", float("inf"), "test_attack_step_size must be "
     "finite"),
    ("test_attack_steps", -1, "test_attack_steps must be >= 0"),
    ("probe_c", 0.0, "probe_c must be finite and > 0"),
    ("distill_weight", 1.5, r"distill_weight must be in \[0, 1\]"),
    ("distill_from", "workdirs/t", "distill_from is for --algorithm=pretrain"),
    ("inner_optimizer", "adam", "inner_optimizer='adam' is for maml, fomaml, "
     "anil, imaml and reptile; protonet takes gradient descent steps"),
    ("inner_minibatches", True, "inner_minibatches is for "
     "--algorithm=reptile, not protonet"),
    ("lr_anneal_steps", -1, "lr_anneal_steps must be >= 0"),
    ("carry_inner_state", True, r"carry_inner_state carries reptile's inner "
     r"optimiser's state; it needs --algorithm=reptile \(got protonet\)"),
    ("hallucinate", -1, "hallucinate must be >= 0"),
    ("matching_scale", 0.0, "matching_scale must be finite and > 0"),
])
def test_bad_flags_are_named_before_any_work(field, value, message):
  with pytest.raises(ValueError, match=message):
    _config("/nonexistent", "", **{field: value}).validate()


def test_reptile_minibatches_must_split_the_episode_evenly():
  config = _config("/nonexistent", "", algorithm="reptile", ways=5, shots=1,
                   query=9, test_ways=(5,), inner_minibatches=True,
                   inner_steps=5)
  config.validate()  # 50 images in 5 minibatches of 10.
  with pytest.raises(ValueError, match=r"each training episode's 50 images "
                     r"\(ways 5 \* \(shots 1 \+ query 9\)\) into "
                     r"inner_steps=3 equal minibatches"):
    dataclasses.replace(config, inner_steps=3).validate()
  with pytest.raises(ValueError, match="two schedules of the outer rate"):
    dataclasses.replace(config, lr_halve_every=10,
                        lr_anneal_steps=10).validate()
  with pytest.raises(ValueError, match=r"an --inner_optimizer with a state "
                     r"\(got sgd\)"):
    dataclasses.replace(config, carry_inner_state=True).validate()
  with pytest.raises(ValueError, match="it needs --carry_inner_state"):
    dataclasses.replace(config, sequential_tasks=True).validate()
  carried = dataclasses.replace(config, inner_optimizer="adam_b1_0",
                                carry_inner_state=True, sequential_tasks=True)
  carried.validate()
  with pytest.raises(ValueError, match="cannot be split over devices"):
    dataclasses.replace(carried, shard_tasks=True).validate()


@pytest.mark.slow
@pytest.mark.parametrize("sequential_tasks", [False, True])
def test_reptile_with_a_carried_inner_state_trains_and_resumes_exactly(
    tmp_path, data, sequential_tasks):
  config = _config(*data, algorithm="reptile", query=1, test_ways=(5,),
                   inner_steps=2, inner_lr=0.01, inner_optimizer="adam_b1_0",
                   inner_minibatches=True, carry_inner_state=True,
                   sequential_tasks=sequential_tasks,
                   outer_optimizer="sgd", outer_lr=1.0, lr_anneal_steps=6,
                   meta_batch_size=2, val_episodes=0, eval_episodes=10,
                   num_steps=6, log_every=3, checkpoint_every=3)
  a = _check_exact_resume(config, tmp_path)
  # Six meta-steps of two inner steps, for one task's state after another
  # when sequential, for each task from the same state otherwise.
  assert int(a.meta_params["inner_state"][0].count) == (
      24 if sequential_tasks else 12)


def test_the_outer_rate_anneals_linearly_to_zero():
  """--outer_optimizer=sgd at --outer_lr with --lr_anneal_steps: the step is
  -rate(t) * grad, rate(t) falling linearly from outer_lr to 0 at t = N."""
  opt = fv.make_optimizer(_config("/nonexistent", "", outer_optimizer="sgd",
                                  outer_lr=1.0, lr_anneal_steps=4))
  grad = {"w": jnp.array([2.0, -1.0])}
  state = opt.init(grad)
  steps = []
  for _ in range(6):
    update, state = opt.update(grad, state)
    steps.append(np.asarray(update["w"]))
  for t, rate in enumerate([1.0, 0.75, 0.5, 0.25, 0.0, 0.0]):
    np.testing.assert_allclose(steps[t], [-2.0 * rate, rate], rtol=1e-6)
  # Adam stays the default.
  adam = fv.make_optimizer(_config("/nonexistent", "", outer_lr=0.1))
  update, _ = adam.update(grad, adam.init(grad))
  np.testing.assert_allclose(update["w"], [-0.1, 0.1], rtol=1e-4)


@pytest.mark.slow
def test_a_rerun_with_other_training_settings_is_refused(protonet_run):
  workdir, results = protonet_run
  config = fv.read_config(workdir)
  with open(os.path.join(workdir, "results.json")) as f:
    before = f.read()
  changed = fv.Config(**{**vars(config), "seed": 1, "width": 16})
  with pytest.raises(ValueError) as info:
    fv.train_and_evaluate(changed, workdir)
  message = str(info.value)
  assert "--seed: 0 in the workdir, 1 now" in message
  assert "--width: 8 in the workdir, 16 now" in message
  with open(os.path.join(workdir, "results.json")) as f:
    assert f.read() == before  # nothing relabelled
  assert fv.read_config(workdir) == config


@pytest.mark.slow
def test_a_finished_run_is_rescored_under_attack(protonet_run, tmp_path):
  """--test_attack_steps re-evaluates a finished workdir (no training) on
  the same test episodes, attacked: the natural learner loses accuracy."""
  workdir = str(tmp_path / "copy")
  shutil.copytree(protonet_run[0], workdir)
  config = dataclasses.replace(fv.read_config(workdir), test_attack_steps=5,
                               test_attack_eps=64.0,
                               test_attack_step_size=16.0)
  results = fv.train_and_evaluate(config, workdir)
  assert results["steps"] == protonet_run[1]["steps"]
  for clean, now in zip(protonet_run[1]["test"], results["test"]):
    assert now["accuracy"] == clean["accuracy"]
    attack = now["attack"]
    assert (attack["eps"], attack["steps"], attack["step_size"]) == (
        64.0, 5, 16.0)
    assert attack["robust_accuracy"] < clean["accuracy"] - 0.1
  assert "under PGD (eps 64/255, 5 steps of 16/255)" in fv.format_results(
      results)
  # From random starts in the ball: the same clean scores, the start named.
  config = dataclasses.replace(config, test_attack_random_start=True)
  again = fv.train_and_evaluate(config, workdir)
  for before, now in zip(results["test"], again["test"]):
    assert now["accuracy"] == before["accuracy"]
    assert (before["attack"]["random_start"], now["attack"]["random_start"]
            ) == (False, True)
    assert now["attack"]["robust_accuracy"] < now["accuracy"] - 0.1
  assert "5 steps of 16/255 from a random start)" in fv.format_results(again)


@pytest.mark.slow
def test_adversarial_querying_trains_on_attacked_queries(data, tmp_path):
  """An --adversarial_query run's training loss is its loss on attacked
  queries: higher than a natural run's at the same step and parameters."""
  config = _config(*data, num_steps=5, log_every=5, eval_every=0,
                   test_ways=(5,), eval_episodes=4, adversarial_query=True,
                   aq_eps=64.0, aq_step_size=32.0, aq_steps=2)
  results = fv.train_and_evaluate(config, str(tmp_path / "aq"))
  assert results["steps"] == 5
  learner = fv.make_learner(config, 5)
  natural = fv.make_learner(dataclasses.replace(config,
                                                adversarial_query=False), 5)
  params = checkpoint.restore_params(str(tmp_path / "aq"),
                                     learner.init(jax.random.PRNGKey(0)))
  tasks = fv.train_tasks(config, fv.load_splits(config)["train"])(
      jax.random.PRNGKey(7))
  _, attacked = jax.jit(learner.meta_grad)(params, tasks,
                                           jax.random.PRNGKey(8))
  _, clean = jax.jit(natural.meta_grad)(params, tasks, jax.random.PRNGKey(8))
  assert attacked["loss"] > clean["loss"]


@pytest.mark.slow
def test_whole_class_pretraining_and_its_born_again_student(data, tmp_path):
  teacher_dir, student_dir = str(tmp_path / "teacher"), str(tmp_path / "s")
  base = dict(algorithm="pretrain", batch_size=32, num_steps=10,
              log_every=5, eval_every=0, test_ways=(5,), eval_episodes=6,
              probe_steps=10)
  teacher = fv.train_and_evaluate(_config(*data, **base), teacher_dir)
  assert teacher["steps"] == 10 and 0 <= teacher["test"][0]["accuracy"] <= 1
  # A teacher of another network is refused before any training.
  with pytest.raises(ValueError, match=r"--width=8 there, 16 here"):
    fv.train_and_evaluate(_config(*data, **base, width=16,
                                  distill_from=teacher_dir), student_dir)
  assert not os.path.exists(os.path.join(student_dir, "checkpoints"))
  student = fv.train_and_evaluate(
      _config(*data, **base, distill_from=teacher_dir), student_dir)
  assert student["steps"] == 10
  records = metajax.summary.read_metrics(
      os.path.join(student_dir, "metrics.jsonl"))
  assert all(0 <= r["agreement"] <= 1 for r in records if "agreement" in r)
  assert any("agreement" in r for r in records)
  # Its predictor classifies raw drawings like any learner's.
  predict = fv.load_predictor(student_dir)
  rng = np.random.default_rng(0)
  drawings = rng.integers(0, 2, (10, 105, 105)).astype(np.uint8) * 255
  logits = predict(drawings[:5], np.arange(5), drawings[5:])
  assert logits.shape == (5, 5) and np.all(np.isfinite(logits))
