"""The run harness: flags from configs, one opening and closing for all."""

import dataclasses
import json
import os

from absl import flags
import chex
import jax
import jax.numpy as jnp
import pytest

from metajax.experiments import fewshot_vision
from metajax.experiments import harness
from metajax.experiments import regression
from metajax.experiments import sinusoid
from metajax.experiments import student_performance
from metajax.models import Conv4
from metajax.models import RelationModule
from metajax.models.continual import ANMLNet
from metajax.models.continual import OMLNet

EXPERIMENTS = (sinusoid, fewshot_vision, student_performance, regression)
IMAGE = jnp.zeros((1, 28, 28, 1))


@pytest.mark.parametrize("net,example", [
    (Conv4(num_outputs=5, width=8, downsample="stride"), IMAGE),
    (RelationModule(width=8), jnp.zeros((1, 7, 7, 16))),  # pairs of maps
    (ANMLNet(10, width=8, nm_width=8), IMAGE),
    (OMLNet(10, width=8, hidden=16), IMAGE),
], ids=["conv4", "relation_module", "anml", "oml"])
def test_a_compiled_init_draws_the_eager_values(net, example):
  key = jax.random.PRNGKey(4)
  init = harness.compiled_init(net, example.shape)
  chex.assert_trees_all_equal(init(key), net.init(key, example))
  assert harness.compiled_init(net, example.shape) is init  # compiled once


def _flag_values(module, *argv):
  fv = flags.FlagValues()
  harness.define_flags(module.Config, "workdirs/x", flag_values=fv)
  fv(["prog", *argv])
  return fv


@pytest.mark.parametrize("module", EXPERIMENTS,
                         ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_default_flags_give_the_default_config(module):
  fv = _flag_values(module)
  assert harness.config_from_flags(module.Config, fv) == module.Config()
  assert fv["workdir"].value == "workdirs/x"
  assert module.EXPERIMENT.config_class is module.Config


def test_flags_convert_lists_and_take_their_own_names():
  fv = _flag_values(sinusoid, "--hidden=20,30", "--eval_steps=0,5",
                    "--algorithm=anil", "--seed=3")
  config = harness.config_from_flags(sinusoid.Config, fv)
  assert config.hidden == (20, 30) and config.eval_steps == (0, 5)
  assert config.algorithm == "anil" and config.seed == 3
  # The student experiment's `algorithms` field is the --algorithm flag.
  fv = _flag_values(student_performance, "--algorithm=maml,reptile",
                    "--support_sizes=0,4")
  config = harness.config_from_flags(student_performance.Config, fv)
  assert config.algorithms == ("maml", "reptile")
  assert config.support_sizes == (0, 4)
  with pytest.raises(flags.IllegalFlagValueError):
    _flag_values(sinusoid, "--algorithm=sgd")
  fv = _flag_values(sinusoid, "--hidden=20,wide")
  with pytest.raises(ValueError, match="--hidden: every item must be a int"):
    harness.config_from_flags(sinusoid.Config, fv)


def test_rerun_may_change_only_what_extends_or_reevaluates():
  may = harness.rerun_may_change(sinusoid.Config)
  assert {"num_steps", "eval_tasks", "log_every", "progress"} <= set(may)
  assert not {"seed", "inner_lr", "hidden", "algorithm"} & set(may)
  assert "data_dir" in harness.rerun_may_change(fewshot_vision.Config)


def _tiny_sinusoid(**kw):
  values = dict(num_steps=20, log_every=10, checkpoint_every=10,
                meta_batch_size=4, hidden=(8,), eval_tasks=8, eval_query=10,
                eval_steps=(0, 1), progress=False)
  values.update(kw)
  return sinusoid.Config(**values)


@pytest.mark.slow
def test_one_opening_and_closing_for_every_experiment(tmp_path):
  workdir = str(tmp_path / "run")
  config = _tiny_sinusoid()
  results = sinusoid.train_and_evaluate(config, workdir)
  assert results["experiment"] == "sinusoid"
  # Training time: seconds in training steps, per learner, from its log.
  assert set(results["train_time_s"]) == {"meta", "joint"}
  for name, seconds in results["train_time_s"].items():
    with open(os.path.join(workdir, name, "metrics.jsonl")) as f:
      last = [json.loads(l) for l in f][-1]
    assert seconds == last["train_s"] > 0
  assert sum(results["train_time_s"].values()) < results["wall_time_s"]
  assert results["environment"]["jax"]
  assert results["config"] == dataclasses.asdict(config)
  with open(os.path.join(workdir, "results.json")) as f:
    assert json.load(f) == json.loads(json.dumps(results))
  assert harness.read_config(sinusoid.Config, workdir) == config

  # A rerun that changes what is trained is refused before any write.
  with pytest.raises(ValueError, match=r"--seed: 0 in the workdir, 1 now"):
    sinusoid.train_and_evaluate(_tiny_sinusoid(seed=1), workdir)
  # Fewer steps than trained are refused; more steps resume.
  with pytest.raises(ValueError, match=r"at step 20, past --num_steps=10"):
    sinusoid.train_and_evaluate(_tiny_sinusoid(num_steps=10), workdir)
  assert harness.read_config(sinusoid.Config, workdir) == config
  longer = sinusoid.train_and_evaluate(_tiny_sinusoid(num_steps=30), workdir)
  assert longer["config"]["num_steps"] == 30


def test_a_bad_config_writes_nothing(tmp_path):
  workdir = tmp_path / "run"
  with pytest.raises(ValueError, match="meta_batch_size must be >= 1"):
    sinusoid.train_and_evaluate(_tiny_sinusoid(meta_batch_size=0),
                                str(workdir))
  assert not workdir.exists()
  with pytest.raises(TypeError, match="sinusoid takes a Config, got Config"):
    harness.train_and_evaluate(sinusoid.EXPERIMENT, fewshot_vision.Config(),
                               str(workdir))


def test_rerun_check_names_the_flag_not_the_field(tmp_path):
  config = student_performance.Config(algorithms=("maml",))
  with open(tmp_path / "config.json", "w") as f:
    json.dump(dataclasses.asdict(config), f)
  with pytest.raises(ValueError, match=r"--algorithm: \['maml'\] in the "
                     r"workdir, \['reptile'\] now"):
    harness.check_rerun(str(tmp_path),
                        dataclasses.replace(config, algorithms=("reptile",)))
  harness.check_rerun(str(tmp_path), dataclasses.replace(config,
                                                         bootstrap=10))


def test_read_config_names_what_it_cannot_read(tmp_path):
  with pytest.raises(FileNotFoundError, match="holds no run"):
    harness.read_config(sinusoid.Config, str(tmp_path))
  with open(tmp_path / "config.json", "w") as f:
    json.dump({"seed": 0, "learning_rate": 1}, f)
  with pytest.raises(ValueError, match=r"unknown fields \['learning_rate'\]"):
    harness.read_config(sinusoid.Config, str(tmp_path))
