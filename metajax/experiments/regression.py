"""1-D regression: neural processes against MAML, with the exact GP ceiling.

The benchmark of the recent Neural Process literature (Lee et al., 2020;
Nguyen & Grover, 2022): learners are trained on functions drawn from a GP
with one kernel (`kernel`, RBF by default) and evaluated on held-out tasks of
every kernel of `eval_kernels` (RBF, Matérn-5/2 and periodic), each task a
context of n_c ~ U{3, ..., 46} points and n_t ~ U{3, ..., 49 - n_c} target
points (`metajax.data.gp`). With `tasks="sinusoid"` the same learners run on
the sinusoids of the main job (`metajax.data.sinusoid`), with K =
`num_context` context points, so that their numbers sit beside MAML's.

The learners (`learners`):

  cnp, np, anp  the conditional, latent and attentive neural processes of
                `metajax.algorithms.neural_process`, with the builders'
                architectures at hidden width `width` (the NP with both the
                deterministic and the latent path);
  maml          second-order MAML of an MLP with two hidden layers, whose
                width (`maml_width`) makes its parameter count the closest to
                the CNP's, predicting a mean and a std (bounded below by
                `min_std`, as the NPs'), trained and adapted on the masked
                mean Gaussian negative log-likelihood: it adapts on the
                context and is scored on the targets.

Training. Neural processes are trained as in their papers: the target set of
a training task also holds its context points (`query_includes_context`).
MAML keeps the sets apart, as in its paper. Every learner trains from the
same seed in its own sub-folder of the workdir, so adding or dropping one
changes no other.

Evaluation, per learner and per evaluation kernel, on the same `eval_tasks`
tasks, drawn from a key fixed once for all runs (`evaluation_tasks`): the
context log-likelihood (the context points predicted from the context) and
the target log-likelihood, each the mean over a task's real points, then
mean ± 95% CI over tasks; the MSE of the predictive mean on the targets; and
the target log-likelihood against the context size. Latent models' scores
are Monte Carlo estimates with `num_samples` draws of z from q(z | context)
(`neural_process.log_likelihood`); their predictive mean and std are those
of the mixture over the same draws. On GP tasks the exact GP posterior
predictive with each task's true kernel and hyper-parameters, in float64, is
scored the same way: the ceiling.

`train_and_evaluate(config, workdir)` writes into `workdir`:

  config.json          the settings; a rerun that changes one that defines
                       what is trained is refused (`harness.check_rerun`)
  results.json         config, versions, times, parameter counts, the
                       log-likelihood and MSE tables with intervals, the
                       log-likelihood against context size, the protocol
  predictions.png      three held-out tasks: each learner's predictive mean
                       ± 2 std at the task's inputs, beside the exact GP
                       posterior (or the true sinusoid)
  ll_vs_context.png    target log-likelihood against context size
  <learner>/metrics.jsonl, <learner>/checkpoints/   per-learner training
"""

import dataclasses
import math
import os
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metajax import algorithms
from metajax.algorithms import neural_process as nplib
from metajax.data import gp
from metajax.data import sinusoid
from metajax.evaluation import mean_ci
from metajax.experiments import harness
from metajax.experiments.harness import field
from metajax.tasks import Task

TASKS = ("gp", "sinusoid")
LEARNERS = ("cnp", "np", "anp", "maml")
# The ANP's attention heads; `width` must be a multiple.
NUM_HEADS = 8
# MAML's MLP: this many hidden layers (as in the MAML paper), of the width
# that matches the CNP's parameter count.
MAML_HIDDEN_LAYERS = 2
# Evaluation tasks come from this seed, not the run's: runs of every seed
# are scored on the same tasks.
EVAL_SEED = 2020
# Every set of evaluation tasks, and the index its key is folded with.
PANELS = gp.KERNELS + ("sinusoid",)
# Context-size bins (inclusive) of the GP tasks' log-likelihood curve.
GP_CONTEXT_BINS = ((3, 10), (11, 20), (21, 30), (31, 46))
# Context sizes of the sinusoid curve below `num_context`, which ends it.
SINUSOID_CONTEXT_SIZES = (1, 2, 5)
# Held-out tasks drawn in predictions.png.
PLOT_TASKS = 3


