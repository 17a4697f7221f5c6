"""The continual Omniglot experiment end to end on the real Lake split."""

import json
import os
import shutil

import pytest

from metajax.experiments import continual_omniglot as co
from metajax.experiments import harness


def _config(data_dir, cache, **kw):
  base = dict(method="oml", width=4, nm_width=3, hidden=8, trajectory=5,
              remember=6, num_steps=4, log_every=2, checkpoint_every=2,
              checkpoints=(3, 6), runs=2, selection_runs=1,
              online_lrs=(0.01, 0.001), data_dir=data_dir, cache_dir=cache,
              progress=False)
  base.update(kw)
  return co.Config(**base)


def _edit_results(workdir, edit):
  """Rewrites `workdir`'s results.json after `edit(results)`."""
  path = os.path.join(workdir, "results.json")
  with open(path) as f:
    results = json.load(f)
  edit(results)
  with open(path, "w") as f:
    json.dump(results, f)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["oml", "pretrain"])
def test_a_run_trains_streams_and_writes_its_results(
    shared_data_dir, omniglot_cache, tmp_path, method):
  workdir = str(tmp_path / method)
  results = co.train_and_evaluate(
      _config(shared_data_dir, omniglot_cache, method=method), workdir)
  stream = results["stream"]
  assert stream["checkpoints"] == [3, 6]
  assert len(stream["test"]) == 2 and stream["test"][0]["n"] == 2
  assert set(stream["selected_lr"]) <= {0.01, 0.001}
  for name in ("results.json", "continual.png", "metrics.jsonl",
               "config.json"):
    assert os.path.exists(os.path.join(workdir, name)), name
  with open(os.path.join(workdir, "results.json")) as f:
    assert json.load(f)["stream"]["test"] == stream["test"]
  table = co.compare([workdir], str(tmp_path / "all.png"))
  assert table.splitlines()[0].startswith("| method | images | 3 | 6 |")
  assert os.path.exists(tmp_path / "all.png")
  # The streams again from a drawn output layer: the same network (no
  # training), other scores, the setting recorded.
  zeros = str(tmp_path / "zeros")
  shutil.copytree(workdir, zeros)
  again = co.train_and_evaluate(
      _config(shared_data_dir, omniglot_cache, method=method,
              stream_head="kaiming"), workdir)
  assert again["steps"] == results["steps"]
  assert again["stream"]["per_lr"] != stream["per_lr"]
  assert harness.read_config(co.Config, workdir).stream_head == "kaiming"
  # Two runs of one method get a row each, named by their steps and, as
  # those agree here, by the stream setting that differs.
  tables = co.compare([zeros, workdir], str(tmp_path / "two.png"))
  rows = tables.splitlines()
  names = [f"{method}, 4 steps, --stream_head=zeros",
           f"{method}, 4 steps, --stream_head=kaiming"]
  assert [r.split(" | ")[0] for r in rows[2:4]] == [f"| {n}" for n in names]
  assert rows[2] != rows[3]
  # Then each run's accuracy at every rate, named alike.
  assert tables.split("\n\n")[1:] == [
      co.rate_table(names[0], results), co.rate_table(names[1], again)]
  # Where the stream settings agree too, the workdir tells them apart.
  twin = str(tmp_path / "twin")
  shutil.copytree(workdir, twin)
  rows = co.compare([workdir, twin], str(tmp_path / "twins.png")).splitlines()
  assert [r.split(" | ")[0] for r in rows[2:4]] == [
      f"| {method}, 4 steps", f"| {method}, 4 steps ({twin})"]
  # A run from before --stream_head existed does not record it: its head
  # is unknown, so the workdir names it, not the flag's default.
  _edit_results(zeros, lambda r: r["config"].pop("stream_head"))
  rows = co.compare([zeros, workdir], str(tmp_path / "old.png")).splitlines()
  assert [r.split(" | ")[0] for r in rows[2:4]] == [
      f"| {method}, 4 steps", f"| {method}, 4 steps ({workdir})"]
  _edit_results(zeros, lambda r: r["stream"].update(checkpoints=[3]))
  with pytest.raises(ValueError, match=r"zeros was scored after \[3\] "
                     r"classes, .* after \[3, 6\]"):
    co.compare([workdir, zeros], str(tmp_path / "bad.png"))


def test_the_rate_table_bolds_the_rate_picked_at_each_checkpoint():
  results = {"stream": {"checkpoints": [10, 50], "lrs": [0.03, 1e-5],
                        "selected_lr": [1e-5, 0.03],
                        "per_lr": {"test": [[0.5, 0.25], [0.125, 0.0625]],
                                   "train": [[1.0, 1.0], [1.0, 1.0]]}}}
  assert co.rate_table("oml, 4 steps", results).splitlines() == [
      "| oml, 4 steps, rate | 10 | 50 |",
      "| --- | --- | --- |",
      "| 3e-02 | 50.0 | **25.0** |",
      "| 1e-05 | **12.5** | 6.2 |"]


def test_rates_of_a_fine_grid_keep_their_own_labels():
  # ANML's released grid has 3e-4 and 3.5e-4 and 2.5e-4 side by side.
  grid = (1e-3, 3.5e-4, 3e-4, 2.5e-4, 1.5e-4, 9e-5, 1e-7)
  assert [co.format_rate(lr) for lr in grid] == [
      "1e-03", "3.5e-04", "3e-04", "2.5e-04", "1.5e-04", "9e-05", "1e-07"]
  results = {"method": "anml",
             "stream": {"runs": 5, "selection_runs": 5, "checkpoints": [50],
                        "lrs": [3.5e-4, 2.5e-4], "selected_lr": [2.5e-4],
                        "per_lr": {"test": [[0.25], [0.5]],
                                   "train": [[0.5], [0.75]]},
                        "test": [{"mean": 0.5, "ci95": 0.01}],
                        "train": [{"mean": 0.75, "ci95": 0.02}]}}
  assert co.rate_table("anml", results).splitlines()[2:] == [
      "| 3.5e-04 | 25.0 |", "| 2.5e-04 | **50.0** |"]
  assert co.format_results(results).splitlines()[-1].endswith(" 2.5e-04")


def test_bad_settings_are_refused_before_any_work(shared_data_dir,
                                                  omniglot_cache, tmp_path):
  with pytest.raises(ValueError, match="scratch is not trained"):
    co.train_and_evaluate(_config(shared_data_dir, omniglot_cache,
                                  method="scratch"), str(tmp_path / "s"))
  with pytest.raises(ValueError, match="cannot label a stream of 600"):
    co.train_and_evaluate(_config(shared_data_dir, omniglot_cache,
                                  outputs=500, checkpoints=(10, 600)),
                          str(tmp_path / "o"))
  with pytest.raises(ValueError, match="cannot label the 964 background"):
    co.train_and_evaluate(_config(shared_data_dir, omniglot_cache,
                                  outputs=700), str(tmp_path / "b"))
  with pytest.raises(ValueError, match="online_lrs must be a finite"):
    co.train_and_evaluate(_config(shared_data_dir, omniglot_cache,
                                  online_lrs=(0.1, -1.0)),
                          str(tmp_path / "l"))
  for run in os.listdir(tmp_path):  # nothing but the workdir's lock file
    assert set(os.listdir(tmp_path / run)) <= {".lock"}, run
