"""metajax: functional meta-learning for JAX.

The public API, re-exported. Importing it loads neither the data loaders
(`metajax.data.*`, imported on use) nor the experiments
(`metajax.experiments.*`, leaves over the library).
"""

from metajax import algorithms
from metajax import checkpoint
from metajax import evaluation
from metajax import host_tasks
from metajax import implicit
from metajax import models
from metajax import sharding
from metajax import summary
from metajax import tasks
from metajax import training
from metajax import types
from metajax import workdir
from metajax.algorithms import MetaLearner
from metajax.checkpoint import restore_best
from metajax.checkpoint import restore_params
from metajax.checkpoint import restore_state
from metajax.evaluation import evaluate
from metajax.evaluation import mean_ci
from metajax.host_tasks import HostTasks
from metajax.implicit import implicit_solution
from metajax.inner import InnerAux
from metajax.inner import adapt
from metajax.inner import check_scalar_loss
from metajax.inner import combine
from metajax.inner import mask_by_path
from metajax.inner import maml_loss
from metajax.inner import partition
from metajax.sharding import local_copy
from metajax.sharding import replicate
from metajax.sharding import shard_tasks
from metajax.sharding import task_mesh
from metajax.summary import read_metrics
from metajax.tasks import Task
from metajax.tasks import merge_sets
from metajax.tasks import num_tasks
from metajax.tasks import sampler_tree
from metajax.tasks import validate_task
from metajax.training import TrainState
from metajax.training import init_state
from metajax.training import make_train_step
from metajax.training import train

__version__ = "0.1.0"