@dataclasses.dataclass(frozen=True)
class Config(harness.RunConfig):
  """Hyper-parameters.

  The optimiser and the meta-batch are those of the NP literature's GP
  benchmark (Adam at 5e-4, 16 tasks per step), which trains for 100,000
  steps; the default here is half that.
  """
  tasks: str = field("gp", "Task family: GP functions or sinusoids.",
                     choices=TASKS)
  kernel: str = field("rbf", "GP kernel of the training tasks "
                      "(tasks=gp).", choices=gp.KERNELS)
  eval_kernels: Tuple[str, ...] = field(
      gp.KERNELS, f"GP kernels of the evaluation tasks (tasks=gp), from "
      f"{gp.KERNELS}.", rerun_may_change=True)
  learners: Tuple[str, ...] = field(
      LEARNERS, f"Learners to train and compare, from {LEARNERS}; each "
      f"trains on its own, so a rerun may add or drop one.",
      rerun_may_change=True)
  width: int = field(128, "Hidden width of every network of the neural "
                     "processes (a multiple of 8, the ANP's heads).")
  min_std: float = field(0.1, "Lower bound of every learner's predicted "
                         "std, in [0, 1).")
  num_context: int = field(10, "Sinusoid tasks: K, context points per "
                           "task.")
  num_targets: int = field(100, "Sinusoid tasks: target points per task.")
  meta_batch_size: int = field(16, "Tasks per meta-step.")
  outer_lr: float = field(5e-4, "Adam learning rate.")
  num_steps: int = field(50_000, "Meta-training steps per learner.",
                         rerun_may_change=True)
  maml_num_steps: int = field(
      5_000, "MAML: meta-training steps (0: --num_steps). A second-order "
      "MAML step costs about 25 CNP steps on the CPU; this budgets it "
      "apart. Fixed once a workdir has trained.")
  inner_steps: int = field(5, "MAML: inner gradient steps in "
                           "meta-training.")
  # 0.01, the MAML paper's sinusoid rate, diverges on the Gaussian NLL,
  # whose gradient in the mean scales as 1 / std^2 (README: 0.003 diverged
  # too in 600-step runs).
  inner_lr: float = field(0.001, "MAML: inner learning rate.")
  test_inner_steps: int = field(5, "MAML: gradient steps on the context "
                                "at evaluation.", rerun_may_change=True)
  eval_tasks: int = field(1000, "Held-out tasks per evaluation kernel.",
                          rerun_may_change=True)
  num_samples: int = field(50, "Monte Carlo samples of z per task for the "
                           "latent models' scores.", rerun_may_change=True)
  eval_batch: int = field(100, "Tasks per vmapped batch of evaluation.",
                          rerun_may_change=True)
  log_every: int = harness.log_every_field(1000)
  checkpoint_every: int = harness.checkpoint_every_field(10_000)

  RATES = ("inner_lr", "outer_lr")
  POSITIVE = harness.RunConfig.POSITIVE + (
      "width", "num_context", "num_targets", "meta_batch_size", "num_steps",
      "inner_steps", "test_inner_steps", "num_samples", "eval_batch")

  def validate(self):
    super().validate()
    for name, allowed in (("learners", LEARNERS),
                          ("eval_kernels", gp.KERNELS)):
      values = getattr(self, name)
      unknown = sorted(set(values) - set(allowed))
      if not values or unknown or len(set(values)) < len(values):
        raise ValueError(f"{name} must be distinct names from {allowed}, "
                         f"got {values}.")
    if self.eval_tasks < 2:
      raise ValueError(f"eval_tasks must be >= 2 (a confidence interval "
                       f"needs two tasks), got {self.eval_tasks}.")
    if self.maml_num_steps < 0:
      raise ValueError(f"maml_num_steps must be >= 0 (0: num_steps), got "
                       f"{self.maml_num_steps}.")
    if not 0.0 <= self.min_std < 1.0:
      raise ValueError(f"min_std must be in [0, 1), got {self.min_std}.")
    if "anp" in self.learners and self.width % NUM_HEADS:
      raise ValueError(f"width must be a multiple of {NUM_HEADS} (the "
                       f"ANP's attention heads), got {self.width}.")


