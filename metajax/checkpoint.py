"""Checkpoints verified when written and again when read.

A checkpoint is an orbax checkpoint of one PyTree in `<directory>/<step>/`,
with a manifest (`metajax_manifest.json`) that holds the SHA-256 of every
file orbax wrote and the path, shape and dtype of every leaf.

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
"""

import hashlib
import json
import logging
import os
import shutil
import time
from typing import Any, Dict, List, Optional, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp

from metajax import sharding as sharding_lib
from metajax import workdir as workdir_lib

PyTree = Any
MANIFEST = "metajax_manifest.json"
FORMAT = 1
_TMP_PREFIX = "tmp-"
_CORRUPT = "corrupt"


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


class Checkpoints:
  """Verified, rotated checkpoints of one PyTree in `directory`.

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

  def save(self, step: int, tree: PyTree, *, metadata: Optional[Dict] = None,
           rotate: bool = True) -> str:
    """Writes and verifies `tree` as checkpoint `step`; returns its folder.

    Args:
      step: the step number, the folder's name.
      tree: a PyTree of arrays, all finite.
      metadata: JSON-serialisable facts stored in the manifest and returned
        by `restore_latest` (e.g. the run's key).
      rotate: delete the checkpoints older than the newest `keep` once this
        one has passed.

    Raises:
      FloatingPointError: `tree` holds NaN or infinity; nothing is written.
      CheckpointError: what was read back differs from `tree`; the older
        checkpoints are kept.
    """
    if not self.writer:
      raise CheckpointError(f"{self.directory} was opened for reading only.")
    bad = nonfinite_leaves(tree)
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
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(os.path.join(tmp, "state"), tree)
    checkpointer.wait_until_finished()
    checkpointer.close()
    if self._primary:
      manifest = {"format": FORMAT, "step": int(step),
                  "files": _file_hashes(tmp), "leaves": leaf_specs(tree),
                  "metadata": metadata or {}, "time": time.time()}
      workdir_lib.write_atomic(os.path.join(tmp, MANIFEST),
                               json.dumps(manifest, indent=1))
    _sync(f"metajax-checkpoint-manifest-{tmp}")
    restored, _ = self._read(tmp, tree)
    same = jax.tree.map(lambda a, b: bool(np.array_equal(a, b)),
                        to_host(restored), to_host(tree))
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

  def _read(self, folder: str, like: PyTree) -> Tuple[PyTree, Dict]:
    """Verifies and restores the checkpoint in `folder` into `like`'s form."""
    manifest_path = os.path.join(folder, MANIFEST)
    try:
      with open(manifest_path) as f:
        manifest = json.load(f)
      files, leaves = manifest["files"], manifest["leaves"]
    except FileNotFoundError:
      raise CheckpointError(
          f"{folder}: no {MANIFEST} (an unfinished save, or a checkpoint "
          f"written before metajax verified its checkpoints).") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
      raise CheckpointError(f"{manifest_path} is unreadable: {e}") from None
    if manifest.get("format") != FORMAT:
      raise CheckpointError(f"{manifest_path}: unknown format "
                            f"{manifest.get('format')!r}.")
    expected = leaf_specs(like)
    if leaves != expected:
      raise CheckpointMismatchError(
          f"the checkpoint in {folder} holds other parameters than this run "
          f"builds (a changed model or optimiser setting?):\n"
          f"{_describe_mismatch(leaves, expected)}")
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
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    checkpointer = ocp.StandardCheckpointer()
    try:
      restored = checkpointer.restore(os.path.join(folder, "state"), abstract)
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(f"{folder} cannot be restored: "
                            f"{type(e).__name__}: {e}") from None
    finally:
      checkpointer.close()
    bad = nonfinite_leaves(restored)
    if bad:
      raise CheckpointError(f"{folder} holds non-finite values in "
                            f"{', '.join(bad[:5])}.")
    return restored, manifest.get("metadata", {})

  def restore(self, step: int, like: PyTree) -> Tuple[PyTree, Dict]:
    """Checkpoint `step`, verified, as `(tree, metadata)`."""
    return self._read(self.path(step), like)

  def restore_latest(self, like: PyTree
                     ) -> Optional[Tuple[int, PyTree, Dict]]:
    """The newest checkpoint that passes, as `(step, tree, metadata)`.

    Checkpoints that fail are reported and moved to `corrupt/` once an older
    one has passed.

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
        tree, metadata = self.restore(step, like)
      except CheckpointError as e:
        failures.append((step, e))
        continue
      for bad_step, error in failures:
        moved = self._set_aside(bad_step, str(error))
        logging.warning("skipped checkpoint %s: %s%s", self.path(bad_step),
                        error, f" (moved to {moved})" if moved else "")
      if self.writer:
        _sync(f"metajax-checkpoint-restored-{self.directory}")
      return step, tree, metadata
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
    workdir_lib.write_atomic(os.path.join(target, "REASON.txt"),
                             reason + "\n")
    return target
