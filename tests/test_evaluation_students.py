"""Knowledge-tracing evaluation: AUC and bootstrap intervals over students."""

import numpy as np
import pytest

from metajax.evaluation.students import auc, binary_metrics, bootstrap_auc
from metajax.evaluation.students import bootstrap_auc_gain


def _pairwise_auc(scores, labels, weights):
  # The definition, over all (positive, negative) pairs.
  pos, neg = labels == 1, labels == 0
  wins = ((scores[pos][:, None] > scores[neg][None, :]) +
          0.5 * (scores[pos][:, None] == scores[neg][None, :]))
  pair_w = weights[pos][:, None] * weights[neg][None, :]
  return (wins * pair_w).sum() / pair_w.sum()


def test_auc_equals_the_pairwise_definition_with_ties_and_weights():
  rng = np.random.default_rng(0)
  scores = np.round(rng.normal(size=500), 1)  # many ties
  labels = (scores + rng.normal(size=500) > 0).astype(int)
  weights = rng.integers(0, 4, 500).astype(float)
  np.testing.assert_allclose(auc(scores, labels),
                             _pairwise_auc(scores, labels, np.ones(500)))
  np.testing.assert_allclose(auc(scores, labels, weights),
                             _pairwise_auc(scores, labels, weights))
  assert auc([0.1, 0.9], [0, 1]) == 1.0
  assert auc([0.5, 0.5], [0, 1]) == 0.5
  with pytest.raises(ValueError, match="both positive and negative"):
    auc([0.1, 0.2], [1, 1])
  with pytest.raises(ValueError, match="0 or 1"):
    auc([0.1, 0.2], [0, 2])


def test_binary_metrics():
  m = binary_metrics([0.9, 0.2, 0.6, 0.4], [1, 0, 0, 1])
  assert m["auc"] == 0.75 and m["accuracy"] == 0.5 and m["n"] == 4
  np.testing.assert_allclose(m["rmse"], np.sqrt((0.01 + 0.04 + 0.36 + 0.36)
                                                / 4))


def test_bootstrap_auc_resamples_whole_groups():
  rng = np.random.default_rng(1)
  groups = np.repeat(np.arange(200), 20)
  ability = rng.normal(size=200)[groups]
  scores = ability + rng.normal(size=groups.size)
  labels = (ability + rng.normal(size=groups.size) > 0).astype(int)
  out = bootstrap_auc(scores, labels, groups, reps=300)
  assert out["auc"] == auc(scores, labels)
  assert out["ci_low"] < out["auc"] < out["ci_high"]
  assert out["groups"] == 200 and out["n"] == 4000
  # Accuracy of the probabilities, with its interval from the same draws.
  probs = 1 / (1 + np.exp(-scores))
  acc = bootstrap_auc(probs, labels, groups, reps=300)
  assert acc["accuracy"] == binary_metrics(probs, labels)["accuracy"]
  assert acc["acc_low"] < acc["accuracy"] < acc["acc_high"]
  # Answers of one student are correlated, so resampling students gives a
  # wider interval than treating the 4,000 answers as independent.
  independent = bootstrap_auc(scores, labels, np.arange(4000),
                                       reps=300)
  assert (out["ci_high"] - out["ci_low"]) > 1.2 * (
      independent["ci_high"] - independent["ci_low"])


def test_bootstrap_auc_gain_is_paired_over_students():
  rng = np.random.default_rng(2)
  groups = np.repeat(np.arange(200), 20)
  ability = rng.normal(size=200)[groups]
  labels = (ability + rng.normal(size=groups.size) > 0).astype(int)
  noise = rng.normal(size=groups.size)
  baseline = ability + noise
  better = ability + noise + 0.3 * (labels - 0.5)  # nudged towards the truth
  out = bootstrap_auc_gain(better, baseline, labels, groups, reps=300)
  assert out["gain"] == pytest.approx(auc(better, labels) -
                                      auc(baseline, labels))
  assert 0 < out["ci_low"] < out["gain"] < out["ci_high"]
  assert out["p_not_positive"] == 0.0
  # Pairing: the gain's interval is much narrower than either AUC's own.
  alone = bootstrap_auc(better, labels, groups, reps=300)
  assert (out["ci_high"] - out["ci_low"]) < 0.5 * (alone["ci_high"] -
                                                   alone["ci_low"])
  # A method against itself gains exactly nothing in every replicate.
  same = bootstrap_auc_gain(baseline, baseline, labels, groups, reps=50)
  assert same == {"gain": 0.0, "ci_low": 0.0, "ci_high": 0.0,
                  "p_not_positive": 1.0}


def _maml(model, width, lr):
  """Two-step MAML of a student model's per-student parameters."""
  import functools
  import jax.numpy as jnp
  from metajax import algorithms
  from metajax.data.students import sequences
  from metajax.models.student import masked_bce, student_mask
  x = sequences.KTInput(jnp.zeros(width, jnp.int32),
                        jnp.zeros(width, jnp.int8), jnp.zeros(width, bool))
  return algorithms.maml(
      lambda k: model.init(k, x), model.apply,
      functools.partial(masked_bce, prior_answers=2.0),
      adapt_mask=student_mask, steps=2, lr=lr)


