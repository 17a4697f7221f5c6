r"""Few-shot sinusoid regression (MAML paper, section 5.1).

  python experiments/sinusoid.py --workdir=/tmp/sinusoid

Meta-trains --algorithm and a jointly trained baseline, evaluates both on
held-out tasks after 0, 1 and 10 gradient steps, and writes results.json,
sinusoid.png and checkpoints to --workdir. Rerunning with the same flags
resumes from the checkpoints.
"""

from absl import app
from absl import flags

from metajax.experiments import common
from metajax.experiments import sinusoid

_D = sinusoid.Config()

flags.DEFINE_enum("algorithm", _D.algorithm, sinusoid.ALGORITHMS,
                  "Meta-learner to compare with joint training.")
flags.DEFINE_integer("num_support", _D.num_support,
                     "K: support points per task.")
flags.DEFINE_integer("num_query", _D.num_query,
                     "Query points per task during meta-training.")
flags.DEFINE_integer("inner_steps", _D.inner_steps,
                     "Inner gradient steps during meta-training.")
flags.DEFINE_float("inner_lr", _D.inner_lr,
                   "Inner (and fine-tuning) learning rate.")
flags.DEFINE_float("outer_lr", _D.outer_lr, "Adam learning rate.")
flags.DEFINE_integer("meta_batch_size", _D.meta_batch_size,
                     "Tasks per meta-step.")
flags.DEFINE_integer("num_steps", _D.num_steps, "Meta-training steps.")
flags.DEFINE_list("hidden", [str(h) for h in _D.hidden],
                  "Hidden layer widths of the MLP.")
flags.DEFINE_integer("eval_tasks", _D.eval_tasks, "Held-out test tasks.")
flags.DEFINE_integer("eval_query", _D.eval_query,
                     "Query points per test task.")
flags.DEFINE_list("eval_steps", [str(s) for s in _D.eval_steps],
                  "Adaptation steps at which the test MSE is reported.")
common.define_run_flags(_D, "workdirs/sinusoid")

FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  common.start(FLAGS, FLAGS.compilation_cache)
  config = common.config_from_flags(
      sinusoid.Config, FLAGS, hidden=tuple(int(h) for h in FLAGS.hidden),
      eval_steps=tuple(int(k) for k in FLAGS.eval_steps))
  results = sinusoid.train_and_evaluate(config, FLAGS.workdir)
  print(sinusoid.format_table(results))
  print(f"wrote {FLAGS.workdir}/results.json and {FLAGS.workdir}/sinusoid.png")


if __name__ == "__main__":
  app.run(main)
