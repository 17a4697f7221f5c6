"""Computerised adaptive testing: meta-learned question selection for students.

For one knowledge-tracing dataset, every student with enough answers is a
test (`sequences.cat_task`): their answers are split at random into a
candidate pool and `heldout_fraction` held out (the split of BOBCAT, Ghosh
& Lan 2021). A selector asks `max(test_lengths)` items of the pool, one at
a time, seeing each answer before the next choice; after n items the
response model adapts to the n answers and predicts the held-out ones.
`train_and_evaluate` trains two response models of the same `StudentModel`:

  fitted    the model trained jointly on every training answer (the
            classical "fitted IRT model" of CAT), which a test adapts by
            fine-tuning the per-student parameters at the rate that scores
            best on the validation students;
  bobcat    BOBCAT (`algorithms.bobcat`): a selection policy and the
            model's initialisation (MAML, starting from the fitted model)
            trained together on the training students' tests;

and on the test students scores every selector of
`metajax.adaptive_testing` with each model: random, maximum Fisher
information ("fisher"), posterior-weighted KL information ("kl"), and, with
the bobcat model, its learned policy ("policy"). Reported per test length n:
AUC and accuracy over all held-out answers with 95% bootstrap intervals over
students, the policy's paired AUC gains over random, over maximum
information and over the classical test (fitted model, maximum
information), the median time to choose a question, and a plot of AUC
against n.

Student splits are the dataset's (fold k: train_k / valid_k, and the test
file); every test student's pool is fixed by `seed` and the same for every
selector. Files written to `workdir`: config.json, results.json,
adaptive_testing.png and per trained model `<model>/` logs, orbax
checkpoints (a rerun resumes) and the selected parameters in `best/`.
"""

import dataclasses
import functools
import os
from typing import Dict, NamedTuple, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metajax import adaptive_testing as cat
from metajax import algorithms
from metajax import checkpoint
from metajax.data.students import knowledge_tracing as kt
from metajax.data.students import sequences
from metajax.evaluation import students as kt_eval
from metajax.experiments import harness
from metajax.experiments import student_performance
from metajax.experiments.harness import field
from metajax.experiments.harness import field_of
from metajax.models.student import masked_bce
from metajax.models.student import student_mask

SELECTORS = ("random", "fisher", "kl")
# Rounds of `selection_times`, each timing every selector once.
SELECTION_ROUNDS = 30