def test_adaptive_tests_score_the_same_answers_whatever_the_batch():
  import functools
  import jax
  from metajax import adaptive_testing
  from metajax.data.students import sequences
  from metajax.evaluation.students import adaptive_test_predictions
  from metajax.models.student import StudentModel, student_mask

  rng = np.random.default_rng(3)
  lengths = rng.integers(12, 30, 7).astype(np.int32)
  q = np.where(np.arange(30) < lengths[:, None],
               rng.integers(1, 6, (7, 30)), 0).astype(np.int32)
  a = (rng.random((7, 30)) < 0.6).astype(np.int8)
  arrays = sequences.StudentArrays(q, a, lengths)
  learner = _maml(StudentModel(5, personal_dim=0), 30, lr=1.0)
  params = learner.init(jax.random.PRNGKey(0))
  run = functools.partial(adaptive_test_predictions, learner, params,
                          arrays=arrays, test_lengths=(1, 4),
                          heldout_fraction=0.25, seed=3)
  rand, rand_orders = run(adaptive_testing.random_selector(), batch=3)
  fisher, _ = run(adaptive_testing.max_information(learner, student_mask),
                  batch=3)
  again, again_orders = run(adaptive_testing.random_selector(), batch=8)
  assert rand_orders.shape == (7, 4)
  np.testing.assert_array_equal(rand_orders, again_orders)
  heldout = -(-lengths // 4)  # ceil(0.25 * length) per student
  for n in (1, 4):
    probs, answers, who = rand[n]
    np.testing.assert_array_equal(np.bincount(who, minlength=7), heldout)
    for other in (fisher[n], again[n]):
      np.testing.assert_array_equal(other[1], answers)
      np.testing.assert_array_equal(other[2], who)
    np.testing.assert_allclose(again[n][0], probs, rtol=1e-6)
    assert ((probs > 0) & (probs < 1)).all()


def test_comparable_students_follow_pykts_rules():
  from metajax.data.students import knowledge_tracing as kt
  from metajax.evaluation.students import comparable_students

  rng = np.random.default_rng(4)
  make = lambda n: (rng.integers(1, 30, n).astype(np.int32),
                    rng.integers(0, 2, n).astype(np.int8))
  train = [make(n) for n in (90, 300)]
  test = [make(n) for n in (450, 2, 201)] + [train[1]]
  seqs = lambda s: kt.Sequences(tuple(q for q, _ in s),
                                tuple(a for _, a in s))
  overlapping = [row for row, _ in kt.overlapping_students(seqs(train),
                                                           seqs(test))]
  assert overlapping == [3]  # the training student
  windows, info = comparable_students(seqs(test), overlapping)
  # 450 -> 200, 200, 50; 2 -> dropped (< 3); 201 -> 200 and 1 (dropped).
  assert [len(q) for q in windows.questions] == [200, 200, 50, 200]
  assert info == {"students_dropped": [3], "windows": 4, "windows_dropped": 2}
  np.testing.assert_array_equal(windows.questions[1], test[0][0][200:400])


def test_online_blocks_cut_each_student_from_the_first_scored_position():
  from metajax.evaluation import students as kt_eval
  rows, starts, needed = kt_eval.online_blocks(np.array([3, 7, 1]), 5, 1)
  # Student 2 has nothing after its first answer, so no block.
  np.testing.assert_array_equal(rows, [0, 1, 1])
  np.testing.assert_array_equal(starts, [1, 1, 6])
  np.testing.assert_array_equal(needed, [3, 6, 7])


def test_length_buckets_are_doublings_of_the_shortest_capped_at_the_width():
  from metajax.evaluation.students import length_buckets
  np.testing.assert_array_equal(
      length_buckets(np.array([0, 1, 8, 9, 16, 17, 33, 40]), 40, 8),
      [8, 8, 8, 16, 16, 32, 40, 40])


@pytest.mark.slow
@pytest.mark.parametrize("sequence", ["lstm", "attention"])
def test_narrower_widths_score_as_the_whole_width(sequence):
  import jax
  from metajax.data.students import sequences
  from metajax.evaluation import students as kt_eval
  from metajax.models.student import StudentModel

  rng = np.random.default_rng(5)
  lengths = np.array([3, 7, 8, 12, 19, 26, 40, 33], np.int32)
  q = np.where(np.arange(40) < lengths[:, None],
               rng.integers(1, 9, (8, 40)), 0).astype(np.int32)
  a = np.where(np.arange(40) < lengths[:, None],
               rng.random((8, 40)) < 0.6, 0).astype(np.int8)
  arrays = sequences.StudentArrays(q, a, lengths)
  learner = _maml(StudentModel(8, embed_dim=4, hidden=8, personal_dim=2,
                               sequence=sequence), 40, lr=0.5)
  params = learner.init(jax.random.PRNGKey(1))
  every = 5
  rows, starts, needed = kt_eval.online_blocks(lengths, every)
  for make_task, needed in [
      (kt_eval.online_block_task(every), needed),
      (sequences.cold_start_task, lengths[rows])]:
    run = kt_eval.scorer(learner, make_task, True)
    whole = kt_eval.scored_predictions(run, params, arrays, rows, starts, 4)
    narrow = kt_eval.scored_predictions(run, params, arrays, rows, starts, 4,
                                        needed=needed, shortest=8)
    # The tasks need all four widths, 8, 16, 32 and 40; at 8 and 32 they
    # fill a batch of 4 and move their remainder on to the next width.
    widths = kt_eval.length_buckets(needed, 40, 8)
    assert set(widths) == {8, 16, 32, 40}
    assert all((widths == w).sum() % 4 and (widths == w).sum() > 4
               for w in (8, 32))
    np.testing.assert_array_equal(narrow[1], whole[1])
    np.testing.assert_array_equal(narrow[2], whole[2])
    np.testing.assert_allclose(narrow[0], whole[0], rtol=1e-5, atol=1e-7)
