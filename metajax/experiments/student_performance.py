"""Student-performance prediction: each student a task, cold-start adaptation.

For one knowledge-tracing dataset (three-line files, see
`metajax.data.students.knowledge_tracing`) and one `StudentModel` ("irt",
"dkt" or "sakt"), `train_and_evaluate` trains

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
  np        a conditional neural process over students
            (`algorithms.student_np`): personalising is encoding the
            support answers, one forward pass with no gradient step. It is
            its own model, the same whatever `model`, with no per-student
            parameters, so it has nothing to take from the joint model and
            always trains from a fresh initialisation (`meta_init` does not
            apply to it), on the same cold-start tasks and query loss as the
            other meta-learners;

and evaluates on the test students, who never appear in training:

  usual protocol  every test answer predicted from all earlier answers of
                  the student (AUC, accuracy, RMSE over all test answers);
                  adapting methods re-adapt their per-student parameters on
                  the answers so far every `online_every` answers;
  comparable      the same under the rules of pyKT's benchmark that apply
                  to these files (`kt_eval.comparable_students`): windows
                  of 200 answers, each window's first answer unscored, test
                  students who open as a training student dropped;
  cold start      for each k in `support_sizes`: adapt on the first k
                  answers, predict all later answers from those k alone; AUC
                  with a 95% bootstrap interval over students, and each
                  method's paired gain over "none" and "finetune";
  personalising   the time of one compiled `adapt` on one test student's
                  first k answers, k the largest support size, per adapting
                  method (`personalise_times`): gradient steps for
                  fine-tuning and the gradient meta-learners, a forward pass
                  for the neural process.

Every `eval_every` steps each method is scored on the validation students,
and the best-scoring parameters are the ones tested (early stopping; see
`validation_score` for the criteria): with a few hundred training students,
every model here overfits if trained long enough.

Training sequences are cut into windows of `window` answers (every answer
kept, see `knowledge_tracing.window`); each window is a training task. Test
students are used whole.

Files written to `workdir`: config.json, results.json, cold_start.png and,
per trained method, `<method>/metrics.jsonl`, orbax checkpoints (a rerun
resumes) and the selected parameters in `<method>/best/`. The protocols
themselves are `metajax.evaluation.students`.
"""

import dataclasses
import functools
import os
import time
from typing import Callable, Dict, Mapping, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metajax import algorithms
from metajax import checkpoint
from metajax.data import paths
from metajax.data.students import knowledge_tracing as kt
from metajax.data.students import sequences
from metajax.evaluation import students as kt_eval
from metajax.experiments import harness
from metajax.experiments.harness import field
from metajax.models.student import StudentModel
from metajax.models.student import masked_bce
from metajax.models.student import student_mask

MODELS = ("irt", "dkt", "sakt")
# The sequence part of each model that has one (`StudentModel.sequence`).
SEQUENCE_OF = {"dkt": "lstm", "sakt": "attention"}
# The usual protocol re-adapts every this many answers by default: every
# answer for IRT, whose adaptation is a few numbers; every 20 for the
# sequence models, each of whose re-adaptations reads the whole sequence.
ONLINE_EVERY = {"irt": 1, "dkt": 20, "sakt": 20}
META_ALGORITHMS = ("maml", "meta_sgd", "reptile", "np")
# Meta-learners that personalise by a forward pass, not gradient steps: they
# have no per-student parameters, so `meta_init="joint"` has nothing to give
# them and they start fresh.
FORWARD_ALGORITHMS = ("np",)
# Rounds of `personalise_times`, each timing every method once.
PERSONALISE_ROUNDS = 30
# Fine-tuning rates tried on the validation students; the best one is used.
FINETUNE_LRS = (0.1, 0.3, 1.0, 3.0, 10.0)
META_INITS = ("joint", "random")


