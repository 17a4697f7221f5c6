"""Verified checkpoints: corruption is caught, skipped and never rotated in."""

import json
import logging
import os
import shutil

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import metajax
from metajax import algorithms
from metajax import checkpoint
from metajax.models import MLP


def _tree(scale=1.0, **params):
  """Two checkpoint items, a dict and an array; `params` replaces leaves."""
  return {"params": {
              "w": scale * jnp.arange(12, dtype=jnp.float32).reshape(3, 4),
              "b": {"c": jnp.full((5,), scale, jnp.float32)}, **params},
          "step": jnp.int32(7)}


def _writer(tmp_path, keep=2):
  return checkpoint.Checkpoints(str(tmp_path / "ckpt"), keep=keep,
                                writer=True)


def _data_files(folder):
  """The array files orbax wrote into a checkpoint, largest first."""
  found = []
  for root, _, files in os.walk(folder):
    for name in files:
      path = os.path.join(root, name)
      if name != checkpoint.MANIFEST:
        found.append((os.path.getsize(path), path))
  return [p for _, p in sorted(found, reverse=True)]


def _flip_byte(path, offset=None):
  with open(path, "r+b") as f:
    data = bytearray(f.read())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0x40
    f.seek(0)
    f.write(data)


def test_save_restore_and_rotation(tmp_path):
  ckpts = _writer(tmp_path)
  for step in (10, 20, 30):
    ckpts.save(step, _tree(step), metadata={"run_key": [0, step]})
  assert ckpts.steps() == [20, 30]
  step, tree, meta = ckpts.restore_latest(_tree())
  assert step == 30 and meta == {"run_key": [0, 30]}
  chex.assert_trees_all_equal(tree, _tree(30))
  assert os.path.exists(os.path.join(ckpts.path(30), checkpoint.MANIFEST))


def test_a_flipped_byte_is_caught_and_the_older_checkpoint_used(
    tmp_path, caplog):
  ckpts = _writer(tmp_path)
  ckpts.save(1, _tree(1.0))
  ckpts.save(2, _tree(2.0))
  victim = _data_files(ckpts.path(2))[0]
  _flip_byte(victim)
  with caplog.at_level(logging.WARNING):
    step, tree, _ = ckpts.restore_latest(_tree())
  assert step == 1
  chex.assert_trees_all_equal(tree, _tree(1.0))
  # Reported by path, and moved aside with its reason rather than deleted.
  assert ckpts.path(2) in caplog.text and "SHA-256" in caplog.text
  assert ckpts.steps() == [1]
  corrupt = os.listdir(os.path.join(ckpts.directory, "corrupt"))
  assert len(corrupt) == 1 and corrupt[0].startswith("2-")
  with open(os.path.join(ckpts.directory, "corrupt", corrupt[0],
                         "REASON.txt")) as f:
    assert os.path.basename(victim) in f.read()


@pytest.mark.parametrize("damage", ["truncate", "delete_manifest",
                                    "empty_folder", "garbage_manifest",
                                    "delete_file", "extra_file"])
