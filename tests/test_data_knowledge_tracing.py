"""The three-line knowledge-tracing loader, on the real files and bad ones."""

import collections
import re

import numpy as np
import pytest

from metajax.data.students import knowledge_tracing as kt


def _write(tmp_path, text, name="toy_train.csv"):
  path = tmp_path / name
  path.write_text(text, encoding="utf-8")
  return str(path)


def _multiset(seqs):
  return collections.Counter(
      (q.tobytes(), a.tobytes()) for q, a in zip(seqs.questions, seqs.answers))


@pytest.mark.parametrize("name, students, test_students, ids, interactions, "
                         "longest, correct", [
                             ("assist2009", 2921, 1230, 110, 325637, 1261,
                              0.658),
                             ("statics2011", 229, 104, 1223, 189297, 1181,
                              0.765)])
def test_real_datasets_match_their_published_counts(
    shared_data_dir, name, students, test_students, ids, interactions,
    longest, correct):
  data = kt.load(shared_data_dir, name)
  stats = kt.summary(data)
  assert stats["students_train"] == students
  assert stats["students_test"] == test_students
  assert stats["num_questions"] == ids
  assert stats["interactions"] == interactions
  assert stats["longest"] == longest
  assert abs(stats["correct_fraction"] - correct) < 1e-3
  for fold in range(1, 6):
    split = kt.load(shared_data_dir, name, fold=fold)
    # Each fold partitions the train file: same students, none lost.
    assert _multiset(split.train) + _multiset(split.valid) == _multiset(
        data.train)
    assert split.num_questions == ids


def test_trailing_commas_spaces_and_blank_lines(tmp_path):
  path = _write(tmp_path, "3\n4,4,7,\n1,0,1,\n\n2\n 1, 2 \n0,1\n\n")
  seqs = kt.parse(path)
  assert seqs.num_students == 2
  np.testing.assert_array_equal(seqs.questions[0], [4, 4, 7])
  np.testing.assert_array_equal(seqs.answers[0], [1, 0, 1])
  np.testing.assert_array_equal(seqs.questions[1], [1, 2])
  assert seqs.questions[0].dtype == np.int32 and seqs.answers[0].dtype == np.int8


GOOD = "2\n1,2\n0,1\n"


@pytest.mark.parametrize("bad_block, line, message", [
    ("3\n1,2\n0,1,1\n", 5, r"2 question ids but the count line \(line 4\) "
     r"says 3"),
    ("2\n1,2\n0,1,1\n", 6, "3 answers but the count line"),
    ("2\n1,0\n0,1\n", 5, "question id 0 out of range"),
    ("2\n1,x\n0,1\n", 5, "question ids must be comma-separated integers, "
     "found 'x'"),
    ("2\n1,2\n0,2\n", 6, "answers must be 0 or 1, found 2"),
    ("two\n1,2\n0,1\n", 4, "count line must be a positive integer"),
])
def test_malformed_blocks_name_file_block_and_line(tmp_path, bad_block, line,
                                                   message):
  path = _write(tmp_path, GOOD + bad_block + GOOD)
  with pytest.raises(kt.KTFormatError) as error:
    kt.parse(path)
  text = str(error.value)
  assert path in text
  assert f"student block 2 (line {line})" in text
  assert re.search(message, text), text


@pytest.mark.parametrize("bad_block, line, found", [
    ("2\n1,--1\n0,1\n", 5, "'--1'"),
    ("2\n1,1-\n0,1\n", 5, "'1-'"),
    ("2\n1,+-3\n0,1\n", 5, "'+-3'"),
    ("2\n1,-\n0,1\n", 5, "'-'"),
    ("2\n1,,2\n0,1\n", 5, "''"),
    ("2\n1,1_0\n0,1\n", 5, "'1_0'"),
    # int() reads these as 3 (Arabic-Indic, full-width) or fails (²).
    ("2\n1,\u0663\n0,1\n", 5, "'\u0663' (only ASCII digits 0-9 are read)"),
    ("2\n1,2\n0,\uff11\n", 6, "'\uff11' (only ASCII digits 0-9 are read)"),
    ("2\n1,\u00b2\n0,1\n", 5, "'\u00b2' (only ASCII digits 0-9 are read)"),
])
def test_tokens_that_are_not_ascii_integers_name_file_block_and_line(
    tmp_path, bad_block, line, found):
  path = _write(tmp_path, GOOD + bad_block + GOOD)
  with pytest.raises(kt.KTFormatError) as error:
    kt.parse(path)
  text = str(error.value)
  assert text.startswith(f"{path}, student block 2 (line {line}): ")
  assert f"must be comma-separated integers, found {found}." in text, text


