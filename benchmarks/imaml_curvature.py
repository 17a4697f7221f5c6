r"""Is iMAML's linear system solvable on real episodes? Curvature and CG.

  python benchmarks/imaml_curvature.py
  python benchmarks/imaml_curvature.py --workdir=workdirs/imaml_trainval

iMAML's meta-gradient solves `(I + H / lam) x = g` by conjugate gradients,
`H` the support loss's Hessian at the adapted parameters. CG needs that
matrix positive definite; a network's support loss is not convex. On real
Omniglot episodes of the few-shot experiment's Conv4 (`--ways`-way 1-shot,
5 query drawings per class, meta-parameters from initialisation or from a
run's `--workdir`), in float64, this reports for each episode:

* the inner problem: the regularised gradient's norm at the start (the
  support loss's gradient at `theta`) and after `--steps` steps at
  `--inner_lr`, and how far the adapted parameters moved;
* the extreme eigenvalues of `I + H / lam`, by power iteration (the
  smallest from the largest of `top I - A`; estimates, not bounds);
* the undamped solve: CG's relative residual after `--cg_steps` and after
  100 iterations, and the cosine of its result with the *unrolled*
  meta-gradient (backpropagation through the same inner steps: the exact
  gradient of what the inner loop computed);
* for each `--dampings` value d, the cosine of the damped solve
  `((1 + d) I + H / lam)^{-1} g` (`--cg_steps` iterations) with the
  unrolled gradient, and the first-order `g`'s (d -> infinity).
"""

import dataclasses

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from metajax import algorithms
from metajax import checkpoint
from metajax import inner
from metajax.algorithms.imaml import proximal
from metajax.data.vision import episodes
from metajax.experiments import fewshot_vision as fv

flags.DEFINE_integer("ways", 5, "Classes per episode.")
flags.DEFINE_integer("steps", 16, "Inner gradient steps.")
flags.DEFINE_float("inner_lr", 0.1, "Inner learning rate.")
flags.DEFINE_float("reg", 2.0, "iMAML's lambda.")
flags.DEFINE_integer("cg_steps", 5, "CG iterations of the solves compared.")
flags.DEFINE_list("dampings", ["1", "10"], "Damping values to compare.")
flags.DEFINE_integer("episodes", 4, "Episodes of the train split.")
flags.DEFINE_string("workdir", "", "A few-shot run's workdir: use its "
                    "newest checkpoint's meta-parameters (else init).")
FLAGS = flags.FLAGS


def _norm(tree):
  return jnp.sqrt(sum(jnp.sum(x * x) for x in jax.tree.leaves(tree)))


def _cosine(a, b):
  dot = sum(jnp.sum(x * y) for x, y in zip(jax.tree.leaves(a),
                                           jax.tree.leaves(b)))
  return dot / (_norm(a) * _norm(b))


def _axpy(a, x, y):
  return jax.tree.map(lambda u, v: a * u + v, x, y)


def _power(matvec, start, iterations=60):
  """The Rayleigh quotient after power iteration: the eigenvalue of largest
  magnitude of a symmetric `matvec`, estimated."""
  def step(v, _):
    w = matvec(v)
    return jax.tree.map(lambda x: x / _norm(w), w), None
  v, _ = jax.lax.scan(step, start, None, length=iterations)
  return sum(jnp.sum(x * y) for x, y in zip(jax.tree.leaves(v),
                                            jax.tree.leaves(matvec(v))))


