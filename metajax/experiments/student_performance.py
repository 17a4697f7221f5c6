"""Student-performance prediction: each student a task, cold-start adaptation.

For one knowledge-tracing dataset (three-line files, see
`metajax.data.knowledge_tracing`) and one `StudentModel` ("irt" or "dkt"),
`train_and_evaluate` trains

  joint     the model on every training answer (next-answer objective, the
            usual way to train DKT or IRT); at test it is used as it is
            ("none": no adaptation) and fine-tuned on the student's support
            answers ("finetune"): plain gradient descent on the per-student
            parameters, at the learning rate that scores best on the
            validation students;
  maml, meta_sgd, reptile
            meta-learned personalisation on cold-start tasks (support = a
            student's first k answers, k drawn from `support_sizes`), with
            the same inner loop (steps and rate) as fine-tuning, starting
            from the joint model's parameters (`meta_init="joint"`, the
            pre-train-then-meta-train recipe) or from a fresh
            initialisation;

and evaluates on the test students, who never appear in training:

  usual protocol  every test answer predicted from all earlier answers of
                  the student (AUC, accuracy, RMSE over all test answers);
                  adapting methods re-adapt their per-student parameters on
                  the answers so far every `online_every` answers;
  cold start      for each k in `support_sizes`: adapt on the first k
                  answers, predict all later answers from those k alone; AUC
                  with a 95% bootstrap interval over students.

Every `eval_every` steps each method is scored on the validation students,
and the best-scoring parameters are the ones tested (early stopping; see
`_validation_score` for the criteria): with a few hundred training students,
every model here overfits if trained long enough.

Training sequences are cut into windows of `window` answers (every answer
kept, see `knowledge_tracing.window`); each window is a training task. Test
students are used whole.

Files written to `workdir`: results.json, cold_start.png and, per trained
method, `<method>/metrics.jsonl`, orbax checkpoints (a rerun resumes) and
the selected parameters in `<method>/best/`.
"""

import dataclasses
import functools
import os
import time
from typing import ClassVar, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm

from metajax import algorithms
from metajax import sharding
from metajax import workdir as workdir_lib
from metajax.data import knowledge_tracing as kt
from metajax.data import students
from metajax.evaluation import binary_metrics
from metajax.evaluation import bootstrap_auc
from metajax.evaluation import bootstrap_auc_gain
from metajax.experiments import common
from metajax.models.student import StudentModel
from metajax.models.student import masked_bce
from metajax.models.student import student_mask
from metajax.tasks import Task
from metajax.training import restore_best
from metajax.training import train

MODELS = ("irt", "dkt")
META_ALGORITHMS = ("maml", "meta_sgd", "reptile")
# Fine-tuning rates tried on the validation students; the best one is used.
FINETUNE_LRS = (0.1, 0.3, 1.0, 3.0, 10.0)
META_INITS = ("joint", "random")


