"""The benchmark workloads as plain NumPy: shapes, inputs, initial weights.

Both frameworks read their inputs and starting weights from here, so they
time the same computation on the same numbers, and their first meta-losses
must agree (the driver checks this).

* "maml": Omniglot-shaped conv4 (4 x [3x3 conv, 64 filters, stride 2, SAME
  padding, ReLU], mean-pool, linear), 28x28x1 images, 5-way 1-shot with 15
  query images per class, meta-batch 32, inner lr 0.4, exact second order,
  Adam 1e-3.
* "protonet": Prototypical Networks on 5-way 1-shot episodes of the same
  images, conv4 with 2x2 max-pooling after each ReLU (no strides), 32
  episodes per step, Adam 1e-3.
* "student": the student-performance meta-step: MAML on the IRT-style
  `StudentModel` of `experiments/student_performance.py` (110 skills,
  windows of 200 answers, 5 support answers, 5 inner steps at lr 1.0 on the
  per-student ability and profile, loss over answers + 20), 32 students.

Image arrays are NHWC float32; kernels HWIO, as in `metajax.models`.
"""

from typing import Dict, NamedTuple

import numpy as np

WORKLOADS = ("maml", "protonet", "student")
WAYS, SHOTS, QUERY, IMAGE = 5, 1, 15, 28
WIDTH = 64
META_BATCH = 32
MAML_INNER_LR = 0.4
OUTER_LR = 1e-3
NUM_SKILLS, WINDOW, SUPPORT, PERSONAL_DIM = 110, 200, 5, 8
STUDENT_INNER_LR, STUDENT_PRIOR_ANSWERS = 1.0, 20.0
STUDENT_INNER_STEPS = 5


class EpisodeBatch(NamedTuple):
  """`meta_batch` few-shot episodes.

  support_x `[B, WAYS*SHOTS, 28, 28, 1]` float32, support_y `[B, WAYS*SHOTS]`
  int32, query_x `[B, WAYS*QUERY, 28, 28, 1]`, query_y `[B, WAYS*QUERY]`.
  """
  support_x: np.ndarray
  support_y: np.ndarray
  query_x: np.ndarray
  query_y: np.ndarray


class StudentBatch(NamedTuple):
  """`meta_batch` students: questions `[B, WINDOW]` int32 in 1..NUM_SKILLS,
  answers `[B, WINDOW]` int8 in {0, 1}; the first SUPPORT answers of each are
  the support set, the rest the query set."""
  questions: np.ndarray
  answers: np.ndarray


def episodes(meta_batch: int = META_BATCH, seed: int = 0) -> EpisodeBatch:
  """Random images standing in for Omniglot: speed depends on shapes only."""
  rng = np.random.default_rng(seed)
  images = lambda n: rng.random((meta_batch, n, IMAGE, IMAGE, 1),
                                dtype=np.float32)
  labels = lambda per_class: np.broadcast_to(
      np.repeat(np.arange(WAYS, dtype=np.int32), per_class),
      (meta_batch, WAYS * per_class)).copy()
  return EpisodeBatch(images(WAYS * SHOTS), labels(SHOTS),
                      images(WAYS * QUERY), labels(QUERY))


def students(meta_batch: int = META_BATCH, seed: int = 0) -> StudentBatch:
  rng = np.random.default_rng(seed)
  return StudentBatch(
      rng.integers(1, NUM_SKILLS + 1, (meta_batch, WINDOW), dtype=np.int32),
      rng.integers(0, 2, (meta_batch, WINDOW), dtype=np.int8))


def conv4_weights(num_outputs, seed: int = 0) -> Dict[str, Dict[str, np.ndarray]]:
  """Flax-named conv4 weights: Conv_0..Conv_3 {kernel HWIO, bias}, head.

  `num_outputs=None` leaves out the head (an embedding network). LeCun-normal
  kernels, zero biases, as `flax.linen` initialises them.
  """
  rng = np.random.default_rng(seed)
  lecun = lambda shape, fan_in: (rng.standard_normal(shape) /
                                 np.sqrt(fan_in)).astype(np.float32)
  weights, channels = {}, 1
  for i in range(4):
    weights[f"Conv_{i}"] = {
        "kernel": lecun((3, 3, channels, WIDTH), 9 * channels),
        "bias": np.zeros(WIDTH, np.float32)}
    channels = WIDTH
  if num_outputs is not None:
    weights["head"] = {"kernel": lecun((WIDTH, num_outputs), WIDTH),
                       "bias": np.zeros(num_outputs, np.float32)}
  return weights


def student_weights(seed: int = 0) -> Dict[str, Dict[str, np.ndarray]]:
  """`StudentModel(NUM_SKILLS)` weights (IRT form), as flax names them."""
  rng = np.random.default_rng(seed)
  n = NUM_SKILLS + 1
  return {
      "difficulty": {"embedding": np.zeros((n, 1), np.float32)},
      "item_profile": {"embedding": (0.1 * rng.standard_normal(
          (n, PERSONAL_DIM))).astype(np.float32)},
      "student": {"theta": np.zeros(1, np.float32),
                  "u": np.zeros(PERSONAL_DIM, np.float32)},
  }


def same_padding(size: int, stride: int, k: int = 3):
  """(before, after) padding of XLA's SAME for one spatial axis."""
  out = -(-size // stride)
  total = max((out - 1) * stride + k - size, 0)
  return total // 2, total - total // 2
