"""Knowledge-tracing evaluation: each student a task, scored by AUC.

Two protocols, both on students never seen in training (see
docs/students.md):

  usual protocol  every answer predicted from all the student's earlier
                  answers (`usual_protocol`); an adapting learner re-adapts
                  on the answers so far every `online_every` answers;
  comparable      the usual protocol under pyKT's leakage and length rules
                  that apply to our files (`comparable_students`), so that
                  its numbers sit beside pyKT's benchmark;
  cold start      adapt on a student's first k answers and predict all later
                  ones from those k alone (`cold_start_predictions`), for
                  each support size k;
  adaptive test   a selector asks n items of a student's candidate pool, one
                  at a time; adapt on those n answers and predict the
                  student's held-out answers (`adaptive_test_predictions`),
                  for each test length n.

Uncertainty is over students: `bootstrap_auc` resamples whole students, and
`bootstrap_auc_gain` compares two learners on the same resampled students.
Predictions are made on the device, `batch` students per compiled call.
"""

import functools
from typing import Callable, Dict, Iterator, Mapping, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from metajax import adaptive_testing
from metajax.algorithms import MetaLearner
from metajax.data.students import knowledge_tracing as kt
from metajax.data.students import sequences

# (probabilities, 0/1 answers, student rows), each float/int `[scored answers]`.
Predictions = Tuple[np.ndarray, np.ndarray, np.ndarray]


def auc(scores, labels, weights=None) -> float:
  """Area under the ROC curve (ties count one half), optionally weighted.

  Args:
    scores: float `[n]`, higher means "more likely 1".
    labels: `[n]` in {0, 1}.
    weights: optional non-negative `[n]` (e.g. bootstrap multiplicities).

  Returns:
    P(score of a random positive > that of a random negative), in [0, 1].
  """
  return float(_auc_sorted(*_sort_for_auc(scores, labels),
                           None if weights is None else np.asarray(weights)))


def _sort_for_auc(scores, labels):
  scores = np.asarray(scores, np.float64).ravel()
  labels = np.asarray(labels).ravel()
  if scores.shape != labels.shape:
    raise ValueError(f"scores {scores.shape} and labels {labels.shape} differ.")
  if not np.isin(labels, (0, 1)).all():
    raise ValueError("labels must be 0 or 1.")
  order = np.argsort(scores, kind="mergesort")
  scores, labels = scores[order], labels[order].astype(bool)
  # Groups of tied scores: index of the first element of each element's group.
  starts = np.r_[True, scores[1:] != scores[:-1]]
  group = np.cumsum(starts) - 1
  return order, labels, group


def _auc_sorted(order, labels, group, weights):
  w = np.ones(labels.size) if weights is None else weights[order]
  neg = np.where(labels, 0.0, w)
  pos = np.where(labels, w, 0.0)
  neg_per_group = np.bincount(group, neg)
  below = np.cumsum(neg_per_group) - neg_per_group  # negatives strictly lower
  total_pos, total_neg = pos.sum(), neg.sum()
  if total_pos == 0 or total_neg == 0:
    raise ValueError("AUC needs both positive and negative labels.")
  wins = np.sum(pos * (below[group] + 0.5 * neg_per_group[group]))
  return wins / (total_pos * total_neg)


def binary_metrics(probs, labels) -> Dict[str, float]:
  """AUC, accuracy at 0.5 and RMSE of probabilities `[n]` for 0/1 `[n]`."""
  probs = np.asarray(probs, np.float64).ravel()
  labels = np.asarray(labels, np.float64).ravel()
  return {"auc": auc(probs, labels),
          "accuracy": float(np.mean((probs >= 0.5) == (labels == 1))),
          "rmse": float(np.sqrt(np.mean((probs - labels) ** 2))),
          "n": int(labels.size)}