@dataclasses.dataclass(frozen=True)
class Config:
  """Everything that defines a run.

  `num_epochs`, when > 0, replaces `num_steps`: one epoch is as many
  meta-steps as it takes `meta_batch_size`-student batches to cover the
  training windows once. `fold` 1..5 trains on that fold's train file and
  tunes fine-tuning on its validation file; 0 trains on the whole train file
  and tunes on training students.
  """
  dataset: str = "assist2009"
  data_dir: str = ""
  num_questions: int = 0
  fold: int = 1
  model: str = "irt"
  algorithms: Tuple[str, ...] = META_ALGORITHMS
  support_sizes: Tuple[int, ...] = (0, 3, 5, 10, 20)
  inner_steps: int = 5
  inner_lr: float = 1.0
  prior_answers: float = 20.0
  outer_lr: float = 1e-3
  meta_batch_size: int = 32
  num_steps: int = 2000
  num_epochs: int = 0
  eval_every: int = 250
  meta_init: str = "joint"
  window: int = 200
  hidden: int = 100
  embed_dim: int = 64
  personal_dim: int = 8
  online_every: int = 1
  eval_batch: int = 256
  bootstrap: int = 1000
  seed: int = 0
  log_every: int = 100
  checkpoint_every: int = 500
  progress: bool = True
  shard_tasks: bool = False

  # Fields that only extend, re-evaluate or relocate a run: a rerun may
  # change them.
  RERUN_MAY_CHANGE: ClassVar[Tuple[str, ...]] = (
      "num_steps", "num_epochs", "data_dir", "online_every", "eval_batch",
      "bootstrap", "log_every", "checkpoint_every", "progress", "shard_tasks")

  def validate(self):
    if self.model not in MODELS:
      raise ValueError(f"model must be one of {MODELS}, got {self.model!r}.")
    unknown = sorted(set(self.algorithms) - set(META_ALGORITHMS))
    if unknown:
      raise ValueError(f"unknown algorithms {unknown}; choose from "
                       f"{META_ALGORITHMS}.")
    if not self.support_sizes or min(self.support_sizes) < 0:
      raise ValueError(f"support_sizes must be non-negative, got "
                       f"{self.support_sizes}.")
    common.check_positive(self, (
        "inner_steps", "meta_batch_size", "num_steps", "window",
        "online_every", "eval_batch", "eval_every", "embed_dim",
        "personal_dim", "bootstrap", "log_every", "checkpoint_every"))
    common.check_positive(self, ("num_epochs", "num_questions"), least=0)
    if self.model == "dkt":
      common.check_positive(self, ("hidden",))
    common.check_rates(self, ("inner_lr", "outer_lr"))
    if max(self.support_sizes) >= self.window:
      raise ValueError(
          f"support_sizes {self.support_sizes} must be below window="
          f"{self.window}: a training window of {self.window} answers "
          f"with a support of {max(self.support_sizes)} has none left to "
          f"predict.")
    if self.prior_answers < 0:
      raise ValueError(f"prior_answers must be >= 0, got "
                       f"{self.prior_answers}.")
    if self.meta_init not in META_INITS:
      raise ValueError(f"meta_init must be one of {META_INITS}, got "
                       f"{self.meta_init!r}.")
    if self.fold not in range(0, 6):
      raise ValueError(f"fold must be 0 (no validation) or 1..5, got "
                       f"{self.fold}.")


def load_data(config: Config) -> kt.KTDataset:
  return kt.load(config.data_dir, config.dataset, fold=config.fold or None,
                 num_questions=config.num_questions or None)


def make_learner(config: Config, method: str, num_questions: int,
                 lr: Optional[float] = None) -> algorithms.MetaLearner:
  """The learner of `method` ("joint" or a meta-algorithm) on the model."""
  model = StudentModel(num_questions,
                       hidden=config.hidden if config.model == "dkt" else 0,
                       embed_dim=config.embed_dim,
                       personal_dim=config.personal_dim)
  length = config.window
  dummy = students.KTInput(jnp.zeros(length, jnp.int32),
                           jnp.zeros(length, jnp.int8),
                           jnp.zeros(length, bool))
  init_fn = lambda key: model.init(key, dummy)
  loss = functools.partial(masked_bce, prior_answers=config.prior_answers)
  lr = config.inner_lr if lr is None else lr
  common_args = dict(steps=config.inner_steps, lr=lr)
  if method == "joint":
    return algorithms.joint(init_fn, model.apply, loss,
                            adapt_mask=student_mask, pool=students.pool_sets,
                            **common_args)
  if method == "reptile":
    return algorithms.reptile(init_fn, model.apply, loss,
                              pool=students.pool_sets, **common_args)
  build = getattr(algorithms, method)
  return build(init_fn, model.apply, loss, adapt_mask=student_mask,
               **common_args)


def scorer(learner, make_task, adapt: bool):
  """A compiled `run(meta_params, data, rows, starts) -> (probs, KTTarget)`.

  Task i is `make_task(questions[rows[i]], answers[rows[i]],
  lengths[rows[i]], starts[i])`, built on the device from `data =
  (questions, answers, lengths)`; with `adapt`, the learner adapts on its
  support set before predicting its query. Outputs are `[len(rows), L]`.
  """
  def one(mp, q, a, length, s):
    task = make_task(q, a, length, s)
    state = learner.adapt(mp, task.support) if adapt else mp["params"]
    x, y = task.query
    return jax.nn.sigmoid(learner.predict(mp, state, x)), y

  @jax.jit
  def run(mp, data, rows, starts):
    q, a, lengths = data
    return jax.vmap(one, in_axes=(None, 0, 0, 0, 0))(
        mp, q[rows], a[rows], lengths[rows], starts)
  return run


