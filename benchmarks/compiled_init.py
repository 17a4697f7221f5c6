r"""Seconds to initialise a network eagerly and as one compiled program.

  python benchmarks/compiled_init.py [--rounds=3]

The few-shot and continual experiments draw their networks' parameters with
`metajax.experiments.harness.compiled_init`, one compiled program, instead
of flax's eager `init`, which compiles a random-number program for every
parameter shape. This times both for the few-shot networks, each call in a
fresh Python process with no compilation cache (as a run starts), the two
ways taking turns, `--rounds` times; it prints each way's median and their
ratio.
"""

import statistics
import subprocess
import sys

from absl import app
from absl import flags

flags.DEFINE_integer("rounds", 3, "Timed starts of each way per network.")
FLAGS = flags.FLAGS

# {name: (network, example input)}, as the experiment builds them.
NETWORKS = {
    "conv4 (MAML, 28x28)": ("Conv4(num_outputs=5, downsample='stride')",
                            "(1, 28, 28, 1)"),
    "resnet12 (84x84x3)": ("ResNet12(num_outputs=None)", "(1, 84, 84, 3)"),
}

_PROGRAM = """
import time, jax, jax.numpy as jnp
from metajax.experiments import harness
from metajax.models import Conv4, ResNet12
net, example = {net}, jnp.zeros({shape})
init = (harness.compiled_init(net, example.shape) if {compiled}
        else lambda key: net.init(key, example))
start = time.perf_counter()
jax.block_until_ready(init(jax.random.PRNGKey(0)))
print(time.perf_counter() - start)
"""


def _seconds(net: str, shape: str, compiled: bool) -> float:
  out = subprocess.run(
      [sys.executable, "-c", _PROGRAM.format(net=net, shape=shape,
                                             compiled=compiled)],
      capture_output=True, text=True, check=True)
  return float(out.stdout.strip().splitlines()[-1])


def main(argv):
  del argv
  for name, (net, shape) in NETWORKS.items():
    times = {False: [], True: []}
    for _ in range(FLAGS.rounds):
      for compiled in (False, True):
        times[compiled].append(_seconds(net, shape, compiled))
    eager, compiled = (statistics.median(times[c]) for c in (False, True))
    print(f"{name}: eager init {eager:.2f} s, compiled {compiled:.2f} s "
          f"(medians of {FLAGS.rounds}); eager / compiled = "
          f"{eager / compiled:.1f}", flush=True)


if __name__ == "__main__":
  app.run(main)
