r"""Student-performance prediction with cold-start personalisation.

  python experiments/student_performance.py --dataset=assist2009 --model=irt

Trains the model jointly (the usual knowledge-tracing baseline) and with each
of --algorithm on the training students of --dataset, then reports on the
test students the usual next-answer AUC, accuracy and RMSE and the
cold-start table (AUC after adapting on each student's first k answers, for
k in --support_sizes, with 95% bootstrap intervals over students). Writes
results.json, cold_start.png and per-method logs and orbax checkpoints to
--workdir; rerunning with the same flags resumes. The data is read from
--data_dir, else $METAJAX_DATA_DIR, else the per-user data folder
(`metajax.data.paths`); --download fetches ASSISTments 2009 and Statics2011.
Every field of `metajax.experiments.student_performance.Config` is a flag
(`--help`).
"""

import functools

from absl import app

from metajax.experiments import harness
from metajax.experiments import student_performance

harness.define_flags(student_performance.Config,
                     "workdirs/student_performance")

if __name__ == "__main__":
  app.run(functools.partial(harness.main, student_performance.EXPERIMENT))