def scored_predictions(run, meta_params, arrays, rows, starts, batch: int,
                       desc: str = "", progress: bool = False):
  """`run`'s predictions at the scored query positions, `batch` tasks a call.

  Only one batch of `[batch, L]` sequences exists at a time; the last batch
  is padded so every call has the same shape (one compilation).

  Returns:
    (probabilities, answers, student rows), each `[scored answers]`.
  """
  data = tuple(jax.device_put(v) for v in arrays)
  probs, answers, who = [], [], []
  starts_at = range(0, len(rows), batch)
  for i in tqdm.tqdm(starts_at, desc=desc, unit="batch", leave=False,
                     disable=not progress):
    r = np.asarray(rows[i:i + batch])
    s = np.asarray(starts[i:i + batch])
    pad = batch - len(r)
    p, y = run(meta_params, data, np.pad(r, (0, pad)), np.pad(s, (0, pad)))
    target = np.asarray(y.target)[:len(r)]
    probs.append(np.asarray(p)[:len(r)][target])
    answers.append(np.asarray(y.answers)[:len(r)][target])
    who.append(np.broadcast_to(r[:, None], target.shape)[target])
  return np.concatenate(probs), np.concatenate(answers), np.concatenate(who)


def usual_protocol(learner, meta_params, arrays, config: Config,
                   adapt: bool, desc: str = "") -> Dict[str, float]:
  """AUC/accuracy/RMSE over all test answers, each from all earlier ones.

  Adapting methods re-adapt on the answers so far every `online_every`
  answers; the others read the whole history with no adaptation.
  """
  length = int(arrays.questions.shape[1])
  every = config.online_every if adapt else length
  rows = [(r, s) for r, n in enumerate(arrays.lengths)
          for s in range(0, int(n), every)]
  rows, starts = np.array(rows, np.int32).T
  run = scorer(learner,
               lambda q, a, n, s: students.online_task(q, a, n, s, every),
               adapt)
  p, y, _ = scored_predictions(run, meta_params, arrays, rows, starts,
                               config.eval_batch, desc, config.progress)
  return binary_metrics(p, y)


def cold_start_predictions(learner, meta_params, arrays, config: Config,
                           adapt: bool, desc: str = ""):
  """{k: (probabilities, answers, students)} of every support size k."""
  run = scorer(learner, students.cold_start_task, adapt)
  rows = np.arange(arrays.num_students, dtype=np.int32)
  return {k: scored_predictions(run, meta_params, arrays, rows,
                                np.full_like(rows, k), config.eval_batch,
                                f"{desc} k={k}", config.progress)
          for k in config.support_sizes}


def cold_start_table(predictions: Dict, config: Config
                     ) -> Dict[int, Dict[str, float]]:
  """Per support size k: AUC on the answers after the first k, bootstrap CI.

  `predictions` is `cold_start_predictions`' output.
  """
  return {k: bootstrap_auc(p, y, who, reps=config.bootstrap,
                           seed=config.seed)
          for k, (p, y, who) in predictions.items()}


def cold_start_gains(predictions: Dict, baseline: Dict, config: Config
                     ) -> Dict[int, Dict[str, float]]:
  """Per k: the AUC gain over `baseline`'s predictions, paired bootstrap."""
  gains = {}
  for k, (p, y, who) in predictions.items():
    base_p, base_y, base_who = baseline[k]
    if not (np.array_equal(y, base_y) and np.array_equal(who, base_who)):
      raise ValueError(f"k={k}: the two methods scored different answers.")
    gains[k] = bootstrap_auc_gain(p, base_p, y, who, reps=config.bootstrap,
                                  seed=config.seed)
  return gains


def _starting_from(learner, params):
  """`learner` with its model parameters initialised to `params`."""
  def init(key):
    return {**learner.init(key), "params": params}
  return learner._replace(init=init)


