"""Task sources."""

from metajax.data import sinusoid
