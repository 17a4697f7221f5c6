"""Few-shot sinusoid regression: a MAML-family learner against joint training.

Reproduces the protocol of Finn et al. (2017), section 5.1: an MLP 1-40-40-1
(ReLU) meta-trained on K-shot sinusoid tasks, compared with the same network
trained jointly on all tasks and fine-tuned at test time with the same inner
learning rate. Both are scored by the query MSE after 0..max(eval_steps)
gradient steps on the K support points of held-out tasks (the same tasks for
both), each with a 95% confidence interval.

`train_and_evaluate(config, workdir)` writes into `workdir`:

  config.json          the settings; a rerun that changes one that defines
                       what is trained is refused (`harness.check_rerun`)
  results.json         config, versions, wall times, MSE table with intervals
  sinusoid.png         fits on one held-out task (as the paper's Figure 2) and
                       MSE against adaptation steps with intervals
  <learner>/metrics.jsonl, <learner>/checkpoints/   per-learner training logs
"""

import dataclasses
import os
from typing import Dict, List, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metajax import algorithms
from metajax.data import sinusoid
from metajax.evaluation import evaluate
from metajax.evaluation import mean_ci
from metajax.experiments import harness
from metajax.experiments.harness import field
from metajax.models import MLP
from metajax.tasks import Task

ALGORITHMS = ("maml", "fomaml", "anil", "meta_sgd", "maml_plus_plus")
# The two learners of a run: (name of the workdir sub-folder, baseline?).
LEARNERS = (("meta", False), ("joint", True))


@dataclasses.dataclass(frozen=True)
class Config(harness.RunConfig):
  """Hyper-parameters; the defaults are the paper's (70,000 meta-steps)."""
  algorithm: str = field("maml", "Meta-learner to compare with joint "
                         "training.", choices=ALGORITHMS)
  num_support: int = field(10, "K: support points per task.")
  num_query: int = field(10, "Query points per task during meta-training.")
  inner_steps: int = field(1, "Inner gradient steps during meta-training.")
  inner_lr: float = field(0.01, "Inner (and fine-tuning) learning rate.")
  outer_lr: float = field(1e-3, "Adam learning rate.")
  meta_batch_size: int = field(25, "Tasks per meta-step.")
  num_steps: int = field(70_000, "Meta-training steps.",
                         rerun_may_change=True)
  hidden: Tuple[int, ...] = field((40, 40), "Hidden layer widths of the MLP.")
  eval_tasks: int = field(1000, "Held-out test tasks.", rerun_may_change=True)
  eval_query: int = field(100, "Query points per test task.",
                          rerun_may_change=True)
  eval_steps: Tuple[int, ...] = field(
      (0, 1, 10), "Adaptation steps at which the test MSE is reported.",
      rerun_may_change=True)
  log_every: int = harness.log_every_field(1000)
  checkpoint_every: int = harness.checkpoint_every_field(10_000)

  RATES = ("inner_lr", "outer_lr")
  POSITIVE = harness.RunConfig.POSITIVE + (
      "num_support", "num_query", "inner_steps", "meta_batch_size",
      "num_steps", "hidden", "eval_query")

  def validate(self):
    super().validate()
    if self.eval_tasks < 2:
      raise ValueError(f"eval_tasks must be >= 2, got {self.eval_tasks}.")
    if not self.eval_steps or min(self.eval_steps) < 0:
      raise ValueError(
          f"eval_steps must be non-negative step counts, got "
          f"{self.eval_steps}.")
    if (self.algorithm == "maml_plus_plus" and
        max(self.eval_steps) > self.inner_steps):
      raise ValueError(
          f"maml_plus_plus learns one rate per inner step, so it cannot be "
          f"evaluated beyond inner_steps={self.inner_steps} steps; got "
          f"eval_steps={self.eval_steps}.")


def make_learner(config: Config, baseline: bool = False
                 ) -> algorithms.MetaLearner:
  """The configured learner, or the joint baseline (fine-tuning at test)."""
  model = MLP(config.hidden, 1)
  init_fn = lambda key: model.init(key, jnp.zeros((1, 1), jnp.float32))
  build = algorithms.joint if baseline else getattr(algorithms,
                                                    config.algorithm)
  return build(init_fn, model.apply, algorithms.mse,
               steps=config.inner_steps, lr=config.inner_lr)


def _fixed_task(key, config: Config):
  """One held-out task with a dense query grid, for the figure."""
  k_amp, k_phase, k_x = jax.random.split(key, 3)
  fam = sinusoid.SinusoidFamily()
  amp = jax.random.uniform(k_amp, (), minval=fam.amplitude[0],
                           maxval=fam.amplitude[1])
  phase = jax.random.uniform(k_phase, (), minval=fam.phase[0],
                             maxval=fam.phase[1])
  xs = jax.random.uniform(k_x, (config.num_support, 1), minval=fam.x[0],
                          maxval=fam.x[1])
  xq = jnp.linspace(fam.x[0], fam.x[1], 200)[:, None]
  return Task((xs, sinusoid.sinusoid(xs, amp, phase)),
              (xq, sinusoid.sinusoid(xq, amp, phase)))


