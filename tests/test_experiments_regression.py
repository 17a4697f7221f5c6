"""The regression experiment: neural processes against MAML, end to end.

Networks of width 8 trained for 4 steps: XLA's compile time, not the
arithmetic, is what these runs cost on a small CPU (most of it the four
learners' training steps, each with the GP sampler inside), so every run
after the first trains and scores one learner on one kernel.
"""

import dataclasses
import functools
import json
import os
import shutil
import subprocess
import sys

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metajax.data import gp
from metajax.evaluation import mean_ci
from metajax.experiments import harness
from metajax.experiments import regression

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(width=8, num_steps=4, log_every=2, checkpoint_every=4,
            meta_batch_size=2, eval_tasks=6, num_samples=2, eval_batch=3,
            inner_steps=1, test_inner_steps=1, progress=False)


def _config(**overrides):
  return regression.Config(**dict(TINY, **overrides))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  """(workdir, results) of a run of every learner on every kernel.

  MAML trains for its own, smaller number of steps.
  """
  workdir = str(tmp_path_factory.mktemp("regression"))
  return workdir, regression.train_and_evaluate(_config(maml_num_steps=2),
                                                workdir)


@pytest.mark.slow
def test_results_hold_every_learner_and_kernel(finished_run):
  workdir, results = finished_run
  with open(os.path.join(workdir, "results.json")) as f:
    assert json.load(f) == json.loads(json.dumps(results))
  assert results["experiment"] == "regression"
  learners = set(regression.LEARNERS)
  assert set(results["log_likelihood"]) == set(gp.KERNELS)
  for kernel in gp.KERNELS:
    table = results["log_likelihood"][kernel]
    assert set(table) == learners | {"exact_gp"}
    for cells in table.values():
      for cell in (cells["context"], cells["target"]):
        assert cell["n"] == 6 and cell["ci95"] > 0
        assert np.isfinite(cell["mean"])
    assert set(results["target_mse"][kernel]) == learners
    curves = results["ll_vs_context"][kernel]
    assert set(curves) == learners | {"exact_gp"}
    for rows in curves.values():
      assert all(row["n"] >= 2 for row in rows)
      assert [row["context"] for row in rows] == sorted(
          row["context"] for row in rows)
  # MAML's MLP 1-16-16-2 has exactly the CNP's 338 parameters at width 8.
  assert results["maml_width"] == 16
  assert results["parameters"]["maml"] == results["parameters"]["cnp"] == 338
  assert results["num_samples"] == 2
  assert "2 samples of z" in results["protocol"]["log_likelihood"]
  for name in ("predictions.png", "ll_vs_context.png"):
    with open(os.path.join(workdir, name), "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert results["num_steps"] == dict(cnp=4, np=4, anp=4, maml=2)
  for name, steps in results["num_steps"].items():
    assert sorted(os.listdir(os.path.join(workdir, name, "checkpoints"))) == [
        str(steps)]
  assert set(results["train_time_s"]) == learners
  text = regression.format_results(results)
  assert "log-likelihood per point on 6 held-out tasks" in text
  assert "exact_gp" in text
  assert "meta-training steps: cnp 4, np 4, anp 4, maml 2" in text


@pytest.mark.slow
def test_gp_ceiling_is_the_exact_gp_on_the_same_tasks(finished_run):
  _, results = finished_run
  for kernel in gp.KERNELS:
    eval_set = regression.evaluation_tasks(_config(), kernel)
    with jax.enable_x64(True):
      params, tasks = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64),
                                   (eval_set.params, eval_set.tasks))
      exact = jax.vmap(functools.partial(gp.gp_mean_log_likelihood, kernel))
      target = np.asarray(exact(params, tasks.support, tasks.query))
    cell = results["log_likelihood"][kernel]["exact_gp"]["target"]
    expected = mean_ci(target)
    np.testing.assert_allclose([cell["mean"], cell["ci95"]],
                               [expected["mean"], expected["ci95"]],
                               rtol=1e-10)


def _same_scores(results, reference, learner):
  """Whether `results` scores `learner` on RBF tasks as `reference` does."""
  return all(results[name]["rbf"][learner] == reference[name]["rbf"][learner]
             for name in ("log_likelihood", "target_mse", "ll_vs_context"))