def _validation_score(learner, method: str, valid, config: Config):
  """The model-selection score of `method` on the validation students.

  The jointly trained model is selected as knowledge-tracing models usually
  are: by AUC over all validation answers, each from all earlier ones (no
  adaptation). A meta-learner is selected on what it is trained for: the
  cold-start AUC after adapting on the first k answers, averaged over the
  support sizes k > 0.
  """
  config = dataclasses.replace(config, progress=False)
  if method == "joint":
    def score(meta_params):
      return {"valid_auc": usual_protocol(learner, meta_params, valid,
                                          config, adapt=False)["auc"]}
    return score
  return lambda meta_params: {"valid_auc": _mean_cold_start_auc(
      learner, meta_params, valid, config)}


def _mean_cold_start_auc(learner, meta_params, valid, config: Config,
                         desc: str = "") -> float:
  """Validation cold-start AUC after adapting, averaged over the k > 0."""
  sizes = tuple(k for k in config.support_sizes if k > 0) or (0,)
  predictions = cold_start_predictions(
      learner, meta_params, valid,
      dataclasses.replace(config, support_sizes=sizes), adapt=True, desc=desc)
  return float(np.mean([binary_metrics(p, y)["auc"]
                        for p, y, _ in predictions.values()]))


def _finetune_lr(config, joint_params, valid, num_questions) -> Dict:
  """Picks the fine-tuning rate with the best validation cold-start AUC."""
  scores = {lr: _mean_cold_start_auc(
      make_learner(config, "joint", num_questions, lr=lr), joint_params,
      valid, config, desc=f"fine-tuning lr {lr}") for lr in FINETUNE_LRS}
  best = max(scores, key=scores.get)
  return {"lr": best, "validation_auc": scores}


def _plot(path: str, rows: Dict[str, Dict], config: Config, title: str):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(7, 4.5))
  ks = list(config.support_sizes)
  for name, table in rows.items():
    auc = np.array([table[k]["auc"] for k in ks])
    low = np.array([table[k]["ci_low"] for k in ks])
    high = np.array([table[k]["ci_high"] for k in ks])
    ax.plot(ks, auc, marker="o", label=name)
    ax.fill_between(ks, low, high, alpha=0.2)
  ax.set_xlabel("support answers k (the student's first k)")
  ax.set_ylabel("AUC on the later answers (95% bootstrap CI)")
  ax.set_title(title)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def train_and_evaluate(config: Config, workdir: str) -> Dict:
  """Trains every method (resuming from `workdir`), evaluates, writes files."""
  config.validate()
  with workdir_lib.hold(workdir):
    common.check_rerun(workdir, config, config.RERUN_MAY_CHANGE)
    start = time.perf_counter()
    data = load_data(config)
    arrays = {"train": students.pack(data.train, window=config.window),
              "test": students.pack(data.test),
              "valid": students.pack(data.valid if data.valid is not None
                                     else data.train)}
    for split in ("test", "valid"):
      check_support_sizes(config, arrays[split], split)
    sampler = students.student_sampler(
        arrays["train"], batch_size=config.meta_batch_size,
        support_sizes=config.support_sizes)
    num_steps = config.num_steps
    if config.num_epochs:
      num_steps = config.num_epochs * -(-arrays["train"].num_students //
                                        config.meta_batch_size)
    common.check_not_past(workdir, num_steps)
    common.save_config(workdir, config)
    return _train_and_evaluate(config, workdir, data, arrays, sampler,
                               num_steps, start)


def check_support_sizes(config: Config, arrays: students.StudentArrays,
                        split: str) -> None:
  """Raises if some support size k leaves no answer of `split` to predict."""
  longest = int(np.max(arrays.lengths, initial=0))
  too_long = [k for k in config.support_sizes if k >= longest]
  if too_long:
    raise ValueError(
        f"support_sizes {too_long}: no {split} student has more than "
        f"{longest} answers, so a support of that many leaves nothing to "
        f"predict. Use support sizes below {longest}.")


