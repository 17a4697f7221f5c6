"""Evaluation: numbers with their uncertainty.

`episodes`: adapt on each task's support set, score its query set, and
report the mean over tasks with a 95% confidence interval. `students`: the
knowledge-tracing protocols (every answer from the earlier ones; cold start
from a student's first k answers), AUC with bootstrap intervals over
students.
"""

from metajax.evaluation import episodes
from metajax.evaluation import students
from metajax.evaluation.episodes import accuracy
from metajax.evaluation.episodes import evaluate
from metajax.evaluation.episodes import mean_ci
from metajax.evaluation.episodes import task_metrics
from metajax.evaluation.students import auc
from metajax.evaluation.students import binary_metrics
from metajax.evaluation.students import bootstrap_auc
from metajax.evaluation.students import bootstrap_auc_gain
