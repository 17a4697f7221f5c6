r"""Does a trained hallucinator help ProtoNets? Paired accuracies at test.

  python benchmarks/hallucination_ablation.py \
      --workdir=workdirs/table/protonet20_hal2 --baseline=workdirs/table/protonet20

`--workdir` is a finished `fewshot_vision.py --algorithm=protonet
--hallucinate=N` run; `--baseline`, optionally, a plain ProtoNets run of the
same data and test settings. Every learner below is scored on the same test
episodes as those runs' `results.json` (their `--seed`'s test key, the
run's `--eval_episodes`, `--test_query` and shots; the script stops if
"as trained" does not reproduce the run's `results.json`), so differences
are paired, episode by episode:

* "as trained": the hallucinating run as it tests (one fixed noise draw);
* "zero noise": the same generator fed zeros for noise (Wang et al.'s
  deterministic-generator ablation), done by zeroing the generator's
  first-layer weights that read the noise;
* "no generator": the same embedding, prototypes of the real support
  embeddings only (plain ProtoNets on the hallucinating run's embedding);
* "baseline run": the plain ProtoNets run.

Prints a table of mean accuracy ± 95% CI per `--ways`, and each learner's
paired difference from "as trained" ± its 95% CI.
"""

import json
import os

from absl import app
from absl import flags
from absl import logging
import jax
import numpy as np

from metajax import algorithms
from metajax import checkpoint
from metajax.evaluation import mean_ci
from metajax.experiments import fewshot_vision as fv

flags.DEFINE_string("workdir", None, "A finished --hallucinate run.")
flags.DEFINE_string("baseline", "", "A finished plain ProtoNets run with the "
                    "same test settings (optional).")
flags.DEFINE_list("ways", ["20"], "Test way counts.")
FLAGS = flags.FLAGS


def _restored(workdir: str, ways: int):
  """(learner, meta-parameters) of a run's newest checkpoint."""
  learner = fv.make_learner(fv.read_config(workdir), ways)
  return learner, checkpoint.restore_params(
      workdir, learner.init(jax.random.PRNGKey(0)))


def _without_noise(generator_params, embed_dim: int):
  """The generator's parameters with the first layer blind to the noise
  (inputs are `[seed embedding, noise]`, the noise last)."""
  first = "Dense_0"  # the MLP's first layer
  kernel = generator_params["params"][first]["kernel"]
  params = dict(generator_params["params"])
  params[first] = dict(params[first],
                       kernel=kernel.at[embed_dim:].set(0.0))
  return {**generator_params, "params": params}


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every restore
  config = fv.read_config(FLAGS.workdir)
  if not config.hallucinate:
    raise ValueError(f"{FLAGS.workdir} was not trained with --hallucinate.")
  if FLAGS.baseline:
    other = fv.read_config(FLAGS.baseline)
    if other.algorithm != "protonet" or other.hallucinate:
      raise ValueError(f"--baseline {FLAGS.baseline} is not a plain ProtoNets "
                       f"run (algorithm={other.algorithm!r}, hallucinate="
                       f"{other.hallucinate}).")
    for name in ("dataset", "split", "seed", "eval_episodes", "test_query",
                 "test_shots", "shots"):
      if getattr(other, name) != getattr(config, name):
        raise ValueError(
            f"--baseline {FLAGS.baseline} has {name}="
            f"{getattr(other, name)!r}, --workdir {FLAGS.workdir} has"
            f" {getattr(config, name)!r}: its test "
            f"episodes differ, so no paired comparison.")
  splits = fv.load_splits(config)
  test_key = jax.random.split(jax.random.PRNGKey(config.seed), 3)[2]
  print(f"{FLAGS.workdir}: ProtoNets with {config.hallucinate} hallucinated "
        f"embeddings a class; {config.eval_episodes} test episodes, "
        f"{config.test_shots or config.shots}-shot, {config.test_query} "
        f"query a class")
  print("| test ways | learner | accuracy | paired difference from "
        "\"as trained\" |")
  print("| --- | --- | --- | --- |")
  for ways in (int(w) for w in FLAGS.ways):
    learner, meta_params = _restored(FLAGS.workdir, ways)
    net = fv.BACKBONES[config.backbone](config, None, False)
    init_fn, apply_fn, output = fv._model(config, net)  # pylint: disable=protected-access
    plain = algorithms.protonet(init_fn, apply_fn, ways=ways)
    runs = {
        "as trained": (learner, meta_params),
        "zero noise": (learner, {**meta_params, "generator": _without_noise(
            meta_params["generator"], output.shape[-1])}),
        "no generator": (plain, {"params": meta_params["params"]}),
    }
    if FLAGS.baseline:
      base_learner, base_params = _restored(FLAGS.baseline, ways)
      runs["baseline run"] = (base_learner, base_params)
    scores = {name: fv._accuracy(  # pylint: disable=protected-access
        config, run_learner, params, splits["test"], ways,
        config.eval_episodes, test_key, "test")
              for name, (run_learner, params) in runs.items()}
    with open(os.path.join(FLAGS.workdir, "results.json")) as f:
      recorded = [t["accuracy"] for t in json.load(f)["test"]
                  if t["ways"] == ways]
    if recorded and abs(recorded[0] - np.mean(scores["as trained"])) > 1e-6:
      raise RuntimeError(
          f"{ways}-way \"as trained\" scored {np.mean(scores['as trained'])}"
          f", but {FLAGS.workdir}/results.json holds {recorded[0]}: these are "
          f"not the run's test episodes.")
    for name, values in scores.items():
      acc = mean_ci(values)
      line = f"| {ways} | {name} | {acc['mean']:.2%} ± {acc['ci95']:.2%} | "
      if name != "as trained":
        diff = mean_ci(np.asarray(values) - scores["as trained"])
        line += f"{diff['mean'] * 100:+.2f} ± {diff['ci95'] * 100:.2f} points"
      print(line + " |")


if __name__ == "__main__":
  flags.mark_flag_as_required("workdir")
  app.run(main)
