"""The one run harness every experiment shares.

An experiment is a leaf over the library: an `Experiment` names its config
class, a `prepare` step that loads and checks its data, and a `run` step that
trains and evaluates and returns its results. `train_and_evaluate` does the
rest, the same way for every experiment:

  1. validates the config (before anything is read or written);
  2. holds the workdir (`metajax.workdir.hold`: one run per workdir);
  3. refuses a rerun whose settings would change what was trained
     (`check_rerun`), then prepares the data, so that bad input fails before
     any training and before anything is written;
  4. refuses a step count below what the workdir was trained for, and only
     then writes `config.json`;
  5. runs the experiment and writes `results.json` with the config, the
     environment, `train_time_s` and `wall_time_s`.

Training time has one definition for every experiment: the seconds spent in
compiled training steps, summed over every session that ran a learner (the
`train_s` of its last `metrics.jsonl` record). Compilation, evaluation and
checkpointing are not in it; `wall_time_s` is this session's launch to
results.

Configs are frozen dataclasses that extend `RunConfig`, the fields every run
has. Each field's `help` metadata (see `field`) makes it an absl flag
(`define_flags`), so an experiment's entry point is a few lines.
"""

import dataclasses
import functools
import glob
import json
import logging as std_logging
import math
import os
import platform
import sys
import time
import typing
from typing import Any, Callable, ClassVar, Dict, NamedTuple, Optional
from typing import Sequence, Tuple

import jax
import jax.numpy as jnp
import optax

import metajax
from metajax import sharding
from metajax import summary
from metajax import io as io_lib
from metajax import workdir as workdir_lib
from metajax.algorithms import MetaLearner
from metajax.data import paths
from metajax.training import train



def field(default, help: str, *, choices: Optional[Sequence[str]] = None,
          rerun_may_change: bool = False,
          flag: Optional[str] = None):  # pylint: disable=redefined-builtin
  """A config field that is also a command-line flag.

  Args:
    default: the default value (tuples for list flags).
    help: the flag's help text.
    choices: allowed values of a string field (an enum flag).
    rerun_may_change: True for fields that only extend, re-evaluate or
      relocate a run (more steps, more test episodes, logging, data paths):
      a rerun of a workdir may change them. Any other field defines what is
      trained, and a rerun that changes it is refused (`check_rerun`).
    flag: the flag's name when it is not the field's.
  """
  return dataclasses.field(default=default, metadata={
      "help": help, "choices": tuple(choices) if choices else None,
      "rerun_may_change": rerun_may_change, "flag": flag})


def field_of(config_class, name: str):
  """A field like `config_class`'s `name`: its default, help and options.

  For a config that shares a setting with another experiment's, so that
  the two flags say the same thing.
  """
  original = config_class.__dataclass_fields__[name]
  return dataclasses.field(default=original.default,
                           metadata=original.metadata)


def flag_name(config_class, name: str) -> str:
  """The command-line flag of field `name` of `config_class`."""
  for f in dataclasses.fields(config_class):
    if f.name == name:
      return f.metadata.get("flag") or name
  raise KeyError(f"{config_class.__name__} has no field {name!r}.")


def log_every_field(default: int):
  """The `log_every` field, for a config whose default differs."""
  return field(default, "Meta-steps per compiled call and per log line.",
               rerun_may_change=True)


def checkpoint_every_field(default: int):
  """The `checkpoint_every` field, for a config whose default differs."""
  return field(default, "Meta-steps between checkpoints.",
               rerun_may_change=True)


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """The fields of every run; experiments extend it with their own."""
  seed: int = field(0, "Seed of the whole run.")
  log_every: int = log_every_field(100)
  checkpoint_every: int = checkpoint_every_field(1000)
  progress: bool = field(
      True, "Show progress bars. Without them (--noprogress) each training "
      "record is logged as one line on stderr.",
      rerun_may_change=True)
  shard_tasks: bool = field(False, "Shard each meta-batch over all visible "
                            "devices.", rerun_may_change=True)

  # Names of the fields whose value must be a finite rate > 0, and of the
  # integer fields that must be >= 1; checked by `validate`.
  RATES: ClassVar[Tuple[str, ...]] = ()
  POSITIVE: ClassVar[Tuple[str, ...]] = ("log_every", "checkpoint_every")

  def validate(self) -> None:
    """Raises a ValueError naming the first field out of range."""
    check_positive(self, self.POSITIVE)
    check_rates(self, self.RATES)
    for f in dataclasses.fields(self):
      choices = f.metadata.get("choices")
      if choices and getattr(self, f.name) not in choices:
        raise ValueError(f"{f.name} must be one of {choices}, got "
                         f"{getattr(self, f.name)!r}.")


