r"""1-D regression: neural processes against MAML, with the exact GP ceiling.

  python experiments/regression.py --workdir=workdirs/regression

Meta-trains each of --learners (CNP, NP, ANP and a MAML baseline of the
CNP's parameter count) on GP functions of --kernel (or, with
--tasks=sinusoid, on the sinusoids of the main job), and scores them on the
same held-out tasks of every --eval_kernels kernel: context and target
log-likelihood per point and target MSE with 95% intervals, beside the exact
GP posterior. Writes results.json, predictions.png, ll_vs_context.png and
per-learner logs and checkpoints to --workdir; rerunning with the same flags
resumes. Every field of `metajax.experiments.regression.Config` is a flag
(`--help`).
"""

import functools

from absl import app

from metajax.experiments import harness
from metajax.experiments import regression

harness.define_flags(regression.Config, "workdirs/regression")

if __name__ == "__main__":
  app.run(functools.partial(harness.main, regression.EXPERIMENT))
