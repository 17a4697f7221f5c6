"""The student-performance experiment end to end, on a third dataset.

The main run is tested on real ASSISTments 2009 students, or, on a clone
without the real data, on synthetic students written in the three-line
format (`synthetic.VARIANT`).
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from metajax.data.students import knowledge_tracing as kt
from metajax.experiments import student_performance as sp
import synthetic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write(path, seqs, rows):
  with open(path, "w") as f:
    for i in rows:
      q, a = seqs.questions[i], seqs.answers[i]
      f.write(f"{len(q)}\n{','.join(map(str, q))},\n{','.join(map(str, a))},\n")


@pytest.fixture(scope="module")
def synthetic_dataset(tmp_path_factory):
  """(data folder, largest question id) of synthetic students 'kt_sample'."""
  root = str(tmp_path_factory.mktemp("synthetic_kt"))
  synthetic.write_knowledge_tracing(root, "kt_sample")
  data = kt.load(root, "kt_sample")
  return root, max(int(q.max()) for q in data.train.questions +
                   data.test.questions)


@pytest.fixture(scope="module", params=[synthetic.VARIANT])
def third_dataset(request, tmp_path_factory):
  """A dataset the experiment has never heard of: 'kt_sample', in the format.

  Its students are synthetic, or real ASSISTments 2009 students with their
  question ids shifted by 7 so that nothing can rely on the original id
  range.
  """
  if request.param == "synthetic":
    return request.getfixturevalue("synthetic_dataset")
  real = kt.load(request.getfixturevalue("shared_data_dir"), "assist2009")
  shift = lambda s: kt.Sequences(tuple(q + 7 for q in s.questions),
                                 s.answers)
  folder = tmp_path_factory.mktemp("kt") / "kt_sample"
  folder.mkdir()
  _write(folder / "kt_sample_train.csv", shift(real.train), range(0, 160))
  _write(folder / "kt_sample_test.csv", shift(real.test), range(0, 40))
  largest = max(max(int(q.max()) for q in real.train.questions[:160]),
                max(int(q.max()) for q in real.test.questions[:40]))
  return str(folder.parent), largest + 7


def _run(data_dir, workdir, *extra, cache=""):
  cmd = [sys.executable, os.path.join(ROOT, "experiments",
                                      "student_performance.py"),
         "--dataset=kt_sample", f"--data_dir={data_dir}", "--fold=0",
         "--model=irt", "--algorithm=maml,reptile", "--support_sizes=0,3,10",
         "--num_steps=60", "--meta_batch_size=16", "--outer_lr=0.05",
         "--bootstrap=50", "--log_every=20", "--checkpoint_every=20",
         "--eval_every=20",
         "--progress=false", f"--compilation_cache={cache}",
         f"--workdir={workdir}",
         *extra]
  out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  with open(os.path.join(workdir, "results.json")) as f:
    return json.load(f), out.stdout


@pytest.mark.slow
def test_runs_on_a_third_dataset_and_reruns_to_the_same_results(
    third_dataset, tmp_path):
  data_dir, num_questions = third_dataset
  workdir = str(tmp_path / "run")
  # The rerun loads the first run's compiled programs from this cache.
  cache = str(tmp_path / "xla_cache")
  results, stdout = _run(data_dir, workdir, cache=cache)
  assert results["dataset"] == "kt_sample"
  assert results["summary"]["num_questions"] == num_questions
  assert results["summary"]["students_test"] == 40
  assert results["split_overlap"] == []  # no test student also in training
  rows = {"none", "finetune", "maml", "reptile"}
  assert set(results["usual_protocol"]) == rows
  # The comparable protocol scores every answer but each window's first.
  assert set(results["comparable_protocol"]) == rows
  info = results["comparable_test"]
  assert info["students_dropped"] == []
  answers = results["usual_protocol"]["none"]["n"]
  # Every answer but each window's first; a dropped window held 1-2 answers.
  scored = results["comparable_protocol"]["none"]["n"]
  assert (answers - info["windows"] - 2 * info["windows_dropped"] <= scored
          <= answers - info["windows"] - info["windows_dropped"])
  assert "comparable protocol" in stdout
  assert set(results["cold_start"]) == rows
  usual = results["usual_protocol"]
  for metrics in usual.values():
    # An untrained model predicts a constant (AUC 0.5); even 60 steps learn
    # something of the item difficulties.
    assert 0.55 < metrics["auc"] < 1.0
    assert 0.0 < metrics["rmse"] < 0.5
  # Adapting to each test student's earlier answers beats ignoring them.
  assert usual["maml"]["auc"] > usual["none"]["auc"] + 0.03
  for table in results["cold_start"].values():
    assert set(table) == {"0", "3", "10"}
    for cell in table.values():
      assert cell["ci_low"] <= cell["auc"] <= cell["ci_high"]
      assert cell["groups"] <= 40
  # No adaptation: the same predictions whatever k, so k=0 scores all
  # answers and k=3 the ones after the third.
  none = results["cold_start"]["none"]
  assert none["0"]["n"] > none["3"]["n"] > none["10"]["n"]
  assert results["finetune"]["lr"] in sp.FINETUNE_LRS
  # Paired gains of each meta-learner over both baselines, per k.
  for name in ("maml", "reptile"):
    for base in ("none", "finetune"):
      for k, cell in results["cold_start_gain"][name][base].items():
        assert cell["gain"] == pytest.approx(
            results["cold_start"][name][k]["auc"] -
            results["cold_start"][base][k]["auc"], abs=1e-12)
        assert cell["ci_low"] <= cell["gain"] <= cell["ci_high"]
  assert "gain over finetune" in stdout
  assert os.path.getsize(os.path.join(workdir, "cold_start.png")) > 10_000
  assert "cold start: AUC" in stdout
  for method in ("joint", "maml", "reptile"):
    assert os.path.isdir(os.path.join(workdir, method, "checkpoints"))
    # The tested parameters are the best-scoring on validation (here, with
    # fold 0, the training students), among the steps evaluated.
    selected = results["selected"][method]
    assert selected["step"] in (20, 40, 60)
    with open(os.path.join(workdir, method, "metrics.jsonl")) as f:
      scores = {r["step"]: r["valid_auc"] for r in map(json.loads, f)}
    assert selected["score"] == max(scores.values())
    assert scores[selected["step"]] == selected["score"]

  # A rerun restores every method from its final checkpoint and reports the
  # same numbers.
  again, _ = _run(data_dir, workdir, cache=cache)
  assert again["usual_protocol"] == results["usual_protocol"]
  assert again["cold_start"] == results["cold_start"]
  assert again["cold_start_gain"] == results["cold_start_gain"]


@pytest.mark.slow
@pytest.mark.parametrize("model", ["dkt", "sakt"])
def test_sequence_models_run_in_process(model, synthetic_dataset, tmp_path):
  config = sp.Config(dataset="kt_sample", data_dir=synthetic_dataset[0],
                     fold=0, model=model, algorithms=("maml",),
                     support_sizes=(0, 5), num_heads=2,
                     num_steps=4, meta_batch_size=4, hidden=8, embed_dim=8,
                     personal_dim=2, window=50, online_every=50, eval_batch=64,
                     bootstrap=20, log_every=2, checkpoint_every=2,
                     progress=False)
  results = sp.train_and_evaluate(config, str(tmp_path))
  assert results["model"] == model
  assert np.isfinite(results["usual_protocol"]["maml"]["auc"])


def test_bad_config_and_bad_files_are_reported(tmp_path):
  with pytest.raises(ValueError, match="model must be one of"):
    sp.Config(model="bkt").validate()
  with pytest.raises(ValueError, match=r"unknown algorithms \['anil'\]"):
    sp.Config(algorithms=("anil",)).validate()
  with pytest.raises(ValueError, match="meta_init must be one of"):
    sp.Config(meta_init="imagenet").validate()
  with pytest.raises(ValueError, match="prior_answers must be >= 0"):
    sp.Config(prior_answers=-1.0).validate()
  folder = tmp_path / "broken"
  folder.mkdir()
  (folder / "broken_train.csv").write_text("2\n1,2\n0,1\n2\n1,2\n0,7\n")
  (folder / "broken_test.csv").write_text("1\n1\n1\n")
  config = sp.Config(dataset="broken", data_dir=str(tmp_path), fold=0)
  with pytest.raises(kt.KTFormatError, match=r"broken_train.csv, student "
                     r"block 2 \(line 6\): answers must be 0 or 1, found 7"):
    sp.train_and_evaluate(config, str(tmp_path / "out"))


def test_support_sizes_beyond_the_sequences_are_refused_before_training(
    synthetic_dataset, tmp_path):
  data_dir, _ = synthetic_dataset
  config = sp.Config(dataset="kt_sample", data_dir=data_dir, fold=0,
                     support_sizes=(0, 3, 5000), window=6000,
                     progress=False)
  with pytest.raises(ValueError, match=r"support_sizes \[5000\]: no test "
                     r"student has more than \d+ answers"):
    sp.train_and_evaluate(config, str(tmp_path))
  assert not os.path.exists(tmp_path / "joint")
  with pytest.raises(ValueError, match=r"must be below window=200"):
    sp.Config(support_sizes=(0, 200)).validate()


@pytest.mark.parametrize("field,value,message", [
    ("meta_batch_size", 0, "meta_batch_size must be >= 1"),
    ("embed_dim", 0, "embed_dim must be >= 1"),
    ("personal_dim", -2, "personal_dim must be >= 1"),
    ("outer_lr", -1e-3, "outer_lr must be a finite learning rate > 0"),
    ("inner_lr", 0.0, "inner_lr must be a finite learning rate > 0"),
])
def test_bad_values_are_rejected_up_front(field, value, message):
  with pytest.raises(ValueError, match=message):
    sp.Config(**{field: value}).validate()
  with pytest.raises(ValueError, match="hidden must be >= 1"):
    sp.Config(model="dkt", hidden=0).validate()
  with pytest.raises(ValueError, match="--num_heads=3 must divide "
                     "--embed_dim=64 for sakt"):
    sp.Config(model="sakt", num_heads=3).validate()


@pytest.mark.slow
def test_a_rerun_with_other_support_sizes_is_refused(synthetic_dataset,
                                                     tmp_path):
  data_dir, _ = synthetic_dataset
  config = sp.Config(dataset="kt_sample", data_dir=data_dir, fold=0,
                     model="irt", algorithms=("maml", "np"),
                     support_sizes=(0, 5),
                     # The neural process's widths: it encodes every
                     # position of each test task, so its cost is these.
                     hidden=8, embed_dim=8,
                     num_steps=4, meta_batch_size=4, window=50,
                     online_every=50, eval_batch=64, bootstrap=20,
                     log_every=2, checkpoint_every=2, eval_every=2,
                     progress=False)
  workdir = str(tmp_path)
  first = sp.train_and_evaluate(config, workdir)
  with pytest.raises(ValueError, match=r"--support_sizes: \[0, 5\] in the "
                     r"workdir, \[0, 3\] now"):
    sp.train_and_evaluate(
        sp.Config(**{**vars(config), "support_sizes": (0, 3)}), workdir)
  # More steps and another bootstrap size only extend and re-evaluate.
  more = sp.train_and_evaluate(
      sp.Config(**{**vars(config), "num_steps": 6, "bootstrap": 30}), workdir)
  assert more["num_steps"] == 6 and first["num_steps"] == 4
  # The neural process is in every table, and resumes like the others.
  assert more["selected"]["np"]["step"] in (2, 4, 6)
  for results in (first, more):
    assert np.isfinite(results["usual_protocol"]["np"]["auc"])
    assert set(results["cold_start"]["np"]) == {"0", "5"}
    assert set(results["cold_start_gain"]["np"]) == {"none", "finetune"}
    # Every adapting method is timed; "none", which adapts nothing, is not.
    times = results["personalise_time_s"]
    assert set(times) == {"finetune", "maml", "np"}
    assert all(t > 0 for t in times.values())
    assert results["personalise_answers"] == 5
  assert "x np" in sp.format_results(more)