def learner_steps(config: Config, name: str) -> int:
  """The meta-training steps of learner `name`."""
  if name == "maml" and config.maml_num_steps:
    return config.maml_num_steps
  return config.num_steps


def make_model(config: Config, name: str) -> nplib.NeuralProcess:
  """The neural process `name` ("cnp", "np" or "anp"), 1-D in and out.

  The builders' default architectures, with every hidden width, latent
  width and attention width set to `config.width`.
  """
  w, min_std = config.width, config.min_std
  if name == "cnp":
    return nplib.conditional_np(1, 1, encoder_widths=(w, w, w),
                                decoder_widths=(w, w), min_std=min_std)
  if name == "np":
    return nplib.latent_np(1, 1, latent_dim=w, latent_widths=(w, w, w),
                           deterministic_path=True, encoder_widths=(w, w, w),
                           decoder_widths=(w, w), min_std=min_std)
  if name == "anp":
    return nplib.attentive_np(1, 1, width=w, num_heads=NUM_HEADS,
                              encoder_widths=(w, w), latent_dim=w,
                              latent_widths=(w, w, w), decoder_widths=(w, w),
                              min_std=min_std)
  raise ValueError(f"{name!r} is not a neural process of {LEARNERS}.")


def count_parameters(learner: algorithms.MetaLearner) -> int:
  """The number of meta-parameters of `learner` (shapes only, no compile)."""
  shapes = jax.eval_shape(learner.init, jax.random.PRNGKey(0))
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(shapes))


def _mlp_size(sizes) -> int:
  """Parameters of dense layers `sizes[0] -> ... -> sizes[-1]` with biases."""
  return sum((a + 1) * b for a, b in zip(sizes[:-1], sizes[1:]))


def _maml_sizes(hidden: int) -> Tuple[int, ...]:
  # Input x; outputs the mean and the raw std of y.
  return (1,) + (hidden,) * MAML_HIDDEN_LAYERS + (2,)


def maml_width(config: Config) -> int:
  """The hidden width of MAML's MLP closest in parameters to the CNP."""
  target = count_parameters(nplib.as_learner(make_model(config, "cnp")))
  hidden = 1
  while _mlp_size(_maml_sizes(hidden + 1)) <= target:
    hidden += 1
  return min((hidden, hidden + 1),
             key=lambda h: abs(_mlp_size(_maml_sizes(h)) - target))


def gaussian_nll(predictions: jax.Array, targets) -> jax.Array:
  """MAML's loss: the mean Gaussian negative log-likelihood of real points.

  Args:
    predictions: float `[n, 2]`, the mean and the std of y.
    targets: `(y [n, 1], mask [n])`, mask 1.0 on real points.

  Returns:
    A scalar, the mean over the real points of `-log N(y; mean, std)`.
  """
  y, mask = targets
  ll = nplib.gaussian_log_density(y, predictions[:, :1], predictions[:, 1:])
  return -nplib.masked_mean(ll, mask)


def make_learner(config: Config, name: str) -> algorithms.MetaLearner:
  """The learner `name` of `LEARNERS`; each predicts `[n, 2]` (mean, std)."""
  if name != "maml":
    return nplib.as_learner(make_model(config, name))
  sizes = _maml_sizes(maml_width(config))

  def apply_fn(params, x):
    out = nplib.mlp(params, x)
    return jnp.concatenate(
        [out[:, :1], nplib.bounded_std(out[:, 1:], config.min_std)], axis=-1)

  return algorithms.maml(lambda key: nplib.mlp_init(key, sizes), apply_fn,
                         gaussian_nll, steps=config.inner_steps,
                         lr=config.inner_lr)


# Tasks.


def sinusoid_tasks(key: jax.Array, num_tasks: int, num_context: int,
                   num_targets: int, *, query_includes_context: bool = False
                   ) -> Task:
  """Sinusoid tasks (`metajax.data.sinusoid`) as masked sets.

  Returns:
    `Task((x, (y, mask)), (x, (y, mask)))`: float32 x and y `[B, n, 1]`,
    masks `[B, n]` of ones; n = `num_context` in the support and
    `num_targets` (plus `num_context` first, with `query_includes_context`)
    in the query.
  """
  task = sinusoid.sample_tasks(key, num_tasks, num_context, num_targets)
  query = task.query
  if query_includes_context:
    query = jax.tree.map(lambda c, t: jnp.concatenate([c, t], axis=1),
                         task.support, query)
  with_mask = lambda s: (s[0], (s[1], jnp.ones(s[1].shape[:2], jnp.float32)))
  return Task(with_mask(task.support), with_mask(query))


