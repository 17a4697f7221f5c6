r"""Continual learning on Omniglot (OML, ANML, pretraining, scratch).

  python experiments/continual_omniglot.py --method=oml --workdir=workdirs/oml

Trains the network of --method on the background alphabets (resuming from
--workdir), then learns streams of evaluation-alphabet characters online,
one drawing at a time, and writes results.json and continual.png: accuracy
on the drawings learnt and on held-out drawings after 10 ... 600 classes.
Every field of `metajax.experiments.continual_omniglot.Config` is a flag
(`--help`).
"""

import functools

from absl import app

from metajax.experiments import continual_omniglot
from metajax.experiments import harness

harness.define_flags(continual_omniglot.Config, "workdirs/continual_oml")

if __name__ == "__main__":
  app.run(functools.partial(harness.main, continual_omniglot.EXPERIMENT))