@dataclasses.dataclass(frozen=True)
class Config(harness.RunConfig):
  """Everything that defines a run.

  `num_steps` trains the fitted model, `cat_steps` BOBCAT; `fold` is as in
  the student-performance experiment (0: no validation students, the
  training students select).
  """
  dataset: str = field_of(student_performance.Config, "dataset")
  data_dir: str = field_of(student_performance.Config, "data_dir")
  download: bool = field_of(student_performance.Config, "download")
  num_questions: int = field_of(student_performance.Config, "num_questions")
  fold: int = field_of(student_performance.Config, "fold")
  model: str = field("irt", "Response model: irt (multidimensional IRT), "
                     "dkt or sakt (an LSTM or attention over the asked "
                     "answers).", choices=student_performance.MODELS)
  personal_dim: int = field(
      0, "Width of the per-student profile beside the ability (0: one "
      "ability per student, the Rasch model of classical CAT).")
  hidden: int = field(100, "Width of the sequence part (dkt, sakt).")
  embed_dim: int = field(64, "Embedding width (dkt, sakt).")
  num_heads: int = field_of(student_performance.Config, "num_heads")
  test_lengths: Tuple[int, ...] = field(
      (1, 3, 5, 10, 20), "Numbers of asked questions to score after; a test "
      "asks the largest.")
  heldout_fraction: float = field(
      0.2, "Fraction of each student's answers held out for scoring; the "
      "rest is the pool a test asks from.")
  inner_steps: int = field(5, "Gradient steps of every adaptation.")
  inner_lr: float = field(1.0, "BOBCAT's inner learning rate.")
  prior_answers: float = field_of(student_performance.Config, "prior_answers")
  prior_precision: float = field(
      1.0, "Prior precision of the per-student parameters in the "
      "information selectors' Laplace posterior.")
  outer_lr: float = field(1e-3, "Adam learning rate of both models.")
  meta_batch_size: int = field(32, "Students (windows) per step.")
  num_steps: int = field(2000, "Training steps of the fitted model.",
                         rerun_may_change=True)
  cat_steps: int = field(2000, "Training steps of BOBCAT; fixed once a "
                         "workdir has trained it.")
  policy_hidden: int = field(256, "Hidden width of BOBCAT's policy.")
  entropy_weight: float = field(0.0, "Weight of an entropy bonus on "
                                "BOBCAT's choices.")
  eval_every: int = field(250, "Steps between validation scores; each "
                          "model's best-scoring parameters are tested.")
  window: int = field(200, "Training sequences of the fitted model are cut "
                      "into windows of this many answers (all kept).")
  eval_batch: int = field(128, "Students per compiled evaluation call.",
                          rerun_may_change=True)
  bootstrap: int = field(1000, "Bootstrap replicates of the intervals.",
                         rerun_may_change=True)
  checkpoint_every: int = harness.checkpoint_every_field(500)

  RATES = ("inner_lr", "outer_lr", "prior_precision")
  POSITIVE = harness.RunConfig.POSITIVE + (
      "inner_steps", "meta_batch_size", "num_steps", "cat_steps", "window",
      "eval_batch", "eval_every", "policy_hidden", "bootstrap")

  def validate(self):
    super().validate()
    harness.check_positive(self, ("num_questions", "personal_dim"), least=0)
    if self.model in student_performance.SEQUENCE_OF:
      harness.check_positive(self, ("hidden", "embed_dim", "num_heads"))
      student_performance.check_heads(self)
    if not self.test_lengths or min(self.test_lengths) < 1:
      raise ValueError(f"test_lengths must be positive, got "
                       f"{self.test_lengths}.")
    if not 0 < self.heldout_fraction < 1:
      raise ValueError(f"heldout_fraction must be in (0, 1), got "
                       f"{self.heldout_fraction}.")
    if self.prior_answers < 0 or self.entropy_weight < 0:
      raise ValueError("prior_answers and entropy_weight must be >= 0.")
    if self.fold not in range(0, 6):
      raise ValueError(f"fold must be 0 (no validation) or 1..5, got "
                       f"{self.fold}.")


class _Data(NamedTuple):
  """The dataset, the fitted model's training windows, and the test takers.

  `train`, `valid` and `test` hold the students whose pool holds at least
  `max(test_lengths)` answers, whole.
  """
  dataset: kt.KTDataset
  windows: sequences.StudentArrays
  train: sequences.StudentArrays
  valid: sequences.StudentArrays
  test: sequences.StudentArrays
  kept: Dict[str, Tuple[int, int]]


def _test_takers(seqs: kt.Sequences, config: Config):
  """The students of `seqs` whose pool can supply a whole test, packed."""
  pools = sequences.cat_pool_size(seqs.lengths, config.heldout_fraction)
  rows = np.flatnonzero(pools >= max(config.test_lengths))
  return sequences.pack(seqs.select(rows)), (len(rows), seqs.num_students)


def _prepare(config: Config) -> _Data:
  data = student_performance.load_data(config)
  splits, kept = {}, {}
  for split in ("train", "valid", "test"):
    seqs = getattr(data, split)
    if seqs is None:
      seqs = data.train
    splits[split], kept[split] = _test_takers(seqs, config)
    if not kept[split][0]:
      longest = int(seqs.lengths.max())
      raise ValueError(
          f"no {split} student of {data.name} can take a test of "
          f"{max(config.test_lengths)} questions: the longest has "
          f"{longest} answers, a pool of "
          f"{int(sequences.cat_pool_size(longest, config.heldout_fraction))}"
          f" after holding out {config.heldout_fraction:.0%}. Lower "
          f"--test_lengths or --heldout_fraction.")
  if kept["train"][0] < config.meta_batch_size:
    raise ValueError(
        f"--meta_batch_size={config.meta_batch_size} exceeds the "
        f"{kept['train'][0]} training students who can take a test of "
        f"{max(config.test_lengths)} questions.")
  return _Data(data, sequences.pack(data.train, window=config.window),
               kept=kept, **splits)


