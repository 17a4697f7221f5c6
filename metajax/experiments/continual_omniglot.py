"""Continual learning on Omniglot: OML, ANML and their baselines.

The protocol of Javed & White (2019) and Beaulieu et al. (2020), on the
Lake split: a network is trained on the 964 characters of the background
alphabets, then learns a stream of characters of the 20 evaluation
alphabets online, one drawing at a time in a single pass, and is scored on
the drawings it has learnt and on held-out drawings of the same characters
after 10, 50, 75, 100, 200 ... 600 classes (`metajax.continual`).

`--method` chooses how the network is trained before the stream:

  oml       meta-trained by OML (`algorithms.continual.oml`, an `OMLNet`)
  anml      meta-trained by ANML (`algorithms.continual.anml`, an `ANMLNet`)
  pretrain  an `OMLNet` trained by ordinary supervised learning on batches
            of background images (`algorithms.joint`)
  scratch   an `OMLNet` at its random initialisation, not trained

and which parameters learn online: by default "pln" for the `OMLNet`
methods (as OML) and all but "nm" for ANML; `--online=all` makes every
parameter learn.

`train_and_evaluate(config, workdir)` writes into `workdir`:

  config.json     the settings; a rerun that changes one that defines what
                  is trained is refused (`harness.check_rerun`)
  results.json    the accuracies at every checkpoint with 95% intervals,
                  the rates picked, the accuracy at every rate
  continual.png   accuracy against classes learnt, seen and held-out images
  metrics.jsonl, checkpoints/   meta-training (not for scratch)

`compare(workdirs, path)` draws several finished runs into one figure and
returns their table, and each run's accuracy at every online rate.
"""

import dataclasses
import json
import os
from typing import Dict, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metajax import algorithms
from metajax import continual
from metajax.algorithms import continual as continual_algorithms
from metajax.data.vision import episodes
from metajax.experiments import fewshot_vision
from metajax.experiments import harness
from metajax.experiments.harness import field
from metajax.models.continual import ANMLNet
from metajax.models.continual import OMLNet

METHODS = ("oml", "anml", "pretrain", "scratch")
# Which parameters learn online by default: by their module.
_DEFAULT_ONLINE = {"oml": continual_algorithms.under("pln"),
                   "anml": continual_algorithms.outside("nm"),
                   "pretrain": continual_algorithms.under("pln"),
                   "scratch": continual_algorithms.under("pln")}
ONLINE_OPTIMIZERS = {"adam": optax.adam, "sgd": optax.sgd}
# The stream settings that name a run in `compare` beside its method and
# steps, where runs differ in them.
STREAM_LABELS = ("online", "online_optimizer", "stream_head")


