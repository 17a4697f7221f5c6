r"""Knowledge-tracing evaluation at the whole width vs narrower widths.

  python benchmarks/kt_eval_widths.py --dataset=assist2009 --students=300

The workload is the usual protocol of `experiments/student_performance.py`
with re-adaptation every 20 answers (`kt_eval.usual_protocol(adapt=True,
online_every=20)`, the README's DKT and SAKT setting) on `--students` test
students of fold 1 drawn at random: a MAML learner of the experiment's
`make_learner` (`--embed_dim=16 --hidden=64`, the README's Statics2011
widths), randomly initialised, since the time does not depend on what was
learned, scoring `--batch` tasks a call. Every task is scored either at the
width of the longest student (what `scored_predictions` did before it had
`needed`) or at the narrowest of `length_buckets`' widths that holds the
positions it reads.

For each model, both ways are run once to compile, then `--rounds` times
alternately in this one process; the table gives the median seconds of a
whole pass (every task), their ratio, and the largest difference between
the two ways' probabilities (zero or float rounding: the models are
causal).
"""

import dataclasses
import time

from absl import app
from absl import flags
import jax
import numpy as np

from metajax.data.students import sequences
from metajax.evaluation import students as kt_eval
from metajax.experiments import student_performance as sp

flags.DEFINE_string("dataset", "assist2009", "assist2009 or statics2011.")
flags.DEFINE_integer("students", 300, "Test students drawn at random.")
flags.DEFINE_integer("rounds", 3, "Timed passes of each way.")
flags.DEFINE_list("models", ["dkt", "sakt"], "Student models to time.")
flags.DEFINE_integer("every", 20, "Answers between re-adaptations.")
flags.DEFINE_integer("batch", 64, "Tasks per compiled call (the README's "
                     "SAKT runs use --eval_batch=64: 256 runs out of 24 GB "
                     "at the whole width).")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  config = sp.Config(dataset=FLAGS.dataset, embed_dim=16, hidden=64)
  data = sp.load_data(config)
  rng = np.random.default_rng(0)
  chosen = np.sort(rng.choice(data.test.num_students,
                              min(FLAGS.students, data.test.num_students),
                              replace=False))
  arrays = sequences.pack(data.test.select(list(chosen)))
  every = FLAGS.every
  rows, starts, needed = kt_eval.online_blocks(arrays.lengths, every)
  width = arrays.questions.shape[1]
  print(f"{FLAGS.dataset}: {len(chosen)} test students, {len(rows)} tasks, "
        f"longest {width} answers, median {int(np.median(arrays.lengths))}; "
        f"widths used: {sorted(set(kt_eval.length_buckets(needed, width)))}")
  print("| model | whole width (s) | narrower widths (s) | ratio | "
        "largest |difference| |")
  print("| --- | --- | --- | --- | --- |")
  for name in FLAGS.models:
    learner = sp.make_learner(dataclasses.replace(config, model=name),
                              "maml", data.num_questions)
    params = learner.init(jax.random.PRNGKey(0))
    run = kt_eval.scorer(learner, kt_eval.online_block_task(every), True)
    ways = {"whole": None, "narrow": needed}

    def score(way):
      return kt_eval.scored_predictions(run, params, arrays, rows, starts,
                                        FLAGS.batch, needed=ways[way])
    out = {way: score(way) for way in ways}  # compiles every width
    times = {way: [] for way in ways}
    for _ in range(FLAGS.rounds):
      for way in ways:
        start = time.perf_counter()
        score(way)
        times[way].append(time.perf_counter() - start)
    whole, narrow = (float(np.median(times[w])) for w in ways)
    diff = float(np.abs(out["whole"][0] - out["narrow"][0]).max())
    print(f"| {name} | {whole:.2f} | {narrow:.2f} | {whole / narrow:.1f}x "
          f"| {diff:.1e} |", flush=True)


if __name__ == "__main__":
  app.run(main)