def train_sampler(config: Config, name: str) -> Callable[[jax.Array], Task]:
  """`key -> Task` batch of training tasks for learner `name`.

  Neural processes' target sets also hold the context points, as in their
  papers; MAML's support and query sets are apart, as in its paper.
  """
  include = name != "maml"
  if config.tasks == "gp":
    return gp.sampler(config.meta_batch_size, config.kernel,
                      query_includes_context=include)
  return lambda key: sinusoid_tasks(
      key, config.meta_batch_size, config.num_context, config.num_targets,
      query_includes_context=include)


class EvalSet(NamedTuple):
  """The fixed evaluation tasks of one panel (a GP kernel, or sinusoids).

  Attributes:
    tasks: a `Task` batch of `eval_tasks` tasks, sets `(x, (y, mask))`;
      the support is the context, the query the targets (apart).
    params: the tasks' `gp.KernelParams` (`[eval_tasks]` leaves), or None
      for sinusoids.
    keys: `[eval_tasks, 2]` PRNG keys of the latent models' samples of z,
      one per task, the same for every learner.
  """
  tasks: Task
  params: Optional[gp.KernelParams]
  keys: jax.Array


_sample_gp_tasks = jax.jit(gp.sample_tasks, static_argnums=(1, 2))


def evaluation_tasks(config: Config, panel: str) -> EvalSet:
  """The held-out tasks of `panel`, a kernel of `gp.KERNELS` or "sinusoid".

  They depend on `panel`, `eval_tasks` and, for sinusoids, on `num_context`
  and `num_targets` only: every run and every learner is scored on the
  same tasks.
  """
  key = jax.random.fold_in(jax.random.PRNGKey(EVAL_SEED),
                           PANELS.index(panel))
  task_key, sample_key = jax.random.split(key)
  if panel == "sinusoid":
    tasks = sinusoid_tasks(task_key, config.eval_tasks, config.num_context,
                           config.num_targets)
    params = None
  else:
    tasks, params = _sample_gp_tasks(task_key, config.eval_tasks, panel)
  return EvalSet(tasks, params,
                 jax.random.split(sample_key, config.eval_tasks))


def _panels(config: Config) -> Tuple[str, ...]:
  return config.eval_kernels if config.tasks == "gp" else ("sinusoid",)


# Scoring.


class _Predictive(NamedTuple):
  """A learner's predictive distribution given one task's context.

  Attributes:
    log_likelihood: `(x, (y, mask)) -> scalar`, per real point.
    moments: `x [n, 1] -> (mean, std)`, each `[n, 1]`.
  """
  log_likelihood: Callable
  moments: Callable


def _predictive(config: Config, learner: algorithms.MetaLearner,
                model: Optional[nplib.NeuralProcess], meta_params, context,
                key: jax.Array) -> _Predictive:
  """What learner (`model`, or None for MAML) predicts from `context`."""
  if model is None:
    adapted = learner.adapt(meta_params, context,
                            steps=config.test_inner_steps)

    def moments(x):
      out = learner.predict(meta_params, adapted, x)
      return out[:, :1], out[:, 1:]

    def log_likelihood(points):
      x, (y, mask) = points
      return nplib.masked_mean(
          nplib.gaussian_log_density(y, *moments(x)), mask)

    return _Predictive(log_likelihood, moments)

  def np_log_likelihood(points):
    return nplib.log_likelihood(model, meta_params, context, points, key=key,
                                num_samples=config.num_samples)

  def np_moments(x):
    state = model.encode(meta_params, context)
    if state.prior is None:
      return model.decode(meta_params, state, x, None)
    # The draws of `neural_process.log_likelihood` with the same key.
    prior = state.prior
    eps = jax.random.normal(key, (config.num_samples,) + prior.mean.shape,
                            prior.mean.dtype)
    means, stds = jax.vmap(lambda z: model.decode(meta_params, state, x, z))(
        prior.mean + prior.std * eps)
    mean = jnp.mean(means, axis=0)
    var = jnp.mean(jnp.square(stds) + jnp.square(means), axis=0)
    return mean, jnp.sqrt(jnp.maximum(var - jnp.square(mean), 0.0))

  return _Predictive(np_log_likelihood, np_moments)


