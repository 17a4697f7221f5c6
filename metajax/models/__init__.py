"""Pure-function models: flax.linen modules used through `Module.apply`, and
`attention`, plain init/apply functions over dicts of arrays (the neural
processes' multi-head attention)."""

from metajax.models import attention
from metajax.models.conv import Conv
from metajax.models.conv import Conv4
from metajax.models.conv import conv2d
from metajax.models.conv import max_pool2x2
from metajax.models.conv import resolve_conv_impl
from metajax.models.mlp import MLP
from metajax.models.norm import TaskBatchNorm
from metajax.models.relation import RelationEmbedding
from metajax.models.relation import RelationModule
from metajax.models.resnet import ResNet12
from metajax.models.resnet import ResidualBlock
from metajax.models.student import StudentModel
from metajax.models.student import masked_bce
from metajax.models.student import student_mask