def num_steps(config: Config, data: _Data) -> int:
  """The most steps any model of the run trains for."""
  del data
  return max(config.num_steps, config.cat_steps)


def response_model(config: Config, method: str, num_questions: int,
                   lr=None) -> algorithms.MetaLearner:
  """The `StudentModel` learner ("joint" or "maml") of the run."""
  return student_performance.make_learner(config, method, num_questions, lr)


def make_bobcat(config: Config, num_questions: int, start=None
                ) -> algorithms.Bobcat:
  """BOBCAT over MAML on the run's model, its init from `start` if given."""
  base = response_model(config, "maml", num_questions)
  if start is not None:
    base = algorithms.starting_from(base, start)
  return algorithms.bobcat(
      base, functools.partial(masked_bce, prior_answers=config.prior_answers),
      num_questions=num_questions, test_lengths=config.test_lengths,
      hidden=config.policy_hidden, entropy_weight=config.entropy_weight)


def selectors(config: Config, learner: algorithms.MetaLearner
              ) -> Dict[str, cat.Selector]:
  """The classical selectors, scoring with `learner`'s adapted model."""
  return {"random": cat.random_selector(),
          "fisher": cat.max_information(learner, student_mask,
                                        config.prior_precision),
          "kl": cat.kl_information(learner, student_mask,
                                   config.prior_precision)}


def _predictions(config, learner, params, select, arrays, desc=""):
  return kt_eval.adaptive_test_predictions(
      learner, params, select, arrays, test_lengths=config.test_lengths,
      heldout_fraction=config.heldout_fraction, seed=config.seed,
      batch=config.eval_batch, desc=desc, progress=config.progress)


def mean_auc(config, learner, params, select, arrays) -> float:
  """AUC on the held-out answers, averaged over the test lengths."""
  predictions, _ = _predictions(config, learner, params, select, arrays)
  return float(np.mean([kt_eval.binary_metrics(p, y)["auc"]
                        for p, y, _ in predictions.values()]))


def _finetune(config, params, valid, num_questions):
  """The fitted model fine-tuned at the rate with the best validation AUC.

  Scored with random tests, so that no selector is favoured.

  Returns:
    `(learner, {"lr": the rate, "validation_auc": {rate: AUC}})`.
  """
  learners = {lr: response_model(config, "joint", num_questions, lr)
              for lr in student_performance.FINETUNE_LRS}
  scores = {lr: mean_auc(config, learner, params, cat.random_selector(),
                         valid) for lr, learner in learners.items()}
  best = max(scores, key=scores.get)
  return learners[best], {"lr": best, "validation_auc": scores}


def _train(config, learner, sampler, steps, workdir, name, eval_fn):
  """Trains one model (resuming), returns its best parameters and step."""
  method_dir = os.path.join(workdir, name)
  state = harness.train_learner(
      config, learner, optax.adam(config.outer_lr), sampler,
      key=jax.random.PRNGKey(config.seed), num_steps=steps,
      workdir=method_dir, desc=name,
      eval_fn=eval_fn,
      eval_every=config.eval_every, keep_best="valid_auc", task_chunk=None)
  return checkpoint.restore_best(method_dir, state.meta_params)