@dataclasses.dataclass(frozen=True)
class Config(harness.RunConfig):
  """Settings of one method's run; the stream's settings may change on a
  rerun, so a trained network can be scored again."""
  method: str = field("oml", "How the network is trained before the "
                      "stream.", choices=METHODS)
  width: int = field(64, "Filters per conv layer of the representation "
                     "(OMLNet's rln, ANMLNet's pn).")
  nm_width: int = field(32, "Filters per conv layer of ANMLNet's "
                        "neuromodulatory network.")
  hidden: int = field(256, "Hidden units of OMLNet's prediction network.")
  outputs: int = field(1000, "Output units (at least the background "
                       "classes and the stream's classes).")
  trajectory: int = field(20, "Images of one class per meta-training "
                          "trajectory, learnt one at a time by the inner "
                          "loop.")
  remember: int = field(64, "Images of all background classes in each "
                        "meta-training query (the remember set).")
  inner_lr: float = field(0.03, "Online SGD rate of the inner loop in "
                          "meta-training.")
  first_order: bool = field(False, "Drop the second-order terms of the "
                            "meta-gradient.")
  outer_lr: float = field(1e-4, "Adam rate of meta-training (and of "
                          "--method=pretrain).")
  batch_size: int = field(64, "Images per step of --method=pretrain.")
  num_steps: int = field(5000, "Training steps (none for scratch).",
                         rerun_may_change=True)
  online: str = field("default", "Parameters that learn on the stream: "
                      "'default' (pln; for anml all but nm) or 'all'.",
                      choices=("default", "all"), rerun_may_change=True)
  stream_head: str = field(
      "zeros", "How the output layer starts each stream: 'zeros', or "
      "'kaiming' (weights drawn with variance 2 / fan-in, biases zero, as "
      "OML's released evaluation script does).",
      choices=continual.HEAD_INITS, rerun_may_change=True)
  # The papers' protocol: plain SGD, at rates from OML's paper (arXiv
  # 1905.12588v2, Appendix B). OML's released evaluation script uses Adam
  # and a grid reaching 1e-7 (--online_optimizer=adam --online_lrs=0.03,
  # ..., 1e-7), which keeps far less (README, continual learning).
  online_optimizer: str = field("sgd", "Optimiser of the stream, at each "
                                "rate of --online_lrs.",
                                choices=tuple(ONLINE_OPTIMIZERS),
                                rerun_may_change=True)
  online_lrs: Tuple[float, ...] = field(
      (0.3, 0.1, 0.03, 0.01, 0.003, 0.001, 3e-4, 1e-4, 3e-5, 1e-5),
      "The grid of online rates; each checkpoint's rate is picked on the "
      "selection streams.", rerun_may_change=True)
  checkpoints: Tuple[int, ...] = field(
      continual.CHECKPOINTS, "Classes learnt when the network is scored.",
      rerun_may_change=True)
  train_per_class: int = field(15, "Drawings of each stream class learnt "
                               "from.", rerun_may_change=True)
  test_per_class: int = field(5, "Held-out drawings of each stream class.",
                              rerun_may_change=True)
  runs: int = field(5, "Streams reported (each its own classes and order).",
                    rerun_may_change=True)
  selection_runs: int = field(5, "Further streams that pick the online "
                              "rate, by accuracy on the images learnt.",
                              rerun_may_change=True)
  source: str = field("npz", "Where the Omniglot drawings come from (as "
                      "fewshot_vision's --source).",
                      choices=tuple(fewshot_vision.OMNIGLOT_SOURCES))
  data_dir: str = field("", "Folder holding omniglot/ ('': "
                        "$METAJAX_DATA_DIR, else the per-user folder).",
                        rerun_may_change=True)
  cache_dir: str = field("", "Cache of preprocessed arrays ('off': none).",
                         rerun_may_change=True)
  trust_download: bool = field(False, "As fewshot_vision's "
                               "--trust_download.", rerun_may_change=True)
  log_every: int = harness.log_every_field(100)
  checkpoint_every: int = harness.checkpoint_every_field(500)

  RATES = ("inner_lr", "outer_lr", "online_lrs")
  POSITIVE = harness.RunConfig.POSITIVE + (
      "width", "nm_width", "hidden", "outputs", "trajectory", "remember",
      "batch_size", "train_per_class", "test_per_class", "selection_runs",
      "checkpoints")

  def validate(self):
    super().validate()
    harness.check_positive(self, ("num_steps",), least=0)
    harness.check_positive(self, ("runs",), least=2)
    if list(self.checkpoints) != sorted(set(self.checkpoints)):
      raise ValueError(f"checkpoints must increase, got {self.checkpoints}.")
    if self.outputs < max(self.checkpoints):
      raise ValueError(f"outputs={self.outputs} cannot label a stream of "
                       f"{max(self.checkpoints)} classes.")
    if self.method == "scratch" and self.num_steps:
      raise ValueError(f"scratch is not trained; got num_steps="
                       f"{self.num_steps} (pass --num_steps=0).")


def network(config: Config):
  """`(init_fn, apply_fn)` of the method's network on uint8 28x28 images."""
  if config.method == "anml":
    net = ANMLNet(config.outputs, width=config.width,
                  nm_width=config.nm_width)
  else:
    net = OMLNet(config.outputs, width=config.width, hidden=config.hidden)
  init_fn = harness.compiled_init(net, (1, 28, 28, 1))
  apply_fn = lambda params, x: net.apply(params,
                                         x.astype(jnp.float32) / 255.0)
  return init_fn, apply_fn


def make_learner(config: Config) -> algorithms.MetaLearner:
  """The learner that trains the network before the stream."""
  init_fn, apply_fn = network(config)
  if config.method in ("pretrain", "scratch"):
    return algorithms.joint(init_fn, apply_fn, algorithms.cross_entropy)
  build = getattr(continual_algorithms, config.method)
  return build(init_fn, apply_fn, algorithms.cross_entropy,
               steps=config.trajectory, lr=config.inner_lr,
               first_order=config.first_order,
               metrics=algorithms.classification_metrics)