def rerun_may_change(config_class) -> Tuple[str, ...]:
  """The fields of `config_class` that a rerun of a workdir may change."""
  return tuple(f.name for f in dataclasses.fields(config_class)
               if f.metadata.get("rerun_may_change"))


class Experiment(NamedTuple):
  """An experiment, as the harness runs it.

  Attributes:
    name: the experiment's name (results' "experiment" field).
    config_class: its `RunConfig` subclass.
    prepare: `prepare(config) -> data`: loads and checks the data; raises on
      bad input before anything is written. Its result goes to `run`.
    run: `run(config, workdir, data) -> results dict`: trains (resuming from
      `workdir`), evaluates and writes its plots.
    num_steps: `num_steps(config, data) -> int`, the run's total meta-steps.
    format_results: `format_results(results) -> str`, printed by `main`.
    outputs: the files `main` says it wrote, e.g. ("results.json", ...).
  """
  name: str
  config_class: type
  prepare: Callable[[Any], Any]
  run: Callable[[Any, str, Any], Dict[str, Any]]
  num_steps: Callable[[Any, Any], int]
  format_results: Callable[[Dict[str, Any]], str]
  outputs: Tuple[str, ...]


@functools.lru_cache(maxsize=64)
def compiled_init(module, shape: Tuple[int, ...], dtype=jnp.float32
                  ) -> Callable[[jax.Array], Any]:
  """`key -> module.init(key, zeros(shape, dtype))`, one compiled program.

  Run eagerly, flax draws every parameter shape with a random-number
  program compiled for it: seconds of every run's start on a CPU
  (`benchmarks/compiled_init.py`). Cached by module (flax modules compare
  by their fields), so that the runs and restores of one process compile
  it once. For the few-shot and continual networks the compiled
  initialiser gives the eager values bit for bit (tested), so no result
  moves. Not for the student models: fused, `nn.initializers.normal(0.1)`
  rounds some of their values 1 ulp otherwise, which would move their
  published results.
  """
  return jax.jit(lambda key: module.init(key, jnp.zeros(shape, dtype)))


def train_and_evaluate(experiment: Experiment, config, workdir: str
                       ) -> Dict[str, Any]:
  """Runs `experiment` with `config` in `workdir`, resuming what is there.

  Returns:
    The dict written to `workdir/results.json`.

  Raises:
    ValueError: a config field out of range, data that cannot supply the
      configured tasks, or a workdir that holds a run of other settings or
      more steps; nothing in `workdir` is written then.
    metajax.workdir.WorkdirBusyError: another process runs in `workdir`.
  """
  if not isinstance(config, experiment.config_class):
    raise TypeError(f"{experiment.name} takes a "
                    f"{experiment.config_class.__name__}, got "
                    f"{type(config).__name__}.")
  config.validate()
  with workdir_lib.hold(workdir):
    check_rerun(workdir, config)
    start = time.perf_counter()
    data = experiment.prepare(config)
    check_not_past(workdir, experiment.num_steps(config, data))
    io_lib.write_json(os.path.join(workdir, "config.json"),
                           dataclasses.asdict(config))
    results = {"experiment": experiment.name}
    results.update(experiment.run(config, workdir, data))
    results.update(train_time_s=training_seconds(workdir),
                   wall_time_s=time.perf_counter() - start,
                   config=dataclasses.asdict(config),
                   environment=environment())
    io_lib.write_json(os.path.join(workdir, "results.json"), results)
  return results


