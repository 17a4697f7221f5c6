"""Few-shot image classification: any learner, any dataset, one loop.

`train_and_evaluate(config, workdir)` loads the dataset's meta-train /
meta-validation / meta-test classes, meta-trains the configured learner with
`metajax.train` (on-device episodes, orbax checkpoints, exact resume),
evaluates it on meta-test episodes (mean accuracy with a 95% confidence
interval for every requested test way count), and writes into `workdir`:

  config.json      the configuration, read back by `load_predictor`
  results.json     config, versions, wall times, test accuracies with CIs
  metrics.jsonl    training loss/accuracy and validation accuracy per log step
  curves.png       the learning curves
  checkpoints/     orbax checkpoints (a rerun resumes from the latest)
"""

import dataclasses
import json
import os
import time
from typing import Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metajax import algorithms
from metajax.data import episodes
from metajax.data import omniglot
from metajax.evaluate import evaluate
from metajax.evaluate import mean_ci
from metajax.experiments import common
from metajax.models import Conv4
from metajax.train import train

MAML_FAMILY = ("maml", "fomaml", "anil", "meta_sgd", "maml_plus_plus")
METRIC_BASED = ("protonet",)
ALGORITHMS = MAML_FAMILY + METRIC_BASED
DATASETS = ("omniglot",)
OMNIGLOT_SOURCES = ("npz",)


@dataclasses.dataclass(frozen=True)
class Config:
  """Everything that defines a run; defaults: ProtoNets, Omniglot 5-way 1-shot.

  `test_ways` lists the way counts evaluated at the end (ProtoNets handles
  any; the MAML family's head fixes it to `ways`). A `test_*` value of 0 means
  "same as training".
  """
  algorithm: str = "protonet"
  dataset: str = "omniglot"
  split: str = "vinyals"
  source: str = "npz"
  ways: int = 60
  shots: int = 1
  query: int = 5
  test_ways: Tuple[int, ...] = (5, 20)
  test_shots: int = 0
  test_query: int = 15
  meta_batch_size: int = 1
  inner_steps: int = 1
  test_inner_steps: int = 0
  inner_lr: float = 0.4
  outer_lr: float = 1e-3
  lr_halve_every: int = 0
  num_steps: int = 5000
  eval_every: int = 500
  val_episodes: int = 200
  eval_episodes: int = 1000
  width: int = 64
  image_size: int = 28
  data_dir: str = ""
  cache_dir: str = ""
  seed: int = 0
  log_every: int = 50
  checkpoint_every: int = 500
  progress: bool = True

  def validate(self):
    for name, allowed in (("algorithm", ALGORITHMS), ("dataset", DATASETS),
                          ("split", omniglot.SPLITS),
                          ("source", OMNIGLOT_SOURCES)):
      if getattr(self, name) not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got "
                         f"{getattr(self, name)!r}.")
    if self.algorithm in MAML_FAMILY and set(self.test_ways) != {self.ways}:
      raise ValueError(
          f"{self.algorithm}'s output layer has ways={self.ways} units, so it "
          f"is tested {self.ways}-way only; got test_ways={self.test_ways}.")
    if self.eval_episodes < 2 or not self.test_ways:
      raise ValueError("need eval_episodes >= 2 and at least one test way.")
    if not self.data_dir:
      raise ValueError("data_dir is required (the folder holding omniglot/).")


def load_splits(config: Config) -> Dict[str, episodes.ClassDataset]:
  """The dataset's {"train", "val"?, "test"} splits, preprocessed."""
  root = os.path.join(config.data_dir, "omniglot")
  raw = omniglot.load_npz(root)
  images = omniglot.preprocess(raw, config.image_size,
                               config.cache_dir or None)
  return omniglot.make_splits(raw, images, config.split,
                              os.path.join(root, "vinyals_splits"))


def input_transform(config: Config) -> Callable:
  """Raw source images -> the uint8 model input of training (pure JAX)."""
  return lambda x: omniglot.transform(x, config.image_size)[..., None]


def _model(config: Config, ways: int):
  """(init_fn, apply_fn) on uint8 `[n, H, W, C]` images."""
  if config.algorithm in MAML_FAMILY:
    net = Conv4(num_outputs=ways, width=config.width, downsample="stride")
  else:
    net = Conv4(num_outputs=None, width=config.width, downsample="max")
  shape = (1, config.image_size, config.image_size, 1)
  init_fn = lambda key: net.init(key, jnp.zeros(shape, jnp.float32))
  apply_fn = lambda params, x: net.apply(params, x.astype(jnp.float32) / 255.0)
  return init_fn, apply_fn


def make_learner(config: Config, ways: int,
                 test: bool = False) -> algorithms.MetaLearner:
  """The configured learner for `ways`-way episodes (test: test_inner_steps)."""
  init_fn, apply_fn = _model(config, ways)
  if config.algorithm in METRIC_BASED:
    return algorithms.protonet(init_fn, apply_fn, ways=ways)
  steps = (config.test_inner_steps or config.inner_steps) if test else (
      config.inner_steps)
  build = getattr(algorithms, config.algorithm)
  return build(init_fn, apply_fn, algorithms.cross_entropy, steps=steps,
               lr=config.inner_lr, metrics=algorithms.classification_metrics)


