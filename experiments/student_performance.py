r"""Student-performance prediction with cold-start personalisation.

  python experiments/student_performance.py --dataset=assist2009 --model=irt

Trains the model jointly (the usual knowledge-tracing baseline) and with each
of --algorithm on the training students of --dataset, then reports on the
test students the usual next-answer AUC, accuracy and RMSE and the
cold-start table (AUC after adapting on each student's first k answers, for
k in --support_sizes, with 95% bootstrap intervals over students). Writes
results.json, cold_start.png and per-method logs and orbax checkpoints to
--workdir; rerunning with the same flags resumes.
"""

import os

from absl import app
from absl import flags

from metajax.experiments import common
from metajax.experiments import student_performance as sp

_D = sp.Config()
_SHARED = os.path.normpath(os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data"))

flags.DEFINE_string("dataset", _D.dataset,
                    "Dataset name: the file prefix of its three-line files "
                    "(<name>_train.csv, ...), or assist2009 / statics2011.")
flags.DEFINE_string("data_dir", _SHARED if os.path.isdir(_SHARED) else "",
                    "Folder holding knowledge_tracing/<name>/, <name>/ or the "
                    "files themselves (default ../shared/data).")
flags.DEFINE_integer("num_questions", _D.num_questions,
                     "Number of question ids (0: the largest id in the files).")
flags.DEFINE_integer("fold", _D.fold,
                     "Train/valid fold 1..5 (0: the whole train file).")
flags.DEFINE_enum("model", _D.model, sp.MODELS,
                  "irt: multidimensional IRT; dkt: LSTM knowledge tracing; "
                  "both with per-student ability and profile.")
flags.DEFINE_list("algorithm", list(_D.algorithms),
                  f"Meta-learners to compare with joint training, from "
                  f"{sp.META_ALGORITHMS}.")
flags.DEFINE_list("support_sizes", [str(k) for k in _D.support_sizes],
                  "Support sizes k of the cold-start table (and of training "
                  "tasks).")
flags.DEFINE_integer("inner_steps", _D.inner_steps,
                     "Gradient steps of adaptation and fine-tuning.")
flags.DEFINE_float("inner_lr", _D.inner_lr,
                   "Inner learning rate of the meta-learners.")
flags.DEFINE_float("prior_answers", _D.prior_answers,
                   "Losses are sums over answers divided by (answers + "
                   "this): adaptation on a few answers moves less.")
flags.DEFINE_float("outer_lr", _D.outer_lr, "Adam learning rate.")
flags.DEFINE_integer("meta_batch_size", _D.meta_batch_size,
                     "Students (windows) per step.")
flags.DEFINE_integer("num_steps", _D.num_steps, "Training steps per method.")
flags.DEFINE_integer("num_epochs", _D.num_epochs,
                     "If > 0, training epochs per method instead of "
                     "--num_steps.")
flags.DEFINE_integer("eval_every", _D.eval_every,
                     "Steps between validation scores; each method's "
                     "best-scoring parameters are tested (early stopping).")
flags.DEFINE_enum("meta_init", _D.meta_init, sp.META_INITS,
                  "Where meta-learners start: the joint model's parameters "
                  "or a fresh initialisation.")
flags.DEFINE_integer("window", _D.window,
                     "Training sequences are cut into windows of this many "
                     "answers (all kept).")
flags.DEFINE_integer("hidden", _D.hidden, "LSTM width (dkt).")
flags.DEFINE_integer("embed_dim", _D.embed_dim, "Embedding width (dkt).")
flags.DEFINE_integer("personal_dim", _D.personal_dim,
                     "Width of the per-student profile.")
flags.DEFINE_integer("online_every", _D.online_every,
                     "Usual protocol: re-adapt every this many answers.")
flags.DEFINE_integer("eval_batch", _D.eval_batch,
                     "Test tasks per compiled evaluation call.")
flags.DEFINE_integer("bootstrap", _D.bootstrap,
                     "Bootstrap replicates of the cold-start intervals.")
common.define_run_flags(_D, "workdirs/student_performance")

FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  common.start(FLAGS, FLAGS.compilation_cache)
  config = common.config_from_flags(
      sp.Config, FLAGS, algorithms=tuple(FLAGS.algorithm),
      support_sizes=tuple(int(k) for k in FLAGS.support_sizes))
  results = sp.train_and_evaluate(config, FLAGS.workdir)
  print(sp.format_results(results))
  print(f"wrote {FLAGS.workdir}/results.json and "
        f"{FLAGS.workdir}/cold_start.png")


if __name__ == "__main__":
  app.run(main)