def train_learner(config: RunConfig, learner: MetaLearner,
                  optimizer: optax.GradientTransformation, sample_tasks, *,
                  key: jax.Array, num_steps: int, workdir: str, desc: str,
                  **kwargs):
  """`metajax.train` with the run fields of `config`.

  Adds `log_every`, `checkpoint_every`, `progress` and, with
  `config.shard_tasks`, a mesh over every device (then no task chunking);
  `kwargs` go to `metajax.train` as they are (eval_fn, keep_best,
  task_chunk, ...).

  Returns:
    The final `TrainState`, its meta-parameters on one local device.
  """
  mesh = sharding.task_mesh() if config.shard_tasks else None
  if mesh is not None:
    kwargs["task_chunk"] = None
  state = train(learner, optimizer, sample_tasks, key=key,
                num_steps=num_steps, workdir=workdir,
                log_every=config.log_every,
                checkpoint_every=config.checkpoint_every,
                progress=config.progress, desc=desc, mesh=mesh, **kwargs)
  return state._replace(meta_params=sharding.local_copy(state.meta_params))


def training_seconds(workdir: str) -> Dict[str, float]:
  """{learner: seconds in training steps} from the workdir's metrics.jsonl.

  A run with one learner logs to `workdir/metrics.jsonl` (its key is ""),
  one with several to `workdir/<learner>/metrics.jsonl`. Each record's
  `train_s` is the training time summed over every session up to its step.
  """
  seconds = {}
  for path in sorted(glob.glob(os.path.join(workdir, "metrics.jsonl")) +
                     glob.glob(os.path.join(workdir, "*", "metrics.jsonl"))):
    records = summary.read_metrics(path)
    if records:
      name = os.path.relpath(os.path.dirname(path), workdir)
      seconds["" if name == "." else name] = float(
          records[-1].get("train_s", 0.0))
  return seconds


def environment() -> Dict[str, Any]:
  """Versions and machine facts recorded in every results.json."""
  import flax  # pylint: disable=g-import-not-at-top
  return {
      "metajax": metajax.__version__, "jax": jax.__version__,
      "flax": flax.__version__, "optax": optax.__version__,
      "python": sys.version.split()[0], "backend": jax.default_backend(),
      "devices": [str(d) for d in jax.devices()],
      "machine": platform.machine(), "cpu_count": os.cpu_count(),
  }


def check_rerun(workdir: str, config) -> None:
  """Refuses to resume `workdir` with settings that change what is trained.

  The settings a run started with are in `workdir/config.json` (or, for
  older workdirs, the "config" of `results.json`). Fields marked
  `rerun_may_change` only extend or re-evaluate a run (more steps, more
  test episodes, logging); any other field that differs would resume
  parameters trained one way under a label that says another.

  Raises:
    ValueError: naming each differing flag with its value in the workdir
      and now; nothing in `workdir` is touched.
  """
  saved = None
  for name, key in (("config.json", None), ("results.json", "config")):
    path = os.path.join(workdir, name)
    if os.path.exists(path):
      try:
        with open(path) as f:
          saved = json.load(f)
      except (OSError, ValueError) as e:
        raise ValueError(f"{path} is unreadable ({e}); cannot check that "
                         f"this run continues the one in {workdir}.") from None
      saved = saved.get(key) if key else saved
      break
  if not saved:
    return
  may_change = rerun_may_change(type(config))
  now = json.loads(json.dumps(dataclasses.asdict(config)))
  defaults = json.loads(json.dumps(dataclasses.asdict(type(config)())))
  differ = [(name, saved.get(name, defaults[name]), value)
            for name, value in now.items()
            if name not in may_change
            and saved.get(name, defaults[name]) != value]
  if differ:
    lines = "\n".join(f"  --{flag_name(type(config), name)}: {old!r} in the "
                      f"workdir, {new!r} now" for name, old, new in differ)
    raise ValueError(
        f"{workdir} holds a run trained with other settings:\n{lines}\n"
        f"Resuming it would train on, or label its results with, settings "
        f"it was not trained with. Use another --workdir, or the workdir's "
        f"values. Only these may change on a rerun: "
        f"{', '.join(sorted(may_change))}.")


