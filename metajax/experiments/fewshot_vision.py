"""Few-shot image classification: any learner, any dataset, one loop.

`train_and_evaluate(config, workdir)` loads the dataset's meta-train /
meta-validation / meta-test classes, meta-trains the configured learner with
`metajax.train` (on-device episodes, verified checkpoints, exact resume),
evaluates it on meta-test episodes (mean accuracy with a 95% confidence
interval for every requested test way count), and writes into `workdir`:

  config.json      the configuration, read back by `load_predictor`; a
                   rerun that changes a setting that defines what is
                   trained is refused (`Config.RERUN_MAY_CHANGE`)
  results.json     config, versions, wall times, test accuracies with CIs
  metrics.jsonl    training loss/accuracy and validation accuracy per log step
  curves.png       the learning curves
  checkpoints/     orbax checkpoints (a rerun resumes from the latest)
"""

import dataclasses
import json
import os
import time
from typing import Callable, ClassVar, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metajax import algorithms
from metajax import sharding
from metajax import workdir as workdir_lib
from metajax.data import download
from metajax.data import episodes
from metajax.data import mini_imagenet
from metajax.data import omniglot
from metajax.data import omniglot_official
from metajax.data import tfds_source
from metajax.evaluation import evaluate
from metajax.evaluation import mean_ci
from metajax.experiments import common
from metajax.models import Conv4
from metajax.models import RelationEmbedding
from metajax.models import RelationModule
from metajax.models import ResNet12
from metajax.training import read_metrics
from metajax.training import train

# Learners whose model ends in a `ways`-unit classifier adapted by gradient.
GRADIENT_BASED = ("maml", "fomaml", "anil", "meta_sgd", "maml_plus_plus",
                  "reptile")
# Learners that compare embeddings, so any number of ways works at test time.
METRIC_BASED = ("protonet", "matching", "relation")
ALGORITHMS = GRADIENT_BASED + METRIC_BASED
DATASETS = ("omniglot", "mini_imagenet", "cifar_fs", "fc100")
OMNIGLOT_SOURCES = ("npz", "official", "tfds", "download")
BACKBONES = ("conv4", "resnet12")
# Side and channels of the model input of each dataset.
INPUT_SHAPES = {"omniglot": (28, 1), "mini_imagenet": (84, 3),
                "cifar_fs": (32, 3), "fc100": (32, 3)}


@dataclasses.dataclass(frozen=True)
class Config:
  """Everything that defines a run; defaults: ProtoNets, Omniglot 5-way 1-shot.

  `test_ways` lists the way counts evaluated at the end (ProtoNets handles
  any; the MAML family's head fixes it to `ways`). A `test_*` value of 0 means
  "same as training". `train_on_val` meta-trains on the meta-train and
  meta-validation classes together (for Omniglot the papers' 1,200 training
  characters) and then has no validation curve.
  """
  algorithm: str = "protonet"
  dataset: str = "omniglot"
  split: str = "vinyals"
  train_on_val: bool = False
  source: str = "npz"
  backbone: str = "conv4"
  trust_download: bool = False
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
  data_dir: str = ""
  cache_dir: str = ""
  seed: int = 0
  log_every: int = 50
  checkpoint_every: int = 500
  progress: bool = True
  shard_tasks: bool = False
  task_chunk: str = "auto"

  # Fields that only extend, re-evaluate or relocate a run: a rerun may
  # change them.
  RERUN_MAY_CHANGE: ClassVar[Tuple[str, ...]] = (
      "num_steps", "test_ways", "test_shots", "test_query", "test_inner_steps",
      "eval_every", "val_episodes", "eval_episodes", "data_dir", "cache_dir",
      "trust_download", "log_every", "checkpoint_every", "progress",
      "shard_tasks", "task_chunk")

  def validate(self):
    _task_chunk(self.task_chunk)
    common.check_positive(self, ("ways", "test_ways"), least=2)
    common.check_positive(self, (
        "shots", "query", "test_query", "meta_batch_size", "inner_steps",
        "num_steps", "width", "log_every", "checkpoint_every"))
    common.check_positive(self, ("test_shots", "test_inner_steps",
                                 "lr_halve_every", "eval_every",
                                 "val_episodes"), least=0)
    common.check_rates(self, ("inner_lr", "outer_lr"))
    for name, allowed in (("algorithm", ALGORITHMS), ("dataset", DATASETS),
                          ("split", omniglot.SPLITS),
                          ("source", OMNIGLOT_SOURCES),
                          ("backbone", BACKBONES)):
      if getattr(self, name) not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got "
                         f"{getattr(self, name)!r}.")
    if (self.algorithm in GRADIENT_BASED and
        set(self.test_ways) != {self.ways}):
      raise ValueError(
          f"{self.algorithm}'s output layer has ways={self.ways} units, so it "
          f"is tested {self.ways}-way only; got test_ways={self.test_ways}.")
    if self.eval_episodes < 2 or not self.test_ways:
      raise ValueError("need eval_episodes >= 2 and at least one test way.")
    if not self.data_dir and not (self.dataset == "omniglot" and
                                  self.source in ("tfds", "download")):
      raise ValueError(
          f"data_dir is required for {self.dataset} from {self.source} (the "
          f"folder holding {self.dataset}/).")