@pytest.mark.parametrize("count", ["\u0663", "\uff12", "\u00b2", "+2", "2-"])
def test_count_lines_that_are_not_ascii_integers_are_named(tmp_path, count):
  path = _write(tmp_path, GOOD + f"{count}\n1,2\n0,1\n")
  with pytest.raises(kt.KTFormatError,
                     match=r"student block 2 \(line 4\): the count line must "
                     r"be a positive integer") as error:
    kt.parse(path)
  assert path in str(error.value)


def test_bytes_that_are_not_utf8_name_file_and_line(tmp_path):
  path = tmp_path / "toy_train.csv"
  path.write_bytes(GOOD.encode() + b"2\r\n1,2\r\n0,\xff1\r\n" +
                   GOOD.encode())
  with pytest.raises(kt.KTFormatError, match=r"line 6: not UTF-8 text "
                     r"\(invalid start byte") as error:
    kt.parse(str(path))
  assert str(path) in str(error.value)


def test_a_byte_order_mark_is_ignored(tmp_path):
  text = "3\n4,4,7,\n1,0,1,\n2\n1,2\n0,1\n"
  plain = kt.parse(_write(tmp_path, text, "plain.csv"))
  path = tmp_path / "bom.csv"
  path.write_bytes(b"\xef\xbb\xbf" + text.encode())
  marked = kt.parse(str(path))
  assert marked.num_students == plain.num_students == 2
  for got, want in zip(marked.questions + marked.answers,
                       plain.questions + plain.answers):
    np.testing.assert_array_equal(got, want)
    assert got.dtype == want.dtype


def test_block_cut_short_by_the_end_of_the_file(tmp_path):
  path = _write(tmp_path, GOOD + "2\n1,2\n")
  with pytest.raises(kt.KTFormatError,
                     match=r"student block 2 \(line 4\): truncated block"):
    kt.parse(path)


def test_ids_above_a_given_range_are_rejected(tmp_path):
  path = _write(tmp_path, GOOD + "2\n1,9\n0,1\n")
  assert kt.parse(path).max_id() == 9
  with pytest.raises(kt.KTFormatError,
                     match=r"block 2 \(line 5\): question id 9 out of range "
                     r"1\.\.8"):
    kt.parse(path, num_questions=8)


def test_empty_file_is_an_error(tmp_path):
  with pytest.raises(kt.KTFormatError, match="no student blocks"):
    kt.parse(_write(tmp_path, "\n\n"))


def test_window_keeps_every_interaction_in_order(shared_data_dir):
  seqs = kt.load(shared_data_dir, "statics2011").train
  pieces = kt.window(seqs, 200)
  assert pieces.lengths.max() == 200
  assert pieces.num_interactions == seqs.num_interactions
  np.testing.assert_array_equal(np.concatenate(pieces.questions),
                                np.concatenate(seqs.questions))
  np.testing.assert_array_equal(np.concatenate(pieces.answers),
                                np.concatenate(seqs.answers))
  # 450 interactions -> 200, 200, 50.
  one = kt.Sequences((np.arange(1, 451, dtype=np.int32),),
                     (np.zeros(450, np.int8),))
  assert list(kt.window(one, 200).lengths) == [200, 200, 50]


def test_pad_masks_padding_and_refuses_long_sequences(tmp_path):
  seqs = kt.parse(_write(tmp_path, "3\n4,4,7\n1,0,1\n1\n2\n1\n"))
  q, a, m = kt.pad(seqs)
  np.testing.assert_array_equal(q, [[4, 4, 7], [2, 0, 0]])
  np.testing.assert_array_equal(a, [[1, 0, 1], [1, 0, 0]])
  np.testing.assert_array_equal(m, [[1, 1, 1], [1, 0, 0]])
  with pytest.raises(ValueError, match="toy_train.csv.*3 interactions does "
                     "not fit length 2"):
    kt.pad(seqs, 2)