def bootstrap_auc(scores, labels, groups, *, reps: int = 1000, seed: int = 0
                  ) -> Dict[str, float]:
  """AUC with a 95% percentile bootstrap interval over groups (students).

  Each replicate draws as many groups as there are, with replacement, and
  weighs every answer by its group's multiplicity; the answers are sorted
  once, so a replicate costs O(n).

  Args:
    scores, labels: `[n]` as in `auc`.
    groups: int `[n]`, the group (student) of each answer.
    reps: bootstrap replicates.
    seed: seed of the resampling.

  Returns:
    {"auc", "ci_low", "ci_high", "accuracy", "acc_low", "acc_high",
    "groups", "n"}: the AUC and the accuracy of `scores >= 0.5` (scores
    are probabilities for it to mean anything), each with its interval
    from the same replicates.
  """
  groups = np.asarray(groups).ravel()
  sorted_ = _sort_for_auc(scores, labels)
  right = ((np.asarray(scores).ravel() >= 0.5) ==
           (np.asarray(labels).ravel() == 1)).astype(np.float64)
  values, accuracies = [], []
  for w in _group_weights(groups, reps, seed):
    values.append(_auc_sorted(*sorted_, w))
    accuracies.append(np.dot(w, right) / w.sum())
  low, high = np.percentile(values, [2.5, 97.5])
  acc_low, acc_high = np.percentile(accuracies, [2.5, 97.5])
  return {"auc": float(_auc_sorted(*sorted_, None)), "ci_low": float(low),
          "ci_high": float(high), "accuracy": float(right.mean()),
          "acc_low": float(acc_low), "acc_high": float(acc_high),
          "groups": int(np.unique(groups).size), "n": int(groups.size)}


def bootstrap_auc_gain(scores, baseline_scores, labels, groups, *,
                       reps: int = 1000, seed: int = 0) -> Dict[str, float]:
  """AUC(scores) - AUC(baseline_scores) on the same answers, paired bootstrap.

  Both AUCs are computed on each replicate's same resampled groups
  (students), so the interval is that of the gain itself, much narrower than
  the two AUCs' own intervals when the methods agree on most students.

  Args:
    scores, baseline_scores: `[n]` scores of two methods for the same answers.
    labels, groups: `[n]` as in `bootstrap_auc`.
    reps, seed: as in `bootstrap_auc`.

  Returns:
    {"gain", "ci_low", "ci_high", "p_not_positive"}: the gain, its 95%
    percentile interval, and the fraction of replicates whose gain is <= 0
    (a one-sided bootstrap p-value for "the method is better").
  """
  groups = np.asarray(groups).ravel()
  ours = _sort_for_auc(scores, labels)
  theirs = _sort_for_auc(baseline_scores, labels)
  gains = np.array([_auc_sorted(*ours, w) - _auc_sorted(*theirs, w)
                    for w in _group_weights(groups, reps, seed)])
  low, high = np.percentile(gains, [2.5, 97.5])
  return {"gain": float(_auc_sorted(*ours, None) -
                        _auc_sorted(*theirs, None)),
          "ci_low": float(low), "ci_high": float(high),
          "p_not_positive": float(np.mean(gains <= 0))}


def _group_weights(groups, reps: int, seed: int) -> Iterator[np.ndarray]:
  """Per replicate, float64 `[n]` weights: each answer's group multiplicity."""
  ids, index = np.unique(groups, return_inverse=True)
  rng = np.random.default_rng(seed)
  for _ in range(reps):
    counts = np.bincount(rng.integers(0, ids.size, ids.size),
                         minlength=ids.size)
    yield counts[index].astype(np.float64)


@functools.lru_cache(maxsize=32)
def scorer(learner: MetaLearner, make_task: Callable, adapt: bool) -> Callable:
  """A compiled `run(meta_params, data, rows, starts) -> (probs, KTTarget)`.

  Task i is `make_task(questions[rows[i]], answers[rows[i]],
  lengths[rows[i]], starts[i])`, built on the device from `data =
  (questions, answers, lengths)`; with `adapt`, the learner adapts on its
  support set before predicting its query, otherwise it predicts with its
  meta-parameters as they are (`adapt(..., steps=0)`). Outputs are
  `[len(rows), L]`, L being the width of `data`'s arrays. Cached, so that
  scoring the same learner again (the validation students every few hundred
  steps) does not compile again.
  """
  def one(mp, q, a, length, s):
    task = make_task(q, a, length, s)
    state = (learner.adapt(mp, task.support) if adapt else
             learner.adapt(mp, task.support, steps=0))
    x, y = task.query
    return jax.nn.sigmoid(learner.predict(mp, state, x)), y

  @jax.jit
  def run(mp, data, rows, starts):
    q, a, lengths = data
    return jax.vmap(one, in_axes=(None, 0, 0, 0, 0))(
        mp, q[rows], a[rows], lengths[rows], starts)
  return run