def _load_omniglot(config: Config) -> Dict[str, episodes.ClassDataset]:
  root = os.path.join(config.data_dir, "omniglot")
  split_dir = os.path.join(root, "vinyals_splits")
  if config.source == "npz":
    raw = omniglot.load_npz(root)
  elif config.source == "official":
    raw = omniglot_official.load_official(root)
  elif config.source == "tfds":
    raw = tfds_source.load_omniglot_tfds(config.data_dir or None)
  else:
    cache = os.path.join(config.cache_dir or ".", "omniglot_download")
    files = download.download_omniglot(
        cache, trust_on_first_use=config.trust_download)
    raw = omniglot_official.load_official(
        [files["images_background.zip"], files["images_evaluation.zip"]])
    split_dir = os.path.dirname(files["vinyals_splits/train.txt"])
  side = INPUT_SHAPES["omniglot"][0]
  images = omniglot.preprocess(raw, side, config.cache_dir or None)
  return omniglot.make_splits(raw, images, config.split, split_dir)


def load_splits(config: Config) -> Dict[str, episodes.ClassDataset]:
  """The dataset's {"train", "val"?, "test"} splits as model-ready uint8."""
  if config.dataset == "omniglot":
    return _load_omniglot(config)
  if config.dataset == "mini_imagenet":
    return mini_imagenet.load(os.path.join(config.data_dir, "mini_imagenet"),
                              cache_dir=config.cache_dir or None)
  return tfds_source.make_cifar_splits(
      tfds_source.load_cifar100_tfds(config.data_dir or None), config.dataset)


def input_transform(config: Config) -> Callable:
  """Source images -> the uint8 `[n, H, W, C]` model input (pure JAX).

  Omniglot drawings (`[n, 105, 105]`, 255 = paper) get the training
  preprocessing; the colour datasets are used as their sources give them.
  """
  if config.dataset == "omniglot":
    side = INPUT_SHAPES["omniglot"][0]
    return lambda x: omniglot.transform(x, side)[..., None]
  return jnp.asarray


def _network(config: Config, num_outputs: Optional[int]):
  """The backbone: a classifier with a `num_outputs` head, or an embedding."""
  if config.backbone == "resnet12":
    return ResNet12(num_outputs=num_outputs)
  # MAML's Omniglot network downsamples by stride; its mini-ImageNet network
  # and the metric learners' embeddings by max-pooling.
  stride = config.dataset == "omniglot" and config.algorithm in GRADIENT_BASED
  return Conv4(num_outputs=num_outputs, width=config.width,
               downsample="stride" if stride else "max")


def _model(config: Config, net):
  """(init_fn, apply_fn, output) of `net` on uint8 `[n, H, W, C]` images.

  `output` is the shape and dtype of `net`'s output for one image.
  """
  side, channels = INPUT_SHAPES[config.dataset]
  example = jnp.zeros((1, side, side, channels), jnp.float32)
  init_fn = lambda key: net.init(key, example)
  apply_fn = lambda params, x: net.apply(params, x.astype(jnp.float32) / 255.0)
  output = jax.eval_shape(lambda: net.apply(init_fn(jax.random.PRNGKey(0)),
                                            example))
  return init_fn, apply_fn, output