def selection_times(config: Config, rows, arrays: sequences.StudentArrays,
                    rounds: int = SELECTION_ROUNDS) -> Dict[str, float]:
  """Median seconds to choose one question, per row, side by side.

  One compiled test of `max(test_lengths)` questions of the first student
  of `arrays`, divided by its length.

  Args:
    config: the run's config.
    rows: {name: (learner, meta_params, select)}.
    arrays: the test students.
    rounds: timed tests per row.
  """
  task = sequences.cat_task(
      *(jnp.asarray(v[0]) for v in arrays),
      jax.random.PRNGKey(config.seed), config.heldout_fraction)
  num_asked = max(config.test_lengths)
  calls = {}
  for name, (_, params, select) in rows.items():
    run = jax.jit(functools.partial(cat.administer, select,
                                    num_asked=num_asked))
    calls[name] = functools.partial(run, jax.device_put(params), task,
                                    jax.random.PRNGKey(0))
  return {name: seconds / num_asked for name, seconds in
          student_performance.side_by_side_times(calls, rounds).items()}


def _plot(path: str, results: Dict, title: str):
  """AUC against n per selector; the policy's paired gains with their CIs."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
  for name, table in _in_order(results["adaptive_test"]):
    ns = sorted(table, key=int)
    left.plot([int(n) for n in ns], [table[n]["auc"] for n in ns],
              marker="o", label=name,
              linestyle="-" if name.startswith("bobcat") else "--")
  left.set_ylabel("AUC on the held-out answers")
  left.set_title(title)
  left.legend(fontsize=8)
  for i, (base, gains) in enumerate(_in_order(results["policy_gain"])):
    ns = sorted(gains, key=int)
    x = np.array([int(n) for n in ns]) * 1.04 ** (i - 1)  # side by side
    gain = np.array([gains[n]["gain"] for n in ns])
    err = np.array([[gains[n]["gain"] - gains[n]["ci_low"] for n in ns],
                    [gains[n]["ci_high"] - gains[n]["gain"] for n in ns]])
    right.errorbar(x, gain, yerr=err, marker="o", capsize=3,
                   label=f"over {base}")
  right.axhline(0.0, color="gray", linewidth=0.8)
  right.set_ylabel("AUC gain of bobcat / policy (paired 95% CI)")
  right.set_title("the learned policy against the other selectors")
  right.legend(fontsize=8)
  for ax in (left, right):
    ax.set_xscale("log")
    ax.set_xticks([int(n) for n in ns])
    ax.set_xticklabels(ns)
    ax.minorticks_off()
    ax.set_xlabel("questions asked n")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _run(config: Config, workdir: str, data: _Data) -> Dict:
  """Trains both models (resuming), tests every selector, plots."""
  nq = data.dataset.num_questions
  joint = response_model(config, "joint", nq)
  fitted, fitted_step = _train(
      config, joint, sequences.student_sampler(
          data.windows, batch_size=config.meta_batch_size,
          support_sizes=(0,)),
      config.num_steps, workdir, "fitted",
      student_performance.validation_score(joint, "joint", data.valid,
                                           config))
  fitted_learner, finetune = _finetune(config, fitted, data.valid, nq)
  bob = make_bobcat(config, nq, start=fitted)
  meta, meta_step = _train(
      config, bob.learner, sequences.cat_sampler(
          data.train, batch_size=config.meta_batch_size,
          heldout_fraction=config.heldout_fraction),
      config.cat_steps, workdir, "bobcat",
      lambda mp: {"valid_auc": mean_auc(config, bob.learner, mp, bob.select,
                                        data.valid)})

  rows = {}
  for name, select in selectors(config, fitted_learner).items():
    rows[f"fitted / {name}"] = (fitted_learner, fitted, select)
  for name, select in selectors(config, bob.learner).items():
    rows[f"bobcat / {name}"] = (bob.learner, meta, select)
  rows["bobcat / policy"] = (bob.learner, meta, bob.select)

  predictions, table, exposure = {}, {}, {}
  bootstrap = dict(reps=config.bootstrap, seed=config.seed)
  for name, (learner, params, select) in rows.items():
    predictions[name], orders = _predictions(config, learner, params, select,
                                             data.test, desc=name)
    table[name] = kt_eval.cold_start_table(predictions[name], **bootstrap)
    exposure[name] = _exposure(orders, data.test)
  versus = ("bobcat / random", "bobcat / fisher", "fitted / fisher")
  gains = {base: {str(n): g for n, g in kt_eval.cold_start_gains(
      predictions["bobcat / policy"], predictions[base], **bootstrap).items()}
           for base in versus}
  times = selection_times(config, rows, data.test)
  results = {
      "dataset": data.dataset.name, "model": config.model,
      "summary": kt.summary(data.dataset),
      "test_takers": {split: {"kept": k, "of": n}
                      for split, (k, n) in data.kept.items()},
      "adaptive_test": {name: {str(n): v for n, v in t.items()}
                        for name, t in table.items()},
      "policy_gain": gains,
      "selection_time_s": times,
      "exposure": exposure,
      "finetune": finetune,
      "selected": {"fitted": fitted_step, "bobcat": meta_step},
      "num_steps": {"fitted": config.num_steps, "bobcat": config.cat_steps},
  }
  _plot(os.path.join(workdir, "adaptive_testing.png"), results,
        f"{config.model} on {data.dataset.name}: adaptive tests")
  return results


def _exposure(orders: np.ndarray, arrays: sequences.StudentArrays) -> Dict:
  """How concentrated a selector's first question and its questions are.

  Returns {"first_question_share": the share of students whose first asked
  question is the most common first question, "distinct_questions": how
  many question ids were asked at all}.
  """
  ids = np.take_along_axis(arrays.questions, np.maximum(orders, 0), axis=1)
  ids = np.where(orders >= 0, ids, 0)
  first = ids[:, 0]
  return {"first_question_share": float(np.bincount(first).max() /
                                        first.size),
          "distinct_questions": int(np.unique(ids[ids > 0]).size)}


def _in_order(table: Dict[str, object]):
  """`table`'s items by model then selector (random, fisher, kl, policy)."""
  rank = {name: i for i, name in enumerate(SELECTORS + ("policy",))}
  return sorted(table.items(), key=lambda item: (
      item[0].split(" / ")[0] != "fitted", rank[item[0].split(" / ")[1]]))


