"""Where a training run's records go: metrics.jsonl, TensorBoard, a bar.

A record is a flat mapping from names to numbers with an int "step": what
`metajax.train` logs every `log_every` meta-steps (the step reached, its
metrics averaged over those steps, throughput, evaluation scores). Every
destination is a `Writer`; `MultiWriter` sends one record to several.

* `JsonlWriter` appends one JSON object a line to `metrics.jsonl`, the
  run's authoritative log, read back by `read_metrics`.
* `TensorBoardWriter` writes the same numbers as TensorBoard event files,
  without importing TensorFlow.
* `ProgressWriter` shows them on a tqdm progress bar, and `LogWriter` logs
  them one line each, for batch jobs with no terminal.
"""

import contextlib
import json
import logging
import os
import socket
import time
from typing import Any, Dict, List, Mapping, Protocol

import tqdm

from metajax import io as io_lib

Record = Mapping[str, Any]
# Experiments silence other libraries' INFO messages but not this logger's.
_log = logging.getLogger(__name__)


class Writer(Protocol):
  """A destination of training records."""

  def write(self, record: Record) -> None:
    """Takes one record: str -> float, with an int "step"."""

  def close(self) -> None:
    """Releases what the writer holds; no `write` follows."""


def read_metrics(path: str) -> List[Dict[str, Any]]:
  """The records of a `metrics.jsonl`, tolerating a torn last line.

  A run stopped in the middle of a write (a full disk, a kill) can leave
  its last line incomplete: that line is dropped with a warning, since the
  step it describes is past the last checkpoint and will be run again.

  Args:
    path: the file, as written by `JsonlWriter`.

  Returns:
    One dict per line, in the file's order, each with an int "step".

  Raises:
    ValueError: a line other than the last is not a JSON object with a
      "step"; the message names the file and the line.
  """
  with open(path, "rb") as f:
    lines = f.read().split(b"\n")
  records = []
  for number, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      record = json.loads(line.decode("utf-8"))
      int(record["step"])
    except (ValueError, KeyError, TypeError) as e:
      if not any(l.strip() for l in lines[number:]):
        _log.warning("%s: dropped a torn last line %d (%s)", path,
                     number, e)
        break
      raise ValueError(f"{path}, line {number}: not a metrics record "
                       f"({type(e).__name__}: {e}).") from None
    records.append(record)
  return records


class JsonlWriter:
  """Appends one JSON object per record to `path` (metrics.jsonl).

  Attributes:
    path: the file.
    train_s: the "train_s" (training seconds) of the last record kept when
      opened, 0.0 if none: where a resumed run's clock goes on from.
  """

  def __init__(self, path: str, resume_step: int = 0):
    """Opens `path`, keeping only the records up to `resume_step`.

    Args:
      path: the file; created by the first `write` if absent.
      resume_step: the step the run goes on from. Records past it describe
        steps that will be run again, so they are removed (by an atomic
        rewrite) and the log equals what an uninterrupted run writes.

    Raises:
      ValueError: from `read_metrics`; the file is left as it was.
    """
    self.path = path
    self.train_s = 0.0
    if os.path.exists(path):
      kept = [r for r in read_metrics(path) if r["step"] <= resume_step]
      io_lib.write_atomic(path, "".join(json.dumps(r) + "\n"
                                             for r in kept))
      if kept:
        self.train_s = kept[-1].get("train_s", 0.0)

  def write(self, record: Record) -> None:
    # One write of one whole line: a failure leaves at most a torn last
    # line, which `read_metrics` drops.
    with open(self.path, "a") as f:
      f.write(json.dumps(dict(record)) + "\n")

  def close(self) -> None:
    """Nothing to release: every `write` opens and closes the file."""


