"""What every experiment does around its training: cache, versions, files."""

import json
import os
import platform
import sys
from typing import Any, Dict

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
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


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
  """Writes `obj` as indented JSON, atomically (a crash leaves the old file)."""
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True)
    f.write("\n")
  os.replace(tmp, path)
