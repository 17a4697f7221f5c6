"""Image datasets for few-shot classification and the episode sampler."""

from metajax.data.vision import episodes
from metajax.data.vision import mini_imagenet
from metajax.data.vision import omniglot
from metajax.data.vision import omniglot_official
from metajax.data.vision import tfds_source