class TensorBoardWriter:
  """Scalars as TensorBoard event files in `logdir`, if tensorboard imports.

  Writes the records with tensorboard's `RecordWriter` into a plain file:
  tensorboard's `EventFileWriter` would open it through `tf.io.gfile`, which
  imports TensorFlow where it is installed (seconds at every start of an
  experiment). Without the package nothing is written: metrics.jsonl holds
  the same numbers.
  """

  def __init__(self, logdir: str):
    self._writer = None
    try:
      # pylint: disable=g-import-not-at-top
      from tensorboard.compat.proto import event_pb2
      from tensorboard.compat.proto import summary_pb2
      from tensorboard.summary.writer.record_writer import RecordWriter
    except ImportError:
      return
    self._event_pb2, self._summary_pb2 = event_pb2, summary_pb2
    os.makedirs(logdir, exist_ok=True)
    # TensorBoard reads every file whose name contains "tfevents". A resumed
    # run adds a file of its own, named apart even within the same second.
    name = (f"events.out.tfevents.{int(time.time()):010d}."
            f"{socket.gethostname()}.{os.getpid()}.{time.time_ns()}")
    self._writer = RecordWriter(open(os.path.join(logdir, name), "xb"))
    self._add(event_pb2.Event(wall_time=time.time(),
                              file_version="brain.Event:2"))

  def _add(self, event) -> None:
    self._writer.write(event.SerializeToString())
    self._writer.flush()

  def write(self, record: Record) -> None:
    if self._writer is None:
      return
    values = [self._summary_pb2.Summary.Value(tag=k, simple_value=float(v))
              for k, v in record.items() if k != "step"]
    self._add(self._event_pb2.Event(
        wall_time=time.time(), step=int(record["step"]),
        summary=self._summary_pb2.Summary(value=values)))

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()


class ProgressWriter:
  """A tqdm progress bar over steps, showing each record's numbers."""

  # The bar shows the step itself; a total and a rarely read number would
  # crowd the loss out of a narrow terminal.
  HIDDEN = ("step", "grad_norm", "train_s")

  def __init__(self, total: int, initial: int = 0, desc: str = ""):
    """A bar from step `initial` (a resumed run's) to `total`."""
    self.bar = tqdm.tqdm(total=total, initial=initial, desc=desc,
                         unit="step", dynamic_ncols=True)

  def write(self, record: Record) -> None:
    self.bar.update(int(record["step"]) - self.bar.n)
    self.bar.set_postfix({k: f"{v:.4g}" for k, v in record.items()
                          if k not in self.HIDDEN})

  def close(self) -> None:
    self.bar.close()


class LogWriter:
  """Logs each record as one line at INFO: a batch job's progress.

  The lines go to the `metajax.summary` logger, so wherever the program
  sends INFO messages: absl programs to stderr (the experiments do with
  `--noprogress`) or to `--log_dir`.
  """

  def __init__(self, total: int, desc: str = ""):
    """Lines of the form `desc: step <step>/<total>, name=value, ...`."""
    self.total, self.desc = total, desc

  def write(self, record: Record) -> None:
    numbers = ", ".join(f"{k}={v:.4g}" for k, v in record.items()
                        if k != "step")
    _log.info("%s: step %d/%d, %s", self.desc, int(record["step"]),
              self.total, numbers)

  def close(self) -> None:
    pass


def note(message: str, *, show: bool) -> None:
  """Logs `message` and, when `show`, prints it above any progress bar."""
  _log.info("%s", message)
  if show:
    tqdm.tqdm.write(message)


class MultiWriter:
  """Sends every record to each of `writers`, in order."""

  def __init__(self, *writers: Writer):
    self.writers = writers

  def write(self, record: Record) -> None:
    for writer in self.writers:
      writer.write(record)

  def close(self) -> None:
    """Closes every writer, even after one of them raised (then re-raised)."""
    with contextlib.ExitStack() as stack:
      # The stack closes last-in first: push in reverse to close in order.
      for writer in reversed(self.writers):
        stack.callback(writer.close)
