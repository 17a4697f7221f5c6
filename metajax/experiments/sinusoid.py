"""Few-shot sinusoid regression: a MAML-family learner against joint training.

Reproduces the protocol of Finn et al. (2017), section 5.1: an MLP 1-40-40-1
(ReLU) meta-trained on K-shot sinusoid tasks, compared with the same network
trained jointly on all tasks and fine-tuned at test time with the same inner
learning rate. Both are scored by the query MSE after 0..max(eval_steps)
gradient steps on the K support points of held-out tasks (the same tasks for
both), each with a 95% confidence interval.

`train_and_evaluate(config, workdir)` writes into `workdir`:
  config.json          the settings; a rerun that changes one that defines
                       what is trained is refused (`Config.RERUN_MAY_CHANGE`)
  results.json         config, versions, wall times, MSE table with intervals
  sinusoid.png         fits on one held-out task (as the paper's Figure 2) and
                       MSE against adaptation steps with intervals
  <learner>/metrics.jsonl, <learner>/checkpoints/   per-learner training logs
"""

import dataclasses
import os
import time
from typing import ClassVar, Dict, List, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metajax import algorithms
from metajax import sharding
from metajax import workdir as workdir_lib
from metajax.data import sinusoid
from metajax.evaluation import evaluate
from metajax.evaluation import mean_ci
from metajax.experiments import common
from metajax.models import MLP
from metajax.tasks import Task
from metajax.training import train

ALGORITHMS = ("maml", "fomaml", "anil", "meta_sgd", "maml_plus_plus")


@dataclasses.dataclass(frozen=True)
class Config:
  """Hyper-parameters; the defaults are the paper's (70,000 meta-steps)."""
  algorithm: str = "maml"
  num_support: int = 10
  num_query: int = 10
  inner_steps: int = 1
  inner_lr: float = 0.01
  outer_lr: float = 1e-3
  meta_batch_size: int = 25
  num_steps: int = 70_000
  hidden: Tuple[int, ...] = (40, 40)
  eval_tasks: int = 1000
  eval_query: int = 100
  eval_steps: Tuple[int, ...] = (0, 1, 10)
  seed: int = 0
  log_every: int = 1000
  checkpoint_every: int = 10_000
  progress: bool = True
  shard_tasks: bool = False

  # Fields that only extend or re-evaluate a run: a rerun may change them.
  RERUN_MAY_CHANGE: ClassVar[Tuple[str, ...]] = (
      "num_steps", "eval_tasks", "eval_query", "eval_steps", "log_every",
      "checkpoint_every", "progress", "shard_tasks")

  def validate(self):
    if self.algorithm not in ALGORITHMS:
      raise ValueError(
          f"algorithm must be one of {ALGORITHMS}, got {self.algorithm!r}.")
    common.check_positive(self, (
        "num_support", "num_query", "inner_steps", "meta_batch_size",
        "num_steps", "hidden", "eval_query", "log_every",
        "checkpoint_every"))
    common.check_rates(self, ("inner_lr", "outer_lr"))
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


def _model_fns(config: Config):
  model = MLP(config.hidden, 1)
  return (lambda key: model.init(key, jnp.zeros((1, 1), jnp.float32)),
          model.apply)


def make_learner(config: Config, steps: int,
                 baseline: bool = False) -> algorithms.MetaLearner:
  """The configured learner (or the joint baseline) adapting for `steps`."""
  init_fn, apply_fn = _model_fns(config)
  if baseline:
    return algorithms.joint(init_fn, apply_fn, algorithms.mse, steps=steps,
                            lr=config.inner_lr)
  build = getattr(algorithms, config.algorithm)
  return build(init_fn, apply_fn, algorithms.mse, steps=steps,
               lr=config.inner_lr)


def _at_steps(config: Config, meta_params, steps: int):
  """Meta-parameters usable with `steps` adaptation steps."""
  if config.algorithm == "maml_plus_plus":
    return dict(meta_params,
                lr=jax.tree.map(lambda l: l[:steps], meta_params["lr"]))
  return meta_params


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


def train_and_evaluate(config: Config, workdir: str) -> Dict:
  """Trains both learners (resuming from `workdir`), evaluates, writes files.

  Returns:
    The dict written to `workdir/results.json`.
  """
  config.validate()
  with workdir_lib.hold(workdir):
    common.check_rerun(workdir, config, config.RERUN_MAY_CHANGE)
    common.check_not_past(workdir, config.num_steps)
    common.save_config(workdir, config)
    return _train_and_evaluate(config, workdir)


def _train_and_evaluate(config: Config, workdir: str) -> Dict:
  start = time.perf_counter()
  train_key, eval_key, plot_key = jax.random.split(
      jax.random.PRNGKey(config.seed), 3)
  sampler = sinusoid.sampler(config.meta_batch_size, config.num_support,
                             config.num_query)
  eval_sampler = sinusoid.sampler(min(config.eval_tasks, 500),
                                  config.num_support, config.eval_query)
  plot_task = _fixed_task(plot_key, config)
  curve_steps = list(range(max(config.eval_steps) + 1))
  mesh = sharding.task_mesh() if config.shard_tasks else None

  meta_params, train_time, curves, fits = {}, {}, {}, {}
  for name, baseline in (("meta", False), ("joint", True)):
    t0 = time.perf_counter()
    state = train(
        make_learner(config, config.inner_steps, baseline),
        optax.adam(config.outer_lr), sampler, key=train_key,
        num_steps=config.num_steps, workdir=os.path.join(workdir, name),
        log_every=config.log_every, checkpoint_every=config.checkpoint_every,
        progress=config.progress,
        desc=config.algorithm if name == "meta" else "joint", mesh=mesh)
    train_time[name] = time.perf_counter() - t0
    meta_params[name] = sharding.local_copy(state.meta_params)
    curves[name], fits[name] = [], {}
    for k in curve_steps:
      learner = make_learner(config, k, baseline)
      params_k = (meta_params[name] if baseline else
                  _at_steps(config, meta_params[name], k))
      values = evaluate(
          learner, params_k, eval_sampler, algorithms.mse, key=eval_key,
          num_tasks=config.eval_tasks)
      curves[name].append(dict(steps=k, **mean_ci(values)))
      if k in config.eval_steps:
        adapted = learner.adapt(params_k, plot_task.support)
        fits[name][k] = np.asarray(
            learner.predict(params_k, adapted, plot_task.query[0]))

  table = {
      config.algorithm: {str(r["steps"]): r for r in curves["meta"]
                         if r["steps"] in config.eval_steps},
      "joint": {str(r["steps"]): r for r in curves["joint"]
                if r["steps"] in config.eval_steps},
  }
  results = {
      "task": "sinusoid regression, Finn et al. (2017) section 5.1",
      "config": dataclasses.asdict(config),
      "environment": common.environment(),
      "mse": table,
      "mse_curve": {config.algorithm: curves["meta"],
                    "joint": curves["joint"]},
      "eval_tasks": config.eval_tasks,
      "train_time_s": {config.algorithm: train_time["meta"],
                       "joint": train_time["joint"]},
  }
  plot_path = os.path.join(workdir, "sinusoid.png")
  _plot(plot_path, fits, plot_task, curves, config)
  results["wall_time_s"] = time.perf_counter() - start
  workdir_lib.write_json(os.path.join(workdir, "results.json"), results)
  return results


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