def format_results(results: Dict) -> str:
  """The AUC / accuracy table, the policy's gains and selection times."""
  takers = results["test_takers"]["test"]
  lines = [f"{results['model']} on {results['dataset']}: adaptive tests of "
           f"{takers['kept']} of {takers['of']} test students; AUC / "
           f"accuracy on their held-out answers after n questions [95% "
           f"bootstrap CI of the AUC]"]
  by_n = lambda cells: sorted(cells.items(), key=lambda item: int(item[0]))
  ns = [n for n, _ in by_n(next(iter(results["adaptive_test"].values())))]
  lines.append(" " * 18 + "".join(f"{'n=' + n:>32s}" for n in ns))
  for name, table in _in_order(results["adaptive_test"]):
    cells = "".join(f"{t['auc']:.4f} / {t['accuracy']:.4f} [{t['ci_low']:.3f}"
                    f", {t['ci_high']:.3f}]".rjust(32) for _, t in by_n(table))
    lines.append(f"  {name:16s}{cells}")
  for base, gains in _in_order(results["policy_gain"]):
    lines.append(f"AUC gain of bobcat / policy over {base} [paired "
                 f"bootstrap 95% CI over students]")
    cells = "".join(f"{g['gain']:+.4f} [{g['ci_low']:+.3f}, "
                    f"{g['ci_high']:+.3f}]".rjust(32) for _, g in by_n(gains))
    lines.append(" " * 18 + cells)
  lines.append("time to choose one question (median of compiled tests)")
  for name, seconds in _in_order(results["selection_time_s"]):
    lines.append(f"  {name:16s}{1e3 * seconds:10.3f} ms")
  return "\n".join(lines)


EXPERIMENT = harness.Experiment(
    name="adaptive_testing", config_class=Config, prepare=_prepare, run=_run,
    num_steps=num_steps, format_results=format_results,
    outputs=("results.json", "adaptive_testing.png"))


def train_and_evaluate(config: Config, workdir: str) -> Dict:
  """Trains both models (resuming from `workdir`), tests, writes files."""
  return harness.train_and_evaluate(EXPERIMENT, config, workdir)