def check_not_past(workdir: str, num_steps: int) -> None:
  """Refuses a `num_steps` below the step a workdir's run has reached.

  Looks at `workdir/checkpoints/` and the learners' `workdir/*/checkpoints/`.
  Checked before config.json is written, so that it never labels a run with
  fewer steps than its parameters were trained for.
  """
  for folder in sorted(glob.glob(os.path.join(workdir, "checkpoints")) +
                       glob.glob(os.path.join(workdir, "*", "checkpoints"))):
    steps = [int(n) for n in os.listdir(folder) if n.isdigit()]
    if steps and max(steps) > num_steps:
      raise ValueError(
          f"{os.path.join(folder, str(max(steps)))} is at step {max(steps)}, "
          f"past --num_steps={num_steps}: its parameters were trained "
          f"longer than asked. Pass --num_steps >= {max(steps)}, or use "
          f"another --workdir.")


def read_config(config_class, workdir: str):
  """The `config_class` a run saved in `workdir/config.json`.

  Raises:
    FileNotFoundError: the workdir has no config.json.
    ValueError: it names fields `config_class` does not have.
  """
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: {workdir} holds no run of "
                            f"this experiment.")
  with open(path) as f:
    values = json.load(f)
  hints = typing.get_type_hints(config_class)
  fields = {f.name for f in dataclasses.fields(config_class)}
  unknown = sorted(set(values) - fields)
  if unknown:
    raise ValueError(f"{path}: unknown fields {unknown}.")
  for name, value in values.items():
    if isinstance(value, list) and typing.get_origin(hints[name]) is tuple:
      values[name] = tuple(value)
  return config_class(**values)


def check_positive(config, names: Sequence[str], least: int = 1) -> None:
  """A ValueError naming the first field of `names` below `least`."""
  for name in names:
    value = getattr(config, name)
    values = value if isinstance(value, (tuple, list)) else (value,)
    if any(v < least for v in values):
      raise ValueError(f"{name} must be >= {least}, got {value}.")


def check_rates(config, names: Sequence[str]) -> None:
  """A ValueError naming the first learning rate that is not finite and > 0
  (a tuple field is a grid of rates, each checked)."""
  for name in names:
    value = getattr(config, name)
    values = value if isinstance(value, (tuple, list)) else (value,)
    if not values or not all(math.isfinite(v) and v > 0 for v in values):
      raise ValueError(f"{name} must be a finite learning rate > 0, got "
                       f"{value}.")


# Command line: every config field is a flag, plus these run-only flags.


def define_flags(config_class, default_workdir: str, flag_values=None,
                 **defaults) -> None:
  """Defines one absl flag per field of `config_class`, and the run flags.

  Field types map to flag kinds: bool, int, float, str (an enum with
  `choices`) and tuples (comma-separated lists). The run flags are
  --workdir, --compilation_cache and the multi-host ones (--distributed,
  --coordinator_address, --num_processes, --process_id).

  Args:
    config_class: the experiment's `RunConfig` subclass.
    default_workdir: the default --workdir.
    flag_values: the `absl.flags.FlagValues` to define them in (default:
      the global FLAGS).
    **defaults: flag defaults that differ from the config's (e.g. a data
      folder found at start-up).
  """
  from absl import flags  # pylint: disable=g-import-not-at-top
  fv = flag_values if flag_values is not None else flags.FLAGS
  hints = typing.get_type_hints(config_class)
  for f in dataclasses.fields(config_class):
    default = defaults.get(f.name, f.default)
    kind, help_ = hints[f.name], f.metadata["help"]
    name = f.metadata.get("flag") or f.name
    if f.metadata.get("choices"):
      flags.DEFINE_enum(name, default, f.metadata["choices"], help_,
                        flag_values=fv)
    elif typing.get_origin(kind) is tuple:
      flags.DEFINE_list(name, [str(v) for v in default], help_,
                        flag_values=fv)
    else:
      define = {bool: flags.DEFINE_bool, int: flags.DEFINE_integer,
                float: flags.DEFINE_float, str: flags.DEFINE_string}[kind]
      define(name, default, help_, flag_values=fv)
  flags.DEFINE_string("workdir", default_workdir,
                      "Output directory (results, plots, checkpoints).",
                      flag_values=fv)
  flags.DEFINE_string("compilation_cache",
                      os.path.join(paths.cache_dir(), "xla"),
                      "Persistent XLA compilation cache ('' disables it).",
                      flag_values=fv)
  flags.DEFINE_bool("distributed", False,
                    "Call jax.distributed.initialize() first, to run one "
                    "process per host of a TPU pod or GPU cluster (see "
                    "docs/scale.md).", flag_values=fv)
  flags.DEFINE_string("coordinator_address", "",
                      "With --distributed: host:port of process 0 (''"
                      ": detected on TPU pods, Slurm, Open MPI, or taken "
                      "from $JAX_COORDINATOR_ADDRESS).", flag_values=fv)
  flags.DEFINE_integer("num_processes", None,
                       "With --distributed: number of processes (default: "
                       "detected).", flag_values=fv)
  flags.DEFINE_integer("process_id", None,
                       "With --distributed: this process's index, 0.. "
                       "num_processes - 1 (default: detected).",
                       flag_values=fv)


