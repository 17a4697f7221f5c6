"""Meta-batches sharded over devices: real splits, the one-device result.

The device count of a JAX process is fixed when JAX starts, and this process
must keep the single CPU device the rest of the suite sees, so the
multi-device runs happen in fresh interpreters (`_SCRIPT`) with
`--xla_force_host_platform_device_count`; they print JSON that the tests
check.
"""

import json
import os
import re
import socket
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import metajax
from metajax import algorithms
from metajax import sharding
from metajax.data import sinusoid
from metajax.models import MLP

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# `single`: one process with 4 CPU devices. `multi PID PORT WORKDIR`: process
# PID of 2, each with 2 CPU devices, joined by jax.distributed.
_SCRIPT = r"""
import json, os, re, sys, tempfile

import jax

mode = sys.argv[1]
if mode == "multi":
  jax.distributed.initialize(coordinator_address=f"localhost:{sys.argv[3]}",
                             num_processes=2, process_id=int(sys.argv[2]))
import jax.numpy as jnp
import numpy as np
import optax

import metajax
from metajax import algorithms, sharding
from metajax.data import sinusoid
from metajax.models import MLP
from metajax.checkpoint import restore_state

# Later runs compile what earlier ones did: load it instead.
jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp())
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
model = MLP((16,), 1)
learner = algorithms.maml(lambda k: model.init(k, jnp.zeros((1, 1))),
                          model.apply, algorithms.mse, steps=1, lr=0.01)
sampler = sinusoid.sampler(8, 5, 5)
key = jax.random.PRNGKey(0)
mesh = sharding.task_mesh()
eval_devices = []

def eval_fn(meta_params):
  eval_devices.append(len(jax.tree.leaves(meta_params)[0].devices()))
  return {}

def run(num_steps, mesh, workdir=None, tasks=sampler):
  return metajax.train(learner, optax.adam(1e-2), tasks, key=key,
                       num_steps=num_steps, workdir=workdir, log_every=3,
                       checkpoint_every=3, progress=False, mesh=mesh,
                       eval_fn=eval_fn, eval_every=3)

def params(state):
  return [np.asarray(x).tolist()
          for x in jax.tree.leaves(sharding.local_copy(state.meta_params))]

def replicated(tree):
  return all(x.is_fully_replicated and len(x.devices()) == 4
             for x in jax.tree.leaves(tree))

out = {"devices": jax.device_count(), "local": jax.local_device_count(),
       "process": jax.process_index()}
if mode == "single":
  out["plain"] = params(run(6, None))
  workdir = tempfile.mkdtemp()
  run(3, mesh, workdir)
  resumed = run(6, mesh, workdir)
  out["sharded"] = params(resumed)
  out["resumed_step"] = int(resumed.step)
  out["replicated"] = replicated(resumed)
  out["eval_devices"] = eval_devices
  # The same batches made on the host, fed and split over the devices.
  fed = run(6, mesh, tasks=metajax.training.replay_tasks(sampler, key))
  out["fed_sharded"] = params(fed)
  out["fed_replicated"] = replicated(fed)

  x = sharding.shard_tasks(sampler(key), mesh).support[0]
  out["split_on_tasks"] = (
      x.sharding.spec == jax.sharding.PartitionSpec("tasks"))
  out["shards"] = sorted([s.device.id, s.index[0].start, s.index[0].stop]
                         for s in x.addressable_shards)
  try:
    sharding.local_copy(x)
  except ValueError as e:
    out["local_copy_error"] = str(e)

  state = sharding.replicate(
      metajax.init_state(learner, optax.adam(1e-2), key), mesh)
  step_fn = metajax.make_train_step(learner, optax.adam(1e-2), num_steps=3,
                                    mesh=mesh)
  hlo = step_fn.lower(state, metajax.sampler_tree(sampler),
                      sharding.replicate(jnp.int32(6), mesh)).compile().as_text()
  out["all_reduce"] = "all-reduce" in hlo
  # Arrays of the partitioned program with a leading axis of 8 (all tasks)
  # or 2 (one device's tasks).
  out["full_batch_arrays"] = sorted(set(re.findall(r"\w+\[8(?:,\d+)*\]",
                                                   hlo)))
  out["device_batch_arrays"] = sorted(set(re.findall(
      r"f32\[2,\d+,1\]", hlo)))
  try:
    run(1, sharding.task_mesh(3))
  except ValueError as e:
    out["indivisible_error"] = str(e)
else:
  workdir = sys.argv[4]
  state = run(6, mesh, workdir)
  out["params"] = params(state)
  out["replicated"] = replicated(state)
  out["eval_devices"] = eval_devices
  restored = restore_state(workdir, state)
  out["restored_step"] = int(restored.step)
  out["restored_replicated"] = replicated(restored)
  out["restored_equal"] = params(restored) == out["params"]
  # Each process's pipeline yields the whole batch; each feeds its devices.
  out["fed_params"] = params(
      run(6, mesh, tasks=metajax.training.replay_tasks(sampler, key)))
print("RESULT " + json.dumps(out))
"""


