"""Task sources: synthetic tasks, image datasets, the episode sampler.

`tfds_source` imports tensorflow-datasets only when one of its loaders runs.
"""

from metajax.data import download
from metajax.data import episodes
from metajax.data import mini_imagenet
from metajax.data import omniglot
from metajax.data import omniglot_official
from metajax.data import sinusoid
from metajax.data import tfds_source
