"""Checkpoints verified when written and again when read.

A checkpoint is a folder `<directory>/<step>/` holding named items, each a
PyTree in an orbax checkpoint of its own (`<step>/<item>/`), and a manifest
(`metajax_manifest.json`) with the SHA-256 of every file orbax wrote under
all the items and the path, shape and dtype of every leaf of every item.
Items restore separately: a predictor reads a run's meta-parameters without
building its optimiser.

* **Saving** refuses a PyTree with a non-finite leaf, writes into a temporary
  folder, writes the manifest, reads the checkpoint back from disk through
  the same checks as a restore and compares it bit for bit with what was
  saved; only then is the folder renamed to its step. A step folder is
  therefore complete and verified when it appears, and a save killed at any
  moment leaves only a temporary folder, removed at the next start.
* **Rotation** keeps the newest `keep` checkpoints and runs only after a new
  one has passed, so the last verified checkpoint is never deleted first.
* **Restoring** checks every file against the manifest before orbax reads
  it, then that every value is finite. A checkpoint that fails (a flipped
  byte, a truncated or missing file, no manifest, an empty folder) is
  reported by path and moved to `<directory>/corrupt/`, and the next older
  one is tried. When none passes, nothing is moved and the restore raises,
  so a run never restarts from scratch over a workdir it could not read.
* A checkpoint of another structure (a model of another width, say) is not
  corrupt: restoring it raises `CheckpointMismatchError` naming the leaves
  that differ, and nothing is moved.

A training run (`TrainCheckpointer`) keeps in its workdir:

    checkpoints/<step>/meta_params/   the meta-parameters
                      /opt_state/     the optimiser state
                      /loop/          {"step", "key", "nonfinite_step"}
    best/<step>/meta_params/          with keep_best: the best-scoring ones,
    best.json                         and their step, metric and score

read back by `restore_state`, `restore_params` and `restore_best`.
Checkpoints of format 1, written before items existed, held one orbax item
`<step>/state/`: the whole `TrainState` as a dict in `checkpoints/`, the
meta-parameters alone in `best/`. They are verified and restored as the
items above, a subset included.

orbax is imported by the first save or restore, not by `import metajax`.
"""

import hashlib
import json
import logging
import os
import re
import shutil
import time
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from metajax import sharding as sharding_lib
from metajax import io as io_lib
from metajax.types import PyTree

Items = Mapping[str, PyTree]
MANIFEST = "metajax_manifest.json"
FORMAT = 2
_TMP_PREFIX = "tmp-"
_CORRUPT = "corrupt"
# The `TrainState` fields of a training checkpoint's "loop" item.
_LOOP = ("step", "key", "nonfinite_step")


class CheckpointError(RuntimeError):
  """A checkpoint could not be written, read or verified."""


class CheckpointMismatchError(ValueError):
  """A checkpoint holds a PyTree of another structure, shapes or dtypes."""