def make_learner(config: Config, ways: int,
                 test: bool = False) -> algorithms.MetaLearner:
  """The configured learner for `ways`-way episodes (test: test_inner_steps)."""
  if config.algorithm in GRADIENT_BASED:
    init_fn, apply_fn, _ = _model(config, _network(config, ways))
    steps = config.inner_steps
    if test and config.test_inner_steps:
      steps = config.test_inner_steps
    if config.algorithm == "reptile":
      return algorithms.reptile(
          init_fn, apply_fn, algorithms.cross_entropy, steps=config.inner_steps,
          lr=config.inner_lr, test_steps=steps,
          metrics=algorithms.classification_metrics)
    build = getattr(algorithms, config.algorithm)
    return build(init_fn, apply_fn, algorithms.cross_entropy, steps=steps,
                 lr=config.inner_lr, metrics=algorithms.classification_metrics)
  if config.algorithm == "relation":
    embed = RelationEmbedding(width=config.width)
    init_fn, apply_fn, maps = _model(config, embed)
    module = RelationModule(width=config.width)
    pairs = jnp.zeros(maps.shape[:-1] + (2 * maps.shape[-1],), maps.dtype)
    return algorithms.relation(
        init_fn, apply_fn, lambda key: module.init(key, pairs), module.apply,
        ways=ways)
  init_fn, apply_fn, _ = _model(config, _network(config, None))
  return getattr(algorithms, config.algorithm)(init_fn, apply_fn, ways=ways)


def _task_chunk(value: str):
  """The `train(task_chunk=...)` of the `task_chunk` field: "auto" or an int."""
  if value == "auto":
    return value
  try:
    return int(value)
  except ValueError:
    raise ValueError(f"task_chunk must be 'auto' or an integer, got "
                     f"{value!r}.") from None


def _optimizer(config: Config) -> optax.GradientTransformation:
  if config.lr_halve_every:
    schedule = optax.exponential_decay(
        config.outer_lr, config.lr_halve_every, 0.5, staircase=True)
    return optax.adam(schedule)
  return optax.adam(config.outer_lr)


def _plot_curves(path: str, metrics_path: str, title: str,
                 config: Config) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  rows = read_metrics(metrics_path)
  fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
  series = lambda key: ([r["step"] for r in rows if key in r],
                        [r[key] for r in rows if key in r])
  ax_loss.plot(*series("loss"))
  ax_loss.set_yscale("log")
  ax_loss.set_xlabel("meta-step")
  ax_loss.set_ylabel("training query loss")
  ax_acc.plot(*series("accuracy"),
              label=f"training episodes ({config.ways}-way)")
  steps, val = series("val_accuracy")
  if steps:
    ax_acc.plot(steps, val, marker="o", label=(
        f"validation episodes ({config.test_ways[0]}-way, "
        f"{config.test_shots or config.shots}-shot)"))
  ax_acc.set_xlabel("meta-step")
  ax_acc.set_ylabel("query accuracy")
  ax_acc.legend()
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _training_seconds(metrics_path: str, tasks_per_step: int) -> float:
  """Seconds spent in training steps, over every session that ran the run.

  Each log line covers the steps since the previous one at its measured
  throughput, so the sum survives interruptions and resumes.
  """
  total, previous = 0.0, 0
  for row in read_metrics(metrics_path):
    if row.get("tasks_per_s"):
      total += (row["step"] - previous) * tasks_per_step / row["tasks_per_s"]
    previous = row["step"]
  return total


def train_and_evaluate(config: Config, workdir: str) -> Dict:
  """Trains (resuming from `workdir`), tests, and writes the run's files."""
  config.validate()
  with workdir_lib.hold(workdir):
    common.check_rerun(workdir, config, config.RERUN_MAY_CHANGE)
    start = time.perf_counter()
    splits = load_splits(config)
    if config.train_on_val:
      if "val" not in splits:
        raise ValueError(f"train_on_val: the {config.dataset} "
                         f"{config.split} split has no validation classes.")
      splits = {"train": episodes.concat([splits["train"], splits["val"]]),
                "test": splits["test"]}
    check_episodes_fit(config, splits)
    common.check_not_past(workdir, config.num_steps)
    common.save_config(workdir, config)
    return _train_and_evaluate(config, workdir, splits, start)


def check_episodes_fit(config: Config, splits) -> None:
  """Raises, before any training, if an episode of any split cannot be drawn.

  Training episodes come from "train", validation ones (the first test way
  count) from "val" when it is used, and test ones from "test" at every
  test way count; each must have enough classes and, in every class,
  enough examples for shots + query.
  """
  test_shots = config.test_shots or config.shots
  episodes.check_episode_fits(splits["train"], config.ways, config.shots,
                              config.query, "train")
  if "val" in splits and config.val_episodes:
    episodes.check_episode_fits(splits["val"], config.test_ways[0],
                                test_shots, config.test_query, "val")
  for ways in config.test_ways:
    episodes.check_episode_fits(splits["test"], ways, test_shots,
                                config.test_query, "test")


