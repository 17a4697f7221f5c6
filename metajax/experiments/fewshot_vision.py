"""Few-shot image classification: any learner, any dataset, one loop.

`train_and_evaluate(config, workdir)` loads the dataset's meta-train /
meta-validation / meta-test classes, meta-trains the configured learner with
`metajax.train` (on-device episodes, verified checkpoints, exact resume),
evaluates it on meta-test episodes (mean accuracy with a 95% confidence
interval for every requested test way count), and writes into `workdir`:

  config.json      the configuration, read back by `load_predictor`; a
                   rerun that changes a setting that defines what is
                   trained is refused (`harness.check_rerun`)
  results.json     config, versions, times, test accuracies with CIs
  metrics.jsonl    training loss/accuracy and validation accuracy per log step
  curves.png       the learning curves
  checkpoints/     orbax checkpoints (a rerun resumes from the latest)

Datasets, Omniglot sources, backbones and learners are registries
(`DATASETS`, `OMNIGLOT_SOURCES`, `BACKBONES`, `ALGORITHMS`): a new one is an
entry, not a branch.
"""

import dataclasses
import functools
import os
from typing import Callable, Dict, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metajax import adversarial
from metajax import algorithms
from metajax import checkpoint
from metajax import summary
from metajax.data import download
from metajax.data import paths
from metajax.data.vision import episodes
from metajax.data.vision import host_episodes
from metajax.data.vision import mini_imagenet
from metajax.data.vision import omniglot
from metajax.data.vision import omniglot_official
from metajax.data.vision import tfds_source
from metajax.evaluation import evaluate
from metajax.evaluation import mean_ci
from metajax.experiments import harness
from metajax.experiments.harness import field
from metajax.models import Conv4
from metajax.models import RelationEmbedding
from metajax.models import RelationModule
from metajax.models import ResNet12

Splits = Dict[str, episodes.ClassDataset]


# Omniglot drawings, from any source: uint8 [n, 105, 105], 255 = paper.

def _omniglot_npz(config, data_dir: str):
  return omniglot.load_npz(os.path.join(data_dir, "omniglot")), None


def _omniglot_official(config, data_dir: str):
  return omniglot_official.load_official(os.path.join(data_dir,
                                                      "omniglot")), None


def _omniglot_tfds(config, data_dir: str):
  return tfds_source.load_omniglot_tfds(config.data_dir or None), None


def _omniglot_download(config, data_dir: str):
  del data_dir
  files = download.download_omniglot(
      os.path.join(_cache(config) or paths.cache_dir(), "omniglot_download"),
      trust_on_first_use=config.trust_download)
  raw = omniglot_official.load_official(
      [files["images_background.zip"], files["images_evaluation.zip"]])
  return raw, os.path.dirname(files["vinyals_splits/train.txt"])


# {source: fn(config, data_dir) -> (OmniglotRaw, Vinyals split folder or
# None for the one under data_dir/omniglot)}.
OMNIGLOT_SOURCES = {"npz": _omniglot_npz, "official": _omniglot_official,
                    "tfds": _omniglot_tfds, "download": _omniglot_download}


def _load_omniglot(config, data_dir: str) -> Splits:
  raw, split_dir = OMNIGLOT_SOURCES[config.source](config, data_dir)
  split_dir = split_dir or os.path.join(data_dir, "omniglot",
                                        "vinyals_splits")
  side = DATASETS["omniglot"].input_shape[0]
  images = omniglot.preprocess(raw, side, _cache(config))
  return omniglot.make_splits(raw, images, config.split, split_dir)


def _load_mini_imagenet(config, data_dir: str) -> Splits:
  return mini_imagenet.load(os.path.join(data_dir, "mini_imagenet"),
                            cache_dir=_cache(config))


def _load_cifar(config, data_dir: str) -> Splits:
  del data_dir  # tfds finds its own data_dir
  return tfds_source.make_cifar_splits(
      tfds_source.load_cifar100_tfds(config.data_dir or None), config.dataset)


def _cache(config) -> Optional[str]:
  """The folder of preprocessed arrays: None when `cache_dir` is "off"."""
  if config.cache_dir == "off":
    return None
  return config.cache_dir or os.path.join(paths.cache_dir(), "data")


class Dataset(NamedTuple):
  """A few-shot image dataset.

  Attributes:
    input_shape: (side, side, channels) of the model input.
    source_shape: one image as its source gives it, as `load_predictor`
      takes it.
    load: `load(config, data_dir) -> {"train", "val"?, "test"}` class
      datasets of model-ready uint8 `[classes, examples, side, side, c]`.
    transform: source images uint8 `[n, *source_shape]` -> the uint8 model
      input `[n, *input_shape]` (pure JAX).
  """
  input_shape: Tuple[int, int, int]
  source_shape: Tuple[int, ...]
  load: Callable[..., Splits]
  transform: Callable[[jax.Array], jax.Array]


