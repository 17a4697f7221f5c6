"""Evaluation: confidence intervals and per-task scoring."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import metajax
from metajax import algorithms
from metajax.evaluation import auc, binary_metrics, bootstrap_auc
from metajax.evaluation import bootstrap_auc_gain
from metajax.evaluation import accuracy
from metajax.data import sinusoid
from conftest import tiny_mlp, tiny_mlp_params


def test_mean_ci_is_the_normal_interval():
  values = np.array([1.0, 2.0, 4.0, 7.0])
  out = metajax.mean_ci(values)
  assert out["mean"] == pytest.approx(3.5)
  assert out["std"] == pytest.approx(np.std(values, ddof=1))
  assert out["ci95"] == pytest.approx(1.96 * np.std(values, ddof=1) / 2.0)
  assert out["n"] == 4


def test_mean_ci_rejects_bad_input():
  with pytest.raises(ValueError, match="at least 2"):
    metajax.mean_ci([1.0])
  with pytest.raises(ValueError, match="1 of 3 per-task values are not finite"):
    metajax.mean_ci([1.0, np.nan, 2.0])


def test_evaluate_scores_each_task_after_adaptation():
  learner = algorithms.maml(tiny_mlp_params, tiny_mlp, algorithms.mse,
                            steps=2, lr=0.1)
  meta_params = learner.init(jax.random.PRNGKey(0))
  sampler = sinusoid.sampler(8, 5, 10)
  values = metajax.evaluate(learner, meta_params, sampler, algorithms.mse,
                            key=jax.random.PRNGKey(1), num_tasks=20)
  assert values.shape == (20,) and values.dtype == np.float64
  # Recompute task 0 of the first batch by hand.
  _, sub = jax.random.split(jax.random.PRNGKey(1))
  task = jax.tree.map(lambda x: x[0], sampler(sub))
  adapted = metajax.adapt(algorithms.supervised_loss(tiny_mlp, algorithms.mse),
                          meta_params["params"], task.support, steps=2, lr=0.1)
  expected = algorithms.mse(tiny_mlp(adapted, task.query[0]), task.query[1])
  np.testing.assert_allclose(values[0], expected, rtol=1e-5)
  again = metajax.evaluate(learner, meta_params, sampler, algorithms.mse,
                           key=jax.random.PRNGKey(1), num_tasks=20)
  np.testing.assert_array_equal(values, again)


def test_accuracy():
  logits = jnp.array([[2.0, 1.0], [0.0, 3.0], [5.0, -1.0]])
  assert float(accuracy(logits, jnp.array([0, 1, 1]))) == pytest.approx(2 / 3)


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