def _prepare(config: Config) -> Dict[str, episodes.ClassDataset]:
  """The Lake split: "train" (background, 964 classes), "test" (evaluation,
  659), checked to hold what training and the stream need."""
  splits = fewshot_vision.load_splits(fewshot_vision.Config(
      dataset="omniglot", split="lake", source=config.source,
      data_dir=config.data_dir, cache_dir=config.cache_dir,
      trust_download=config.trust_download))
  if splits["train"].num_classes > config.outputs:
    raise ValueError(f"outputs={config.outputs} cannot label the "
                     f"{splits['train'].num_classes} background classes.")
  if config.method in ("oml", "anml"):
    episodes.trajectory_sampler(splits["train"], length=config.trajectory,
                                remember=config.remember)
  # Draws (and so checks) one stream before any training.
  continual.make_stream(splits["test"], jax.random.PRNGKey(0),
                        num_classes=max(config.checkpoints),
                        train_per_class=config.train_per_class,
                        test_per_class=config.test_per_class)
  return splits


def _run(config: Config, workdir: str, splits) -> Dict:
  train_key, stream_key = jax.random.split(jax.random.PRNGKey(config.seed))
  learner = make_learner(config)
  if config.method == "scratch":
    meta_params = learner.init(train_key)
  else:
    sampler = (episodes.class_batch_sampler(splits["train"],
                                            batch_size=config.batch_size)
               if config.method == "pretrain" else
               episodes.trajectory_sampler(splits["train"],
                                           length=config.trajectory,
                                           remember=config.remember))
    meta_params = harness.train_learner(
        config, learner, optax.adam(config.outer_lr), sampler,
        key=train_key, num_steps=config.num_steps, workdir=workdir,
        desc=config.method).meta_params
  _, apply_fn = network(config)
  adapted = (_DEFAULT_ONLINE[config.method] if config.online == "default"
             else lambda path: True)
  bar = None
  if config.progress:
    import tqdm  # pylint: disable=g-import-not-at-top
    bar = tqdm.tqdm(total=(config.runs + config.selection_runs) *
                    max(config.checkpoints), desc="stream", unit="class")
  result = continual.protocol(
      apply_fn, algorithms.cross_entropy,
      algorithms.model_params(meta_params), splits["test"], stream_key,
      adapted=adapted, lrs=config.online_lrs, runs=config.runs,
      selection_runs=config.selection_runs, checkpoints=config.checkpoints,
      train_per_class=config.train_per_class,
      test_per_class=config.test_per_class,
      optimizer=ONLINE_OPTIMIZERS[config.online_optimizer],
      head_init=config.stream_head,
      progress=None if bar is None else
      lambda n: bar.update(n - bar.n))
  if bar is not None:
    bar.close()
  results = {"method": config.method, "steps": config.num_steps,
             "stream": result}
  _plot(os.path.join(workdir, "continual.png"), {config.method: results})
  return results


