r"""Does this checkout compile the inner loop to the same program as another?

  git worktree add /tmp/before <commit>
  python benchmarks/same_program.py --against=/tmp/before

A change to `metajax/inner.py` that should leave the gradient-descent path
as it was (new options beside it) can be checked without timing anything:
if the jaxpr and the StableHLO of the meta-gradient are the same text, XLA
compiles the same program and it runs at the same speed. For each
configuration below, a child process of each checkout prints the jaxpr and
the lowered StableHLO of `jax.value_and_grad` of `maml_loss` on the tests'
tiny MLP task (3 inner steps); the script reports, per configuration,
whether the two checkouts' texts are identical.
"""

import os
import subprocess
import sys

from absl import app
from absl import flags

flags.DEFINE_string("against", None, "The other checkout's root folder.")
flags.DEFINE_string("child", "", "Internal: print the program of this "
                    "configuration.")
FLAGS = flags.FLAGS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Options of maml_loss that every version since the first takes.
CONFIGURATIONS = {
    "gradient descent": "dict(lr=0.1)",
    "first order": "dict(lr=0.1, first_order=True)",
    "remat": "dict(lr=0.1, remat=True)",
    "per-step rates, multi-step loss": (
        "dict(lr=jnp.full((3,), 0.1), per_step_lr=True, "
        "step_weights=[0.2, 0.3, 0.5])"),
    "head mask": "dict(lr=0.1, mask={'body': {'b': False, 'w': False}, "
                 "'head': {'b': True, 'w': True}})",
}


def _print_program(options: str):
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import metajax  # pylint: disable=import-outside-toplevel
  sys.path.insert(0, os.path.join(ROOT, "tests"))
  from conftest import tiny_loss, tiny_mlp_params, tiny_task  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  params = tiny_mlp_params(jax.random.PRNGKey(0))
  task = tiny_task(jax.random.PRNGKey(1))
  kwargs = eval(options, {"jnp": jnp})  # pylint: disable=eval-used
  f = jax.value_and_grad(
      lambda p: metajax.maml_loss(tiny_loss, p, task, steps=3, **kwargs))
  print(os.path.dirname(os.path.dirname(metajax.__file__)), file=sys.stderr)
  print(jax.make_jaxpr(f)(params))
  print(jax.jit(f).lower(params).as_text())


def _program(checkout: str, name: str) -> str:
  env = dict(os.environ, PYTHONPATH=checkout)
  child = subprocess.run(
      [sys.executable, os.path.abspath(__file__), f"--child={name}"],
      cwd=checkout, env=env, check=True, capture_output=True, text=True)
  imported = child.stderr.strip().splitlines()[-1]
  if os.path.realpath(imported) != os.path.realpath(checkout):
    raise RuntimeError(f"the child meant for {checkout} imported metajax "
                       f"from {imported}.")
  return child.stdout


def main(argv):
  del argv
  if FLAGS.child:
    _print_program(CONFIGURATIONS[FLAGS.child])
    return
  if not FLAGS.against:
    raise app.UsageError("--against=<the other checkout's root> is needed.")
  for name in CONFIGURATIONS:
    same = _program(ROOT, name) == _program(FLAGS.against, name)
    print(f"{name}: {'the same program' if same else 'DIFFERENT'}")


if __name__ == "__main__":
  app.run(main)