def _train_and_evaluate(config: Config, workdir: str, splits,
                        start: float) -> Dict:
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

  mesh = sharding.task_mesh() if config.shard_tasks else None
  state = train(
      make_learner(config, config.ways), _optimizer(config), sampler,
      key=train_key, num_steps=config.num_steps, workdir=workdir,
      log_every=config.log_every, checkpoint_every=config.checkpoint_every,
      eval_fn=eval_fn, eval_every=config.eval_every,
      progress=config.progress, desc=config.algorithm, mesh=mesh,
      task_chunk=None if mesh is not None else _task_chunk(config.task_chunk))
  meta_params = sharding.local_copy(state.meta_params)
  train_time = _training_seconds(os.path.join(workdir, "metrics.jsonl"),
                                 config.meta_batch_size)

  tests = []
  for ways in config.test_ways:
    test_sampler = episodes.episode_sampler(
        splits["test"], ways=ways, shots=test_shots, query=config.test_query,
        batch_size=min(config.eval_episodes, 50), split="test")
    acc = evaluate(make_learner(config, ways, test=True), meta_params,
                   test_sampler, algorithms.accuracy, key=test_key,
                   num_tasks=config.eval_episodes)
    summary = mean_ci(acc)
    tests.append({"ways": ways, "shots": test_shots,
                  "query": config.test_query, "accuracy": summary["mean"],
                  "ci95": summary["ci95"], "episodes": summary["n"]})

  title = (f"{config.algorithm} on {config.dataset} ({config.split} split), "
           f"{config.ways}-way {config.shots}-shot training")
  _plot_curves(os.path.join(workdir, "curves.png"),
               os.path.join(workdir, "metrics.jsonl"), title, config)
  results = {
      "algorithm": config.algorithm, "dataset": config.dataset,
      "split": config.split, "ways": config.ways, "shots": config.shots,
      "steps": int(state.step), "test": tests,
      "train_time_s": train_time,
      "wall_time_s": time.perf_counter() - start,
      "config": dataclasses.asdict(config),
      "environment": common.environment(),
  }
  workdir_lib.write_json(os.path.join(workdir, "results.json"), results)
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