@pytest.mark.slow
def test_a_stopped_run_resumes_to_the_uninterrupted_results(finished_run,
                                                             tmp_path):
  _, uninterrupted = finished_run
  workdir = str(tmp_path / "run")
  # Each learner trains on its own, so a run of the CNP alone is the CNP of
  # the run of all four.
  config = _config(learners=("cnp",), eval_kernels=("rbf",))
  regression.train_and_evaluate(dataclasses.replace(config, num_steps=2),
                                workdir)
  resumed = regression.train_and_evaluate(config, workdir)
  assert _same_scores(resumed, uninterrupted, "cnp")
  with open(os.path.join(workdir, "cnp", "metrics.jsonl")) as f:
    assert [json.loads(line)["step"] for line in f] == [2, 4]


@pytest.mark.slow
def test_a_rerun_of_a_finished_workdir_reproduces_its_results(finished_run,
                                                               tmp_path):
  workdir, finished = finished_run
  copy = str(tmp_path / "copy")
  shutil.copytree(workdir, copy)
  # MAML's steps are fixed once trained: a rerun asking for others would
  # label its results with steps it was not trained for.
  with pytest.raises(ValueError, match="maml_num_steps"):
    regression.train_and_evaluate(_config(learners=("np",)), copy)
  # A rerun may drop learners and kernels: here it scores the NP alone,
  # whose Monte Carlo draws of z must be the same again.
  rerun = regression.train_and_evaluate(
      _config(learners=("np",), eval_kernels=("rbf",), maml_num_steps=2),
      copy)
  assert _same_scores(rerun, finished, "np")
  with open(os.path.join(copy, "np", "metrics.jsonl")) as f:
    assert [json.loads(line)["step"] for line in f] == [2, 4]


@pytest.mark.slow
def test_the_entry_point_runs_sinusoid_tasks(tmp_path):
  workdir = str(tmp_path / "run")
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, "experiments", "regression.py"),
       f"--workdir={workdir}", "--compilation_cache=", "--progress=false",
       "--tasks=sinusoid", "--learners=cnp", "--width=8",
       "--num_steps=2", "--log_every=2", "--meta_batch_size=2",
       "--num_targets=10", "--eval_tasks=4", "--eval_batch=4",
       "--inner_steps=1", "--test_inner_steps=1"],
      capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  assert set(results["log_likelihood"]) == {"sinusoid"}
  assert set(results["target_mse"]["sinusoid"]) == {"cnp"}
  # K=10 context points, and the first 1, 2 and 5 of them.
  curve = results["ll_vs_context"]["sinusoid"]["cnp"]
  assert [row["context"] for row in curve] == [[1, 1], [2, 2], [5, 5],
                                               [10, 10]]
  assert curve[-1]["mean"] == (
      results["log_likelihood"]["sinusoid"]["cnp"]["target"]["mean"])
  assert "log-likelihood per point on 4 held-out tasks" in proc.stdout
  assert "predictions.png" in proc.stdout


def _flags(*argv):
  fv = flags.FlagValues()
  harness.define_flags(regression.Config, "workdirs/x", flag_values=fv)
  fv(["prog", *argv])
  return harness.config_from_flags(regression.Config, fv)


def test_bad_flags_are_named_before_any_work(tmp_path):
  workdir = tmp_path / "run"
  config = _flags("--learners=cnp,gpt")
  with pytest.raises(ValueError, match=r"learners must be distinct names "
                     r"from \('cnp', 'np', 'anp', 'maml'\), got "
                     r"\('cnp', 'gpt'\)"):
    regression.train_and_evaluate(config, str(workdir))
  assert not workdir.exists()
  with pytest.raises(flags.IllegalFlagValueError):
    _flags("--kernel=linear")


@pytest.mark.parametrize("overrides,message", [
    (dict(eval_kernels=("rbf", "rbf")), "eval_kernels must be distinct"),
    (dict(eval_kernels=()), "eval_kernels must be distinct"),
    (dict(width=12), "width must be a multiple of 8"),
    (dict(eval_tasks=1), "eval_tasks must be >= 2"),
    (dict(min_std=1.0), r"min_std must be in \[0, 1\)"),
    (dict(outer_lr=0.0), "outer_lr must be a finite learning rate > 0"),
    (dict(num_samples=0), "num_samples must be >= 1"),
    (dict(maml_num_steps=-1), r"maml_num_steps must be >= 0 \(0: num_steps\)"),
])
def test_bad_values_are_rejected_up_front(overrides, message):
  with pytest.raises(ValueError, match=message):
    regression.Config(**overrides).validate()


def test_maml_is_not_held_to_the_anp_heads():
  regression.Config(width=12, learners=("cnp", "maml")).validate()
