"""The adaptive-testing experiment end to end, on synthetic IRT students.

The students of `synthetic.write_knowledge_tracing` answer by a Rasch model,
so an adaptive test can learn a student's ability from a few answers; the
README's runs use the real datasets.
"""

import json
import os

import numpy as np
import pytest

from metajax.experiments import adaptive_testing as at
import synthetic


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("synthetic_cat"))
  return synthetic.write_knowledge_tracing(root, "kt_sample")


def _config(data_dir, **overrides):
  values = dict(dataset="kt_sample", data_dir=data_dir, fold=0,
                test_lengths=(1, 3, 5), num_steps=40, cat_steps=20,
                meta_batch_size=16, outer_lr=0.05, eval_every=10,
                log_every=10, checkpoint_every=10, policy_hidden=16,
                eval_batch=64, bootstrap=50, progress=False)
  values.update(overrides)
  return at.Config(**values)


@pytest.mark.slow
def test_runs_tests_every_selector_and_reruns_to_the_same_results(
    data_dir, tmp_path, capsys):
  workdir = str(tmp_path / "run")
  results = at.train_and_evaluate(_config(data_dir), workdir)
  rows = {f"{model} / {name}" for model in ("fitted", "bobcat")
          for name in ("random", "fisher", "kl")} | {"bobcat / policy"}
  assert set(results["adaptive_test"]) == rows
  # 40 synthetic test students of 20-80 answers: all can take a test of 5.
  assert results["test_takers"]["test"] == {"kept": 40, "of": 40}
  fisher = results["adaptive_test"]["fitted / fisher"]
  for table in results["adaptive_test"].values():
    assert set(table) == {"1", "3", "5"}
    for cell in table.values():
      assert cell["ci_low"] <= cell["auc"] <= cell["ci_high"]
      assert cell["acc_low"] <= cell["accuracy"] <= cell["acc_high"]
      # Every selector is scored on the same held-out answers.
      assert cell["n"] == fisher["1"]["n"] and cell["groups"] == 40
  # The synthetic students answer by their ability: five asked answers
  # tell the fitted model more than one.
  assert fisher["5"]["auc"] > fisher["1"]["auc"]
  for base, gains in results["policy_gain"].items():
    for n, cell in gains.items():
      assert cell["gain"] == pytest.approx(
          results["adaptive_test"]["bobcat / policy"][n]["auc"] -
          results["adaptive_test"][base][n]["auc"], abs=1e-12)
  assert set(results["selection_time_s"]) == rows
  assert all(t > 0 for t in results["selection_time_s"].values())
  assert results["finetune"]["lr"] in at.student_performance.FINETUNE_LRS
  with open(os.path.join(workdir, "bobcat", "metrics.jsonl")) as f:
    scores = {r["step"]: r["valid_auc"] for r in map(json.loads, f)
              if "valid_auc" in r}
  assert results["selected"]["bobcat"]["score"] == max(scores.values())
  assert os.path.getsize(os.path.join(workdir,
                                      "adaptive_testing.png")) > 10_000
  text = at.format_results(results)
  assert "AUC gain of bobcat / policy over fitted / fisher" in text

  again = at.train_and_evaluate(_config(data_dir), workdir)
  for key in ("adaptive_test", "policy_gain", "exposure", "selected"):
    assert again[key] == results[key], key

  with pytest.raises(ValueError, match=r"--heldout_fraction: 0.2 in the "
                     r"workdir, 0.3 now"):
    at.train_and_evaluate(_config(data_dir, heldout_fraction=0.3), workdir)


def test_a_test_longer_than_any_pool_is_refused_before_training(data_dir,
                                                                tmp_path):
  with pytest.raises(ValueError, match=r"no train student of kt_sample can "
                     r"take a test of 100 questions: the longest has \d+ "
                     r"answers, a pool of \d+ after holding out 20%"):
    at.train_and_evaluate(_config(data_dir, test_lengths=(1, 100)),
                          str(tmp_path))
  assert set(os.listdir(tmp_path)) <= {".lock"}  # the run's own lock


@pytest.mark.parametrize("field,value,message", [
    ("test_lengths", (0, 3), "test_lengths must be positive"),
    ("heldout_fraction", 1.0, r"heldout_fraction must be in \(0, 1\)"),
    ("prior_precision", 0.0, "prior_precision must be a finite learning "
     "rate > 0"),
    ("model", "bkt", "model must be one of"),
    ("personal_dim", -1, "personal_dim must be >= 0"),
])
def test_bad_values_are_rejected_up_front(field, value, message):
  with pytest.raises(ValueError, match=message):
    at.Config(**{field: value}).validate()


def test_exposure_counts_first_questions_and_distinct_ones():
  questions = np.array([[3, 4, 5], [3, 6, 0], [7, 3, 4]], np.int32)
  arrays = at.sequences.StudentArrays(questions, np.zeros_like(questions),
                                      np.array([3, 2, 3], np.int32))
  orders = np.array([[0, 1], [0, -1], [1, 2]])  # ids 3,4 / 3 / 3,4
  assert at._exposure(orders, arrays) == {
      "first_question_share": 1.0, "distinct_questions": 2}
