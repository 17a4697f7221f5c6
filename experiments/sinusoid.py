r"""Few-shot sinusoid regression (MAML paper, section 5.1).

  python experiments/sinusoid.py --workdir=workdirs/sinusoid

Meta-trains --algorithm and a jointly trained baseline, evaluates both on
held-out tasks after 0, 1 and 10 gradient steps, and writes results.json,
sinusoid.png and checkpoints to --workdir. Rerunning with the same flags
resumes from the checkpoints. Every field of
`metajax.experiments.sinusoid.Config` is a flag (`--help`).
"""

import functools

from absl import app

from metajax.experiments import harness
from metajax.experiments import sinusoid

harness.define_flags(sinusoid.Config, "workdirs/sinusoid")

if __name__ == "__main__":
  app.run(functools.partial(harness.main, sinusoid.EXPERIMENT))