@dataclasses.dataclass(frozen=True)
class Config(harness.RunConfig):
  """Everything that defines a run.

  `num_epochs`, when > 0, replaces `num_steps`: one epoch is as many
  meta-steps as it takes `meta_batch_size`-student batches to cover the
  training windows once. `fold` 1..5 trains on that fold's train file and
  tunes fine-tuning on its validation file; 0 trains on the whole train file
  and tunes on training students.
  """
  dataset: str = field(
      "assist2009", "Dataset name: the file prefix of its three-line files "
      "(<name>_train.csv, ...), or assist2009 / statics2011.")
  data_dir: str = field(
      "", "Folder holding knowledge_tracing/<name>/, <name>/ or the files "
      "themselves ('': $METAJAX_DATA_DIR, else the per-user data folder of "
      "metajax.data.paths).", rerun_may_change=True)
  download: bool = field(
      False, "Download assist2009 / statics2011 into the data folder if "
      "missing, from their public source, checked by SHA-256.",
      rerun_may_change=True)
  num_questions: int = field(0, "Number of question ids (0: the largest id "
                             "in the files).")
  fold: int = field(1, "Train/valid fold 1..5 (0: the whole train file).")
  model: str = field(
      "dkt", "irt: multidimensional IRT; dkt: LSTM knowledge tracing; sakt: "
      "self-attentive knowledge tracing; each with a per-student ability "
      "and profile. The default, dkt, is the strongest measured in the "
      "usual protocol on both ASSISTments 2009 and Statics2011 (README), "
      "and sakt is below it on both in the usual and comparable "
      "protocols; in cold start, IRT with MAML is as good or better on "
      "Statics2011.",
      choices=MODELS)
  # "np" is opt-in: with an IRT model it takes most of a run's time (its
  # encoder reads every answer; IRT's adaptation is a few numbers), and the
  # README's IRT commands, which use the default, keep their wall times.
  algorithms: Tuple[str, ...] = field(
      ("maml", "meta_sgd", "reptile"), f"Meta-learners to compare with "
      f"joint training, from {META_ALGORITHMS}.", flag="algorithm")
  support_sizes: Tuple[int, ...] = field(
      (0, 3, 5, 10, 20), "Support sizes k of the cold-start table (and of "
      "training tasks).")
  inner_steps: int = field(5, "Gradient steps of adaptation and "
                           "fine-tuning.")
  inner_lr: float = field(1.0, "Inner learning rate of the meta-learners.")
  prior_answers: float = field(
      20.0, "Losses are sums over answers divided by (answers + this): "
      "adaptation on a few answers moves less.")
  outer_lr: float = field(1e-3, "Adam learning rate.")
  meta_batch_size: int = field(32, "Students (windows) per step.")
  num_steps: int = field(2000, "Training steps per method.",
                         rerun_may_change=True)
  num_epochs: int = field(0, "If > 0, training epochs per method instead "
                          "of --num_steps.", rerun_may_change=True)
  eval_every: int = field(250, "Steps between validation scores; each "
                          "method's best-scoring parameters are tested "
                          "(early stopping).")
  meta_init: str = field("joint", "Where the gradient meta-learners start: "
                         "the joint model's parameters or a fresh "
                         "initialisation (np always starts fresh).",
                         choices=META_INITS)
  window: int = field(200, "Training sequences are cut into windows of "
                      "this many answers (all kept).")
  hidden: int = field(100, "LSTM width (dkt); width of the layer that "
                      "mixes the history with the question (dkt, sakt); "
                      "hidden and representation width of the neural "
                      "process (np).")
  embed_dim: int = field(64, "Embedding width (dkt, np); embedding and "
                         "attention width (sakt).")
  personal_dim: int = field(8, "Width of the per-student profile.")
  online_every: int = field(
      0, "Usual protocol: re-adapt every this many answers (0: every answer "
      "for irt, every 20 for dkt and sakt, whose adaptation reads the whole "
      "sequence).", rerun_may_change=True)
  num_heads: int = field(4, "Attention heads of sakt (dividing "
                         "--embed_dim).")
  eval_batch: int = field(
      256, "Tasks per compiled evaluation call. Memory grows with it: sakt's "
      "attention holds eval_batch x num_heads x width^2 floats, 5 GB at 256 "
      "tasks, 4 heads and the 1,146 answers of ASSISTments 2009's longest "
      "student; 64 fits easily in 24 GB.", rerun_may_change=True)
  bootstrap: int = field(1000, "Bootstrap replicates of the cold-start "
                         "intervals.", rerun_may_change=True)
  checkpoint_every: int = harness.checkpoint_every_field(500)

  RATES = ("inner_lr", "outer_lr")
  POSITIVE = harness.RunConfig.POSITIVE + (
      "inner_steps", "meta_batch_size", "num_steps", "window",
      "eval_batch", "eval_every", "embed_dim", "personal_dim", "bootstrap",
      "num_heads")

  def validate(self):
    super().validate()
    unknown = sorted(set(self.algorithms) - set(META_ALGORITHMS))
    if unknown:
      raise ValueError(f"unknown algorithms {unknown}; choose from "
                       f"{META_ALGORITHMS}.")
    if not self.support_sizes or min(self.support_sizes) < 0:
      raise ValueError(f"support_sizes must be non-negative, got "
                       f"{self.support_sizes}.")
    harness.check_positive(self, ("num_epochs", "num_questions",
                                  "online_every"), least=0)
    if (self.model in SEQUENCE_OF or
        set(self.algorithms) & set(FORWARD_ALGORITHMS)):
      harness.check_positive(self, ("hidden",))
    check_heads(self)
    if max(self.support_sizes) >= self.window:
      raise ValueError(
          f"support_sizes {self.support_sizes} must be below window="
          f"{self.window}: a training window of {self.window} answers "
          f"with a support of {max(self.support_sizes)} has none left to "
          f"predict.")
    if self.prior_answers < 0:
      raise ValueError(f"prior_answers must be >= 0, got "
                       f"{self.prior_answers}.")
    if self.fold not in range(0, 6):
      raise ValueError(f"fold must be 0 (no validation) or 1..5, got "
                       f"{self.fold}.")