def _scorer(config: Config, learner, model) -> Callable:
  """`fn(meta_params, tasks, keys) -> {name: values}`, compiled.

  Per task: "context_ll" and "target_ll" (log-likelihood per real point),
  "target_mse" (of the predictive mean), each `[n_tasks]`, and the
  predictive "mean" and "std" at every query input, `[n_tasks, n, 1]`
  (padded slots included: a GP task's slots all hold real inputs), which
  the figure draws.
  """
  def one(meta_params, task, key):
    pred = _predictive(config, learner, model, meta_params, task.support,
                       key)
    x, (y, mask) = task.query
    mean, std = pred.moments(x)
    return {"context_ll": pred.log_likelihood(task.support),
            "target_ll": pred.log_likelihood(task.query),
            "target_mse": nplib.masked_mean(
                jnp.sum(jnp.square(mean - y), axis=-1), mask),
            "mean": mean, "std": std}

  def score(meta_params, tasks, keys):
    return jax.lax.map(lambda a: one(meta_params, *a), (tasks, keys),
                       batch_size=min(config.eval_batch, keys.shape[0]))
  return jax.jit(score)


def _gp_scores(kernel: str, params, support, query,
               batch_size: int) -> jax.Array:
  return jax.lax.map(lambda a: gp.gp_mean_log_likelihood(kernel, *a),
                     (params, support, query),
                     batch_size=min(batch_size, params.scale.shape[0]))


_gp_scores_jit = jax.jit(_gp_scores, static_argnums=(0, 4))


def exact_gp_scores(kernel: str, eval_set: EvalSet,
                    batch_size: int) -> Dict[str, np.ndarray]:
  """The exact GP's per-task "context_ll" and "target_ll", in float64.

  The posterior predictive with each task's true kernel and
  hyper-parameters (`gp.gp_mean_log_likelihood`), computed in float64 from
  the float32 tasks: float32 would be off by up to ~7e-3 per task on
  periodic tasks.
  """
  with jax.enable_x64(True):
    params, tasks = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64),
                                 (eval_set.params, eval_set.tasks))
    # Two calls, not one program: jaxlib 0.10's batched CPU Cholesky can
    # deadlock when two independent ones run in one program.
    return {name: np.asarray(_gp_scores_jit(kernel, params, tasks.support,
                                            points, batch_size))
            for name, points in (("context_ll", tasks.support),
                                 ("target_ll", tasks.query))}


_gp_posterior = jax.jit(gp.gp_posterior, static_argnums=0)


def _with_context_size(tasks: Task, k: int) -> Task:
  """`tasks` with only the first `k` context points real."""
  x, (y, mask) = tasks.support
  mask = mask * (jnp.arange(mask.shape[-1]) < k)
  return Task((x, (y, mask)), tasks.query)


def _context_curve(values: np.ndarray, num_context: np.ndarray
                   ) -> List[Dict]:
  """Per-task `values` binned by context size (`GP_CONTEXT_BINS`).

  A bin with fewer than two tasks (no interval) is left out.
  """
  rows = []
  for lo, hi in GP_CONTEXT_BINS:
    inside = (num_context >= lo) & (num_context <= hi)
    if np.count_nonzero(inside) >= 2:
      rows.append(dict(context=[lo, hi], **mean_ci(values[inside])))
  return rows


# Plots.


class _Drawn(NamedTuple):
  """The held-out tasks of predictions.png (three, or two).

  Attributes:
    picks: each task's panel and index among the panel's tasks.
    inputs: each task's query inputs `[n]`, sorted: where it is drawn.
    order: each task's argsort of its query inputs.
    context_points: each task's real context points, `(x [m], y [m])`.
    target_points: each task's real target points, `(x [m], y [m])`.
    exact: each task's exact GP posterior `(mean, std)` at `inputs`, or
      None (sinusoids).
  """
  picks: List[Tuple[str, int]]
  inputs: List[np.ndarray]
  order: List[np.ndarray]
  context_points: List[Tuple[np.ndarray, np.ndarray]]
  target_points: List[Tuple[np.ndarray, np.ndarray]]
  exact: List[Optional[Tuple[np.ndarray, np.ndarray]]]