def test_finds_a_third_dataset_by_name_and_folder(tmp_path):
  folder = tmp_path / "assist2015"
  folder.mkdir()
  for split in ("train", "test"):
    (folder / f"assist2015_{split}.csv").write_text(GOOD + "1\n3\n1\n")
  data = kt.load(str(tmp_path), "assist2015")
  assert data.name == "assist2015" and data.num_questions == 3
  assert data.valid is None and data.test.num_students == 2
  assert kt.load(str(folder), "assist2015").train.num_students == 2
  with pytest.raises(FileNotFoundError, match="fold 2"):
    kt.load(str(tmp_path), "assist2015", fold=2)
  with pytest.raises(FileNotFoundError, match="no nope_train.csv") as error:
    kt.load(str(tmp_path), "nope")
  # Only the DKVMN datasets can be downloaded.
  assert "$METAJAX_DATA_DIR" in str(error.value)
  assert "download=True" not in str(error.value)


def test_data_dir_defaults_to_the_environment(tmp_path, monkeypatch):
  monkeypatch.setenv("METAJAX_DATA_DIR", str(tmp_path))
  with pytest.raises(FileNotFoundError) as error:
    kt.load(None, "assist2009")
  folder = str(tmp_path / "knowledge_tracing" / "assist2009_updated")
  assert f"downloads it into {folder}" in str(error.value)


def test_overlapping_students_finds_a_leaking_split():
  rng = np.random.default_rng(0)
  make = lambda n: (rng.integers(1, 20, n).astype(np.int32),
                    rng.integers(0, 2, n).astype(np.int8))
  train = [make(n) for n in (80, 120, 60)]
  clean = [make(n) for n in (70, 90, 10)]
  as_seqs = lambda students: kt.Sequences(tuple(q for q, _ in students),
                                          tuple(a for _, a in students))
  assert kt.overlapping_students(as_seqs(train), as_seqs(clean)) == []
  # A training student copied whole, and the second window of another (a
  # sequence cut into pieces with one piece on each side of the split).
  q, a = train[1]
  leaking = clean + [train[0], (q[40:], a[40:]), (q[:30], a[:30])]
  assert kt.overlapping_students(as_seqs(train), as_seqs(leaking)) == [
      (3, 0), (4, 1)]  # the 30-answer piece is too short to be checked
  assert kt.overlapping_students(as_seqs(train), as_seqs(leaking),
                                 probe=30) == [(3, 0), (4, 1), (5, 1)]


def test_the_dkvmn_splits_have_few_test_students_opening_as_in_training(
    shared_data_dir):
  """A fact of the files, reported by the student experiment."""
  for name in ("assist2009", "statics2011"):
    data = kt.load(shared_data_dir, name)
    pairs = kt.overlapping_students(data.train, data.test)
    assert 0 < len(pairs) < 0.05 * data.test.num_students, name
    for test_row, train_row in pairs:  # checked apart from the search
      q, a = data.test.questions[test_row][:50], data.test.answers[test_row][:50]
      tq, ta = data.train.questions[train_row], data.train.answers[train_row]
      assert any(np.array_equal(tq[i:i + 50], q) and
                 np.array_equal(ta[i:i + 50], a)
                 for i in range(len(tq) - 49)), (name, test_row)


def test_assist2009_shows_multi_skill_rows_sharing_one_answer(shared_data_dir):
  """Consecutive answers to different skills agree more than to one skill.

  A changed skill should make two answers less alike, not more; the excess
  is what a problem with several skills, written as one row per skill with
  one answer, leaves. docs/students.md quotes these rates.
  """
  test = kt.load(shared_data_dir, "assist2009").test
  same = {True: [0, 0], False: [0, 0]}
  lag2 = [0, 0]
  for q, a in zip(test.questions, test.answers):
    agree = a[1:] == a[:-1]
    for skill_kept in (True, False):
      rows = (q[1:] == q[:-1]) == skill_kept
      same[skill_kept][0] += int(agree[rows].sum())
      same[skill_kept][1] += int(rows.sum())
    lag2[0] += int((a[2:] == a[:-2]).sum())
    lag2[1] += max(len(a) - 2, 0)
  rate = lambda pair: pair[0] / pair[1]
  assert round(rate(same[False]), 2) == 0.78
  assert round(rate(same[True]), 2) == 0.67
  assert round(rate(lag2), 2) == 0.65