def _plot(path: str, fits: Dict[str, Dict[int, np.ndarray]], task: Task,
          curves: Dict[str, List[Dict[str, float]]], config: Config) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  (xs, ys), (xq, yq) = jax.device_get(task)
  fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
  titles = {"meta": f"{config.algorithm} (K={config.num_support})",
            "joint": f"joint training, fine-tuned (K={config.num_support})"}
  for ax, name in zip(axes[:2], ("meta", "joint")):
    ax.plot(xq[:, 0], yq[:, 0], color="tab:red", lw=2, label="ground truth")
    for k, pred in sorted(fits[name].items()):
      style = "--" if k == 0 else "-"
      label = "pre-update" if k == 0 else f"{k} grad step{'s' * (k > 1)}"
      ax.plot(xq[:, 0], pred[:, 0], style, lw=1.5, label=label)
    ax.scatter(xs[:, 0], ys[:, 0], marker="^", color="black", zorder=3,
               label="support points")
    ax.set_title(titles[name])
    ax.set_xlabel("x")
    ax.legend(fontsize=8, loc="lower right")
  ax = axes[2]
  for name, label in (("meta", config.algorithm), ("joint", "joint")):
    ks = np.array([row["steps"] for row in curves[name]])
    mean = np.array([row["mean"] for row in curves[name]])
    ci = np.array([row["ci95"] for row in curves[name]])
    ax.plot(ks, mean, marker="o", label=label)
    ax.fill_between(ks, mean - ci, mean + ci, alpha=0.25)
  ax.set_xlabel("gradient steps on the support set")
  ax.set_ylabel(f"query MSE ({config.eval_tasks} tasks, 95% CI)")
  ax.set_yscale("log")
  ax.legend()
  ax.set_title("held-out tasks")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _run(config: Config, workdir: str, data) -> Dict:
  """Trains both learners (resuming), evaluates them, draws the figure."""
  del data
  train_key, eval_key, plot_key = jax.random.split(
      jax.random.PRNGKey(config.seed), 3)
  sampler = sinusoid.sampler(config.meta_batch_size, config.num_support,
                             config.num_query)
  eval_sampler = sinusoid.sampler(min(config.eval_tasks, 500),
                                  config.num_support, config.eval_query)
  plot_task = _fixed_task(plot_key, config)

  curves, fits = {}, {}
  for name, baseline in LEARNERS:
    learner = make_learner(config, baseline)
    meta_params = harness.train_learner(
        config, learner, optax.adam(config.outer_lr), sampler,
        key=train_key, num_steps=config.num_steps,
        workdir=os.path.join(workdir, name),
        desc="joint" if baseline else config.algorithm).meta_params
    curves[name], fits[name] = [], {}
    for k in range(max(config.eval_steps) + 1):
      values = evaluate(learner, meta_params, eval_sampler, algorithms.mse,
                        key=eval_key, num_tasks=config.eval_tasks,
                        adapt_steps=k)
      curves[name].append(dict(steps=k, **mean_ci(values)))
      if k in config.eval_steps:
        adapted = learner.adapt(meta_params, plot_task.support, steps=k)
        fits[name][k] = np.asarray(
            learner.predict(meta_params, adapted, plot_task.query[0]))

  _plot(os.path.join(workdir, "sinusoid.png"), fits, plot_task, curves,
        config)
  names = {"meta": config.algorithm, "joint": "joint"}
  return {
      "task": "sinusoid regression, Finn et al. (2017) section 5.1",
      "mse": {names[n]: {str(r["steps"]): r for r in curves[n]
                         if r["steps"] in config.eval_steps}
              for n, _ in LEARNERS},
      "mse_curve": {names[n]: curves[n] for n, _ in LEARNERS},
      "eval_tasks": config.eval_tasks,
  }


def format_table(results: Dict) -> str:
  """The MSE table of `results` as aligned text, one row per learner."""
  steps = sorted(next(iter(results["mse"].values())), key=int)
  lines = [f"query MSE on {results['eval_tasks']} held-out tasks "
           f"(mean ± 95% CI), K={results['config']['num_support']}",
           f"{'learner':<16}" + "".join(f"{s + ' steps':>18}" for s in steps)]
  for name, row in results["mse"].items():
    lines.append(f"{name:<16}" + "".join(
        f"{row[s]['mean']:>10.3f} ± {row[s]['ci95']:<5.3f}" for s in steps))
  lines.append(f"wall time {results['wall_time_s']:.0f} s")
  return "\n".join(lines)


EXPERIMENT = harness.Experiment(
    name="sinusoid", config_class=Config, prepare=lambda config: None,
    run=_run, num_steps=lambda config, data: config.num_steps,
    format_results=format_table, outputs=("results.json", "sinusoid.png"))


def train_and_evaluate(config: Config, workdir: str) -> Dict:
  """Trains both learners (resuming from `workdir`), evaluates, writes files.

  Returns:
    The dict written to `workdir/results.json`.
  """
  return harness.train_and_evaluate(EXPERIMENT, config, workdir)
