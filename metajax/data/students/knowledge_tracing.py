"""Knowledge-tracing interaction sequences: the three-line format and splits.

The format of the DKVMN data release (and of ASSISTments 2015, Synthetic-5 and
other exports) is three lines per student:

    3                 <- the number of interactions
    12,12,40,         <- question (or skill) ids, 1-based, comma-separated
    0,1,1,            <- answers, 1 = correct

Trailing commas and surrounding spaces are allowed; blank lines between
student blocks are skipped. Files are UTF-8, a leading byte-order mark
being ignored, and numbers are written in ASCII digits. Anything else that
does not fit (a token that is not such an integer, a count that disagrees
with a line's length, an id out of range, an answer other than 0 or 1, a
block cut short by the end of the file) raises `KTFormatError` naming the
file, the student block and the line; bytes that are not UTF-8 raise it
naming the file and the line. No student and no answer is ever dropped.

A dataset directory holds `<name>_train.csv`, `<name>_test.csv` and the five
folds `<name>_train<k>.csv` / `<name>_valid<k>.csv` (train_k + valid_k =
train). Students in the test file never appear in a train file. ASSISTments
2009 and Statics2011 with the DKVMN splits are downloaded, verified, into
`<data_dir>/knowledge_tracing/<name>/` by `load(..., download=True)` (see
`metajax.data.download.download_knowledge_tracing`).

Sequences are kept whole. Models that need a fixed length use `window`, which
cuts a sequence into consecutive pieces of at most `length` interactions and
keeps every piece (the DKVMN and DKT protocol), or `pad`, which pads whole
sequences to a common length.
"""

import codecs
import os
import re
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from metajax.data import download as download_lib
from metajax.data import paths

# Short names for the datasets of the DKVMN release.
ALIASES = {"assist2009": "assist2009_updated", "statics2011": "STATICS",
           "statics": "STATICS"}


# ASCII digits only: int() would also read "٣", "３" and "1_0".
_INTEGER = re.compile(r"[-+]?[0-9]+")
_COUNT = re.compile(r"[0-9]+")


class KTFormatError(ValueError):
  """A knowledge-tracing file that does not follow the three-line format."""


class Sequences(NamedTuple):
  """Students' interaction sequences, one per student, in file order.

  Attributes:
    questions: per student, int32 `[length]` question ids in 1..num_questions.
    answers: per student, int8 `[length]` answers in {0, 1}.
    source: the file they came from (for messages).
  """
  questions: Tuple[np.ndarray, ...]
  answers: Tuple[np.ndarray, ...]
  source: str = ""

  @property
  def num_students(self) -> int:
    return len(self.questions)

  @property
  def lengths(self) -> np.ndarray:
    return np.array([len(q) for q in self.questions], np.int64)

  @property
  def num_interactions(self) -> int:
    return int(self.lengths.sum())

  def max_id(self) -> int:
    return max((int(q.max()) for q in self.questions), default=0)

  def select(self, rows: Sequence[int]) -> "Sequences":
    """The students at `rows`, in that order."""
    return Sequences(tuple(self.questions[i] for i in rows),
                     tuple(self.answers[i] for i in rows), self.source)


class KTDataset(NamedTuple):
  """One dataset's splits.

  Attributes:
    name: dataset name (the file prefix).
    train: training students (all of `<name>_train.csv`, or fold k's train).
    valid: fold k's validation students, or None without a fold.
    test: test students.
    num_questions: ids run over 1..num_questions; 0 is free for padding.
  """
  name: str
  train: Sequences
  valid: Optional[Sequences]
  test: Sequences
  num_questions: int


def _parse_ints(text: str, path: str, block: int, line: int, what: str
                ) -> np.ndarray:
  tokens = [t.strip() for t in text.strip().split(",")]
  while tokens and tokens[-1] == "":  # trailing comma(s)
    tokens.pop()
  for token in tokens:
    if not _INTEGER.fullmatch(token):
      hint = "" if token.isascii() else " (only ASCII digits 0-9 are read)"
      raise KTFormatError(
          f"{path}, student block {block} (line {line}): {what} must be "
          f"comma-separated integers, found {token!r}{hint}.")
  return np.array([int(t) for t in tokens], np.int64)


def _read_lines(path: str) -> list:
  """The lines of a UTF-8 file, without a leading byte-order mark."""
  with open(path, "rb") as f:
    data = f.read()
  # Editors on Windows save UTF-8 with a byte-order mark; it is not data.
  if data.startswith(codecs.BOM_UTF8):
    data = data[len(codecs.BOM_UTF8):]
  try:
    return data.decode("utf-8").splitlines()
  except UnicodeDecodeError as e:
    # The number of the line holding the bad byte, whatever the line ends.
    line = len((data[:e.start] + b"x").splitlines())
    raise KTFormatError(f"{path}, line {line}: not UTF-8 text ({e.reason} "
                        f"at byte {e.start}).") from None