def config_from_flags(config_class, flag_values):
  """The `config_class` whose fields take the values of same-named flags.

  List flags become tuples of the field's element type.

  Raises:
    ValueError: a list item that is not of the element type, naming the flag.
  """
  hints = typing.get_type_hints(config_class)
  values = {}
  for f in dataclasses.fields(config_class):
    name = f.metadata.get("flag") or f.name
    value = flag_values[name].value
    if typing.get_origin(hints[f.name]) is tuple:
      element = typing.get_args(hints[f.name])[0]
      try:
        value = tuple(element(v) for v in value)
      except ValueError:
        raise ValueError(f"--{name}: every item must be a "
                         f"{element.__name__}, got {','.join(value)}."
                         ) from None
    values[f.name] = value
  return config_class(**values)


def enable_compilation_cache(cache_dir: str) -> None:
  """Turns on JAX's persistent compilation cache ("" leaves it off).

  A second run of the same experiment then loads its compiled steps from
  disk instead of compiling them again.
  """
  if not cache_dir:
    return
  os.makedirs(cache_dir, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", cache_dir)
  # Every program, however quick to compile: flax initialises a model one
  # operation at a time, dozens of small compiles that a threshold would
  # leave out of the cache.
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)


def main(experiment: Experiment, argv: Sequence[str],
         flag_values=None) -> None:
  """An experiment's absl `main`: flags in, one run, a summary printed.

  Joins the other processes of a multi-host run (--distributed, before
  anything touches a device), quiets the logs, turns on the compilation
  cache, runs `train_and_evaluate` and prints `format_results`. Returns
  nothing: `absl.app.run` takes a returned value for the exit status.
  """
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  from absl import logging  # pylint: disable=g-import-not-at-top
  fv = flag_values if flag_values is not None else flags.FLAGS
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if fv["distributed"].value:
    jax.distributed.initialize(
        coordinator_address=fv["coordinator_address"].value or None,
        num_processes=fv["num_processes"].value,
        process_id=fv["process_id"].value)
  if not fv["verbosity"].present:
    # Orbax logs every checkpoint at INFO; keep the terminal for the bar or,
    # without it, for metajax's own lines (a record each, summary.LogWriter).
    logging.set_verbosity(logging.WARNING)
    if not fv["progress"].value:
      std_logging.getLogger("metajax").setLevel(std_logging.INFO)
  enable_compilation_cache(fv["compilation_cache"].value)
  config = config_from_flags(experiment.config_class, fv)
  workdir = fv["workdir"].value
  results = train_and_evaluate(experiment, config, workdir)
  print(experiment.format_results(results))
  written = [os.path.join(workdir, name) for name in experiment.outputs]
  print(f"wrote {', '.join(written)}")
