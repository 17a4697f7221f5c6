"""Record writers: metrics.jsonl, TensorBoard, the progress bar, fan-out."""

import json
import logging
import os

import pytest

from metajax import summary


def _records(steps):
  return [{"step": s, "loss": 1.0 / s, "train_s": 0.5 * s} for s in steps]


def _jsonl(path, records, tail=""):
  with open(path, "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in records)
    f.write(tail)


def test_a_torn_last_line_is_dropped_with_a_warning(tmp_path, caplog):
  path = str(tmp_path / "metrics.jsonl")
  # What a full disk or a kill in the middle of a write leaves.
  _jsonl(path, _records([5, 10]), tail='{"step": 15, "loss": 0.3')
  with caplog.at_level(logging.WARNING):
    assert summary.read_metrics(path) == _records([5, 10])
  assert "torn last line 3" in caplog.text and path in caplog.text


def test_a_corrupt_line_inside_the_file_is_named_and_left_as_it_was(
    tmp_path):
  path = str(tmp_path / "metrics.jsonl")
  _jsonl(path, [], tail="garbage\n")
  with open(path, "a") as f:
    f.writelines(json.dumps(r) + "\n" for r in _records([5]))
  with open(path) as f:
    before = f.read()
  with pytest.raises(ValueError, match=r"metrics.jsonl, line 1: not a "
                                       r"metrics record"):
    summary.JsonlWriter(path, resume_step=5)
  with open(path) as f:
    assert f.read() == before


def test_jsonl_writer_trims_what_a_resume_runs_again(tmp_path, caplog):
  path = str(tmp_path / "metrics.jsonl")
  _jsonl(path, _records([5, 10, 15]), tail='{"step": 20, "lo')
  with caplog.at_level(logging.WARNING):
    writer = summary.JsonlWriter(path, resume_step=10)
  assert "torn last line" in caplog.text
  # Trimmed at open, before any write: a crash now leaves a consistent log.
  assert summary.read_metrics(path) == _records([5, 10])
  assert writer.train_s == 5.0
  for record in _records([15, 20]):
    writer.write(record)
  writer.close()
  assert summary.read_metrics(path) == _records([5, 10, 15, 20])
  assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


def test_jsonl_writer_starts_a_new_log_at_zero_seconds(tmp_path):
  path = str(tmp_path / "metrics.jsonl")
  writer = summary.JsonlWriter(path)
  assert writer.train_s == 0.0 and not os.path.exists(path)
  writer.write({"step": 1, "loss": 2.0})
  assert summary.read_metrics(path) == [{"step": 1, "loss": 2.0}]


class Recorder:
  """A writer that remembers what it got; `fail_close` makes close raise."""

  def __init__(self, fail_close=False):
    self.records, self.closed, self.fail_close = [], False, fail_close

  def write(self, record):
    self.records.append(dict(record))

  def close(self):
    self.closed = True
    if self.fail_close:
      raise OSError("disk gone")


def test_multi_writer_fans_out_writes_and_closes(tmp_path):
  a, b = Recorder(), Recorder()
  writer = summary.MultiWriter(a, summary.MultiWriter(b))
  for record in _records([1, 2]):
    writer.write(record)
  writer.close()
  assert a.records == b.records == _records([1, 2])
  assert a.closed and b.closed


def test_multi_writer_closes_every_writer_when_one_fails():
  first, second = Recorder(fail_close=True), Recorder()
  with pytest.raises(OSError, match="disk gone"):
    summary.MultiWriter(first, second).close()
  assert first.closed and second.closed


def test_tensorboard_event_files_are_readable(tmp_path):
  accumulator = pytest.importorskip(
      "tensorboard.backend.event_processing.event_accumulator")
  for steps in ([5, 10], [15]):  # a resumed run adds a file of its own
    writer = summary.TensorBoardWriter(str(tmp_path))
    for record in _records(steps):
      writer.write(record)
    writer.close()
  assert len(os.listdir(tmp_path)) == 2
  events = accumulator.EventAccumulator(str(tmp_path))
  events.Reload()
  assert sorted(events.Tags()["scalars"]) == ["loss", "train_s"]
  loss = events.Scalars("loss")
  assert [e.step for e in loss] == [5, 10, 15]
  assert [e.value for e in loss] == [pytest.approx(1 / s) for s in
                                     (5, 10, 15)]


def test_progress_writer_moves_the_bar_to_each_records_step(capsys):
  writer = summary.ProgressWriter(20, initial=5, desc="tiny")
  writer.write({"step": 10, "loss": 0.123456, "grad_norm": 3.0,
                "train_s": 1.0})
  assert writer.bar.n == 10
  assert writer.bar.postfix == "loss=0.1235"
  writer.close()
  summary.note("tiny: resumed from step 5", show=True)
  assert "tiny: resumed from step 5" in capsys.readouterr().out


def test_log_writer_logs_one_line_a_record(caplog):
  caplog.set_level(logging.INFO)
  writer = summary.LogWriter(20, desc="tiny")
  writer.write({"step": 10, "loss": 0.123456, "tasks_per_s": 250.0})
  writer.close()
  assert [r.getMessage() for r in caplog.records] == [
      "tiny: step 10/20, loss=0.1235, tasks_per_s=250"]