DATASETS = {
    # Drawings get the training preprocessing; the colour datasets are used
    # as their sources give them.
    "omniglot": Dataset(
        (28, 28, 1), (omniglot_official.SIZE, omniglot_official.SIZE),
        _load_omniglot, lambda x: omniglot.transform(x, 28)[..., None]),
    "mini_imagenet": Dataset((84, 84, 3), (84, 84, 3), _load_mini_imagenet,
                             jnp.asarray),
    "cifar_fs": Dataset((32, 32, 3), (32, 32, 3), _load_cifar, jnp.asarray),
    "fc100": Dataset((32, 32, 3), (32, 32, 3), _load_cifar, jnp.asarray),
}


def _conv4(config, num_outputs: Optional[int], strided: bool):
  return Conv4(num_outputs=num_outputs, width=config.width,
               downsample="stride" if strided else "max")


def _resnet12(config, num_outputs: Optional[int], strided: bool):
  del config, strided
  return ResNet12(num_outputs=num_outputs)


# {name: fn(config, num_outputs, strided) -> flax module}: a classifier with
# a `num_outputs` head, or an embedding when it is None.
BACKBONES = {"conv4": _conv4, "resnet12": _resnet12}


def _model(config, net):
  """(init_fn, apply_fn, output) of `net` on uint8 `[n, H, W, C]` images.

  `output` is the shape and dtype of `net`'s output for one image.
  """
  example = jnp.zeros((1,) + DATASETS[config.dataset].input_shape,
                      jnp.float32)
  init_fn = harness.compiled_init(net, example.shape)
  apply_fn = lambda params, x: net.apply(params, x.astype(jnp.float32) / 255.0)
  output = jax.eval_shape(lambda: net.apply(init_fn(jax.random.PRNGKey(0)),
                                            example))
  return init_fn, apply_fn, output


def classifier_model(config, ways: int):
  """`(init_fn, apply_fn)` of the gradient learners' `ways`-unit classifier:
  uint8 images `[n, H, W, C]` in, float32 logits `[n, ways]` out."""
  # MAML's Omniglot network downsamples by stride; its mini-ImageNet
  # network and the metric learners' embeddings by max-pooling.
  net = BACKBONES[config.backbone](config, ways, config.dataset == "omniglot")
  init_fn, apply_fn, _ = _model(config, net)
  return init_fn, apply_fn


def _classifier(build):
  """A learner that adapts a `ways`-unit classifier by gradient."""
  def make(config, ways):
    init_fn, apply_fn = classifier_model(config, ways)
    options = dict(lr=config.inner_lr)
    if config.inner_optimizer != "sgd":
      options = dict(inner_optimizer=INNER_OPTIMIZERS[
          config.inner_optimizer](config.inner_lr))
    if config.inner_minibatches:
      options.update(minibatches=True)
    if config.carry_inner_state:
      options.update(carry_inner_state=True,
                     sequential_tasks=config.sequential_tasks)
    if build is algorithms.imaml:
      options.update(reg=config.imaml_reg, cg_steps=config.cg_steps,
                     damping=config.imaml_damping)
    return build(init_fn, apply_fn, algorithms.cross_entropy,
                 steps=config.inner_steps,
                 metrics=algorithms.classification_metrics, **options)
  return make


# {--pipeline: the builder of host-made training episodes}.
HOST_PIPELINES = {"numpy": host_episodes.numpy_episodes,
                  "tf": host_episodes.tf_episodes}

# The inner loop's optimiser at --inner_lr ("sgd": gradient descent).
INNER_OPTIMIZERS = {
    "momentum": lambda lr: optax.sgd(lr, momentum=0.9),
    "adam": optax.adam,
    # Adam without its momentum (b1 = 0): Reptile's released inner loop.
    "adam_b1_0": lambda lr: optax.adam(lr, b1=0.0),
}

# --outer_optimizer: the optimiser of the meta-parameters at a rate or
# schedule.
OUTER_OPTIMIZERS = {"adam": optax.adam, "sgd": optax.sgd}


def _embedding(choose):
  """A learner that compares embeddings: any number of ways at test.

  `choose(config, output) -> (builder, its options)`, `output` the shape
  and dtype of one embedding."""
  def make(config, ways):
    net = BACKBONES[config.backbone](config, None, False)
    init_fn, apply_fn, output = _model(config, net)
    build, options = choose(config, output)
    return build(init_fn, apply_fn, ways=ways, **options)
  return make


def _protonet(config, output):
  """ProtoNets; with --hallucinate, with its generator of examples."""
  if not config.hallucinate:
    return algorithms.protonet, {}
  return algorithms.hallucinating_protonet, dict(
      extra=config.hallucinate, embed_dim=output.shape[-1])


def _matching(config, output):
  del output
  return algorithms.matching, dict(scale=config.matching_scale)


def _relation(config, ways):
  embed = RelationEmbedding(width=config.width)
  init_fn, apply_fn, maps = _model(config, embed)
  module = RelationModule(width=config.width)
  pairs = maps.shape[:-1] + (2 * maps.shape[-1],)
  return algorithms.relation(
      init_fn, apply_fn, harness.compiled_init(module, pairs, maps.dtype),
      module.apply, ways=ways)