def parse(path: str, num_questions: Optional[int] = None) -> Sequences:
  """Reads one three-line file.

  Args:
    path: the file.
    num_questions: if given, ids above it are errors.

  Returns:
    The file's students in order.

  Raises:
    KTFormatError: naming `path`, the 1-based student block and line.
    FileNotFoundError: if `path` does not exist.
  """
  lines = _read_lines(path)
  questions, answers = [], []
  i, block = 0, 0
  while i < len(lines):
    if not lines[i].strip():
      i += 1
      continue
    block += 1
    where = lambda line: f"{path}, student block {block} (line {line})"
    if i + 2 >= len(lines) or not lines[i + 1].strip() or (
        not lines[i + 2].strip()):
      raise KTFormatError(
          f"{where(i + 1)}: truncated block; expected a count line, a "
          f"question line and an answer line.")
    count = lines[i].strip().rstrip(",")
    if not _COUNT.fullmatch(count) or int(count) == 0:
      raise KTFormatError(f"{where(i + 1)}: the count line must be a positive "
                          f"integer, found {lines[i].strip()!r}.")
    count = int(count)
    q = _parse_ints(lines[i + 1], path, block, i + 2, "question ids")
    a = _parse_ints(lines[i + 2], path, block, i + 3, "answers")
    for values, line, what in ((q, i + 2, "question ids"),
                               (a, i + 3, "answers")):
      if len(values) != count:
        raise KTFormatError(f"{where(line)}: {len(values)} {what} but the "
                            f"count line (line {i + 1}) says {count}.")
    high = q.max() if num_questions is None else num_questions
    out_of_range = (q < 1) | (q > high)
    if out_of_range.any():
      raise KTFormatError(
          f"{where(i + 2)}: question id {int(q[out_of_range][0])} out of "
          f"range 1..{num_questions or 'N'} (ids are 1-based).")
    if not np.isin(a, (0, 1)).all():
      bad = int(a[~np.isin(a, (0, 1))][0])
      raise KTFormatError(f"{where(i + 3)}: answers must be 0 or 1, found "
                          f"{bad}.")
    questions.append(q.astype(np.int32))
    answers.append(a.astype(np.int8))
    i += 3
  if not questions:
    raise KTFormatError(f"{path}: no student blocks.")
  return Sequences(tuple(questions), tuple(answers), path)


def dataset_dir(data_dir: str, name: str) -> Tuple[str, str]:
  """Finds a dataset's folder and file prefix.

  Looks for `<name>_train.csv` in `data_dir/knowledge_tracing/<name>`,
  `data_dir/<name>` and `data_dir` itself; `name` may be an alias from
  `ALIASES` ("assist2009", "statics2011").

  Returns:
    (folder, prefix).

  Raises:
    FileNotFoundError: none of the folders holds the file; the message names
      them and says how to get the data.
  """
  prefix = ALIASES.get(name, name)
  candidates = [os.path.join(data_dir, "knowledge_tracing", prefix),
                os.path.join(data_dir, prefix), data_dir]
  for folder in candidates:
    if os.path.isfile(os.path.join(folder, f"{prefix}_train.csv")):
      return folder, prefix
  how = (f"load(..., download=True) downloads it into {candidates[0]}, "
         f"verified, or " if prefix in download_lib.KNOWLEDGE_TRACING_DATASETS
         else "")
  raise FileNotFoundError(
      f"no {prefix}_train.csv in any of {candidates}; {how}set "
      f"${paths.DATA_ENV} (or pass data_dir) to the folder holding "
      f"knowledge_tracing/{prefix}/ with the dataset's three-line files.")


