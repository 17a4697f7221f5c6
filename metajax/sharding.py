"""The meta-batch split over devices: one mesh axis, "tasks".

Meta-learning parallelises over tasks: every task of a meta-batch is adapted
independently (the learners `jax.vmap` over the leading task axis), and the
meta-gradient is the mean of per-task gradients. So the devices form a 1-D
mesh, each holds a full copy of the meta-parameters, optimiser state and key,
and each computes the tasks of its own slice of the task axis; the mean over
tasks then becomes an all-reduce, which XLA inserts.

The task sampler runs inside the compiled step. Constraining its output to be
split along "tasks" lets XLA partition the sampling too: each device draws
only its own tasks (`jax_threefry_partitionable`, on by default, lets a
device generate its slice of a random array without the rest), and the batch
is the one a single device would draw, so a run's result does not depend on
the device count beyond float32 summation order.

Across hosts (`jax.distributed.initialize()`), `jax.devices()` lists every
process's devices, so the same mesh spans them all: each host runs the
compiled step for the tasks of its local devices, from the same replicated
key.
"""

from typing import Optional

import jax
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec
import numpy as np

from metajax import tasks as tasks_lib
from metajax.types import PyTree

TASK_AXIS = "tasks"


def task_mesh(num_devices: Optional[int] = None) -> Mesh:
  """A 1-D mesh named "tasks" over the first `num_devices` of `jax.devices()`.

  Args:
    num_devices: how many devices to use; None uses all of them (on several
      hosts, all of every host's).

  Returns:
    A `jax.sharding.Mesh` of shape `[num_devices]`.
  """
  devices = jax.devices()
  if num_devices is None:
    num_devices = len(devices)
  if not 1 <= num_devices <= len(devices):
    raise ValueError(f"num_devices must be in 1..{len(devices)} (the devices "
                     f"visible), got {num_devices}.")
  return Mesh(np.array(devices[:num_devices]), (TASK_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  """The sharding that puts a full copy of an array on every device of `mesh`."""
  return NamedSharding(mesh, PartitionSpec())


def task_sharding(mesh: Mesh, axis: int = 0) -> NamedSharding:
  """The sharding that splits an array's task axis, axis `axis` (the leading
  one by default; 1 for batches stacked over steps), over `mesh`."""
  return NamedSharding(mesh, PartitionSpec(*([None] * axis), TASK_AXIS))


def check_divisible(n_tasks: int, mesh: Mesh) -> None:
  """Raises a ValueError unless `n_tasks` splits evenly over `mesh`'s devices."""
  n_devices = mesh.shape[TASK_AXIS]
  if n_tasks % n_devices:
    raise ValueError(
        f"a meta-batch of {n_tasks} tasks cannot be split evenly over "
        f"{n_devices} devices: make the meta-batch size a multiple of "
        f"{n_devices}, or use fewer devices.")


def shard_tasks(tasks: tasks_lib.Task, mesh: Mesh) -> tasks_lib.Task:
  """Splits a task batch along its leading axis over `mesh`'s devices.

  Inside a compiled function this is a sharding constraint (XLA partitions the
  computation that produces `tasks` accordingly); on concrete arrays it moves
  the data. Each device gets `n_tasks / n_devices` consecutive tasks.

  Args:
    tasks: a batched `Task`, every leaf `[n_tasks, ...]`.
    mesh: a mesh with a "tasks" axis (`task_mesh`).

  Returns:
    `tasks` with the same values and shapes, sharded along "tasks".
  """
  check_divisible(tasks_lib.num_tasks(tasks), mesh)
  return jax.lax.with_sharding_constraint(tasks, task_sharding(mesh))


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
  """Puts a full copy of every array leaf of `tree` on each device of `mesh`.

  On several hosts every process must pass the same values (as the training
  state and the samplers' datasets are: same seed, same files).
  """
  return jax.device_put(tree, replicated(mesh))


def local_copy(tree: PyTree) -> PyTree:
  """Each replicated leaf of `tree` as an array on this host's first device.

  Lets code written for one device (evaluation loops, plotting) use the state
  of a sharded run without running on, or talking to, the other devices.
  Arrays already on one device stay where they are, so callers need not
  check whether a mesh was used.
  """
  def one(x: jax.Array) -> jax.Array:
    if not x.is_fully_replicated:
      raise ValueError(f"local_copy needs replicated arrays; got one of shape "
                       f"{x.shape} with sharding {x.sharding}.")
    return x.addressable_data(0)
  return jax.tree.map(one, tree)