def _plot(path: str, runs: Dict[str, Dict]) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
  for ax, split, title in zip(axes, ("train", "test"),
                              ("drawings learnt from", "held-out drawings")):
    for name, results in runs.items():
      stream = results["stream"]
      mean = np.array([r["mean"] for r in stream[split]])
      ci = np.array([r["ci95"] for r in stream[split]])
      ax.plot(stream["checkpoints"], mean, marker="o", label=name)
      ax.fill_between(stream["checkpoints"], mean - ci, mean + ci,
                      alpha=0.2)
    ax.set_xlabel("classes learnt (one pass, one drawing at a time)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
  axes[0].set_ylabel("accuracy over the classes learnt (95% CI)")
  # Below the plots, two runs a row: run names with their settings are
  # long, and inside an axis they would hide the curves.
  legend_height = 0.3 * -(-len(runs) // 2)  # inches
  fig.set_size_inches(11, 4 + legend_height)
  fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center",
             ncol=min(len(runs), 2), frameon=False)
  fig.tight_layout(rect=(0, legend_height / (4 + legend_height), 1, 1))
  fig.savefig(path, dpi=110)
  plt.close(fig)


def format_rate(lr: float) -> str:
  """`lr` in scientific notation with the digits that tell it apart from
  its neighbours in a grid: 3e-04, 3.5e-04."""
  return np.format_float_scientific(lr, trim="-", exp_digits=2)


def format_results(results: Dict) -> str:
  """Accuracy at every checkpoint, seen and held-out, with the rate picked."""
  stream = results["stream"]
  lines = [f"{results['method']}: {stream['runs']} streams (rate picked on "
           f"{stream['selection_runs']} others), accuracy after k classes"]
  lines.append(f"{'classes':>8} {'learnt from':>18} {'held out':>18} "
               f"{'rate':>8}")
  for k, tr, te, lr in zip(stream["checkpoints"], stream["train"],
                           stream["test"], stream["selected_lr"]):
    lines.append(f"{k:>8} {100 * tr['mean']:>9.2f}% ± "
                 f"{100 * tr['ci95']:<5.2f} {100 * te['mean']:>9.2f}% ± "
                 f"{100 * te['ci95']:<5.2f} {format_rate(lr):>8}")
  return "\n".join(lines)


def rate_table(name: str, results: Dict) -> str:
  """A run's held-out accuracy (%) at every online rate, as markdown.

  One row per rate of the grid, one column per checkpoint: the mean over
  the reported streams ("per_lr"), in bold at the rate the selection
  streams picked.
  """
  stream = results["stream"]
  lines = [f"| {name}, rate | " + " | ".join(map(str, stream["checkpoints"]))
           + " |", "| --- |" + " --- |" * len(stream["checkpoints"])]
  for lr, row in zip(stream["lrs"], stream["per_lr"]["test"]):
    cells = [f"{100 * acc:.1f}" for acc in row]
    cells = [f"**{cell}**" if picked == lr else cell
             for cell, picked in zip(cells, stream["selected_lr"])]
    lines.append(f"| {format_rate(lr)} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def compare(workdirs: Sequence[str], path: str) -> str:
  """Draws finished runs into one figure at `path`; returns their markdown
  table (held-out accuracy at every checkpoint, then learnt-from), then
  each run's `rate_table`.

  Each run is labelled by its method; runs of one method are told apart by
  their training steps, then by the stream settings that differ between
  them (`STREAM_LABELS`, as flags), and by their workdirs where all agree.

  Raises:
    ValueError: the runs were scored after different class counts; nothing
      is drawn then.
  """
  loaded = []
  for workdir in workdirs:
    with open(os.path.join(workdir, "results.json")) as f:
      loaded.append((workdir, json.load(f)))
  methods = [results["method"] for _, results in loaded]
  checkpoints = loaded[0][1]["stream"]["checkpoints"]
  names = []
  for workdir, results in loaded:
    if results["stream"]["checkpoints"] != checkpoints:
      raise ValueError(
          f"{workdir} was scored after {results['stream']['checkpoints']} "
          f"classes, {loaded[0][0]} after {checkpoints}: one table needs "
          f"the same --checkpoints.")
    name = results["method"]
    if methods.count(name) > 1:
      name += f", {results['steps']:,} steps"
    names.append(name)
  # Runs written before a setting existed lack it; its default then may
  # not be what they ran (online Adam was once the default), so such a
  # setting names none of them.
  settings = [{key: results["config"].get(key) for key in STREAM_LABELS}
              for _, results in loaded]
  runs = {}
  for (workdir, results), name, own in zip(loaded, names, settings):
    twins = [other for other, twin in zip(settings, names) if twin == name]
    differ = [key for key in STREAM_LABELS
              if None not in {other[key] for other in twins}
              and len({other[key] for other in twins}) > 1]
    if differ:
      name += ", " + " ".join(f"--{key}={own[key]}" for key in differ)
    if name in runs:
      name += f" ({workdir})"
    runs[name] = results
  _plot(path, runs)
  lines = ["| method | images | " + " | ".join(map(str, checkpoints)) +
           " |", "| --- | --- |" + " --- |" * len(checkpoints)]
  for split, label in (("test", "held out"), ("train", "learnt from")):
    for name, results in runs.items():
      lines.append(f"| {name} | {label} | " + " | ".join(
          f"{100 * r['mean']:.1f} ± {100 * r['ci95']:.1f}"
          for r in results["stream"][split]) + " |")
  return "\n\n".join(["\n".join(lines)] + [
      rate_table(name, results) for name, results in runs.items()])


EXPERIMENT = harness.Experiment(
    name="continual_omniglot", config_class=Config, prepare=_prepare,
    run=_run, num_steps=lambda config, splits: config.num_steps,
    format_results=format_results,
    outputs=("results.json", "continual.png"))


def train_and_evaluate(config: Config, workdir: str) -> Dict:
  """Trains (resuming from `workdir`), runs the streams, writes the files."""
  return harness.train_and_evaluate(EXPERIMENT, config, workdir)
