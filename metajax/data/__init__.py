"""Task sources: synthetic task families here (`sinusoid`, Gaussian-process
regression in `gp`), image datasets in `vision`, student answer sequences in
`students`, checked downloads in `download`.

Only the synthetic families are imported with the package, so that
`import metajax` stays light; import the loaders by their module path, e.g.
`from metajax.data.vision import omniglot`.
"""

from metajax.data import gp
from metajax.data import sinusoid
