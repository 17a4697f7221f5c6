"""Task sources: synthetic tasks here, image datasets in `vision`, student
answer sequences in `students`, checked downloads in `download`.

Only `sinusoid` is imported with the package, so that `import metajax` stays
light; import the loaders by their module path, e.g.
`from metajax.data.vision import omniglot`.
"""

from metajax.data import sinusoid