def _real_points(points) -> Tuple[np.ndarray, np.ndarray]:
  """`(x, y)`, each `[m]`, of the real points of one set `(x, (y, mask))`."""
  x, (y, mask) = jax.device_get(points)
  real = mask > 0
  return x[real, 0], y[real, 0]


def _drawn_tasks(config: Config, eval_sets: Dict[str, EvalSet]) -> _Drawn:
  """The first held-out task of each panel in turn, `PLOT_TASKS` in all.

  Fewer when there are fewer tasks: two, if one panel has two tasks.
  """
  panels = _panels(config)
  picks = [(panels[i % len(panels)], i // len(panels))
           for i in range(min(PLOT_TASKS, len(panels) * config.eval_tasks))]
  tasks = [jax.tree.map(lambda a, i=index: a[i], eval_sets[panel].tasks)
           for panel, index in picks]
  orders = [np.argsort(np.asarray(task.query[0])[:, 0]) for task in tasks]
  inputs = [np.asarray(task.query[0])[order]
            for task, order in zip(tasks, orders)]
  exact = []
  for (panel, index), task, x in zip(picks, tasks, inputs):
    params = eval_sets[panel].params
    exact.append(None if params is None else jax.device_get(_gp_posterior(
        panel, jax.tree.map(lambda a, i=index: a[i], params), task.support,
        x)))
  return _Drawn(picks=picks, inputs=[x[:, 0] for x in inputs], order=orders,
                context_points=[_real_points(t.support) for t in tasks],
                target_points=[_real_points(t.query) for t in tasks],
                exact=exact)


def _plot_predictions(path: str, config: Config, drawn: _Drawn,
                      scores: Dict[str, Dict[str, Dict[str, np.ndarray]]]):
  """Draws each learner's predictive mean ± 2 std on the drawn tasks.

  `scores` is {panel: {learner: the scorer's values}}.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  reference = "exact GP" if config.tasks == "gp" else "true function"
  columns = list(config.learners) + [reference]
  rows = len(drawn.picks)
  fig, axes = plt.subplots(rows, len(columns), squeeze=False, sharex=True,
                           figsize=(3.2 * len(columns), 2.6 * rows))
  for i, row in enumerate(axes):
    panel, index = drawn.picks[i]
    inputs, order = drawn.inputs[i], drawn.order[i]
    targets, exact = drawn.target_points[i], drawn.exact[i]
    for ax, name in zip(row, columns):
      ax.scatter(*targets, s=6, color="0.6", label="targets")
      if exact is not None:
        ax.plot(inputs, exact[0], "--", color="black", lw=1, label="GP mean")
        band = exact if name == reference else None
      else:
        # Sinusoid targets are exact and dense: joined, they are the curve.
        by_x = np.argsort(targets[0])
        ax.plot(targets[0][by_x], targets[1][by_x], "--", color="black",
                lw=1, label="true function")
        band = None
      if name in config.learners:
        values = scores[panel][name]
        band = tuple(values[k][index][order, 0] for k in ("mean", "std"))
      if band is not None:
        mean, std = band
        ax.plot(inputs, mean, color="tab:blue", lw=1.5, label="mean ± 2 std")
        ax.fill_between(inputs, mean - 2 * std, mean + 2 * std,
                        color="tab:blue", alpha=0.25)
      ax.scatter(*drawn.context_points[i], s=14, color="black", zorder=3,
                 label="context")
      ax.set_title(f"{name}, {panel}", fontsize=9)
  axes[0][0].legend(fontsize=6, loc="lower left")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def _plot_curves(path: str, curves: Dict[str, Dict[str, List[Dict]]]):
  """Draws `curves` {panel: {learner: rows of `ll_vs_context`}}."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, axes = plt.subplots(1, len(curves), squeeze=False,
                           figsize=(4.5 * len(curves), 3.8))
  for ax, (panel, by_learner) in zip(axes[0], curves.items()):
    ticks = {}
    for name, rows in by_learner.items():
      if not rows:
        continue
      at = np.array([sum(r["context"]) / 2 for r in rows])
      mean = np.array([r["mean"] for r in rows])
      ci = np.array([r["ci95"] for r in rows])
      ax.errorbar(at, mean, yerr=ci, marker="o", capsize=3, label=name)
      for x, r in zip(at, rows):
        lo, hi = r["context"]
        ticks[x] = str(lo) if lo == hi else f"{lo}–{hi}"
    ax.set_xticks(list(ticks), list(ticks.values()))
    ax.set_xlabel("context points")
    ax.set_ylabel("target log-likelihood per point (95% CI)")
    ax.set_title(panel)
    if ticks:
      ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


