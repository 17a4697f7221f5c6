r"""Few-shot image classification benchmarks.

  python experiments/fewshot_vision.py --algorithm=protonet --workdir=/tmp/pn

Meta-trains --algorithm on the meta-train classes, reports validation accuracy
while training, and tests on --eval_episodes meta-test episodes for each of
--test_ways, writing results.json, metrics.jsonl, curves.png and orbax
checkpoints to --workdir. Rerunning with the same flags resumes. The data is
read from --data_dir, else $METAJAX_DATA_DIR, else the per-user data folder
(`metajax.data.paths`). Every field of
`metajax.experiments.fewshot_vision.Config` is a flag (`--help`).
"""

import functools

from absl import app

from metajax.experiments import fewshot_vision
from metajax.experiments import harness

harness.define_flags(fewshot_vision.Config, "workdirs/fewshot_vision")

if __name__ == "__main__":
  app.run(functools.partial(harness.main, fewshot_vision.EXPERIMENT))