class Algorithm(NamedTuple):
  """A learner of the registry.

  Attributes:
    gradient_based: it adapts a classifier whose head fixes the number of
      ways (tested at the training ways only, with test_inner_steps).
    make: `make(config, ways) -> MetaLearner` for `ways`-way episodes;
      with `whole_class`, `make(config, ways, train_classes)`.
    whole_class: it trains on batches of images labelled by training class
      (`episodes.class_batch_sampler`), not on episodes.
  """
  gradient_based: bool
  make: Callable
  whole_class: bool = False


def _pretrain(config, ways, train_classes, teacher=True):
  """The whole-class learner; with `--distill_from` (unless `teacher` is
  False) the born-again student of that run."""
  net = BACKBONES[config.backbone](config, None, False)
  init_fn, apply_fn, output = _model(config, net)
  options = dict(num_classes=train_classes, embed_dim=output.shape[-1],
                 ways=ways, probe_steps=config.probe_steps,
                 probe_c=config.probe_c)
  if config.distill_from and teacher:
    options.update(teacher=_teacher(config, train_classes),
                   distill_weight=config.distill_weight,
                   temperature=config.distill_temperature)
  return algorithms.pretrain(init_fn, apply_fn, **options)


# What a born-again student must share with its teacher's run.
_TEACHER_FIELDS = ("dataset", "split", "train_on_val", "backbone", "width")


def _teacher(config, train_classes: int):
  """The meta-parameters of the `--distill_from` run, checked to be a
  whole-class classifier of this run's network and training classes."""
  path = config.distill_from
  try:
    teacher = read_config(path)
  except (OSError, ValueError) as e:
    raise ValueError(f"distill_from={path!r}: cannot read the teacher's "
                     f"config.json ({e}).") from None
  if teacher.algorithm != "pretrain":
    raise ValueError(f"distill_from={path!r} holds a {teacher.algorithm} "
                     f"run; a teacher is an --algorithm=pretrain run.")
  differ = [f"--{name}={getattr(teacher, name)!r} there, "
            f"{getattr(config, name)!r} here" for name in _TEACHER_FIELDS
            if getattr(teacher, name) != getattr(config, name)]
  if differ:
    raise ValueError(f"distill_from={path!r} was trained with other "
                     f"settings: {'; '.join(differ)}.")
  like = _pretrain(config, 2, train_classes, teacher=False).init(
      jax.random.PRNGKey(0))
  return checkpoint.restore_params(path, like)


ALGORITHMS = {
    **{name: Algorithm(True, _classifier(getattr(algorithms, name)))
       for name in ("maml", "fomaml", "anil", "meta_sgd", "maml_plus_plus",
                    "reptile", "imaml")},
    "protonet": Algorithm(False, _embedding(_protonet)),
    "matching": Algorithm(False, _embedding(_matching)),
    "relation": Algorithm(False, _relation),
    "pretrain": Algorithm(False, _pretrain, whole_class=True),
}