def read_config(workdir: str) -> Config:
  """The `Config` a run saved in `workdir/config.json`."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"{path} not found: {workdir} is not a fewshot_vision workdir.")
  with open(path) as f:
    values = json.load(f)
  fields = {f.name for f in dataclasses.fields(Config)}
  unknown = sorted(set(values) - fields)
  if unknown:
    raise ValueError(f"{path}: unknown fields {unknown}.")
  values["test_ways"] = tuple(values.get("test_ways", ()))
  return Config(**values)


def _source_image_shape(config: Config) -> Tuple[int, ...]:
  """The shape of one image as `load_predictor` takes it: the source's.

  Omniglot drawings come at 105x105 from every source (the training
  preprocessing resizes them); the colour datasets at the model's input size
  (`INPUT_SHAPES`), since `input_transform` uses them as they are.
  """
  if config.dataset == "omniglot":
    return (omniglot_official.SIZE, omniglot_official.SIZE)
  side, channels = INPUT_SHAPES[config.dataset]
  return (side, side, channels)


def _check_episode(config: Config, support_x, support_y, query_x,
                   ways: Optional[int]) -> int:
  """Checks `load_predictor`'s inputs; returns the number of ways.

  Shapes and dtypes are checked always; the label values only when they are
  concrete (under `jax.jit` they are traced, and `ways` must be given).

  Raises:
    ValueError / TypeError naming the argument, what was found and what was
    expected.
  """
  shape = _source_image_shape(config)
  layout = "[n, " + ", ".join(map(str, shape)) + "]"
  note = " (255 = paper)" if config.dataset == "omniglot" else ""
  for name, x in (("support_x", support_x), ("query_x", query_x)):
    x_shape, x_dtype = np.shape(x), getattr(x, "dtype", None)
    if x_dtype is None:
      x_dtype = np.asarray(x).dtype
    if x_dtype != np.uint8 or len(x_shape) != len(shape) + 1 or (
        x_shape[1:] != shape):
      raise ValueError(
          f"{name} must be uint8 {layout} {config.dataset} images as the data "
          f"source gives them{note}; got {x_dtype} {list(x_shape)}. "
          f"load_predictor applies the training preprocessing itself.")
  n_support = np.shape(support_x)[0]
  if n_support == 0:
    raise ValueError("support_x holds no image; every class needs one.")
  y_dtype = getattr(support_y, "dtype", None)
  if y_dtype is None:
    y_dtype = np.asarray(support_y).dtype
  if (not np.issubdtype(y_dtype, np.integer) or
      np.shape(support_y) != (n_support,)):
    raise ValueError(
        f"support_y must be integer labels [n_support] = [{n_support}], one "
        f"per support image; got {y_dtype} {list(np.shape(support_y))}.")
  if ways is not None and (isinstance(ways, bool) or
                           not isinstance(ways, (int, np.integer)) or
                           ways < 1):
    raise TypeError(
        f"ways must be a Python int >= 1 (a static argument under jax.jit), "
        f"got {type(ways).__name__} {ways!r}.")
  if isinstance(support_y, jax.core.Tracer):
    if ways is None:
      raise TypeError(
          "support_y is traced (under jax.jit), so ways cannot be read from "
          "it: pass ways=... explicitly, as a static argument.")
    return int(ways)
  labels = np.asarray(support_y)
  if labels.min() < 0 or (ways is not None and labels.max() >= ways):
    upper = "ways" if ways is None else ways
    raise ValueError(
        f"support_y must hold labels in [0, {upper}), 0-based class indices; "
        f"got labels from {labels.min()} to {labels.max()}.")
  ways = int(labels.max()) + 1 if ways is None else int(ways)
  missing = sorted(set(range(ways)) - set(labels.tolist()))
  if missing:
    raise ValueError(
        f"support_y has no example of class{'es' if len(missing) > 1 else ''} "
        f"{missing[:10]}{' ...' if len(missing) > 10 else ''} of the "
        f"{ways}-way episode (labels from {labels.min()} to {labels.max()}); "
        f"labels must be 0-based class indices with every class in "
        f"[0, ways) present.")
  return ways


def load_predictor(workdir: str) -> Callable:
  """A trained few-shot classifier as a pure function of raw images.

  Args:
    workdir: the `--workdir` of a finished (or checkpointed) run.

  Returns:
    `predict(support_x, support_y, query_x, ways=None) -> logits`:
      support_x: uint8 `[n_support, H, W]` images exactly as the data source
        gives them (Omniglot: 105x105, 255 = paper; the colour datasets
        `[n_support, H, W, 3]` at their `INPUT_SHAPES` side); the training
        preprocessing is applied inside.
      support_y: int `[n_support]` labels in [0, ways), every class present.
      query_x: uint8, each image shaped as in `support_x`.
      ways: number of classes; by default `max(support_y) + 1`, which needs
        concrete labels (pass it explicitly under `jax.jit`).
      Returns float32 `[n_query, ways]` logits (argmax = predicted label).
    Metric-based learners accept any `ways`; gradient-based ones (MAML family,
    Reptile) only the ways their classifier was trained with. Inputs of
    another dtype, shape or labelling raise a ValueError (TypeError for
    `ways`) naming the argument, before any computation.
  """
  from metajax.training import init_state  # pylint: disable=g-import-not-at-top
  from metajax.training import restore_state  # pylint: disable=g-import-not-at-top

  config = read_config(workdir)
  like = init_state(make_learner(config, config.ways), _optimizer(config),
                    jax.random.PRNGKey(0))
  meta_params = restore_state(workdir, like).meta_params
  transform = input_transform(config)

  def predict(support_x, support_y, query_x, ways: Optional[int] = None):
    ways = _check_episode(config, support_x, support_y, query_x, ways)
    if config.algorithm in GRADIENT_BASED and ways != config.ways:
      raise ValueError(
          f"this {config.algorithm} model was trained {config.ways}-way and "
          f"predicts {config.ways} classes; got a {ways}-way episode.")
    learner = make_learner(config, ways, test=True)
    support = (transform(support_x), jnp.asarray(support_y, jnp.int32))
    state = learner.adapt(meta_params, support)
    return learner.predict(meta_params, state, transform(query_x))

  return predict
