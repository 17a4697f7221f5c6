"""What every experiment does around its training: cache, versions, files,
and the checks that a rerun continues the same run."""

import dataclasses
import glob
import json
import math
import os
import platform
import sys
from typing import Any, Dict, Sequence

from absl import flags
from absl import logging
import jax

from metajax import workdir as workdir_lib

DEFAULT_CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "metajax",
                                 "xla")


def enable_compilation_cache(cache_dir: str = DEFAULT_CACHE_DIR) -> None:
  """Turns on JAX's persistent compilation cache ("" leaves it off).

  A second run of the same experiment then loads its compiled steps from
  disk instead of compiling them again.
  """
  if not cache_dir:
    return
  os.makedirs(cache_dir, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", cache_dir)
  # Every program, however quick to compile: flax initialises a model one
  # operation at a time, dozens of small compiles (3.4 s for Conv4) that a
  # threshold would leave out of the cache. A warm few-shot MAML run starts
  # about 5 s sooner with all of them cached.
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)


def environment() -> Dict[str, Any]:
  """Versions and machine facts recorded in every results.json."""
  import flax
  import optax
  import metajax
  return {
      "metajax": metajax.__version__, "jax": jax.__version__,
      "flax": flax.__version__, "optax": optax.__version__,
      "python": sys.version.split()[0], "backend": jax.default_backend(),
      "devices": [str(d) for d in jax.devices()],
      "machine": platform.machine(), "cpu_count": os.cpu_count(),
  }


def check_rerun(workdir: str, config, may_change: Sequence[str]) -> None:
  """Refuses to resume `workdir` with settings that change what is trained.

  The settings a run started with are in `workdir/config.json` (or, for
  older workdirs, the "config" of `results.json`). Fields named in
  `may_change` only extend or re-evaluate a run (more steps, more test
  episodes, logging); any other field that differs would resume parameters
  trained one way under a label that says another.

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
  now = json.loads(json.dumps(dataclasses.asdict(config)))
  defaults = json.loads(json.dumps(dataclasses.asdict(type(config)())))
  differ = [(name, saved.get(name, defaults[name]), value)
            for name, value in now.items()
            if name not in may_change
            and saved.get(name, defaults[name]) != value]
  if differ:
    lines = "\n".join(f"  --{name}: {old!r} in the workdir, {new!r} now"
                      for name, old, new in differ)
    raise ValueError(
        f"{workdir} holds a run trained with other settings:\n{lines}\n"
        f"Resuming it would train on, or label its results with, settings "
        f"it was not trained with. Use another --workdir, or the workdir's "
        f"values. Only these may change on a rerun: "
        f"{', '.join(sorted(may_change))}.")


def check_not_past(workdir: str, num_steps: int) -> None:
  """Refuses a `num_steps` below the step a workdir's run has reached.

  Looks at `workdir/checkpoints/` and the learners' `workdir/*/checkpoints/`.
  Checked before `save_config`, so that config.json never labels a run with
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


def save_config(workdir: str, config) -> None:
  """Writes `config` to `workdir/config.json` (atomically)."""
  workdir_lib.write_json(os.path.join(workdir, "config.json"),
                         dataclasses.asdict(config))


def check_positive(config, names: Sequence[str], least: int = 1) -> None:
  """A ValueError naming the first field of `names` below `least`."""
  for name in names:
    value = getattr(config, name)
    values = value if isinstance(value, (tuple, list)) else (value,)
    if any(v < least for v in values):
      raise ValueError(f"{name} must be >= {least}, got {value}.")


def check_rates(config, names: Sequence[str]) -> None:
  """A ValueError naming the first learning rate that is not finite and > 0."""
  for name in names:
    value = getattr(config, name)
    if not (math.isfinite(value) and value > 0):
      raise ValueError(f"{name} must be a finite learning rate > 0, got "
                       f"{value}.")


def start(flag_values, compilation_cache: str) -> None:
  """What an experiment's `main` does first.

  Joins the other processes of a multi-host run (`--distributed`, before
  anything touches a device), quiets the logs, turns on the compilation
  cache.
  """
  if flag_values["distributed"].value:
    jax.distributed.initialize(
        coordinator_address=flag_values["coordinator_address"].value or None,
        num_processes=flag_values["num_processes"].value,
        process_id=flag_values["process_id"].value)
  if not flag_values["verbosity"].present:
    # Orbax logs every checkpoint at INFO; keep the terminal for the bar.
    logging.set_verbosity(logging.WARNING)
  enable_compilation_cache(compilation_cache)


def config_from_flags(config_class, flag_values, **overrides):
  """A dataclass config whose fields take the values of same-named flags.

  List flags arrive as lists of strings; `overrides` supplies the converted
  values of such fields (e.g. `test_ways=(5, 20)`).
  """
  values = {f.name: flag_values[f.name].value
            for f in dataclasses.fields(config_class) if f.name in flag_values}
  values.update(overrides)
  return config_class(**values)


def define_run_flags(defaults, workdir: str) -> None:
  """Defines the flags every experiment shares, with `defaults`' values.

  Args:
    defaults: the experiment's default config (fields seed, log_every,
      checkpoint_every).
    workdir: the default output directory.
  """
  flags.DEFINE_integer("seed", defaults.seed, "Seed of the whole run.")
  flags.DEFINE_integer("log_every", defaults.log_every,
                       "Meta-steps per compiled call and per log line.")
  flags.DEFINE_integer("checkpoint_every", defaults.checkpoint_every,
                       "Meta-steps between checkpoints.")
  flags.DEFINE_bool("progress", True, "Show progress bars.")
  flags.DEFINE_string("compilation_cache", DEFAULT_CACHE_DIR,
                      "Persistent XLA compilation cache ('' disables it).")
  flags.DEFINE_string("workdir", workdir,
                      "Output directory (results, plots, checkpoints).")
  flags.DEFINE_bool("shard_tasks", False,
                    "Shard each meta-batch over all visible devices.")
  flags.DEFINE_bool("distributed", False,
                    "Call jax.distributed.initialize() first, to run one "
                    "process per host of a TPU pod or GPU cluster (see "
                    "docs/scale.md).")
  flags.DEFINE_string("coordinator_address", "",
                      "With --distributed: host:port of process 0 (''"
                      ": detected on TPU pods, Slurm, Open MPI, or taken "
                      "from $JAX_COORDINATOR_ADDRESS).")
  flags.DEFINE_integer("num_processes", None,
                       "With --distributed: number of processes (default: "
                       "detected).")
  flags.DEFINE_integer("process_id", None,
                       "With --distributed: this process's index, 0.. "
                       "num_processes - 1 (default: detected).")