def check_heads(config) -> None:
  """Raises unless sakt's `num_heads` divides its `embed_dim`."""
  if config.model == "sakt" and config.embed_dim % config.num_heads:
    raise ValueError(f"--num_heads={config.num_heads} must divide "
                     f"--embed_dim={config.embed_dim} for sakt.")


def online_every(config: Config) -> int:
  """The usual protocol's re-adaptation period (`online_every`, 0: auto)."""
  return config.online_every or ONLINE_EVERY[config.model]


def student_model(config, num_questions: int) -> StudentModel:
  """The configured `StudentModel` (`model`, widths, heads)."""
  return StudentModel(num_questions,
                      hidden=config.hidden if config.model in SEQUENCE_OF
                      else 0,
                      embed_dim=config.embed_dim,
                      personal_dim=config.personal_dim,
                      sequence=SEQUENCE_OF.get(config.model, "lstm"),
                      num_heads=config.num_heads)


def load_data(config: Config) -> kt.KTDataset:
  """The configured dataset's students, from the data folder."""
  return kt.load(paths.data_dir(config.data_dir or None), config.dataset,
                 fold=config.fold or None,
                 num_questions=config.num_questions or None,
                 download=config.download)


def make_learner(config: Config, method: str, num_questions: int,
                 lr: Optional[float] = None) -> algorithms.MetaLearner:
  """The learner of `method` ("joint" or a meta-algorithm) on the model.

  "np" is the neural process of `algorithms.student_np`, whatever
  `config.model`, with `config.embed_dim` and `config.hidden` as its widths;
  it takes no learning rate.
  """
  if method == "np":
    return algorithms.student_np(num_questions, embed_dim=config.embed_dim,
                                 width=config.hidden,
                                 prior_answers=config.prior_answers)
  model = student_model(config, num_questions)
  length = config.window
  dummy = sequences.KTInput(jnp.zeros(length, jnp.int32),
                            jnp.zeros(length, jnp.int8),
                            jnp.zeros(length, bool))
  init_fn = lambda key: model.init(key, dummy)
  loss = functools.partial(masked_bce, prior_answers=config.prior_answers)
  lr = config.inner_lr if lr is None else lr
  common_args = dict(steps=config.inner_steps, lr=lr)
  if method == "joint":
    return algorithms.joint(init_fn, model.apply, loss,
                            adapt_mask=student_mask, pool=sequences.pool_sets,
                            **common_args)
  if method == "reptile":
    return algorithms.reptile(init_fn, model.apply, loss,
                              pool=sequences.pool_sets, **common_args)
  build = getattr(algorithms, method)
  return build(init_fn, model.apply, loss, adapt_mask=student_mask,
               **common_args)