def load(data_dir: Optional[str], name: str, fold: Optional[int] = None,
         num_questions: Optional[int] = None, *,
         download: bool = False) -> KTDataset:
  """Loads a dataset's train (or fold), validation and test students.

  Args:
    data_dir: see `dataset_dir`; None for `paths.data_dir()`
      (`$METAJAX_DATA_DIR` or the per-user data folder).
    name: the file prefix or an alias.
    fold: None for the whole train file and no validation set; 1..5 for
      `<name>_train<fold>.csv` and `<name>_valid<fold>.csv`.
    num_questions: the id range; inferred as the largest id in the train,
      validation and test files when None.
    download: for the datasets of the DKVMN release ("assist2009_updated",
      "STATICS" and their aliases), make sure that
      `<data_dir>/knowledge_tracing/<name>/` holds their split files,
      verified by SHA-256, downloading the missing ones, and read them from
      there. Without it nothing is downloaded.

  Raises:
    FileNotFoundError: the dataset's files are not found (the message names
      the folders and how to get the data), or `fold`'s are missing.
    ValueError: `download=True` for a dataset outside the DKVMN release.
    download.ChecksumError, download.DownloadError: a failed download.
    KTFormatError: as in `parse`.
  """
  data_dir = paths.data_dir(data_dir)
  if download:
    download_lib.download_knowledge_tracing(ALIASES.get(name, name), data_dir)
  folder, prefix = dataset_dir(data_dir, name)
  path = lambda suffix: os.path.join(folder, f"{prefix}_{suffix}.csv")
  if fold is None:
    train, valid = parse(path("train"), num_questions), None
  else:
    if not os.path.isfile(path(f"train{fold}")):
      raise FileNotFoundError(f"fold {fold}: no {path(f'train{fold}')}.")
    train = parse(path(f"train{fold}"), num_questions)
    valid = parse(path(f"valid{fold}"), num_questions)
  test = parse(path("test"), num_questions)
  if num_questions is None:
    num_questions = max(s.max_id() for s in (train, valid, test) if s)
  return KTDataset(prefix, train, valid, test, int(num_questions))


def window(seqs: Sequences, length: int) -> Sequences:
  """Cuts every sequence into consecutive pieces of at most `length`.

  A student with 450 interactions and `length=200` gives pieces of 200, 200
  and 50, in order; no interaction is lost. Each piece is then a sequence of
  its own, so models that carry state see it start afresh at each piece.
  """
  if length < 1:
    raise ValueError(f"window length must be >= 1, got {length}.")
  qs, ans = [], []
  for q, a in zip(seqs.questions, seqs.answers):
    for start in range(0, len(q), length):
      qs.append(q[start:start + length])
      ans.append(a[start:start + length])
  return Sequences(tuple(qs), tuple(ans), seqs.source)


def pad(seqs: Sequences, length: Optional[int] = None
        ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Pads whole sequences to one length.

  Args:
    seqs: sequences no longer than `length`.
    length: the padded length; the longest sequence when None.

  Returns:
    `(questions, answers, mask)`: int32, int8 and bool `[students, length]`;
    padding has question 0, answer 0 and mask False.
  """
  longest = int(seqs.lengths.max(initial=0))
  length = longest if length is None else length
  if longest > length:
    raise ValueError(f"{seqs.source}: a sequence of {longest} interactions "
                     f"does not fit length {length}; use window() first.")
  n = seqs.num_students
  questions = np.zeros((n, length), np.int32)
  answers = np.zeros((n, length), np.int8)
  mask = np.zeros((n, length), bool)
  for i, (q, a) in enumerate(zip(seqs.questions, seqs.answers)):
    questions[i, :len(q)] = q
    answers[i, :len(a)] = a
    mask[i, :len(q)] = True
  return questions, answers, mask


def summary(data: KTDataset) -> Dict[str, float]:
  """Counts of a dataset, as in the data README's table."""
  parts = [s for s in (data.train, data.valid, data.test) if s is not None]
  lengths = np.concatenate([s.lengths for s in parts])
  correct = sum(int(sum(a.sum() for a in s.answers)) for s in parts)
  return {"students_train": data.train.num_students +
          (data.valid.num_students if data.valid is not None else 0),
          "students_test": data.test.num_students,
          "num_questions": data.num_questions,
          "interactions": int(lengths.sum()),
          "longest": int(lengths.max()),
          "correct_fraction": correct / float(lengths.sum())}



def overlapping_students(train: Sequences, test: Sequences, *,
                         probe: int = 50) -> List[Tuple[int, int]]:
  """Test students whose opening answers occur in a training sequence.

  A split by students leaks when a test student is also in training, whole
  or as a piece of a longer sequence (e.g. one cut into windows). Students
  carry no ids in the three-line format, so a test student counts as
  overlapping when their first `probe` (question, answer) pairs occur, in
  order and contiguous, anywhere in a training sequence. Students with
  fewer than `probe` answers are not checked: short runs of the same
  question answered the same way coincide by chance.

  Args:
    train: the training students.
    test: the students that must not be among them.
    probe: the length of the opening that is looked up.

  Returns:
    `[(test row, first training row holding it)]`, in test order.
  """
  def codes(q, a):
    return (q.astype(np.int64) * 2 + a).astype(np.int64)

  seen = {}
  for row, (q, a) in enumerate(zip(train.questions, train.answers)):
    if len(q) >= probe:
      for window in np.lib.stride_tricks.sliding_window_view(codes(q, a),
                                                             probe):
        seen.setdefault(window.tobytes(), row)
  return [(row, seen[key]) for row, (q, a) in
          enumerate(zip(test.questions, test.answers)) if len(q) >= probe
          and (key := codes(q, a)[:probe].tobytes()) in seen]