def length_buckets(needed: np.ndarray, width: int,
                   shortest: int = 128) -> np.ndarray:
  """The sequence width each task is scored at: a power of two times
  `shortest` that holds its `needed` positions, at most `width`.

  A student with 80 answers padded to the longest student's 1,146 would cost
  the whole width (its square, for attention); a few widths keep the
  compilations few.
  """
  needed = np.maximum(np.asarray(needed, np.int64), 1)
  steps = np.ceil(np.log2(np.maximum(needed / shortest, 1.0))).astype(np.int64)
  return np.minimum(shortest * 2 ** steps, width)


def scored_predictions(run: Callable, meta_params, arrays, rows, starts,
                       batch: int, desc: str = "", progress: bool = False,
                       needed=None, shortest: int = 128) -> Predictions:
  """`run`'s predictions at the scored query positions, `batch` tasks a call.

  With `needed` (int `[tasks]`, the positions each task reads), tasks are
  scored at the narrowest of `length_buckets`' widths that holds them,
  which changes nothing for a causal model: what is scored at a position
  reads only earlier ones. Every call is a full batch of `[batch, width]`
  sequences: a width's tasks that do not fill a batch move on to the next
  width, and only the widest width's last batch is padded (as every last
  batch was before), so each width compiles once and at most one call
  holds padding.

  Returns:
    (probabilities, answers, student rows), each `[scored answers]`, in the
    order of the tasks and, within a task, of the positions.
  """
  rows, starts = np.asarray(rows, np.int32), np.asarray(starts, np.int32)
  full = int(arrays.questions.shape[1])
  widths = (np.full(len(rows), full) if needed is None else
            length_buckets(needed, full, shortest))
  order = np.argsort(widths, kind="stable")
  per_task = [None] * len(rows)
  bar = tqdm.tqdm(total=-(-len(rows) // batch), desc=desc, unit="batch",
                  leave=False, disable=not progress)
  carried = np.zeros(0, np.int64)
  last = int(widths.max(initial=0))
  for width in np.unique(widths):
    tasks = np.concatenate([carried, order[widths[order] == width]])
    end = len(tasks) if width == last else len(tasks) // batch * batch
    tasks, carried = tasks[:end], tasks[end:]
    data = (jax.device_put(arrays.questions[:, :width]),
            jax.device_put(arrays.answers[:, :width]),
            jax.device_put(arrays.lengths))
    for i in range(0, len(tasks), batch):
      index = tasks[i:i + batch]
      pad = batch - len(index)
      p, y = run(meta_params, data, np.pad(rows[index], (0, pad)),
                 np.pad(starts[index], (0, pad)))
      target = np.asarray(y.target)[:len(index)]
      p, answers = np.asarray(p)[:len(index)], np.asarray(y.answers)
      for j, task in enumerate(index):
        per_task[task] = (p[j][target[j]], answers[j][target[j]])
      bar.update()
  bar.close()
  probs = [p for p, _ in per_task]
  return (np.concatenate(probs), np.concatenate([y for _, y in per_task]),
          np.repeat(rows, [len(p) for p in probs]))


def usual_protocol(learner: MetaLearner, meta_params,
                   arrays: sequences.StudentArrays, *, adapt: bool,
                   online_every: int = 1, first_scored: int = 0,
                   batch: int = 256, desc: str = "",
                   progress: bool = False) -> Dict[str, float]:
  """AUC/accuracy/RMSE over all answers, each from all earlier ones.

  Args:
    learner, meta_params: the trained learner.
    arrays: the students, whole sequences (`sequences.pack`).
    adapt: re-adapt on the answers so far every `online_every` answers;
      otherwise read each whole history with no adaptation.
    online_every: answers between re-adaptations.
    first_scored: the first position scored in each sequence (1: not the
      first answer, which has no history, as pyKT scores).
    batch: tasks per compiled call.
    desc, progress: progress bar label and switch.

  Returns:
    `binary_metrics` of every scored answer.
  """
  every = online_every if adapt else int(arrays.questions.shape[1])
  rows, starts, needed = online_blocks(arrays.lengths, every, first_scored)
  p, y, _ = scored_predictions(scorer(learner, online_block_task(every), adapt),
                               meta_params, arrays, rows, starts, batch,
                               desc, progress, needed=needed)
  return binary_metrics(p, y)


def online_blocks(lengths, every: int, first_scored: int = 0
                  ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The usual protocol's tasks: each student cut into blocks of `every`.

  Args:
    lengths: int `[students]`, answers per student.
    every: answers per block (between re-adaptations).
    first_scored: the position the first block starts at.

  Returns:
    `(rows, starts, needed)`, each int `[tasks]`: the student, the first
    position the block scores, and the positions the task reads (its
    history and the block), for `scored_predictions`.
  """
  lengths = np.asarray(lengths)
  rows, starts = np.array([(r, s) for r, n in enumerate(lengths)
                           for s in range(first_scored, int(n), every)],
                          np.int32).reshape(-1, 2).T
  return rows, starts, np.minimum(lengths[rows], starts + every)


@functools.lru_cache(maxsize=None)
def online_block_task(every: int) -> Callable:
  """`sequences.online_task` with re-adaptation every `every` answers, the
  task maker of `online_blocks`' tasks; one object per `every`, so that
  `scorer`'s cache knows it again."""
  return functools.partial(sequences.online_task, every=every)


def comparable_students(test: kt.Sequences, overlapping: Sequence[int], *,
                        window: int = 200, min_length: int = 3
                        ) -> Tuple[kt.Sequences, Dict]:
  """The test sequences of the comparable protocol, and what was dropped.

  pyKT's rules (Liu et al., NeurIPS 2022, as its code applies them) that a
  file of (question or skill, answer) sequences allows: a test student is
  never a training student (here: the `overlapping` rows, those who open
  as a training student by `knowledge_tracing.overlapping_students`, are
  dropped); sequences are cut into consecutive windows of `window`
  answers, each read from its own start; windows shorter than `min_length`
  are dropped; and each window's first answer, which has no history, is
  not scored (`usual_protocol`'s `first_scored=1`). pyKT's rule for
  questions with several skills (every skill of a question predicted from
  the history before the question) needs question ids, which skill-level
  files do not have.

  Returns:
    `(windows, {"students_dropped": [test rows], "windows": count,
    "windows_dropped": count})`.
  """
  dropped = sorted(set(int(row) for row in overlapping))
  keep = [row for row in range(test.num_students) if row not in set(dropped)]
  pieces = kt.window(test.select(keep), window)
  long_enough = [i for i, q in enumerate(pieces.questions)
                 if len(q) >= min_length]
  return pieces.select(long_enough), {
      "students_dropped": dropped, "windows": len(long_enough),
      "windows_dropped": pieces.num_students - len(long_enough)}


def cold_start_predictions(learner: MetaLearner, meta_params,
                           arrays: sequences.StudentArrays, *,
                           support_sizes: Sequence[int], adapt: bool,
                           batch: int = 256, desc: str = "",
                           progress: bool = False
                           ) -> Dict[int, Predictions]:
  """{k: predictions of every answer after the first k, from those k alone}."""
  run = scorer(learner, sequences.cold_start_task, adapt)
  rows = np.arange(arrays.num_students, dtype=np.int32)
  return {k: scored_predictions(run, meta_params, arrays, rows,
                                np.full_like(rows, k), batch,
                                f"{desc} k={k}", progress,
                                needed=arrays.lengths)
          for k in support_sizes}


def mean_cold_start_auc(learner: MetaLearner, meta_params,
                        arrays: sequences.StudentArrays, *,
                        support_sizes: Sequence[int], batch: int = 256,
                        desc: str = "", progress: bool = False) -> float:
  """Cold-start AUC after adapting, averaged over the support sizes k > 0.

  The model-selection score of a meta-learner, which is trained for exactly
  this; with no k > 0, the AUC at k = 0.
  """
  sizes = tuple(k for k in support_sizes if k > 0) or (0,)
  predictions = cold_start_predictions(
      learner, meta_params, arrays, support_sizes=sizes, adapt=True,
      batch=batch, desc=desc, progress=progress)
  return float(np.mean([binary_metrics(p, y)["auc"]
                        for p, y, _ in predictions.values()]))


def cold_start_table(predictions: Mapping[int, Predictions], *,
                     reps: int = 1000, seed: int = 0
                     ) -> Dict[int, Dict[str, float]]:
  """Per support size k: AUC with a bootstrap interval over students."""
  return {k: bootstrap_auc(p, y, who, reps=reps, seed=seed)
          for k, (p, y, who) in predictions.items()}


def cold_start_gains(predictions: Mapping[int, Predictions],
                     baseline: Mapping[int, Predictions], *,
                     reps: int = 1000, seed: int = 0
                     ) -> Dict[int, Dict[str, float]]:
  """Per k: the AUC gain over `baseline`'s predictions, paired bootstrap.

  Raises:
    ValueError: the two learners' predictions are not of the same answers.
  """
  gains = {}
  for k, (p, y, who) in predictions.items():
    base_p, base_y, base_who = baseline[k]
    if not (np.array_equal(y, base_y) and np.array_equal(who, base_who)):
      raise ValueError(f"k={k}: the two methods scored different answers.")
    gains[k] = bootstrap_auc_gain(p, base_p, y, who, reps=reps, seed=seed)
  return gains


def adaptive_test_predictions(learner: MetaLearner, meta_params,
                              select: adaptive_testing.Selector,
                              arrays: sequences.StudentArrays, *,
                              test_lengths: Sequence[int],
                              heldout_fraction: float, seed: int,
                              batch: int = 256, desc: str = "",
                              progress: bool = False
                              ) -> Tuple[Dict[int, Predictions], np.ndarray]:
  """Every student of `arrays` takes an adaptive test of `max(test_lengths)`.

  Student row r is split by `sequences.cat_task` with the key
  `fold_in(PRNGKey(seed), r)`, so every selector and every model is scored
  on the same pools and held-out answers; the selector's own randomness
  comes from `fold_in(PRNGKey(seed + 1), r)`. After each test length n the
  learner adapts on the n asked answers and predicts the held-out ones.
  Students are vmapped `batch` at a time in one compiled function.

  Args:
    learner, meta_params: the response model (`adapt`, `predict`).
    select: the selector; it gets `meta_params`.
    arrays: the students, whole sequences (`sequences.pack`).
    test_lengths: the numbers of asked items to score after.
    heldout_fraction: the fraction of each student's answers held out.
    seed: seed of the splits.
    batch, desc, progress: students per call, progress bar.

  Returns:
    `({n: (probabilities, answers, rows)}, orders)`: each n's held-out
    predictions as in `scored_predictions`, and the asked positions, int32
    `[students, max(test_lengths)]` (-1 once a pool ran out).
  """
  lengths = tuple(test_lengths)
  run = _adaptive_test_runner(learner, select, lengths,
                              float(heldout_fraction), int(seed))
  data = [jax.device_put(v) for v in arrays]
  rows = np.arange(arrays.num_students, dtype=np.int32)
  out = {n: ([], [], []) for n in lengths}
  orders = []
  for i in tqdm.tqdm(range(0, len(rows), batch), desc=desc, unit="batch",
                     leave=False, disable=not progress):
    r = rows[i:i + batch]
    padded = np.pad(r, (0, batch - len(r)))
    probs, y, order = run(meta_params, *(v[padded] for v in data), padded)
    target = np.asarray(y.target)[:len(r)]
    answers = np.asarray(y.answers)[:len(r)][target]
    who = np.broadcast_to(r[:, None], target.shape)[target]
    probs = np.asarray(probs)[:len(r)]  # [students, test lengths, L]
    for j, n in enumerate(lengths):
      out[n][0].append(probs[:, j][target])
      out[n][1].append(answers)
      out[n][2].append(who)
    orders.append(np.asarray(order)[:len(r)])
  predictions = {n: tuple(np.concatenate(v) for v in out[n]) for n in lengths}
  return predictions, np.concatenate(orders)


@functools.lru_cache(maxsize=32)
def _adaptive_test_runner(learner: MetaLearner,
                          select: adaptive_testing.Selector,
                          lengths: Tuple[int, ...], heldout_fraction: float,
                          seed: int) -> Callable:
  """The compiled batch of tests of `adaptive_test_predictions`.

  Cached, so that scoring the same learner and selector again (e.g. on the
  validation students every few hundred steps) does not compile again.
  """
  num_asked = max(lengths)

  def one(mp, q, a, length, row):
    task = sequences.cat_task(q, a, length,
                              jax.random.fold_in(jax.random.PRNGKey(seed), row),
                              heldout_fraction)
    order = adaptive_testing.administer(
        select, mp, task,
        jax.random.fold_in(jax.random.PRNGKey(seed + 1), row), num_asked)
    probs = []
    for n in lengths:
      scored = adaptive_testing.scored_task(task, order, n)
      state = learner.adapt(mp, scored.support)
      probs.append(jax.nn.sigmoid(learner.predict(mp, state,
                                                  scored.query[0])))
    return jnp.stack(probs), task.query[1], order

  return jax.jit(jax.vmap(one, in_axes=(None, 0, 0, 0, 0)))
