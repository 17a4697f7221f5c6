"""What every experiment does around its training: cache, versions, files."""

import dataclasses
import json
import os
import platform
import sys
from typing import Any, Dict

from absl import flags
from absl import logging
import jax

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


def write_json(path: str, obj: Any) -> None:
  """Writes `obj` as indented JSON, atomically (a crash leaves the old file).

  On several hosts each process writes the same file through its own
  temporary one, so that their writes cannot collide.
  """
  tmp = f"{path}.{jax.process_index()}.tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True)
    f.write("\n")
  os.replace(tmp, path)


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
