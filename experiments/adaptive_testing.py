r"""Computerised adaptive testing with a meta-learned question selector.

  python experiments/adaptive_testing.py --dataset=assist2009

Trains a response model of the students jointly (the fitted model of
classical adaptive testing) and BOBCAT (a selection policy meta-learned
with the model's initialisation) on the training students of --dataset.
Every test student's answers are split into a pool and held-out answers;
each selector (random, maximum Fisher information, KL information, the
learned policy) asks --test_lengths questions from the pool, one at a time,
and the adapted model is scored on the held-out answers: AUC and accuracy
with 95% bootstrap intervals over students, paired gains, selection times
and adaptive_testing.png in --workdir; rerunning with the same flags
resumes. Data as in experiments/student_performance.py. Every field of
`metajax.experiments.adaptive_testing.Config` is a flag (`--help`).
"""

import functools

from absl import app

from metajax.experiments import adaptive_testing
from metajax.experiments import harness

harness.define_flags(adaptive_testing.Config, "workdirs/adaptive_testing")

if __name__ == "__main__":
  app.run(functools.partial(harness.main, adaptive_testing.EXPERIMENT))