def test_unreadable_checkpoints_are_skipped(tmp_path, damage):
  ckpts = _writer(tmp_path)
  ckpts.save(1, _tree(1.0))
  ckpts.save(2, _tree(2.0))
  folder = ckpts.path(2)
  manifest = os.path.join(folder, checkpoint.MANIFEST)
  if damage == "truncate":
    victim = _data_files(folder)[0]
    with open(victim, "r+b") as f:
      f.truncate(os.path.getsize(victim) // 2)
  elif damage == "delete_manifest":
    os.remove(manifest)
  elif damage == "empty_folder":
    shutil.rmtree(folder)
    os.makedirs(folder)
  elif damage == "garbage_manifest":
    with open(manifest, "w") as f:
      f.write('{"format": 1, "files": ')
  elif damage == "delete_file":
    os.remove(_data_files(folder)[0])
  else:
    with open(os.path.join(folder, "params", "stray"), "w") as f:
      f.write("x")
  step, tree, _ = ckpts.restore_latest(_tree())
  assert step == 1
  chex.assert_trees_all_equal(tree, _tree(1.0))


def test_when_none_passes_nothing_is_moved_and_the_error_names_them(
    tmp_path):
  ckpts = _writer(tmp_path)
  ckpts.save(1, _tree(1.0))
  ckpts.save(2, _tree(2.0))
  for step in (1, 2):
    _flip_byte(_data_files(ckpts.path(step))[0])
  with pytest.raises(checkpoint.CheckpointError) as info:
    ckpts.restore_latest(_tree())
  assert ckpts.path(1) in str(info.value) and ckpts.path(2) in str(info.value)
  assert ckpts.steps() == [1, 2]
  assert not os.path.exists(os.path.join(ckpts.directory, "corrupt"))


def test_another_structure_is_a_mismatch_not_corruption(tmp_path):
  ckpts = _writer(tmp_path)
  ckpts.save(1, _tree())
  wider = _tree(w=jnp.zeros((3, 8), jnp.float32))
  with pytest.raises(checkpoint.CheckpointMismatchError,
                     match=r"params\['w'\]: checkpoint float32\[3, 4\], now "
                           r"float32\[3, 8\]"):
    ckpts.restore_latest(wider)
  assert ckpts.steps() == [1]


def test_non_finite_trees_are_never_written(tmp_path):
  ckpts = _writer(tmp_path)
  ckpts.save(1, _tree())
  bad = _tree(b={"c": jnp.array([1.0, jnp.inf, 0, 0, 0])})
  with pytest.raises(FloatingPointError,
                     match=r"\['params'\]\['b'\]\['c'\]"):
    ckpts.save(2, bad)
  assert ckpts.steps() == [1]


def test_non_finite_values_on_disk_are_rejected_on_restore(tmp_path):
  """A checkpoint of infinities whose manifest matches its files."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  ckpts = _writer(tmp_path)
  ckpts.save(1, _tree(1.0))
  ckpts.save(2, _tree(2.0))
  folder = ckpts.path(2)
  shutil.rmtree(os.path.join(folder, "params"))
  writer = ocp.StandardCheckpointer()
  writer.save(os.path.join(folder, "params"), _tree(np.inf)["params"])
  writer.wait_until_finished()
  manifest_path = os.path.join(folder, checkpoint.MANIFEST)
  with open(manifest_path) as f:
    manifest = json.load(f)
  manifest["files"] = checkpoint._file_hashes(folder)
  with open(manifest_path, "w") as f:
    json.dump(manifest, f)
  with pytest.raises(checkpoint.CheckpointError, match="non-finite values"):
    ckpts.restore(2, _tree())
  step, _, _ = ckpts.restore_latest(_tree())
  assert step == 1


def test_a_killed_save_leaves_nothing_that_is_restored(tmp_path):
  ckpts = _writer(tmp_path)
  ckpts.save(1, _tree(1.0))
  # What a save killed before its rename leaves: a temporary folder.
  os.makedirs(os.path.join(ckpts.directory, "tmp-2", "state"))
  reader = checkpoint.Checkpoints(ckpts.directory)
  assert reader.steps() == [1]
  assert os.path.isdir(os.path.join(ckpts.directory, "tmp-2"))
  _writer(tmp_path)  # the next run's writer removes it
  assert sorted(os.listdir(ckpts.directory)) == ["1"]


def test_a_reader_skips_but_never_moves(tmp_path):
  ckpts = _writer(tmp_path)
  ckpts.save(1, _tree(1.0))
  ckpts.save(2, _tree(2.0))
  _flip_byte(_data_files(ckpts.path(2))[0])
  reader = checkpoint.Checkpoints(ckpts.directory)
  step, _, _ = reader.restore_latest(_tree())
  assert step == 1 and reader.steps() == [1, 2]
  with pytest.raises(checkpoint.CheckpointError, match="reading only"):
    reader.save(3, _tree())


def test_rotation_never_removes_the_last_verified_before_a_new_one_passes(
    tmp_path):
  ckpts = _writer(tmp_path, keep=1)
  ckpts.save(1, _tree(1.0))
  with pytest.raises(FloatingPointError):
    ckpts.save(2, _tree(w=jnp.full((3, 4), jnp.nan)))
  assert ckpts.steps() == [1]
  ckpts.save(3, _tree(3.0))
  assert ckpts.steps() == [3]


def test_a_killed_deletion_leaves_no_half_deleted_step(tmp_path):
  ckpts = _writer(tmp_path)
  ckpts.save(1, _tree(1.0))
  ckpts.save(2, _tree(2.0))
  ckpts.delete(1)
  assert ckpts.steps() == [2]
  # What a deletion killed after its rename leaves: a temporary folder only.
  os.makedirs(os.path.join(ckpts.directory, "tmp-deleted-7", "state"))
  assert ckpts.steps() == [2]
  _writer(tmp_path)
  assert sorted(os.listdir(ckpts.directory)) == ["2"]


def test_items_restore_alone(tmp_path):
  ckpts = _writer(tmp_path)
  ckpts.save(1, _tree(2.0))
  assert sorted(os.listdir(ckpts.path(1))) == [checkpoint.MANIFEST, "params",
                                                 "step"]
  # Another shape of an item not asked for is no mismatch.
  items, _ = ckpts.restore(1, {"params": _tree()["params"]})
  assert list(items) == ["params"]
  chex.assert_trees_all_equal(items["params"], _tree(2.0)["params"])
  with pytest.raises(checkpoint.CheckpointMismatchError,
                     match=r"opt_state: checkpoint absent, now float32\[\]"):
    ckpts.restore(1, {"opt_state": jnp.float32(0)})


def save_format_1(directory, step, tree, metadata=None):
  """Writes `tree` as checkpoint `step` as metajax did before items.

  One orbax item, `<step>/state/`, and a manifest of format 1 holding the
  leaves of that one tree.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  folder = os.path.join(directory, str(step))
  writer = ocp.StandardCheckpointer()
  writer.save(os.path.join(folder, "state"), tree)
  writer.wait_until_finished()
  writer.close()
  manifest = {"format": 1, "step": step,
              "files": checkpoint._file_hashes(folder),
              "leaves": checkpoint.leaf_specs(tree),
              "metadata": metadata or {}, "time": 0.0}
  with open(os.path.join(folder, checkpoint.MANIFEST), "w") as f:
    json.dump(manifest, f, indent=1)


def _train_state(step, width=4):
  """A `TrainState` as `metajax.train` checkpoints it, at `step`."""
  model = MLP((width,), 1)
  learner = algorithms.maml(lambda k: model.init(k, jnp.zeros((1, 1))),
                            model.apply, algorithms.mse)
  state = metajax.init_state(learner, optax.adam(1e-2), jax.random.PRNGKey(0))
  return state._replace(step=jnp.int32(step),
                        meta_params=jax.tree.map(lambda x: x + 1.0,
                                                 state.meta_params))


def _zeros(tree):
  return jax.tree.map(jnp.zeros_like, tree)


def test_restore_params_needs_no_optimiser(tmp_path):
  workdir = str(tmp_path)
  with pytest.raises(FileNotFoundError, match=f"no checkpoint in "
                                              f"{workdir}/checkpoints"):
    checkpoint.restore_params(workdir, {})
  state = _train_state(10)
  checkpointer = checkpoint.TrainCheckpointer(
      workdir, key=jax.random.PRNGKey(0), num_steps=10, every=5)
  checkpointer.save(state)
  folder = os.path.join(workdir, "checkpoints", "10")
  assert sorted(os.listdir(folder)) == ["loop", "meta_params",
                                        checkpoint.MANIFEST, "opt_state"]
  params = checkpoint.restore_params(workdir, _zeros(state.meta_params))
  chex.assert_trees_all_equal(params, state.meta_params)
  wider = _train_state(0, width=8).meta_params
  with pytest.raises(checkpoint.CheckpointMismatchError,
                     match=r"meta_params\[.*\['Dense_0'\]\['kernel'\]: "
                           r"checkpoint float32\[1, 4\], now float32\[1, 8\]"):
    checkpoint.restore_params(workdir, wider)


def test_a_format_1_checkpoint_is_verified_and_restored(tmp_path):
  workdir = str(tmp_path)
  directory = os.path.join(workdir, "checkpoints")
  state = _train_state(20)
  save_format_1(directory, 20, state._asdict(), {"run_key": [0, 0]})
  params = checkpoint.restore_params(workdir, _zeros(state.meta_params))
  chex.assert_trees_all_equal(params, state.meta_params)
  like = _train_state(0)
  restored = checkpoint.restore_state(workdir, _zeros(like))
  chex.assert_trees_all_equal(restored, state)
  # A resume reads it too, checks its key, and moves nothing aside.
  resumed = checkpoint.TrainCheckpointer(
      workdir, key=jax.random.PRNGKey(0), num_steps=30, every=5).resume(like)
  chex.assert_trees_all_equal(resumed, state._replace(
      nonfinite_step=jnp.int32(-1)))
  with pytest.raises(ValueError, match="another seed"):
    checkpoint.TrainCheckpointer(workdir, key=jax.random.PRNGKey(1),
                                 num_steps=30, every=5).resume(like)
  assert sorted(os.listdir(directory)) == ["20"]
  # Its files are still checked against its manifest.
  _flip_byte(_data_files(os.path.join(directory, "20"))[0])
  with pytest.raises(checkpoint.CheckpointError, match="SHA-256"):
    checkpoint.restore_params(workdir, like.meta_params)


def test_format_1_best_parameters_are_restored(tmp_path):
  params = _train_state(0).meta_params
  save_format_1(str(tmp_path / "best"), 15, params)
  with open(tmp_path / "best.json", "w") as f:
    json.dump({"step": 15, "metric": "acc", "score": 0.5}, f)
  restored, info = checkpoint.restore_best(str(tmp_path), _zeros(params))
  chex.assert_trees_all_equal(restored, params)
  assert info == {"step": 15, "metric": "acc", "score": 0.5}
