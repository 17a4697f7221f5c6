"""Small synthetic datasets written in the real files' formats.

They let the end-to-end experiment tests run every path of an experiment on
a fresh clone without the real data (`../shared/data`): the files go through
the same loaders as the real ones.
"""

import os

import numpy as np

from metajax.data.vision import omniglot

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def real_data_dir() -> str:
  """Where the tests look for the real data: $METAJAX_DATA_DIR or
  ../shared/data (this repository's development setup)."""
  return os.environ.get("METAJAX_DATA_DIR",
                        os.path.join(ROOT, "..", "shared", "data"))


# The end-to-end experiment tests run on the real data where it is (and in
# CI, where it must be) and on these synthetic files elsewhere: one of the
# two, because each run costs tens of seconds and both go through the same
# loaders and experiment code.
VARIANT = ("real" if os.path.isdir(real_data_dir()) or os.environ.get("CI")
           else "synthetic")


def write_omniglot(root: str, background: int = 12, evaluation: int = 6,
                   seed: int = 0) -> str:
  """Writes `root/omniglot/` like the real one: two npz files and splits.

  Each character is a random stroke pattern (ink 0 on paper 255); its 20
  drawings are the pattern with a few pixels flipped, so the classes are
  learnable. The Vinyals split files list every character at its four
  rotations: the background characters' rotations go to train (all but the
  last two characters) and val (the last two), the evaluation ones' to test.

  Returns:
    `root`, to pass as the data folder.
  """
  rng = np.random.default_rng(seed)
  folder = os.path.join(root, "omniglot")
  os.makedirs(os.path.join(folder, "vinyals_splits"), exist_ok=True)
  names = {}
  for which, count in (("background", background),
                       ("evaluation", evaluation)):
    patterns = rng.random((count, 1, 105, 105)) < 0.08
    flips = rng.random((count, 20, 105, 105)) < 0.01
    images = np.where(patterns ^ flips, 0, 255).astype(np.uint8)
    alphabet = np.array([f"Synthetic_{which}"] * count)
    character = np.array([f"character{i + 1:02d}" for i in range(count)])
    np.savez(os.path.join(folder, omniglot.NPZ_FILES[which]), images=images,
             alphabet=alphabet, character=character)
    names[which] = [f"{a}/{c}" for a, c in zip(alphabet, character)]
  rotations = lambda chars: [f"{c}/rot{r:03d}" for c in chars
                             for r in (0, 90, 180, 270)]
  splits = {"train.txt": rotations(names["background"][:-2]),
            "val.txt": rotations(names["background"][-2:]),
            "test.txt": rotations(names["evaluation"])}
  for file, lines in splits.items():
    with open(os.path.join(folder, "vinyals_splits", file), "w") as f:
      f.write("\n".join(lines) + "\n")
  return root


def write_knowledge_tracing(root: str, name: str = "synthetic_kt",
                            train: int = 160, test: int = 40,
                            questions: int = 30, seed: int = 0) -> str:
  """Writes `root/<name>/<name>_{train,test}.csv` in the three-line format.

  Answers follow a one-parameter IRT model: P(correct) = sigmoid(ability -
  difficulty), with one ability per student and one difficulty per question,
  so a student's first answers say something about the later ones.
  Sequences are 20 to 80 answers long.

  Returns:
    `root`, to pass as the data folder.
  """
  rng = np.random.default_rng(seed)
  difficulty = rng.normal(0.0, 1.0, questions)
  folder = os.path.join(root, name)
  os.makedirs(folder, exist_ok=True)
  for split, students in (("train", train), ("test", test)):
    with open(os.path.join(folder, f"{name}_{split}.csv"), "w") as f:
      for _ in range(students):
        ability = rng.normal(0.0, 1.5)
        length = int(rng.integers(20, 81))
        q = rng.integers(1, questions + 1, length)
        p = 1.0 / (1.0 + np.exp(difficulty[q - 1] - ability))
        a = (rng.random(length) < p).astype(int)
        f.write(f"{length}\n{','.join(map(str, q))},\n"
                f"{','.join(map(str, a))},\n")
  return root