def _eval_options(config: Config, progress: Optional[bool] = None):
  return dict(batch=config.eval_batch,
              progress=config.progress if progress is None else progress)


def validation_score(learner, method: str, valid, config: Config):
  """The model-selection score of `method` on the validation students.

  The jointly trained model is selected as knowledge-tracing models usually
  are: by AUC over all validation answers, each from all earlier ones (no
  adaptation). A meta-learner is selected on what it is trained for: the
  cold-start AUC after adapting on the first k answers, averaged over the
  support sizes k > 0.
  """
  options = _eval_options(config, progress=False)
  if method == "joint":
    return lambda meta_params: {"valid_auc": kt_eval.usual_protocol(
        learner, meta_params, valid, adapt=False, **options)["auc"]}
  return lambda meta_params: {"valid_auc": kt_eval.mean_cold_start_auc(
      learner, meta_params, valid, support_sizes=config.support_sizes,
      **options)}


def _finetune_lr(config, joint_params, valid, num_questions) -> Dict:
  """Picks the fine-tuning rate with the best validation cold-start AUC."""
  scores = {lr: kt_eval.mean_cold_start_auc(
      make_learner(config, "joint", num_questions, lr=lr), joint_params,
      valid, support_sizes=config.support_sizes,
      desc=f"fine-tuning lr {lr}", **_eval_options(config))
            for lr in FINETUNE_LRS}
  best = max(scores, key=scores.get)
  return {"lr": best, "validation_auc": scores}


class _Data(NamedTuple):
  """What `_prepare` loads and checks: the dataset and its packed splits.

  `split_overlap` lists `[test row, training row]` of the test students who
  open as a training student (`knowledge_tracing.overlapping_students`,
  training being the train and validation students): reported, not
  refused, since the files are the published splits and a reader should
  know. `comparable` holds the test windows of the comparable protocol,
  which drops those students, and `comparable_info` what
  `kt_eval.comparable_students` dropped.
  """
  dataset: kt.KTDataset
  train: sequences.StudentArrays
  valid: sequences.StudentArrays
  test: sequences.StudentArrays
  split_overlap: list
  comparable: sequences.StudentArrays
  comparable_info: Dict


def _prepare(config: Config) -> _Data:
  data = load_data(config)
  overlap = [list(pair) for pair in kt.overlapping_students(
      training_students(data), data.test)]
  windows, info = kt_eval.comparable_students(
      data.test, [row for row, _ in overlap])
  packed = _Data(data,
                 train=sequences.pack(data.train, window=config.window),
                 valid=sequences.pack(data.valid if data.valid is not None
                                      else data.train),
                 test=sequences.pack(data.test), split_overlap=overlap,
                 comparable=sequences.pack(windows), comparable_info=info)
  for split in ("test", "valid"):
    check_support_sizes(config, getattr(packed, split), split)
  return packed


def training_students(dataset: kt.KTDataset) -> kt.Sequences:
  """The train and validation students together: all that test must avoid."""
  train = dataset.train
  if dataset.valid is not None:
    train = kt.Sequences(train.questions + dataset.valid.questions,
                         train.answers + dataset.valid.answers)
  return train


def num_steps(config: Config, data: _Data) -> int:
  """`num_steps`, or `num_epochs` passes over the training windows."""
  if config.num_epochs:
    return config.num_epochs * -(-data.train.num_students //
                                 config.meta_batch_size)
  return config.num_steps