# The run.


def _sinusoid_curve(config: Config, score: Callable, meta_params,
                    eval_set: EvalSet, at_k: np.ndarray) -> List[Dict]:
  """Target log-likelihood with the first k context points, k up to K.

  `at_k` holds the per-task values at k = K, already computed.
  """
  rows = []
  for k in SINUSOID_CONTEXT_SIZES:
    if k < config.num_context:
      values = score(meta_params, _with_context_size(eval_set.tasks, k),
                     eval_set.keys)["target_ll"]
      rows.append(dict(context=[k, k], **mean_ci(values)))
  rows.append(dict(context=[config.num_context] * 2, **mean_ci(at_k)))
  return rows


def _run(config: Config, workdir: str, data) -> Dict:
  """Trains every learner (resuming), evaluates it, draws the figures."""
  del data
  train_key = jax.random.PRNGKey(config.seed)
  eval_sets = {p: evaluation_tasks(config, p) for p in _panels(config)}
  num_context = {p: np.asarray(jnp.sum(s.tasks.support[1][1], axis=-1))
                 for p, s in eval_sets.items()}
  drawn = _drawn_tasks(config, eval_sets)
  # {panel: {learner: {name: the scorer's values, first axis the tasks}}}
  scores = {p: {} for p in eval_sets}
  curves = {p: {} for p in eval_sets}
  parameters = {}
  for name in config.learners:
    model = None if name == "maml" else make_model(config, name)
    learner = make_learner(config, name)
    parameters[name] = count_parameters(learner)
    meta_params = harness.train_learner(
        config, learner, optax.adam(config.outer_lr),
        train_sampler(config, name), key=train_key,
        num_steps=learner_steps(config, name),
        workdir=os.path.join(workdir, name),
        desc=name).meta_params
    score = _scorer(config, learner, model)
    for panel, eval_set in eval_sets.items():
      values = jax.device_get(
          score(meta_params, eval_set.tasks, eval_set.keys))
      scores[panel][name] = values
      curves[panel][name] = (
          _context_curve(values["target_ll"], num_context[panel])
          if config.tasks == "gp" else
          _sinusoid_curve(config, score, meta_params, eval_set,
                          values["target_ll"]))

  if config.tasks == "gp":
    for panel, eval_set in eval_sets.items():
      exact = exact_gp_scores(panel, eval_set, config.eval_batch)
      scores[panel]["exact_gp"] = exact
      curves[panel]["exact_gp"] = _context_curve(exact["target_ll"],
                                                 num_context[panel])

  _plot_predictions(os.path.join(workdir, "predictions.png"), config, drawn,
                    scores)
  _plot_curves(os.path.join(workdir, "ll_vs_context.png"), curves)
  return {
      "tasks": config.tasks,
      "train_kernel": config.kernel if config.tasks == "gp" else None,
      "log_likelihood": {
          panel: {name: {"context": mean_ci(v["context_ll"]),
                         "target": mean_ci(v["target_ll"])}
                  for name, v in by_learner.items()}
          for panel, by_learner in scores.items()},
      "target_mse": {
          panel: {name: mean_ci(v["target_mse"])
                  for name, v in by_learner.items() if "target_mse" in v}
          for panel, by_learner in scores.items()},
      "ll_vs_context": curves,
      "parameters": parameters,
      "num_steps": {name: learner_steps(config, name)
                    for name in config.learners},
      "maml_width": maml_width(config) if "maml" in config.learners else None,
      "num_samples": config.num_samples,
      "eval_tasks": config.eval_tasks,
      "protocol": _protocol(config),
  }