@dataclasses.dataclass(frozen=True)
class Config(harness.RunConfig):
  """Everything that defines a run; defaults: ProtoNets, Omniglot 5-way 1-shot.

  `test_ways` lists the way counts evaluated at the end (ProtoNets handles
  any; the MAML family's head fixes it to `ways`). A `test_*` value of 0 means
  "same as training". `train_on_val` meta-trains on the meta-train and
  meta-validation classes together (for Omniglot the papers' 1,200 training
  characters) and then has no validation curve.
  """
  algorithm: str = field("protonet", "Meta-learner.",
                         choices=tuple(ALGORITHMS))
  dataset: str = field(
      "omniglot", "Dataset: omniglot, mini_imagenet (files under "
      "<data_dir>/mini_imagenet), cifar_fs or fc100 (tfds cifar100 prepared "
      "in --data_dir).", choices=tuple(DATASETS))
  split: str = field("vinyals", "Omniglot class split.",
                     choices=omniglot.SPLITS)
  train_on_val: bool = field(
      False, "Meta-train on the meta-train and meta-validation classes "
      "together (the papers' 1,200 Omniglot training characters); no "
      "validation curve then.")
  source: str = field(
      "npz", "Where the Omniglot drawings come from: npz arrays or official "
      "zips under <data_dir>/omniglot, a prepared tfds dataset in "
      "--data_dir, or a checked download into the cache.",
      choices=tuple(OMNIGLOT_SOURCES))
  pipeline: str = field(
      "device", "Where training episodes are built: on the device inside "
      "the compiled step (fastest when the split fits in device memory), "
      "or on the host by NumPy or a tf.data pipeline (fed to the device "
      "while it trains). Validation and test episodes are always drawn on "
      "the device, so every run is scored on the same episodes.",
      choices=("device",) + tuple(HOST_PIPELINES))
  backbone: str = field("conv4", "Network.", choices=tuple(BACKBONES))
  trust_download: bool = field(
      False, "With --source=download: accept the official full zips, whose "
      "SHA-256 metajax does not know, recording their hash on first "
      "download.", rerun_may_change=True)
  ways: int = field(60, "Classes per training episode.")
  shots: int = field(1, "Support examples per class.")
  query: int = field(5, "Query examples per class in training episodes.")
  test_ways: Tuple[int, ...] = field((5, 20), "Way counts of the test "
                                     "episodes.", rerun_may_change=True)
  test_shots: int = field(0, "Support examples per class at test (0: "
                          "--shots).", rerun_may_change=True)
  test_query: int = field(15, "Query examples per class in test episodes.",
                          rerun_may_change=True)
  meta_batch_size: int = field(1, "Episodes per meta-step.")
  inner_steps: int = field(1, "Inner gradient steps in training (MAML "
                           "family).")
  test_inner_steps: int = field(0, "Inner gradient steps at test (0: "
                                "--inner_steps).", rerun_may_change=True)
  inner_lr: float = field(0.4, "Inner learning rate.")
  inner_optimizer: str = field(
      "sgd", "Inner-loop optimiser of maml, fomaml, anil, imaml and "
      "reptile, at --inner_lr: sgd (gradient descent), momentum (0.9), adam, "
      "or adam_b1_0 (Adam without momentum, Reptile's released runs).",
      choices=("sgd",) + tuple(INNER_OPTIMIZERS))
  inner_minibatches: bool = field(
      False, "With --algorithm=reptile: inner step t of meta-training sees "
      "only the t-th of --inner_steps equal slices of the shuffled episode "
      "(support and query pooled), as in the paper's released runs; "
      "--inner_steps must divide the episode's ways * (shots + query).")
  carry_inner_state: bool = field(
      False, "With --algorithm=reptile and an --inner_optimizer other than "
      "sgd: keep the inner optimiser's state (Adam's moments) from one "
      "meta-step to the next, and fine-tune at test from it, as the paper's "
      "released code does; each meta-step's tasks start from the state and "
      "it becomes the mean of their final states.")
  sequential_tasks: bool = field(
      False, "With --carry_inner_state: run each meta-step's tasks one "
      "after another, each from the inner state the one before it left, "
      "as the released code does (the state moves on to the last task's); "
      "training then takes its tasks one at a time whatever --task_chunk, "
      "and cannot --shard_tasks.")
  imaml_reg: float = field(2.0, "iMAML's proximal strength lambda.")
  cg_steps: int = field(5, "iMAML's conjugate-gradient iterations per "
                        "meta-gradient.")
  imaml_damping: float = field(
      10.0, "iMAML's damping: CG solves ((1 + damping) I + H / lambda) x = "
      "g. Conv4's support Hessian is indefinite and the undamped system "
      "(0, the paper's equation) makes CG diverge; see docs/imaml.md.")
  outer_optimizer: str = field(
      "adam", "Optimiser of the meta-parameters: adam, or sgd (with "
      "--algorithm=reptile and --outer_lr=1, the paper's meta-step).",
      choices=tuple(OUTER_OPTIMIZERS))
  outer_lr: float = field(1e-3, "Outer (meta) learning rate.")
  lr_halve_every: int = field(0, "Halve the outer learning rate every N "
                              "steps (0: never).")
  lr_anneal_steps: int = field(
      0, "Anneal the outer learning rate linearly from --outer_lr to 0 "
      "over this many steps, then hold it at 0 (0: no annealing). "
      "Reptile's released runs anneal over all of training.")
  num_steps: int = field(5000, "Meta-training steps.", rerun_may_change=True)
  eval_every: int = field(500, "Steps between validation evaluations.",
                          rerun_may_change=True)
  val_episodes: int = field(200, "Validation episodes per evaluation (0: "
                            "none).", rerun_may_change=True)
  eval_episodes: int = field(1000, "Test episodes per test way count.",
                             rerun_may_change=True)
  width: int = field(64, "Filters per conv layer.")
  data_dir: str = field(
      "", "Folder holding omniglot/ or mini_imagenet/ ('': "
      "$METAJAX_DATA_DIR, else metajax.data.paths.data_dir()'s per-user "
      "folder).", rerun_may_change=True)
  cache_dir: str = field(
      "", "Cache of preprocessed arrays and downloads ('': "
      "$METAJAX_CACHE_DIR, else the per-user cache; 'off': no cache of "
      "preprocessed arrays).", rerun_may_change=True)
  adversarial_query: bool = field(
      False, "Meta-train on query sets attacked by PGD on the adapted "
      "learner (adversarial querying, Goldblum et al. 2020): --aq_steps "
      "steps of --aq_step_size within --aq_eps.")
  aq_eps: float = field(8.0, "Radius of the training attack (L-infinity), "
                        "in pixel levels of 0-255: 8 is the papers' 8/255.")
  aq_step_size: float = field(2.0, "Step of the training attack, in pixel "
                              "levels.")
  aq_steps: int = field(7, "PGD steps of the training attack.")
  test_attack_steps: int = field(
      0, "Also score every test episode under a PGD attack of this many "
      "steps on the adapted learner (0: clean accuracy only).",
      rerun_may_change=True)
  test_attack_eps: float = field(8.0, "Radius of the test attack, in pixel "
                                 "levels.", rerun_may_change=True)
  test_attack_step_size: float = field(2.0, "Step of the test attack, in "
                                       "pixel levels.",
                                       rerun_may_change=True)
  test_attack_random_start: bool = field(
      False, "Start the test attack from a uniform draw in its ball (as the "
      "released adversarial-querying evaluation does) instead of the clean "
      "queries; the draws come from --seed, alike for every learner.",
      rerun_may_change=True)
  matching_scale: float = field(
      1.0, "Matching Networks' multiplier of the cosine similarities before "
      "the attention's softmax (1: the paper's).")
  hallucinate: int = field(
      0, "With --algorithm=protonet: add this many generated examples to "
      "each class of every support set, from a generator trained end to "
      "end through the episode loss (Wang et al. 2018); 0: none.")
  batch_size: int = field(64, "Images per step of --algorithm=pretrain "
                          "(whole-class training).")
  probe_steps: int = field(
      100, "L-BFGS iterations of --algorithm=pretrain's logistic "
      "regression on each test episode's support embeddings.",
      rerun_may_change=True)
  probe_c: float = field(1.0, "Inverse L2 strength of that logistic "
                         "regression (scikit-learn's C).",
                         rerun_may_change=True)
  distill_from: str = field(
      "", "Workdir of a finished --algorithm=pretrain run: train this "
      "--algorithm=pretrain run as its born-again student (Tian et al. "
      "2020), on the labels and the teacher's softened outputs.")
  distill_weight: float = field(0.5, "Weight of the distillation term "
                                "(the labels' cross-entropy gets 1 - it).")
  distill_temperature: float = field(4.0, "Softmax temperature of "
                                     "distillation.")
  task_chunk: str = field(
      "auto", "Tasks per pass of the meta-gradient and of evaluation: "
      "'auto' (one at a time on the CPU, the whole batch on GPU/TPU), 0 "
      "(the whole batch vmapped) or a chunk size. Ignored with "
      "--shard_tasks.", rerun_may_change=True)
  log_every: int = harness.log_every_field(50)
  checkpoint_every: int = harness.checkpoint_every_field(500)

  RATES = ("inner_lr", "outer_lr")
  POSITIVE = harness.RunConfig.POSITIVE + (
      "shots", "query", "test_query", "meta_batch_size", "inner_steps",
      "num_steps", "width", "cg_steps", "aq_steps", "batch_size",
      "probe_steps")

  def validate(self):
    super().validate()
    task_chunk(self)
    harness.check_positive(self, ("ways", "test_ways"), least=2)
    harness.check_positive(self, ("test_shots", "test_inner_steps",
                                  "hallucinate",
                                  "lr_halve_every", "lr_anneal_steps",
                                  "eval_every",
                                  "val_episodes", "test_attack_steps"),
                           least=0)
    for name in ("aq_eps", "aq_step_size", "test_attack_eps",
                 "test_attack_step_size"):
      if not (np.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
        raise ValueError(f"{name} must be finite and >= 0, got "
                         f"{getattr(self, name)}.")
    if not (np.isfinite(self.imaml_damping) and self.imaml_damping >= 0):
      raise ValueError(f"imaml_damping must be finite and >= 0, got "
                       f"{self.imaml_damping}.")
    if not (np.isfinite(self.imaml_reg) and self.imaml_reg > 0):
      raise ValueError(f"imaml_reg must be finite and > 0, got "
                       f"{self.imaml_reg}.")
    if (self.inner_optimizer != "sgd" and
        self.algorithm not in ("maml", "fomaml", "anil", "imaml", "reptile")):
      raise ValueError(
          f"inner_optimizer={self.inner_optimizer!r} is for maml, fomaml, "
          f"anil, imaml and reptile; {self.algorithm} takes gradient descent "
          f"steps (inner_optimizer='sgd').")
    if self.inner_minibatches:
      if self.algorithm != "reptile":
        raise ValueError(f"inner_minibatches is for --algorithm=reptile, "
                         f"not {self.algorithm}.")
      pooled = self.ways * (self.shots + self.query)
      if pooled % self.inner_steps:
        raise ValueError(
            f"inner_minibatches splits each training episode's {pooled} "
            f"images (ways {self.ways} * (shots {self.shots} + query "
            f"{self.query})) into inner_steps={self.inner_steps} equal "
            f"minibatches; inner_steps must divide {pooled}.")
    if self.carry_inner_state and (self.algorithm != "reptile" or
                                   self.inner_optimizer == "sgd"):
      raise ValueError(
          f"carry_inner_state carries reptile's inner optimiser's state; "
          f"it needs --algorithm=reptile (got {self.algorithm}) and an "
          f"--inner_optimizer with a state (got {self.inner_optimizer}).")
    if self.sequential_tasks and not self.carry_inner_state:
      raise ValueError("sequential_tasks passes the carried inner state from "
                       "task to task; it needs --carry_inner_state.")
    if self.sequential_tasks and self.shard_tasks:
      raise ValueError("sequential_tasks runs a meta-step's tasks one after "
                       "another, so they cannot be split over devices: drop "
                       "--shard_tasks.")
    if self.lr_halve_every and self.lr_anneal_steps:
      raise ValueError(
          f"lr_halve_every={self.lr_halve_every} and lr_anneal_steps="
          f"{self.lr_anneal_steps} are two schedules of the outer rate; "
          f"choose one.")
    if (ALGORITHMS[self.algorithm].gradient_based and
        set(self.test_ways) != {self.ways}):
      raise ValueError(
          f"{self.algorithm}'s output layer has ways={self.ways} units, so it "
          f"is tested {self.ways}-way only; got test_ways={self.test_ways}.")
    if (self.test_inner_steps and
        not ALGORITHMS[self.algorithm].gradient_based):
      raise ValueError(
          f"{self.algorithm} adapts nothing by gradient, so it takes no "
          f"test_inner_steps; got {self.test_inner_steps}.")
    if self.hallucinate and self.algorithm != "protonet":
      raise ValueError(f"hallucinate adds generated examples to ProtoNets' "
                       f"prototypes; --algorithm={self.algorithm} has none "
                       f"(use --algorithm=protonet).")
    if not (np.isfinite(self.matching_scale) and self.matching_scale > 0):
      raise ValueError(f"matching_scale must be finite and > 0, got "
                       f"{self.matching_scale}.")
    if not (np.isfinite(self.probe_c) and self.probe_c > 0):
      raise ValueError(f"probe_c must be finite and > 0, got "
                       f"{self.probe_c}.")
    if not 0.0 <= self.distill_weight <= 1.0:
      raise ValueError(f"distill_weight must be in [0, 1], got "
                       f"{self.distill_weight}.")
    if not (np.isfinite(self.distill_temperature) and
            self.distill_temperature > 0):
      raise ValueError(f"distill_temperature must be finite and > 0, got "
                       f"{self.distill_temperature}.")
    whole_class = ALGORITHMS[self.algorithm].whole_class
    if self.distill_from and not whole_class:
      raise ValueError(f"distill_from is for --algorithm=pretrain, not "
                       f"{self.algorithm}.")
    if whole_class and (self.pipeline != "device" or self.adversarial_query):
      raise ValueError(
          f"{self.algorithm} trains on batches of labelled images drawn on "
          f"the device: it takes --pipeline=device and no "
          f"--adversarial_query.")
    if self.eval_episodes < 2 or not self.test_ways:
      raise ValueError("need eval_episodes >= 2 and at least one test way.")


def make_learner(config: Config, ways: int,
                 train_classes: Optional[int] = None
                 ) -> algorithms.MetaLearner:
  """The configured learner for `ways`-way episodes (with
  `--adversarial_query`, its meta-gradient on attacked queries).

  A whole-class learner's head has one unit per training class:
  `train_classes`, or, when None, the count of the training split, read
  from the data.
  """
  algorithm = ALGORITHMS[config.algorithm]
  if algorithm.whole_class:
    if train_classes is None:
      train_classes = load_splits(config)["train"].num_classes
    learner = algorithm.make(config, ways, train_classes)
  else:
    learner = algorithm.make(config, ways)
  if config.adversarial_query:
    learner = adversarial.adversarial_querying(
        learner, attack_loss(config), train_attack(config))
  return learner


def attack_loss(config: Config) -> Callable:
  """The loss a PGD attack raises: the learner's training loss of its
  predictions (Relation Networks: the MSE of scores to one-hot labels)."""
  if config.algorithm == "relation":
    return lambda scores, y: algorithms.mse(
        scores, jax.nn.one_hot(y, scores.shape[-1], dtype=scores.dtype))
  return algorithms.cross_entropy


def train_attack(config: Config) -> adversarial.PGD:
  """The `--aq_*` attack on training queries, checked."""
  return adversarial.check_pgd(adversarial.PGD(
      eps=config.aq_eps, steps=config.aq_steps,
      step_size=config.aq_step_size))


def test_attack(config: Config) -> adversarial.PGD:
  """The `--test_attack_*` attack on test queries, checked. Its start (the
  clean queries, or a draw from the test key) is the same for every
  learner scored on the same episodes."""
  return adversarial.check_pgd(adversarial.PGD(
      eps=config.test_attack_eps, steps=config.test_attack_steps,
      step_size=config.test_attack_step_size,
      random_start=config.test_attack_random_start))


def make_optimizer(config: Config) -> optax.GradientTransformation:
  """`outer_optimizer` at `outer_lr`: halved every `lr_halve_every` steps,
  or annealed linearly to 0 over `lr_anneal_steps`, when either is > 0.
  With `carry_inner_state`, it trains the model's parameters and the
  carried inner state is set by `reptile_lib.carry_state`."""
  rate = config.outer_lr
  if config.lr_halve_every:
    rate = optax.exponential_decay(config.outer_lr, config.lr_halve_every,
                                   0.5, staircase=True)
  elif config.lr_anneal_steps:
    rate = optax.linear_schedule(config.outer_lr, 0.0,
                                 config.lr_anneal_steps)
  optimizer = OUTER_OPTIMIZERS[config.outer_optimizer](rate)
  if config.carry_inner_state:
    return algorithms.reptile_lib.carry_state(optimizer)
  return optimizer


def task_chunk(config: Config):
  """The `task_chunk` of `metajax.train` and `evaluate`: "auto" or an int."""
  if config.task_chunk == "auto":
    return "auto"
  try:
    return int(config.task_chunk)
  except ValueError:
    raise ValueError(f"task_chunk must be 'auto' or an integer, got "
                     f"{config.task_chunk!r}.") from None


def _test_steps(config: Config) -> Optional[int]:
  """`evaluate`'s adapt_steps: test_inner_steps, or the learner's own."""
  return config.test_inner_steps or None


def load_splits(config: Config) -> Splits:
  """The dataset's {"train", "val"?, "test"} splits as model-ready uint8.

  With `train_on_val`, "train" holds the meta-train and meta-validation
  classes and there is no "val".
  """
  splits = DATASETS[config.dataset].load(config,
                                         paths.data_dir(config.data_dir or
                                                        None))
  if config.train_on_val:
    if "val" not in splits:
      raise ValueError(f"train_on_val: the {config.dataset} "
                       f"{config.split} split has no validation classes.")
    splits = {"train": episodes.concat([splits["train"], splits["val"]]),
              "test": splits["test"]}
  return splits


def check_episodes_fit(config: Config, splits: Splits) -> None:
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


def _prepare(config: Config) -> Splits:
  splits = load_splits(config)
  check_episodes_fit(config, splits)
  if config.distill_from:
    _teacher(config, splits["train"].num_classes)  # refused before training
  return splits


def _accuracy(config: Config, learner, meta_params, dataset, ways: int,
              num_episodes: int, key, split: str,
              attack: Optional[Callable] = None) -> np.ndarray:
  """Per-episode query accuracy of `num_episodes` test-style episodes
  (under `attack` on the queries, if given)."""
  sampler = episodes.episode_sampler(
      dataset, ways=ways, shots=config.test_shots or config.shots,
      query=config.test_query, batch_size=min(num_episodes, 50), split=split)
  # Validation runs inside training, under the training bar: no bar of its
  # own there.
  label = None
  if config.progress and split == "test":
    label = f"test {ways}-way" + (" under attack" if attack else "")
  return evaluate(learner, meta_params, sampler, algorithms.accuracy,
                  key=key, num_tasks=num_episodes,
                  task_chunk=task_chunk(config),
                  adapt_steps=_test_steps(config), attack=attack,
                  progress=label)


def train_tasks(config: Config, dataset: episodes.ClassDataset):
  """The training episodes of `--pipeline`: a `key -> Task` sampler run on
  the device, or a `metajax.HostTasks` pipeline built on the host from
  `--seed` (NumPy or tf.data)."""
  if ALGORITHMS[config.algorithm].whole_class:
    return episodes.class_batch_sampler(dataset, batch_size=config.batch_size)
  sizes = dict(ways=config.ways, shots=config.shots, query=config.query,
               batch_size=config.meta_batch_size, split="train")
  if config.pipeline == "device":
    return episodes.episode_sampler(dataset, **sizes)
  return HOST_PIPELINES[config.pipeline](dataset, seed=config.seed, **sizes)


def _run(config: Config, workdir: str, splits: Splits) -> Dict:
  """Meta-trains (resuming), tests at every test way count, plots."""
  train_key, val_key, test_key = jax.random.split(
      jax.random.PRNGKey(config.seed), 3)
  sampler = train_tasks(config, splits["train"])
  make = functools.partial(make_learner, config,
                           train_classes=splits["train"].num_classes)
  eval_fn = None
  if "val" in splits and config.val_episodes:
    val_ways = config.test_ways[0]
    val_learner = make(val_ways)
    def eval_fn(meta_params):
      return {"val_accuracy": float(np.mean(_accuracy(
          config, val_learner, meta_params, splits["val"], val_ways,
          config.val_episodes, val_key, "val")))}

  state = harness.train_learner(
      config, make(config.ways), make_optimizer(config),
      sampler, key=train_key, num_steps=config.num_steps, workdir=workdir,
      desc=config.algorithm, eval_fn=eval_fn, eval_every=config.eval_every,
      # The sequential learner's scan already takes one task at a time;
      # chunks would each restart from the same inner state.
      task_chunk=None if config.sequential_tasks else task_chunk(config))

  tests = []
  for ways in config.test_ways:
    learner = make(ways)
    score = functools.partial(
        _accuracy, config, learner, state.meta_params, splits["test"], ways,
        config.eval_episodes, test_key, "test")
    summary_ = mean_ci(score())
    tests.append({"ways": ways, "shots": config.test_shots or config.shots,
                  "query": config.test_query, "accuracy": summary_["mean"],
                  "ci95": summary_["ci95"], "episodes": summary_["n"]})
    if config.test_attack_steps:
      # The same episodes, their queries attacked after adaptation.
      pgd = test_attack(config)
      robust = mean_ci(score(adversarial.attack(
          learner.predict, attack_loss(config), pgd)))
      tests[-1]["attack"] = {"robust_accuracy": robust["mean"],
                             "ci95": robust["ci95"], "eps": pgd.eps,
                             "steps": pgd.steps, "step_size": pgd.step_size,
                             "random_start": pgd.random_start,
                             "scale": "pixel levels of 0-255"}
  title = (f"{config.algorithm} on {config.dataset} ({config.split} split), "
           f"{config.ways}-way {config.shots}-shot training")
  _plot_curves(os.path.join(workdir, "curves.png"),
               os.path.join(workdir, "metrics.jsonl"), title, config)
  return {"algorithm": config.algorithm, "dataset": config.dataset,
          "split": config.split, "ways": config.ways, "shots": config.shots,
          "steps": int(state.step), "test": tests}


def _plot_curves(path: str, metrics_path: str, title: str,
                 config: Config) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  rows = summary.read_metrics(metrics_path)
  fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
  series = lambda key: ([r["step"] for r in rows if key in r],
                        [r[key] for r in rows if key in r])
  ax_loss.plot(*series("loss"))
  ax_loss.set_yscale("log")
  ax_loss.set_xlabel("meta-step")
  ax_loss.set_ylabel("training query loss")
  ax_acc.plot(*series("accuracy"), label=(
      f"training batches (all {config.algorithm} classes)"
      if ALGORITHMS[config.algorithm].whole_class
      else f"training episodes ({config.ways}-way)"))
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


def format_results(results: Dict) -> str:
  """One line per test configuration: accuracy ± 95% CI."""
  lines = [f"{results['algorithm']} on {results['dataset']} "
           f"({results['split']} split), {results['steps']} meta-steps, "
           f"training {sum(results['train_time_s'].values()):.0f} s"]
  for t in results["test"]:
    lines.append(
        f"  {t['ways']}-way {t['shots']}-shot: {100 * t['accuracy']:.2f}% ± "
        f"{100 * t['ci95']:.2f}% ({t['episodes']} test episodes)")
    if "attack" in t:
      a = t["attack"]
      lines.append(
          f"    under PGD (eps {a['eps']:g}/255, {a['steps']} steps of "
          f"{a['step_size']:g}/255"
          f"{' from a random start' if a['random_start'] else ''}): "
          f"{100 * a['robust_accuracy']:.2f}% ± "
          f"{100 * a['ci95']:.2f}%")
  return "\n".join(lines)




EXPERIMENT = harness.Experiment(
    name="fewshot_vision", config_class=Config, prepare=_prepare, run=_run,
    num_steps=lambda config, splits: config.num_steps,
    format_results=format_results,
    outputs=("results.json", "curves.png"))


def train_and_evaluate(config: Config, workdir: str) -> Dict:
  """Trains (resuming from `workdir`), tests, and writes the run's files."""
  return harness.train_and_evaluate(EXPERIMENT, config, workdir)


def read_config(workdir: str) -> Config:
  """The `Config` a run saved in `workdir/config.json`."""
  return harness.read_config(Config, workdir)


def _check_episode(config: Config, support_x, support_y, query_x,
                   ways: Optional[int]) -> int:
  """Checks `load_predictor`'s inputs; returns the number of ways.

  Shapes and dtypes are checked always; the label values only when they are
  concrete (under `jax.jit` they are traced, and `ways` must be given).

  Raises:
    ValueError / TypeError naming the argument, what was found and what was
    expected.
  """
  shape = DATASETS[config.dataset].source_shape
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
    `predict(support_x, support_y, query_x, ways=None) -> logits`, float32
    `[n_query, ways]` logits (argmax = predicted label). `support_x` holds
    uint8 `[n_support, H, W]` images exactly as the data source gives them
    (Omniglot: 105x105, 255 = paper; the colour datasets `[n_support, H, W,
    3]` at their `DATASETS[...].source_shape`); the training preprocessing
    is applied inside. `support_y` holds int `[n_support]` labels in [0,
    ways), every class present; `query_x` uint8 images shaped as in
    `support_x`. `ways` is by default `max(support_y) + 1`, which needs
    concrete labels (pass it explicitly under `jax.jit`). Metric-based
    learners accept any `ways`; gradient-based ones (MAML family, Reptile)
    only the ways their classifier was trained with, adapting with the
    run's test_inner_steps. Inputs of another dtype, shape or labelling
    raise a ValueError (TypeError for `ways`) naming the argument, before
    any computation.
  """
  config = read_config(workdir)
  # A whole-class learner's head is as wide as its training split.
  make = functools.partial(make_learner, config, train_classes=(
      load_splits(config)["train"].num_classes
      if ALGORITHMS[config.algorithm].whole_class else None))
  like = make(config.ways).init(jax.random.PRNGKey(0))
  meta_params = checkpoint.restore_params(workdir, like)
  transform = DATASETS[config.dataset].transform
  steps = _test_steps(config)

  def predict(support_x, support_y, query_x, ways: Optional[int] = None):
    ways = _check_episode(config, support_x, support_y, query_x, ways)
    if ALGORITHMS[config.algorithm].gradient_based and ways != config.ways:
      raise ValueError(
          f"this {config.algorithm} model was trained {config.ways}-way and "
          f"predicts {config.ways} classes; got a {ways}-way episode.")
    learner = make(ways)
    support = (transform(support_x), jnp.asarray(support_y, jnp.int32))
    state = (learner.adapt(meta_params, support) if steps is None else
             learner.adapt(meta_params, support, steps=steps))
    return learner.predict(meta_params, state, transform(query_x))

  return predict