def check_support_sizes(config: Config, arrays: sequences.StudentArrays,
                        split: str) -> None:
  """Raises if some support size k leaves no answer of `split` to predict."""
  longest = int(np.max(arrays.lengths, initial=0))
  too_long = [k for k in config.support_sizes if k >= longest]
  if too_long:
    raise ValueError(
        f"support_sizes {too_long}: no {split} student has more than "
        f"{longest} answers, so a support of that many leaves nothing to "
        f"predict. Use support sizes below {longest}.")


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


def _run(config: Config, workdir: str, data: _Data) -> Dict:
  """Trains every method (resuming), selects, evaluates, plots."""
  nq = data.dataset.num_questions
  sampler = sequences.student_sampler(
      data.train, batch_size=config.meta_batch_size,
      support_sizes=config.support_sizes)
  steps = num_steps(config, data)
  methods, selected = {}, {}
  for method in ("joint",) + tuple(config.algorithms):
    learner = make_learner(config, method, nq)
    if (method not in ("joint",) + FORWARD_ALGORITHMS and
        config.meta_init == "joint"):
      learner = algorithms.starting_from(learner, methods["joint"])
    method_dir = os.path.join(workdir, method)
    state = harness.train_learner(
        config, learner, optax.adam(config.outer_lr), sampler,
        key=jax.random.PRNGKey(config.seed), num_steps=steps,
        workdir=method_dir, desc=method,
        eval_fn=validation_score(learner, method, data.valid, config),
        eval_every=config.eval_every, keep_best="valid_auc")
    methods[method], selected[method] = checkpoint.restore_best(
        method_dir, state.meta_params)

  finetune = _finetune_lr(config, methods["joint"], data.valid, nq)
  rows = {"none": (make_learner(config, "joint", nq), methods["joint"], False),
          "finetune": (make_learner(config, "joint", nq, lr=finetune["lr"]),
                       methods["joint"], True)}
  for method in config.algorithms:
    rows[method] = (make_learner(config, method, nq), methods[method], True)

  usual, comparable, cold, predictions = {}, {}, {}, {}
  bootstrap = dict(reps=config.bootstrap, seed=config.seed)
  for name, (learner, params, adapt) in rows.items():
    usual[name] = kt_eval.usual_protocol(
        learner, params, data.test, adapt=adapt,
        online_every=online_every(config), desc=f"{name}, usual protocol",
        **_eval_options(config))
    comparable[name] = kt_eval.usual_protocol(
        learner, params, data.comparable, adapt=adapt,
        online_every=online_every(config), first_scored=1,
        desc=f"{name}, comparable protocol", **_eval_options(config))
    predictions[name] = kt_eval.cold_start_predictions(
        learner, params, data.test, support_sizes=config.support_sizes,
        adapt=adapt, desc=f"{name}, cold start", **_eval_options(config))
    cold[name] = kt_eval.cold_start_table(predictions[name], **bootstrap)
  gains = {name: {base: {str(k): v for k, v in kt_eval.cold_start_gains(
      predictions[name], predictions[base], **bootstrap).items()}
                  for base in ("none", "finetune")}
           for name in config.algorithms}

  personalise_k = max(config.support_sizes)
  personalise = personalise_times(
      {name: (learner, params) for name, (learner, params, adapt)
       in rows.items() if adapt}, data.test, personalise_k)

  title = (f"{config.model} on {data.dataset.name}: cold-start "
           f"personalisation")
  _plot(os.path.join(workdir, "cold_start.png"), cold, config, title)
  return {
      "dataset": data.dataset.name, "model": config.model,
      "summary": kt.summary(data.dataset),
      "split_overlap": data.split_overlap,
      "usual_protocol": usual,
      "comparable_protocol": comparable,
      "comparable_test": data.comparable_info,
      "cold_start": {name: {str(k): v for k, v in table.items()}
                     for name, table in cold.items()},
      "cold_start_gain": gains,
      "personalise_time_s": personalise,
      "personalise_answers": personalise_k,
      "finetune": finetune,
      "selected": selected,
      "num_steps": steps,
  }