def _optimizer(config: Config) -> optax.GradientTransformation:
  if config.lr_halve_every:
    schedule = optax.exponential_decay(
        config.outer_lr, config.lr_halve_every, 0.5, staircase=True)
    return optax.adam(schedule)
  return optax.adam(config.outer_lr)


def _plot_curves(path: str, metrics_path: str, title: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  with open(metrics_path) as f:
    rows = [json.loads(line) for line in f]
  fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
  series = lambda key: ([r["step"] for r in rows if key in r],
                        [r[key] for r in rows if key in r])
  ax_loss.plot(*series("loss"))
  ax_loss.set_yscale("log")
  ax_loss.set_xlabel("meta-step")
  ax_loss.set_ylabel("training query loss")
  ax_acc.plot(*series("accuracy"), label="training episodes")
  steps, val = series("val_accuracy")
  if steps:
    ax_acc.plot(steps, val, marker="o", label="validation episodes")
  ax_acc.set_xlabel("meta-step")
  ax_acc.set_ylabel("query accuracy")
  ax_acc.legend()
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def train_and_evaluate(config: Config, workdir: str) -> Dict:
  """Trains (resuming from `workdir`), tests, and writes the run's files."""
  config.validate()
  start = time.perf_counter()
  os.makedirs(workdir, exist_ok=True)
  common.write_json(os.path.join(workdir, "config.json"),
                    dataclasses.asdict(config))
  splits = load_splits(config)
  train_key, val_key, test_key = jax.random.split(
      jax.random.PRNGKey(config.seed), 3)
  sampler = episodes.episode_sampler(
      splits["train"], ways=config.ways, shots=config.shots,
      query=config.query, batch_size=config.meta_batch_size, split="train")
  test_shots = config.test_shots or config.shots

  eval_fn = None
  if "val" in splits and config.val_episodes:
    val_ways = config.test_ways[0]
    val_learner = make_learner(config, val_ways, test=True)
    val_sampler = episodes.episode_sampler(
        splits["val"], ways=val_ways, shots=test_shots,
        query=config.test_query, batch_size=min(config.val_episodes, 50),
        split="val")
    def eval_fn(meta_params):
      acc = evaluate(val_learner, meta_params, val_sampler,
                     algorithms.accuracy, key=val_key,
                     num_tasks=config.val_episodes)
      return {"val_accuracy": float(np.mean(acc))}

  t0 = time.perf_counter()
  state = train(
      make_learner(config, config.ways), _optimizer(config), sampler,
      key=train_key, num_steps=config.num_steps, workdir=workdir,
      log_every=config.log_every, checkpoint_every=config.checkpoint_every,
      eval_fn=eval_fn, eval_every=config.eval_every,
      progress=config.progress, desc=config.algorithm)
  train_time = time.perf_counter() - t0

  tests = []
  for ways in config.test_ways:
    test_sampler = episodes.episode_sampler(
        splits["test"], ways=ways, shots=test_shots, query=config.test_query,
        batch_size=min(config.eval_episodes, 50), split="test")
    acc = evaluate(make_learner(config, ways, test=True), state.meta_params,
                   test_sampler, algorithms.accuracy, key=test_key,
                   num_tasks=config.eval_episodes)
    summary = mean_ci(acc)
    tests.append({"ways": ways, "shots": test_shots,
                  "query": config.test_query, "accuracy": summary["mean"],
                  "ci95": summary["ci95"], "episodes": summary["n"]})

  title = (f"{config.algorithm} on {config.dataset} ({config.split} split), "
           f"{config.ways}-way {config.shots}-shot training")
  _plot_curves(os.path.join(workdir, "curves.png"),
               os.path.join(workdir, "metrics.jsonl"), title)
  results = {
      "algorithm": config.algorithm, "dataset": config.dataset,
      "split": config.split, "ways": config.ways, "shots": config.shots,
      "steps": int(state.step), "test": tests,
      "train_time_s": train_time,
      "wall_time_s": time.perf_counter() - start,
      "config": dataclasses.asdict(config),
      "environment": common.environment(),
  }
  common.write_json(os.path.join(workdir, "results.json"), results)
  return results


def format_results(results: Dict) -> str:
  """One line per test configuration: accuracy ± 95% CI."""
  lines = [f"{results['algorithm']} on {results['dataset']} "
           f"({results['split']} split), {results['steps']} meta-steps, "
           f"training {results['train_time_s']:.0f} s"]
  for t in results["test"]:
    lines.append(
        f"  {t['ways']}-way {t['shots']}-shot: {100 * t['accuracy']:.2f}% ± "
        f"{100 * t['ci95']:.2f}% ({t['episodes']} test episodes)")
  return "\n".join(lines)
