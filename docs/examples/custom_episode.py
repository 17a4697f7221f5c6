r"""Classify your own drawings with a trained few-shot model.

  python docs/examples/custom_episode.py --workdir=workdirs/protonet_1shot \
      --images=../shared/data/omniglot/images_background_small1.zip

Builds one 20-way 1-shot episode from official-layout Omniglot PNGs (a zip or
a folder of `images_*/<Alphabet>/characterNN/*.png`): the first drawing of 20
characters is the support set, three more drawings of each the query set.
`fewshot_vision.load_predictor` takes the drawings exactly as decoded from the PNGs
(uint8 105x105, 255 = paper) and applies the training preprocessing itself.
"""

from absl import app
from absl import flags
import numpy as np

from metajax.data.vision import omniglot_official
from metajax.experiments import fewshot_vision

flags.DEFINE_string("workdir", None, "Workdir of a fewshot_vision run.")
flags.DEFINE_string("images", None, "Official Omniglot zip or folder.")
flags.DEFINE_integer("ways", 20, "Characters in the episode.")
flags.DEFINE_integer("first", 0, "Index of the first character used.")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  drawings = omniglot_official.load_official(FLAGS.images)
  chars = slice(FLAGS.first, FLAGS.first + FLAGS.ways)
  support_x = drawings.images[chars, 0]                 # [ways, 105, 105]
  query_x = drawings.images[chars, 1:4].reshape(-1, 105, 105)
  support_y = np.arange(FLAGS.ways)
  query_y = np.repeat(support_y, 3)

  predict = fewshot_vision.load_predictor(FLAGS.workdir)
  logits = predict(support_x, support_y, query_x)       # [3 * ways, ways]
  accuracy = float(np.mean(np.argmax(logits, axis=-1) == query_y))
  names = drawings.names[chars]
  print(f"{FLAGS.ways}-way 1-shot episode from {names[0]} .. {names[-1]}: "
        f"accuracy {accuracy:.3f} on {len(query_y)} query drawings")


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir", "images"])
  app.run(main)