def personalise_times(learners: Mapping[str, Tuple[algorithms.MetaLearner,
                                                   Dict]],
                      arrays: sequences.StudentArrays, k: int,
                      rounds: int = PERSONALISE_ROUNDS) -> Dict[str, float]:
  """Median seconds to personalise one student, per learner, side by side.

  The student is the first of `arrays` with more than k answers, cut to its
  first k answers (one unread position when k = 0), so the time is that of
  adapting on k answers, not on a padded sequence. The compiled `adapt`
  calls are timed by `side_by_side_times`.

  Args:
    learners: {name: (learner, meta_params)}.
    arrays: the students (`sequences.pack`).
    k: support answers.
    rounds: timed calls per learner.

  Returns:
    {name: median seconds of one `adapt`, results ready}.
  """
  row = int(np.argmax(arrays.lengths > k))
  m = max(k, 1)
  support = jax.device_put(sequences.cold_start_task(
      jnp.asarray(arrays.questions[row, :m]),
      jnp.asarray(arrays.answers[row, :m]), m, k).support)
  calls = {}
  for name, (learner, params) in learners.items():
    adapt = jax.jit(lambda mp, s, learner=learner: learner.adapt(mp, s))
    calls[name] = functools.partial(adapt, jax.device_put(params), support)
  return side_by_side_times(calls, rounds)


def side_by_side_times(calls: Mapping[str, Callable[[], object]],
                       rounds: int) -> Dict[str, float]:
  """Median seconds of each call, timed in turn, the order reversed each round.

  Each call runs once untimed first (compilation). Then each of `rounds`
  rounds runs every call once, in turn, the order reversed every other
  round, so that the machine's slow spells and the place in a round fall on
  every call alike; the median ignores the odd slow call.

  Args:
    calls: {name: a call returning JAX arrays}.
    rounds: timed calls per name.

  Returns:
    {name: median seconds of one call, results ready}.
  """
  for call in calls.values():
    jax.block_until_ready(call())
  seconds = {name: [] for name in calls}
  for i in range(rounds):
    for name in list(calls)[::-1 if i % 2 else 1]:
      start = time.perf_counter()
      jax.block_until_ready(calls[name]())
      seconds[name].append(time.perf_counter() - start)
  return {name: float(np.median(s)) for name, s in seconds.items()}


def format_results(results: Dict) -> str:
  """The usual-protocol, cold-start and personalisation-time tables as text."""
  lines = [f"{results['model']} on {results['dataset']}: test AUC / accuracy "
           f"/ RMSE over all test answers"]
  overlap = results.get("split_overlap")
  if overlap:
    lines.insert(0, f"split check: {len(overlap)} test students open with "
                 f"50 answers found in a training sequence (test rows "
                 f"{[row for row, _ in overlap]}); they are scored as the "
                 f"others")
  for name, m in results["usual_protocol"].items():
    lines.append(f"  {name:10s} {m['auc']:.4f} / {m['accuracy']:.4f} / "
                 f"{m['rmse']:.4f}")
  if "comparable_protocol" in results:
    info = results["comparable_test"]
    lines.append(f"comparable protocol (pyKT's rules that apply: windows of "
                 f"200, the first answer of each unscored, "
                 f"{len(info['students_dropped'])} test students who open "
                 f"as in training dropped; {info['windows']} windows): AUC / "
                 f"accuracy / RMSE")
    for name, m in results["comparable_protocol"].items():
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
  times = results.get("personalise_time_s", {})
  if times:
    lines.append(f"time to personalise one student on its first "
                 f"{results['personalise_answers']} answers (median of "
                 f"compiled adapt calls)")
  for name, seconds in times.items():
    ratio = (f"  {seconds / times['np']:8.1f} x np" if times.get("np")
             else "")
    lines.append(f"  {name:10s}{1e3 * seconds:10.3f} ms{ratio}")
  return "\n".join(lines)


EXPERIMENT = harness.Experiment(
    name="student_performance", config_class=Config, prepare=_prepare,
    run=_run, num_steps=num_steps, format_results=format_results,
    outputs=("results.json", "cold_start.png"))


def train_and_evaluate(config: Config, workdir: str) -> Dict:
  """Trains every method (resuming from `workdir`), evaluates, writes files."""
  return harness.train_and_evaluate(EXPERIMENT, config, workdir)