def analyse(loss_fn, theta, support, query, dampings):
  """The report's numbers for one episode (see the module docstring)."""
  reg, steps, lr = FLAGS.reg, FLAGS.steps, FLAGS.inner_lr
  regularised = proximal(loss_fn, reg)
  solve = lambda th: inner.adapt(regularised, th, (support, th),
                                 steps=steps, lr=lr)
  phi = solve(theta)
  residual = lambda p: jax.grad(regularised)(p, (support, theta))
  g = jax.grad(loss_fn)(phi, query)
  unrolled = jax.grad(lambda th: loss_fn(solve(th), query))(theta)
  hvp = lambda v: jax.jvp(residual, (phi,), (v,))[1]  # (H + lam I) v
  system = lambda v: jax.tree.map(lambda x: x / reg, hvp(v))  # I + H / lam

  def cg(damping, iterations):
    matvec = lambda v: _axpy(damping, v, system(v))
    x, _ = jax.scipy.sparse.linalg.cg(matvec, g, maxiter=iterations,
                                      tol=1e-14)
    return x, _norm(jax.tree.map(jnp.subtract, matvec(x), g)) / _norm(g)

  start = jax.tree.map(
      lambda x: jax.random.normal(jax.random.PRNGKey(3), x.shape, x.dtype),
      phi)
  top = _power(system, start)
  bottom = top - _power(lambda v: _axpy(top, v, jax.tree.map(
      jnp.negative, system(v))), start)
  short, short_residual = cg(0.0, FLAGS.cg_steps)
  long, long_residual = cg(0.0, 100)
  return {
      "grad_start": _norm(residual(theta)), "grad_end": _norm(residual(phi)),
      "moved": _norm(jax.tree.map(jnp.subtract, phi, theta)),
      "eig_min": bottom, "eig_max": top,
      "residual_short": short_residual, "residual_100": long_residual,
      "cos_short": _cosine(short, unrolled),
      "cos_100": _cosine(long, unrolled),
      "cos_first_order": _cosine(g, unrolled),
      "cos_damped": jnp.stack([_cosine(cg(d, FLAGS.cg_steps)[0], unrolled)
                               for d in dampings]),
  }


def main(argv):
  del argv
  jax.config.update("jax_enable_x64", True)
  dampings = [float(d) for d in FLAGS.dampings]
  config = fv.Config(algorithm="imaml", ways=FLAGS.ways,
                     test_ways=(FLAGS.ways,), inner_steps=FLAGS.steps,
                     inner_lr=FLAGS.inner_lr, imaml_reg=FLAGS.reg)
  splits = fv.load_splits(dataclasses.replace(config, train_on_val=True))
  tasks = episodes.episode_sampler(
      splits["train"], ways=FLAGS.ways, shots=1, query=5,
      batch_size=FLAGS.episodes, split="train")(jax.random.PRNGKey(1))
  init_fn, apply_fn = fv.classifier_model(config, FLAGS.ways)
  theta = init_fn(jax.random.PRNGKey(0))
  if FLAGS.workdir:
    theta = checkpoint.restore_params(FLAGS.workdir,
                                      {"params": theta})["params"]
  theta = jax.tree.map(lambda x: x.astype(jnp.float64), theta)
  loss_fn = algorithms.supervised_loss(apply_fn, algorithms.cross_entropy)
  run = jax.jit(lambda th, s, q: analyse(loss_fn, th, s, q, dampings))
  where = FLAGS.workdir or "initialisation"
  print(f"{FLAGS.ways}-way 1-shot Omniglot episodes, meta-parameters from "
        f"{where}; {FLAGS.steps} inner steps at {FLAGS.inner_lr}, lambda "
        f"{FLAGS.reg}, CG {FLAGS.cg_steps} iterations; float64")
  damped = " | ".join(f"cos, damping {d:g}" for d in dampings)
  print(f"| episode | inner grad norm, start -> end | norm of phi - theta "
        f"| eig(I + H/lambda) "
        f"| CG residual, {FLAGS.cg_steps} / 100 it. | cos, undamped "
        f"{FLAGS.cg_steps} / 100 it. | {damped} | cos, first-order g |")
  print("| --- " * (7 + len(dampings)) + "|")
  for i in range(FLAGS.episodes):
    task = jax.tree.map(lambda x, i=i: x[i], tasks)
    r = jax.device_get(run(theta, task.support, task.query))
    cells = " | ".join(f"{c:.2f}" for c in np.asarray(r["cos_damped"]))
    print(f"| {i} | {r['grad_start']:.2f} -> {r['grad_end']:.2f} | "
          f"{r['moved']:.2f} | "
          f"[{r['eig_min']:.2f}, {r['eig_max']:.2f}] | "
          f"{r['residual_short']:.2g} / {r['residual_100']:.2g} | "
          f"{r['cos_short']:.2f} / {r['cos_100']:.2f} | {cells} | "
          f"{r['cos_first_order']:.2f} |")


if __name__ == "__main__":
  app.run(main)