def _protocol(config: Config) -> Dict[str, str]:
  """The evaluation protocol in words, for results.json."""
  if config.tasks == "gp":
    tasks = (f"GP functions (metajax.data.gp): training on the "
             f"{config.kernel} kernel, evaluation on "
             f"{', '.join(config.eval_kernels)}; n_c ~ U{{3..46}} context "
             f"and n_t ~ U{{3..49 - n_c}} target points per task")
  else:
    tasks = (f"sinusoids (metajax.data.sinusoid): K={config.num_context} "
             f"context and {config.num_targets} target points per task")
  protocol = {
      "tasks": tasks,
      "training": (
          "neural processes: target sets that also hold the context "
          "points; MAML: context and targets apart, second-order, "
          f"{config.inner_steps} inner steps at {config.inner_lr}"),
      "evaluation": (
          f"the same {config.eval_tasks} held-out tasks per panel (an "
          f"evaluation kernel, or sinusoids) for every learner, drawn from "
          f"the fixed seed {EVAL_SEED}; MAML "
          f"adapts on the context for {config.test_inner_steps} steps"),
      "log_likelihood": (
          "per point: a task's mean over its real points, then mean ± 95% "
          "CI over tasks; context: the context points predicted from the "
          "context; target: the target points. Latent models (np, anp): "
          f"Monte Carlo estimate with {config.num_samples} samples of z ~ "
          "q(z | context), log mean_k N(y | z_k) per point (a lower bound in "
          "expectation)"),
      "target_mse": ("mean over a task's targets of the squared error of "
                     "the predictive mean (latent models: the mixture's "
                     "mean over the same samples)"),
      "ll_vs_context": ("target log-likelihood of tasks binned by context "
                        "size (GP), or of the same tasks with only their "
                        "first k context points (sinusoids); bins with "
                        "fewer than 2 tasks are left out"),
  }
  if config.tasks == "gp":
    protocol["exact_gp"] = (
        "the GP posterior predictive with each task's true kernel and "
        "hyper-parameters, noise included, in float64")
  return protocol


def format_results(results: Dict) -> str:
  """The log-likelihood (and MSE) table of `results` as aligned text."""
  lines = [f"log-likelihood per point on {results['eval_tasks']} held-out "
           f"tasks per panel, mean ± 95% CI (np, anp: "
           f"{results['num_samples']} samples of z)",
           f"{'panel':<10}{'learner':<10}{'context':>20}{'target':>20}"
           f"{'target MSE':>20}"]
  for panel, by_learner in results["log_likelihood"].items():
    for name, ll in by_learner.items():
      mse = results["target_mse"][panel].get(name)
      cells = [f"{c['mean']:.3f} ± {c['ci95']:.3f}"
               for c in (ll["context"], ll["target"])]
      cells.append(f"{mse['mean']:.3f} ± {mse['ci95']:.3f}" if mse else "")
      lines.append(f"{panel:<10}{name:<10}" +
                   "".join(f"{c:>20}" for c in cells))
  lines.append("parameters: " + ", ".join(
      f"{n} {c:,}" for n, c in results["parameters"].items()))
  lines.append("meta-training steps: " + ", ".join(
      f"{n} {c:,}" for n, c in results["num_steps"].items()))
  lines.append(f"wall time {results['wall_time_s']:.0f} s")
  return "\n".join(lines)


EXPERIMENT = harness.Experiment(
    name="regression", config_class=Config, prepare=lambda config: None,
    run=_run,
    num_steps=lambda config, data: max(learner_steps(config, name)
                                       for name in config.learners),
    format_results=format_results,
    outputs=("results.json", "predictions.png", "ll_vs_context.png"))


def train_and_evaluate(config: Config, workdir: str) -> Dict:
  """Trains every learner (resuming from `workdir`), evaluates, writes files.

  Returns:
    The dict written to `workdir/results.json`.
  """
  return harness.train_and_evaluate(EXPERIMENT, config, workdir)