def _result(proc: subprocess.Popen):
  """The JSON that a run of `_SCRIPT` printed, once it has ended."""
  stdout, stderr = proc.communicate(timeout=300)
  assert proc.returncode == 0, stderr[-3000:]
  lines = [l for l in stdout.splitlines() if l.startswith("RESULT ")]
  assert len(lines) == 1, stdout[-3000:]
  return json.loads(lines[0][len("RESULT "):])


def _env(devices: int):
  """This environment, with `devices` CPU devices and metajax importable."""
  return dict(os.environ, XLA_FLAGS=(
      os.environ.get("XLA_FLAGS", "") +
      f" --xla_force_host_platform_device_count={devices}").strip(),
              JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """`_SCRIPT` as one process of four CPU devices and, at the same time, as
  two processes of two CPU devices each sharing one workdir.

  Returns:
    (the single process's results, [the two processes' results], workdir).
  """
  folder = tmp_path_factory.mktemp("sharding")
  script = folder / "script.py"
  script.write_text(_SCRIPT)
  workdir = str(folder / "run")
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = str(s.getsockname()[1])
  launch = lambda args, devices: subprocess.Popen(
      [sys.executable, str(script)] + args, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True, env=_env(devices))
  procs = [launch(["single"], 4)] + [
      launch(["multi", str(pid), port, workdir], 2) for pid in range(2)]
  try:
    results = [_result(p) for p in procs]
  finally:
    # A process left waiting for a failed peer.
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.communicate()
  return results[0], results[1:], workdir


@pytest.fixture(scope="module")
def single(runs):
  """The results of the one process with four devices."""
  return runs[0]


@pytest.mark.slow
def test_four_devices_give_the_one_device_parameters(single):
  """Six steps on four devices, interrupted after three and resumed."""
  assert single["devices"] == 4
  assert single["resumed_step"] == 6
  for plain, sharded in zip(single["plain"], single["sharded"]):
    # Only the order of the float32 sums over tasks differs; a state that
    # was restored wrongly (e.g. Adam's moments) would be far off.
    np.testing.assert_allclose(sharded, plain, rtol=1e-5, atol=1e-6)
  # Restored from the checkpoint still replicated on the four devices.
  assert single["replicated"]
  # eval_fn is handed the parameters on one device, also in sharded runs.
  assert set(single["eval_devices"]) == {1}


@pytest.mark.slow
def test_each_device_holds_and_samples_its_own_tasks(single):
  assert single["split_on_tasks"]
  assert single["shards"] == [[0, 0, 2], [1, 2, 4], [2, 4, 6], [3, 6, 8]]
  assert "needs replicated arrays" in single["local_copy_error"]
  # In the compiled step no device builds the whole batch: the sampler runs
  # on 2 tasks per device, and the per-task gradients meet in an all-reduce.
  assert single["full_batch_arrays"] == []
  assert "f32[2,10,1]" in single["device_batch_arrays"]  # x of 5 + 5 points
  assert single["all_reduce"]


@pytest.mark.slow
def test_host_fed_batches_split_over_devices_and_hosts(runs):
  """The sampled run's batches, made on the host and fed: on four devices
  of one process, and on two processes of two devices each."""
  single, results, _ = runs
  assert single["fed_replicated"]
  for fed in (single["fed_sharded"], results[0]["fed_params"],
              results[1]["fed_params"]):
    for got, want in zip(fed, single["plain"]):
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_an_indivisible_meta_batch_is_refused(single):
  message = single["indivisible_error"]
  assert "8 tasks" in message and "3 devices" in message


@pytest.mark.slow
def test_two_processes_train_as_one(runs):
  single, results, workdir = runs
  assert [r["process"] for r in results] == [0, 1]
  for r in results:
    assert (r["devices"], r["local"]) == (4, 2)
    assert r["replicated"] and r["restored_replicated"]
    assert r["restored_step"] == 6 and r["restored_equal"]
    assert set(r["eval_devices"]) == {1}
  assert results[0]["params"] == results[1]["params"]
  for got, want in zip(results[0]["params"], single["sharded"]):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  # One process writes the log.
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    assert [json.loads(l)["step"] for l in f] == [3, 6]


MODEL = MLP((8,), 1)


def test_a_one_device_mesh_changes_nothing():
  learner = algorithms.joint(lambda k: MODEL.init(k, jnp.zeros((1, 1))),
                             MODEL.apply, algorithms.mse, steps=1, lr=0.01)
  run = lambda mesh: metajax.train(
      learner, optax.adam(1e-2), sinusoid.sampler(4, 5, 5),
      key=jax.random.PRNGKey(1), num_steps=2, log_every=2, progress=False,
      mesh=mesh)
  chex.assert_trees_all_equal(run(metajax.task_mesh(1)), run(None))


def test_local_copy_leaves_one_device_arrays_in_place():
  tree = {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones(3)}
  copy = metajax.local_copy(tree)
  chex.assert_trees_all_equal(copy, tree)
  device = jax.local_devices()[0]
  assert all(x.devices() == {device} for x in jax.tree.leaves(copy))


def test_task_mesh_refuses_more_devices_than_visible():
  n = jax.device_count()
  with pytest.raises(ValueError, match=re.escape(f"1..{n}")):
    sharding.task_mesh(n + 1)
  assert sharding.task_mesh().shape == {"tasks": n}
