r"""Few-shot image classification benchmarks.

  python experiments/fewshot_vision.py --algorithm=protonet --workdir=/tmp/pn

Meta-trains --algorithm on the meta-train classes, reports validation accuracy
while training, and tests on --eval_episodes meta-test episodes for each of
--test_ways, writing results.json, metrics.jsonl, curves.png and orbax
checkpoints to --workdir. Rerunning with the same flags resumes.
"""

import os

from absl import app
from absl import flags

from metajax.experiments import common
from metajax.experiments import fewshot_vision as fv

_D = fv.Config()
_SHARED = os.path.normpath(os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data"))

flags.DEFINE_enum("algorithm", _D.algorithm, fv.ALGORITHMS, "Meta-learner.")
flags.DEFINE_enum("dataset", _D.dataset, fv.DATASETS,
                  "Dataset: omniglot, mini_imagenet (files under "
                  "--data_dir/mini_imagenet), cifar_fs or fc100 (tfds "
                  "cifar100 prepared in --data_dir).")
flags.DEFINE_enum("split", _D.split, ("vinyals", "lake"),
                  "Omniglot class split.")
flags.DEFINE_bool("train_on_val", _D.train_on_val,
                  "Meta-train on the meta-train and meta-validation classes "
                  "together (the papers' 1,200 Omniglot training characters); "
                  "no validation curve then.")
flags.DEFINE_enum("source", _D.source, fv.OMNIGLOT_SOURCES,
                  "Where the Omniglot drawings come from: npz arrays or "
                  "official zips under --data_dir/omniglot, a prepared tfds "
                  "dataset in --data_dir, or a download into --cache_dir.")
flags.DEFINE_enum("backbone", _D.backbone, fv.BACKBONES, "Network.")
flags.DEFINE_bool("trust_download", _D.trust_download,
                  "With --source=download: accept the official full zips, "
                  "whose SHA-256 metajax does not know, recording their hash "
                  "on first download.")
flags.DEFINE_integer("ways", _D.ways, "Classes per training episode.")
flags.DEFINE_integer("shots", _D.shots, "Support examples per class.")
flags.DEFINE_integer("query", _D.query,
                     "Query examples per class in training episodes.")
flags.DEFINE_list("test_ways", [str(w) for w in _D.test_ways],
                  "Way counts of the test episodes.")
flags.DEFINE_integer("test_shots", _D.test_shots,
                     "Support examples per class at test (0: --shots).")
flags.DEFINE_integer("test_query", _D.test_query,
                     "Query examples per class in test episodes.")
flags.DEFINE_integer("meta_batch_size", _D.meta_batch_size,
                     "Episodes per meta-step.")
flags.DEFINE_integer("inner_steps", _D.inner_steps,
                     "Inner gradient steps in training (MAML family).")
flags.DEFINE_integer("test_inner_steps", _D.test_inner_steps,
                     "Inner gradient steps at test (0: --inner_steps).")
flags.DEFINE_float("inner_lr", _D.inner_lr, "Inner learning rate.")
flags.DEFINE_float("outer_lr", _D.outer_lr, "Adam learning rate.")
flags.DEFINE_integer("lr_halve_every", _D.lr_halve_every,
                     "Halve the outer learning rate every N steps (0: never).")
flags.DEFINE_integer("num_steps", _D.num_steps, "Meta-training steps.")
flags.DEFINE_integer("eval_every", _D.eval_every,
                     "Steps between validation evaluations.")
flags.DEFINE_integer("val_episodes", _D.val_episodes,
                     "Validation episodes per evaluation (0: none).")
flags.DEFINE_integer("eval_episodes", _D.eval_episodes,
                     "Test episodes per test way count.")
flags.DEFINE_integer("width", _D.width, "Filters per conv layer.")
flags.DEFINE_string("task_chunk", _D.task_chunk,
                    "Tasks per pass of the meta-gradient: 'auto' (one at a "
                    "time on the CPU, where that is about 2-3x faster for "
                    "conv4; the whole batch on GPU/TPU), 0 (the whole batch "
                    "vmapped) or a chunk size. Ignored with --shard_tasks.")
flags.DEFINE_string("data_dir", _SHARED if os.path.isdir(_SHARED) else "",
                    "Folder holding omniglot/ (default ../shared/data).")
flags.DEFINE_string("cache_dir", os.path.join(
    os.path.expanduser("~"), ".cache", "metajax", "data"),
                    "Cache of preprocessed arrays ('' disables it).")
common.define_run_flags(_D, "workdirs/fewshot_vision")

FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  common.start(FLAGS, FLAGS.compilation_cache)
  config = common.config_from_flags(
      fv.Config, FLAGS, test_ways=tuple(int(w) for w in FLAGS.test_ways))
  results = fv.train_and_evaluate(config, FLAGS.workdir)
  print(fv.format_results(results))
  print(f"wrote {FLAGS.workdir}/results.json and {FLAGS.workdir}/curves.png")


if __name__ == "__main__":
  app.run(main)