def leaf_specs(tree: PyTree) -> Dict[str, str]:
  """`{"['params']['w']": "float32[3, 4]", ...}` for every leaf of `tree`."""
  return {jax.tree_util.keystr(path): f"{np.dtype(leaf.dtype).name}"
                                      f"{list(np.shape(leaf))}"
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def to_host(tree: PyTree) -> PyTree:
  """`tree` as NumPy arrays, each replicated leaf read from one device."""
  return jax.tree.map(
      lambda x: np.asarray(jax.device_get(sharding_lib.local_copy(x)
                                          if isinstance(x, jax.Array) else x)),
      tree)


def nonfinite_leaves(tree: PyTree) -> List[str]:
  """Paths of the floating-point leaves of `tree` holding NaN or infinity."""
  host = to_host(tree)
  return [jax.tree_util.keystr(path)
          for path, leaf in jax.tree_util.tree_leaves_with_path(host)
          if np.issubdtype(np.asarray(leaf).dtype, np.inexact)
          and not np.all(np.isfinite(leaf))]


def _orbax():
  # Imported here, not at the top: its import is a large share of
  # `import metajax`, which a predictor or a data script should not pay.
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  return ocp


def _file_hashes(folder: str) -> Dict[str, str]:
  """SHA-256 of every file below `folder` but the manifest, by relative path."""
  hashes = {}
  for root, dirs, files in os.walk(folder):
    dirs.sort()
    for name in sorted(files):
      path = os.path.join(root, name)
      rel = os.path.relpath(path, folder)
      if rel == MANIFEST:
        continue
      digest = hashlib.sha256()
      with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
          digest.update(block)
      hashes[rel] = digest.hexdigest()
  return hashes


def _check_files(folder: str, files: Dict[str, str]) -> None:
  """Raises CheckpointError unless `folder` holds exactly `files`, unchanged."""
  found = _file_hashes(folder)
  for rel in sorted(set(files) | set(found)):
    if rel not in found:
      raise CheckpointError(f"{os.path.join(folder, rel)} is missing.")
    if rel not in files:
      raise CheckpointError(f"{os.path.join(folder, rel)} is not in the "
                            f"manifest.")
    if found[rel] != files[rel]:
      raise CheckpointError(
          f"{os.path.join(folder, rel)} fails its SHA-256 check (the file "
          f"changed after it was written).")


def _describe_mismatch(saved: Dict[str, str], expected: Dict[str, str]) -> str:
  lines = []
  for path in sorted(set(saved) | set(expected)):
    if saved.get(path) != expected.get(path):
      lines.append(f"  {path or '(root)'}: checkpoint "
                   f"{saved.get(path, 'absent')}, now "
                   f"{expected.get(path, 'absent')}")
  more = f"\n  ... and {len(lines) - 8} more" if len(lines) > 8 else ""
  return "\n".join(lines[:8]) + more


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    # pylint: disable=g-import-not-at-top
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def _top_key(path: str) -> Optional[str]:
  """"step" for the key path "['step']", "a" for "['a'][0]", else None."""
  match = re.match(r"\['([^']*)'\]", path)
  return match and match.group(1)


def _v1_items(leaves: Dict[str, str]) -> Dict[str, Dict[str, str]]:
  """Format 1's leaf specs (one tree) as the items format 2 stores them in."""
  if not set(_LOOP) <= {_top_key(path) for path in leaves}:
    return {"meta_params": leaves}  # best/: the meta-parameters alone
  items = {}
  for path, spec in leaves.items():
    top = _top_key(path)
    if top in _LOOP:
      items.setdefault("loop", {})[path] = spec
    else:
      items.setdefault(top, {})[path[len(f"['{top}']"):]] = spec
  return items


class _Manifest(NamedTuple):
  version: int
  files: Dict[str, str]  # relative path -> SHA-256
  items: Dict[str, Dict[str, str]]  # item -> leaf path -> "float32[3, 4]"
  metadata: Dict[str, Any]


def _read_manifest(folder: str) -> _Manifest:
  path = os.path.join(folder, MANIFEST)
  try:
    with open(path) as f:
      manifest = json.load(f)
    version = manifest.get("format")
    if version == FORMAT:
      items = manifest["items"]
    elif version == 1:
      items = _v1_items(manifest["leaves"])
    else:
      raise CheckpointError(f"{path}: unknown format {version!r}.")
    return _Manifest(version, manifest["files"], items,
                     manifest.get("metadata", {}))
  except FileNotFoundError:
    raise CheckpointError(
        f"{folder}: no {MANIFEST} (an unfinished save, or a checkpoint "
        f"written before metajax verified its checkpoints).") from None
  except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
    raise CheckpointError(f"{path} is unreadable: {e}") from None


def _restore_tree(path: str, like: PyTree, *, partial: bool = False):
  """The orbax checkpoint in `path` as `like` (its shardings included).

  `partial` restores only `like`'s keys of a checkpointed dict.
  """
  ocp = _orbax()
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
  checkpointer = ocp.PyTreeCheckpointer()
  try:
    return checkpointer.restore(path, args=ocp.args.PyTreeRestore(
        item=abstract,
        restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
        partial_restore=partial))
  finally:
    checkpointer.close()


def _restore_items(folder: str, manifest: _Manifest,
                   like: Items) -> Dict[str, PyTree]:
  """`like`'s items read from the verified checkpoint in `folder`."""
  if manifest.version == FORMAT:
    # An item without leaves (optax.sgd's state) has no files: it is `like`.
    return {name: _restore_tree(os.path.join(folder, name), tree)
                  if jax.tree.leaves(tree) else tree
            for name, tree in like.items()}
  state_path = os.path.join(folder, "state")
  if "loop" not in manifest.items:  # best/: the meta-parameters alone
    return {"meta_params": _restore_tree(state_path, like["meta_params"])}
  # A TrainState dict: its "loop" fields sit beside the other items.
  target = dict(like.get("loop", {}))
  target.update((name, tree) for name, tree in like.items() if name != "loop")
  state = _restore_tree(state_path, target, partial=True)
  return {name: {k: state[k] for k in tree} if name == "loop" else state[name]
          for name, tree in like.items()}


class Checkpoints:
  """Verified, rotated checkpoints of named PyTrees (items) in `directory`.

  Only a writer (the run that holds the workdir, `metajax.workdir.hold`)
  saves, removes the temporary folders of killed saves and moves corrupt
  checkpoints aside; a reader, such as a predictor loaded while the run goes
  on, only skips them. On several hosts every process calls `save` and
  `restore_latest` with the same arguments (the directory must be shared);
  process 0 alone writes the manifest, renames, rotates and moves aside.
  """

  def __init__(self, directory: str, keep: int = 2, *, writer: bool = False):
    if keep < 1:
      raise ValueError(f"keep must be >= 1, got {keep}.")
    self.directory = os.path.abspath(directory)
    self.keep = keep
    self.writer = writer
    self._primary = writer and jax.process_index() == 0
    if self._primary:
      os.makedirs(self.directory, exist_ok=True)
      # Left by a save that was killed before it finished: never a
      # checkpoint, since a step folder appears only once verified.
      for name in os.listdir(self.directory):
        if name.startswith(_TMP_PREFIX):
          shutil.rmtree(os.path.join(self.directory, name),
                        ignore_errors=True)
    if writer:
      _sync(f"metajax-checkpoints-open-{self.directory}")

  def path(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def steps(self) -> List[int]:
    """Steps of the checkpoint folders, oldest first (not yet verified)."""
    if not os.path.isdir(self.directory):
      return []
    return sorted(int(n) for n in os.listdir(self.directory)
                  if n.isdigit() and os.path.isdir(self.path(int(n))))

  def save(self, step: int, items: Items, *, metadata: Optional[Dict] = None,
           rotate: bool = True) -> str:
    """Writes and verifies `items` as checkpoint `step`; returns its folder.

    Args:
      step: the step number, the folder's name.
      items: `{name: PyTree of arrays}`, all finite; each name (a Python
        identifier) is a sub-folder.
      metadata: JSON-serialisable facts stored in the manifest and returned
        by `restore` (e.g. the run's key).
      rotate: delete the checkpoints older than the newest `keep` once this
        one has passed.

    Raises:
      ValueError: an item's name is not an identifier; nothing is written.
      FloatingPointError: a PyTree holds NaN or infinity; nothing is written.
      CheckpointError: what was read back differs from `items`; the older
        checkpoints are kept.
    """
    if not self.writer:
      raise CheckpointError(f"{self.directory} was opened for reading only.")
    for name in items:
      if not name.isidentifier():
        raise ValueError(f"checkpoint item names are folder names and must "
                         f"be identifiers, got {name!r}.")
    bad = nonfinite_leaves(dict(items))
    if bad:
      raise FloatingPointError(
          f"refusing to checkpoint step {step} into {self.directory}: "
          f"non-finite values in {', '.join(bad[:5])}.")
    final = self.path(step)
    # Deterministic, so that every host of a run writes into the same one.
    tmp = os.path.join(self.directory, f"{_TMP_PREFIX}{step}")
    if self._primary and os.path.exists(tmp):
      shutil.rmtree(tmp)
    _sync(f"metajax-checkpoint-clean-{tmp}")
    ocp = _orbax()
    # Not StandardCheckpointer: it refuses an item that is a single array.
    checkpointer = ocp.PyTreeCheckpointer()
    try:
      for name, tree in items.items():
        # orbax warns about a tree without arrays, and restoring needs none.
        if jax.tree.leaves(tree):
          checkpointer.save(os.path.join(tmp, name),
                            args=ocp.args.PyTreeSave(tree))
    finally:
      checkpointer.close()
    if self._primary:
      os.makedirs(tmp, exist_ok=True)
      manifest = {"format": FORMAT, "step": int(step),
                  "files": _file_hashes(tmp),
                  "items": {name: leaf_specs(tree)
                            for name, tree in items.items()},
                  "metadata": metadata or {}, "time": time.time()}
      io_lib.write_atomic(os.path.join(tmp, MANIFEST),
                               json.dumps(manifest, indent=1))
    _sync(f"metajax-checkpoint-manifest-{tmp}")
    restored, _ = self._read(tmp, items)
    same = jax.tree.map(lambda a, b: bool(np.array_equal(a, b)),
                        to_host(restored), to_host(dict(items)))
    if not all(jax.tree.leaves(same)):
      raise CheckpointError(
          f"checkpoint {tmp} does not read back as written; the older "
          f"checkpoints in {self.directory} are kept.")
    if self._primary:
      if os.path.exists(final):
        self._set_aside(step, "replaced by a new save of the same step")
      os.replace(tmp, final)
      if rotate:
        for old in [s for s in self.steps() if s < step][:-(self.keep - 1)
                                                        or None]:
          self.delete(old)
    _sync(f"metajax-checkpoint-done-{final}")
    return final

  def delete(self, step: int) -> None:
    """Deletes checkpoint `step` (process 0 of a writer only).

    The folder is first renamed to a temporary name, so that a deletion
    killed half-way leaves no half-deleted step folder behind, only a
    temporary one that the next writer removes.
    """
    if not self._primary:
      return
    doomed = os.path.join(self.directory, f"{_TMP_PREFIX}deleted-{step}")
    shutil.rmtree(doomed, ignore_errors=True)
    os.replace(self.path(step), doomed)
    shutil.rmtree(doomed, ignore_errors=True)

  def _read(self, folder: str, like: Items) -> Tuple[Dict[str, PyTree], Dict]:
    """Verifies the checkpoint in `folder`; restores `like`'s items of it."""
    manifest = _read_manifest(folder)
    flat = lambda items: {f"{name}{path}": spec for name in like
                          for path, spec in items.get(name, {}).items()}
    saved = flat(manifest.items)
    expected = flat({name: leaf_specs(tree) for name, tree in like.items()})
    if saved != expected:
      raise CheckpointMismatchError(
          f"the checkpoint in {folder} holds other parameters than this run "
          f"builds (a changed model or optimiser setting?):\n"
          f"{_describe_mismatch(saved, expected)}")
    _check_files(folder, manifest.files)
    try:
      restored = _restore_items(folder, manifest, like)
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(f"{folder} cannot be restored: "
                            f"{type(e).__name__}: {e}") from None
    bad = nonfinite_leaves(restored)
    if bad:
      raise CheckpointError(f"{folder} holds non-finite values in "
                            f"{', '.join(bad[:5])}.")
    return restored, manifest.metadata

  def restore(self, step: int, like: Items) -> Tuple[Dict[str, PyTree], Dict]:
    """Checkpoint `step`, verified, as `(items, metadata)`.

    Args:
      step: the checkpoint's step.
      like: `{name: PyTree}` of the items to restore (any subset of those
        saved), with their structure, shapes, dtypes and shardings.
    """
    return self._read(self.path(step), like)

  def restore_latest(self, like: Items
                     ) -> Optional[Tuple[int, Dict[str, PyTree], Dict]]:
    """The newest checkpoint that passes, as `(step, items, metadata)`.

    Checkpoints that fail are reported and moved to `corrupt/` once an older
    one has passed.

    Args:
      like: as for `restore`.

    Returns:
      None when the directory holds no checkpoint at all.

    Raises:
      CheckpointError: there are checkpoints but none passes; all are left
        where they are.
      CheckpointMismatchError: the newest readable checkpoint holds another
        structure than `like`.
    """
    failures = []
    for step in reversed(self.steps()):
      try:
        items, metadata = self.restore(step, like)
      except CheckpointError as e:
        failures.append((step, e))
        continue
      for bad_step, error in failures:
        moved = self._set_aside(bad_step, str(error))
        logging.warning("skipped checkpoint %s: %s%s", self.path(bad_step),
                        error, f" (moved to {moved})" if moved else "")
      if self.writer:
        _sync(f"metajax-checkpoint-restored-{self.directory}")
      return step, items, metadata
    if failures:
      raise CheckpointError(
          f"no checkpoint in {self.directory} passes verification:\n" +
          "\n".join(f"  {e}" for _, e in failures) +
          "\nThey are left in place. To start this run afresh, move them "
          "(or the whole workdir) aside.")
    return None

  def _set_aside(self, step: int, reason: str) -> Optional[str]:
    """Moves checkpoint `step` into `corrupt/` with a note of `reason`."""
    if not self._primary:
      return None
    folder = os.path.join(self.directory, _CORRUPT)
    os.makedirs(folder, exist_ok=True)
    target = os.path.join(folder, f"{step}-{time.time_ns()}")
    os.replace(self.path(step), target)
    io_lib.write_atomic(os.path.join(target, "REASON.txt"),
                             reason + "\n")
    return target


def _train_items(state) -> Dict[str, PyTree]:
  """A `TrainState`'s checkpoint items: each part restores on its own."""
  return {"meta_params": state.meta_params, "opt_state": state.opt_state,
          "loop": {field: getattr(state, field) for field in _LOOP}}


def _train_state(like, items: Dict[str, PyTree]):
  """The `TrainState` of `like`'s type holding checkpoint `items`."""
  return like._replace(meta_params=items["meta_params"],
                       opt_state=items["opt_state"], **items["loop"])


def _key_bits(key: jax.Array) -> List[int]:
  """The raw bits of a PRNG key, for comparing a resumed run's key."""
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.key_data(key)
  return to_host(key).ravel().tolist()


class TrainCheckpointer:
  """What a meta-training run keeps in its workdir, when, and its resume.

  Checkpoints (the newest two) are written every `every` steps since the
  last one (so at multiples of `every` rounded up to the steps of a call),
  at `num_steps`, and when the run halts on a non-finite step. With
  `keep_best`, the best-scoring meta-parameters are kept as well. Without a
  workdir nothing is kept and nothing resumed. On several hosts every
  process makes the same calls.
  """

  def __init__(self, workdir: Optional[str], *, key: jax.Array,
               num_steps: int, every: int, keep_best: Optional[str] = None):
    """Opens `workdir/checkpoints/` (and `best/`) for writing.

    Args:
      workdir: the run's directory, held by the caller; None keeps nothing.
      key: the run's PRNG key, stored with each checkpoint so that a resume
        with another key is refused.
      num_steps: the run's total meta-steps.
      every: meta-steps between checkpoints.
      keep_best: the name of an evaluation metric to maximise, or None.
    """
    self.num_steps, self.every = num_steps, every
    self.run_key = _key_bits(key)
    self.checkpoints = (Checkpoints(os.path.join(workdir, "checkpoints"),
                                    writer=True) if workdir else None)
    self.best = (_BestParams(workdir, keep_best) if workdir and keep_best
                 else None)
    self._saved_at = 0

  def resume(self, state):
    """`state` restored from the newest checkpoint that passes, if any.

    Args:
      state: the run's initial `TrainState`; its shardings are kept.

    Returns:
      The restored `TrainState` with `nonfinite_step` -1, or `state`.

    Raises:
      ValueError: the checkpoint is of a run with another key, or past
        `num_steps`.
      CheckpointMismatchError: it holds other shapes than `state`.
      CheckpointError: no checkpoint passes verification.
    """
    if self.checkpoints is None:
      return state
    found = self.checkpoints.restore_latest(_train_items(state))
    if found is None:
      return state
    step, items, metadata = found
    saved_key = metadata.get("run_key")
    if saved_key is not None and saved_key != self.run_key:
      raise ValueError(
          f"{self.checkpoints.directory} holds a run started from key "
          f"{saved_key}, but this call passes key {self.run_key} (another "
          f"seed?). Resuming would mix two runs; use another workdir.")
    if step > self.num_steps:
      raise ValueError(
          f"{self.checkpoints.path(step)} is at step {step}, past num_steps="
          f"{self.num_steps}: its parameters were trained longer than asked. "
          f"Pass num_steps >= {step}, or use another workdir.")
    self._saved_at = step
    # nonfinite_step reports on this call only: a run that halted is resumed
    # to retry the step it stopped at.
    return _train_state(state, items)._replace(
        nonfinite_step=jnp.full_like(state.nonfinite_step, -1))

  def save(self, state, *, halted: bool = False) -> None:
    """Checkpoints the `TrainState` `state` if one is due at its step.

    A halted run's last finite state is kept for inspection and resumption
    without rotating out the checkpoints before it.
    """
    step = int(state.step)
    due = (step - self._saved_at >= self.every or step >= self.num_steps or
           halted)
    if self.checkpoints is None or not due or (
        step in self.checkpoints.steps()):
      return
    self.checkpoints.save(step, _train_items(state),
                          metadata={"run_key": self.run_key},
                          rotate=not halted)
    self._saved_at = step

  def offer_best(self, step: int, record: Mapping[str, Any],
                 meta_params: PyTree) -> None:
    """Keeps `meta_params` if `record` holds the best score so far."""
    if self.best is not None:
      self.best.offer(step, record, meta_params)


class _BestParams:
  """The best-scoring meta-parameters so far, on disk so a resume keeps them.

  They are a verified checkpoint in `best/<step>/`; `best.json`, written
  atomically after it has passed, names the step, so it never points at a
  half-written checkpoint, and the previous best is deleted only then.
  """

  def __init__(self, workdir: str, metric: str):
    self.checkpoints = Checkpoints(os.path.join(workdir, "best"), keep=1,
                                   writer=True)
    self.info_path = os.path.join(workdir, "best.json")
    self.metric = metric
    self.score = -np.inf
    if os.path.exists(self.info_path):
      self.score = _read_best_info(self.info_path)["score"]

  def offer(self, step: int, record: Mapping[str, Any], meta_params) -> None:
    if self.metric not in record:
      raise KeyError(f"keep_best metric {self.metric!r} is not among the "
                     f"eval_fn's metrics {sorted(record)}.")
    score = float(record[self.metric])
    if not score > self.score:
      return
    if step not in self.checkpoints.steps():
      self.checkpoints.save(step, {"meta_params": meta_params}, rotate=False)
    if jax.process_index() == 0:
      io_lib.write_json(self.info_path, {
          "step": step, "metric": self.metric, "score": score})
    for old in self.checkpoints.steps():
      if old != step:
        self.checkpoints.delete(old)
    self.score = score


def _read_best_info(path: str) -> Dict[str, Any]:
  try:
    with open(path) as f:
      info = json.load(f)
    return {"step": int(info["step"]), "metric": str(info["metric"]),
            "score": float(info["score"])}
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise ValueError(f"{path} is unreadable ({type(e).__name__}: {e}).") \
        from None


def _restore_newest(workdir: str, like: Items) -> Dict[str, PyTree]:
  checkpoints = Checkpoints(os.path.join(workdir, "checkpoints"))
  found = checkpoints.restore_latest(like)
  if found is None:
    raise FileNotFoundError(f"no checkpoint in {checkpoints.directory}.")
  return found[1]


def restore_state(workdir: str, like):
  """The newest verified `TrainState` checkpointed in `workdir`.

  Args:
    workdir: the `workdir` given to `metajax.train`.
    like: a `TrainState` of the same structure, shapes and dtypes (e.g. from
      `metajax.init_state`); the restored arrays take its shardings.

  Returns:
    A `TrainState`, `nonfinite_step` included as saved.

  Raises:
    FileNotFoundError: `workdir` holds no checkpoint; names the folder.
    CheckpointMismatchError: the newest readable checkpoint holds other
      leaves than `like`; names them with their shapes.
    CheckpointError: none of its checkpoints passes verification.
  """
  return _train_state(like, _restore_newest(workdir, _train_items(like)))


def restore_params(workdir: str, like_params: PyTree) -> PyTree:
  """The meta-parameters of the newest verified checkpoint in `workdir`.

  Reads only the meta-parameters: no optimiser is needed, and a checkpoint
  whose optimiser state has another structure is still read.

  Args:
    workdir: the `workdir` given to `metajax.train`.
    like_params: a PyTree with the meta-parameters' structure, shapes and
      dtypes (e.g. `learner.init(key)`).

  Raises:
    FileNotFoundError: `workdir` holds no checkpoint; names the folder.
    CheckpointMismatchError: the parameters have other leaves than
      `like_params`; names them with their shapes.
    CheckpointError: none of its checkpoints passes verification.
  """
  return _restore_newest(workdir, {"meta_params": like_params})["meta_params"]


def restore_best(workdir: str, like_params: PyTree
                 ) -> Tuple[PyTree, Dict[str, Any]]:
  """The meta-parameters `train(..., keep_best=...)` kept in `workdir`.

  Args:
    workdir: the run's directory.
    like_params: a PyTree with the meta-parameters' structure, shapes and
      dtypes (e.g. `learner.init(key)` or the final `TrainState.meta_params`).

  Returns:
    `(meta_params, info)`, info being `{"step", "metric", "score"}`.

  Raises:
    FileNotFoundError: no best parameters were kept in `workdir`.
    CheckpointMismatchError: they have other leaves than `like_params`.
    CheckpointError: they fail verification.
  """
  info_path = os.path.join(workdir, "best.json")
  if not os.path.exists(info_path):
    raise FileNotFoundError(f"{info_path} does not exist: no best "
                            f"meta-parameters were kept in {workdir}.")
  info = _read_best_info(info_path)
  checkpoints = Checkpoints(os.path.join(workdir, "best"))
  items, _ = checkpoints.restore(info["step"], {"meta_params": like_params})
  return items["meta_params"], info