def _train_and_evaluate(config: Config, workdir: str, data: kt.KTDataset,
                        arrays: Dict[str, students.StudentArrays], sampler,
                        num_steps: int, start: float) -> Dict:
  nq = data.num_questions
  test_arrays, valid_arrays = arrays["test"], arrays["valid"]
  train_key = jax.random.PRNGKey(config.seed)

  mesh = sharding.task_mesh() if config.shard_tasks else None
  methods, train_time, selected = {}, {}, {}
  for method in ("joint",) + tuple(config.algorithms):
    t0 = time.perf_counter()
    learner = make_learner(config, method, nq)
    if method != "joint" and config.meta_init == "joint":
      learner = _starting_from(learner, methods["joint"]["params"])
    method_dir = os.path.join(workdir, method)
    state = train(
        learner, optax.adam(config.outer_lr), sampler, key=train_key,
        num_steps=num_steps, workdir=method_dir, log_every=config.log_every,
        checkpoint_every=config.checkpoint_every,
        eval_fn=_validation_score(learner, method, valid_arrays, config),
        eval_every=config.eval_every, keep_best="valid_auc",
        progress=config.progress, desc=method, mesh=mesh)
    best, selected[method] = restore_best(method_dir, state.meta_params)
    methods[method] = sharding.local_copy(best)
    train_time[method] = time.perf_counter() - t0

  finetune = _finetune_lr(config, methods["joint"], valid_arrays, nq)
  rows = {"none": (make_learner(config, "joint", nq), methods["joint"], False),
          "finetune": (make_learner(config, "joint", nq, lr=finetune["lr"]),
                       methods["joint"], True)}
  for method in config.algorithms:
    rows[method] = (make_learner(config, method, nq), methods[method], True)

  usual, cold, predictions = {}, {}, {}
  for name, (learner, params, adapt) in rows.items():
    usual[name] = usual_protocol(learner, params, test_arrays, config, adapt,
                                 desc=f"{name}, usual protocol")
    predictions[name] = cold_start_predictions(
        learner, params, test_arrays, config, adapt, f"{name}, cold start")
    cold[name] = cold_start_table(predictions[name], config)
  gains = {name: {base: {str(k): v for k, v in cold_start_gains(
      predictions[name], predictions[base], config).items()}
                  for base in ("none", "finetune")}
           for name in config.algorithms}

  title = f"{config.model} on {data.name}: cold-start personalisation"
  _plot(os.path.join(workdir, "cold_start.png"), cold, config, title)
  results = {
      "dataset": data.name, "model": config.model,
      "summary": kt.summary(data),
      "usual_protocol": usual,
      "cold_start": {name: {str(k): v for k, v in table.items()}
                     for name, table in cold.items()},
      "cold_start_gain": gains,
      "finetune": finetune,
      "selected": selected,
      "num_steps": num_steps,
      "train_time_s": train_time,
      "wall_time_s": time.perf_counter() - start,
      "config": dataclasses.asdict(config),
      "environment": common.environment(),
  }
  workdir_lib.write_json(os.path.join(workdir, "results.json"), results)
  return results


def format_results(results: Dict) -> str:
  """The usual-protocol and cold-start tables as text."""
  lines = [f"{results['model']} on {results['dataset']}: test AUC / accuracy "
           f"/ RMSE over all test answers"]
  for name, m in results["usual_protocol"].items():
    lines.append(f"  {name:10s} {m['auc']:.4f} / {m['accuracy']:.4f} / "
                 f"{m['rmse']:.4f}")
  ks = list(next(iter(results["cold_start"].values())))
  lines.append("cold start: AUC on the answers after the first k "
               "[95% bootstrap CI]")
  lines.append("  " + " " * 10 + "".join(f"{'k=' + k:>24s}" for k in ks))
  for name, table in results["cold_start"].items():
    cells = "".join(f"{t['auc']:.4f} [{t['ci_low']:.3f}, {t['ci_high']:.3f}]"
                    .rjust(24) for t in table.values())
    lines.append(f"  {name:10s}{cells}")
  gains = results.get("cold_start_gain", {})
  for base in ("none", "finetune"):
    if gains:
      lines.append(f"cold-start AUC gain over {base} [paired bootstrap 95% "
                   f"CI over students]")
    for name, versus in gains.items():
      cells = "".join(f"{t['gain']:+.4f} [{t['ci_low']:+.3f},"
                      f"{t['ci_high']:+.3f}]".rjust(24)
                      for t in versus[base].values())
      lines.append(f"  {name:10s}{cells}")
  return "\n".join(lines)

