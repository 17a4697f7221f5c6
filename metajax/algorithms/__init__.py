"""Meta-learning algorithms, each a `MetaLearner` of pure functions."""

from metajax.algorithms import bobcat as bobcat_lib
from metajax.algorithms import continual
from metajax.algorithms import neural_process
from metajax.algorithms import pretrain as pretrain_lib
from metajax.algorithms import reptile as reptile_lib
from metajax.algorithms import wrappers
from metajax.algorithms.base import MetaLearner
from metajax.algorithms.base import accuracy
from metajax.algorithms.base import batch_mean_grad
from metajax.algorithms.base import classification_metrics
from metajax.algorithms.base import cross_entropy
from metajax.algorithms.base import model_params
from metajax.algorithms.base import mse
from metajax.algorithms.base import supervised_loss
from metajax.algorithms.bobcat import Bobcat
from metajax.algorithms.bobcat import bobcat
from metajax.algorithms.hallucination import hallucinating_protonet
from metajax.algorithms.imaml import imaml
from metajax.algorithms.joint import joint
from metajax.algorithms.maml import anil
from metajax.algorithms.maml import fomaml
from metajax.algorithms.maml import maml
from metajax.algorithms.maml import maml_plus_plus
from metajax.algorithms.maml import meta_sgd
from metajax.algorithms.matching import matching
from metajax.algorithms.neural_process import attentive_np
from metajax.algorithms.neural_process import conditional_np
from metajax.algorithms.neural_process import latent_np
from metajax.algorithms.pretrain import pretrain
from metajax.algorithms.protonet import protonet
from metajax.algorithms.relation import relation
from metajax.algorithms.reptile import reptile
from metajax.algorithms.student_np import student_np
from metajax.algorithms.wrappers import map_tasks
from metajax.algorithms.wrappers import resolve_task_chunk
from metajax.algorithms.wrappers import starting_from
