r"""One figure and one table of finished continual_omniglot runs.

  python experiments/continual_compare.py \
      --workdirs=workdirs/oml,workdirs/anml,workdirs/pretrain,workdirs/scratch \
      --out=continual.png
"""

from absl import app
from absl import flags

from metajax.experiments import continual_omniglot

WORKDIRS = flags.DEFINE_list("workdirs", None, "Finished runs of "
                             "experiments/continual_omniglot.py.",
                             required=True)
OUT = flags.DEFINE_string("out", "continual.png", "Where the figure goes.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  print(continual_omniglot.compare(WORKDIRS.value, OUT.value))
  print(f"wrote {OUT.value}")


if __name__ == "__main__":
  app.run(main)
