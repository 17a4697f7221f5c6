"""The sinusoid experiment, end to end, through its absl entry point."""

import json
import os
import subprocess
import sys

import pytest

from metajax.experiments import sinusoid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# 5,000 small meta-steps: with 1,500, MAML's lead at 10 steps depended on
# the float rounding of the CPU (it failed on one without AVX-512).
TINY = ["--num_steps=5000", "--log_every=1000", "--checkpoint_every=1000",
        "--eval_tasks=600", "--meta_batch_size=10", "--progress=false"]


def _run(workdir, *flags, cache=""):
  return subprocess.run(
      [sys.executable, os.path.join(ROOT, "experiments", "sinusoid.py"),
       f"--workdir={workdir}", f"--compilation_cache={cache}", *TINY,
       *flags], capture_output=True, text=True, timeout=600, check=False)


@pytest.fixture(scope="module")
def compilation_cache(tmp_path_factory):
  return str(tmp_path_factory.mktemp("xla_cache"))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, compilation_cache):
  workdir = str(tmp_path_factory.mktemp("sinusoid"))
  proc = _run(workdir, cache=compilation_cache)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir, proc


@pytest.mark.slow
def test_writes_results_plot_logs_and_checkpoints(finished_run):
  workdir, proc = finished_run
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  for learner in ("maml", "joint"):
    row = results["mse"][learner]
    assert sorted(row, key=int) == ["0", "1", "10"]
    for cell in row.values():
      assert cell["n"] == 600 and cell["ci95"] > 0
    assert len(results["mse_curve"][learner]) == 11
  assert results["config"]["num_steps"] == 5000
  assert results["environment"]["jax"]
  with open(os.path.join(workdir, "sinusoid.png"), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  for learner in ("meta", "joint"):
    assert os.path.isdir(os.path.join(workdir, learner, "checkpoints", "5000"))
    with open(os.path.join(workdir, learner, "metrics.jsonl")) as f:
      assert [json.loads(l)["step"] for l in f] == [1000, 2000, 3000, 4000,
                                                     5000]
  assert "query MSE on 600 held-out tasks" in proc.stdout
  # Without the bar (--progress=false), a log line for each record.
  for learner in ("maml", "joint"):
    for step in (1000, 5000):
      assert f"{learner}: step {step}/5000, " in proc.stderr


@pytest.mark.slow
def test_maml_adapts_far_better_than_joint_training(finished_run):
  """The paper's finding, already after 5,000 small meta-steps."""
  with open(os.path.join(finished_run[0], "results.json")) as f:
    mse = json.load(f)["mse"]
  for k in ("1", "10"):
    maml, joint = mse["maml"][k], mse["joint"][k]
    assert maml["mean"] + maml["ci95"] < 0.5 * (joint["mean"] - joint["ci95"])


@pytest.mark.slow
def test_rerun_resumes_and_reproduces_the_results(finished_run,
                                                  compilation_cache):
  workdir, _ = finished_run
  with open(os.path.join(workdir, "results.json")) as f:
    first = json.load(f)
  assert os.listdir(compilation_cache)  # the first run filled the cache
  proc = _run(workdir, cache=compilation_cache)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(os.path.join(workdir, "results.json")) as f:
    second = json.load(f)
  assert second["mse"] == first["mse"]
  # Nothing was retrained: the logs still end at step 5000.
  with open(os.path.join(workdir, "meta", "metrics.jsonl")) as f:
    assert len(f.readlines()) == 5


def test_bad_flags_fail_with_a_clear_message(tmp_path):
  proc = _run(str(tmp_path), "--algorithm=maml_plus_plus", "--inner_steps=5")
  assert proc.returncode != 0
  assert "cannot be evaluated beyond inner_steps=5" in proc.stderr
  with pytest.raises(ValueError, match="meta_batch_size must be >= 1"):
    sinusoid.Config(meta_batch_size=0).validate()


@pytest.mark.slow
def test_a_rerun_with_another_seed_or_rate_is_refused(finished_run):
  workdir, _ = finished_run
  with open(os.path.join(workdir, "results.json")) as f:
    before = f.read()
  proc = _run(workdir, "--seed=1", "--inner_lr=0.02")
  assert proc.returncode != 0
  assert "--seed: 0 in the workdir, 1 now" in proc.stderr
  assert "--inner_lr: 0.01 in the workdir, 0.02 now" in proc.stderr
  with open(os.path.join(workdir, "results.json")) as f:
    assert f.read() == before


@pytest.mark.slow
def test_divergence_stops_naming_the_learner_and_keeps_a_finite_state(
    tmp_path):
  proc = _run(str(tmp_path), "--outer_lr=3")
  assert proc.returncode != 0
  assert "FloatingPointError: maml: non-finite values at step" in proc.stderr
  assert not os.path.exists(tmp_path / "results.json")
  # What was checkpointed is finite (the checkpoint refuses anything else).
  from metajax import checkpoint
  steps = checkpoint.Checkpoints(str(tmp_path / "meta" / "checkpoints"))
  assert steps.steps()


@pytest.mark.parametrize("field,value,message", [
    ("outer_lr", 0.0, "outer_lr must be a finite learning rate > 0"),
    ("inner_lr", -0.01, "inner_lr must be a finite learning rate > 0"),
    ("hidden", (40, 0), r"hidden must be >= 1, got \(40, 0\)"),
    ("num_query", 0, "num_query must be >= 1"),
])
def test_bad_values_are_rejected_up_front(field, value, message):
  with pytest.raises(ValueError, match=message):
    sinusoid.Config(**{field: value}).validate()
