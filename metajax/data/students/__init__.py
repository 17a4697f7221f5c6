"""Student answer sequences: knowledge-tracing data and per-student tasks."""

from metajax.data.students import knowledge_tracing
from metajax.data.students import sequences
