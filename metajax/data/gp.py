"""1-D Gaussian-process regression tasks and the exact GP predictive.

The benchmark of the recent Neural Process literature (Lee et al., 2020,
"Bootstrapping Neural Processes"; Nguyen & Grover, 2022, "Transformer Neural
Processes"). Each task draws its kernel hyper-parameters, `max_points` = 50
inputs x ~ U[-2, 2] and one function y ~ N(0, K + sigma_eps^2 I) with the
observation noise already in y; a context size n_c ~ U{3, ..., 46} and a target
size n_t ~ U{3, ..., 49 - n_c}. Tasks are drawn with `jax.random`, so sampling
runs on the device inside the compiled training step.

Task sizes vary, array shapes do not: a task keeps all 50 points in both sets
and says which are real with a float32 mask (1.0 real, 0.0 padding),

    Task(support=(x, (y, mask)), query=(x, (y, mask)))

with x and y `[50, 1]` and masks `[50]`. The support set is slots
`[0, n_c)`; the query set is slots `[n_c, n_c + n_t)`, or `[0, n_c + n_t)` with
`query_includes_context=True` (how Neural Processes are usually trained).
Because n_t < 50 - n_c, slot 49 is never used, as in the reference protocol.

Kernels, with d = x - x', r = abs(d) / l, lengthscale l ~ U[0.1, 0.6],
scale s ~ U[0.1, 1] and period p ~ U[0.1, 0.5]:

* "rbf": `s^2 exp(-d^2 / (2 l^2))`
* "matern52": `s^2 (1 + sqrt(5) r + 5 r^2 / 3) exp(-sqrt(5) r)`
* "periodic": `s^2 exp(-2 sin^2(pi abs(d) / p) / l^2)`

`sample_tasks` also returns each task's `KernelParams`, which the exact GP
posterior predictive (`gp_log_likelihood`, `gp_mean_log_likelihood`,
`gp_posterior`) needs: it is the ceiling that no model beats on average.

Typical use, per task of a batch:

    task, params = gp.sample_tasks(key, 16, "rbf")
    ll = jax.vmap(lambda p, s, q: gp.gp_mean_log_likelihood("rbf", p, s, q))(
        params, task.support, task.query)                      # [16]
"""

import math
from typing import Callable, Dict, NamedTuple, Tuple

import jax
import jax.numpy as jnp

from metajax.tasks import Task


KERNELS = ("rbf", "matern52", "periodic")


class GPFamily(NamedTuple):
  """The task distribution.

  Attributes:
    x: inputs are uniform on this interval.
    lengthscale: l is uniform on this interval.
    scale: s (the prior std of f) is uniform on this interval.
    period: p (periodic kernel only) is uniform on this interval.
    noise_std: observation noise std sigma_eps, the same for every task.
    num_context: n_c is a uniform integer in the half-open `[lo, hi)`.
    min_target: n_t is a uniform integer in `[min_target, max_points - n_c)`.
    max_points: slots per task (the fixed example axis of every array).
  """
  x: Tuple[float, float] = (-2.0, 2.0)
  lengthscale: Tuple[float, float] = (0.1, 0.6)
  scale: Tuple[float, float] = (0.1, 1.0)
  period: Tuple[float, float] = (0.1, 0.5)
  noise_std: float = 0.02
  num_context: Tuple[int, int] = (3, 47)
  min_target: int = 3
  max_points: int = 50


class KernelParams(NamedTuple):
  """Hyper-parameters of one task's GP (scalars), or of a batch (`[B]`).

  Attributes:
    lengthscale: l.
    scale: s, the prior std of f.
    period: p; drawn for every kernel but only the periodic one uses it.
    noise_std: sigma_eps, the observation noise std.
  """
  lengthscale: jax.Array
  scale: jax.Array
  period: jax.Array
  noise_std: jax.Array


def _rbf(d, params):
  return params.scale ** 2 * jnp.exp(-0.5 * (d / params.lengthscale) ** 2)


def _matern52(d, params):
  r = math.sqrt(5.0) * jnp.abs(d) / params.lengthscale
  return params.scale ** 2 * (1.0 + r + r ** 2 / 3.0) * jnp.exp(-r)


def _periodic(d, params):
  # sin^2 is even, so the formula's |d| can be dropped.
  s = jnp.sin(math.pi * d / params.period)
  return params.scale ** 2 * jnp.exp(-2.0 * s ** 2 / params.lengthscale ** 2)


_KERNEL_FNS: Dict[str, Callable] = {
    "rbf": _rbf, "matern52": _matern52, "periodic": _periodic}


def _kernel_fn(kernel: str) -> Callable:
  if kernel not in _KERNEL_FNS:
    raise ValueError(f"unknown GP kernel {kernel!r}; choose one of "
                     f"{', '.join(repr(k) for k in KERNELS)}.")
  return _KERNEL_FNS[kernel]


def _check_x(x, what: str) -> None:
  if jnp.ndim(x) != 2 or jnp.shape(x)[-1] != 1:
    raise ValueError(f"{what} must have shape [n, 1] (1-D inputs), got "
                     f"{jnp.shape(x)}.")


def kernel_matrix(kernel: str, params: KernelParams, x1: jax.Array,
                  x2: jax.Array) -> jax.Array:
  """The noise-free covariance k(x1_i, x2_j) of f, for one task.

  Args:
    kernel: "rbf", "matern52" or "periodic".
    params: scalar `KernelParams` (`noise_std` is not used here).
    x1: float `[n1, 1]`.
    x2: float `[n2, 1]`.

  Returns:
    `[n1, n2]` in the promoted dtype of the inputs.

  Raises:
    ValueError: for an unknown kernel name or inputs not of shape `[n, 1]`.
  """
  fn = _kernel_fn(kernel)
  _check_x(x1, "x1")
  _check_x(x2, "x2")
  return fn(x1 - x2[:, 0][None, :], params)


def sample_y(key: jax.Array, kernel: str, params: KernelParams,
             x: jax.Array) -> jax.Array:
  """Draws noisy observations y ~ N(0, K(x, x) + noise_std^2 I) of one task.

  The Cholesky factorisation adds no jitter: the observation noise already
  bounds the smallest eigenvalue of K + noise_std^2 I below by noise_std^2
  (4e-4 by default), well above the float32 round-off of a 50 x 50 Gram
  matrix with entries at most 1 (180,000 benchmark tasks, at the largest
  lengthscale and scale too, factorised without a NaN).

  Args:
    key: PRNG key.
    kernel: "rbf", "matern52" or "periodic".
    params: scalar `KernelParams`.
    x: float `[n, 1]`.

  Returns:
    y, `[n, 1]`, in the promoted dtype of `x` and `params`.
  """
  gram = kernel_matrix(kernel, params, x, x)
  n = gram.shape[0]
  cov = gram + params.noise_std ** 2 * jnp.eye(n, dtype=gram.dtype)
  chol = jnp.linalg.cholesky(cov)
  z = jax.random.normal(key, (n,), gram.dtype)
  return (chol @ z)[:, None]


def _check_family(family: GPFamily) -> None:
  lo, hi = family.num_context
  if not 0 <= lo < hi:
    raise ValueError(f"num_context must be a non-empty range [lo, hi), got "
                     f"{family.num_context}.")
  # The largest context must still leave room for min_target query points.
  if family.max_points - (hi - 1) <= family.min_target:
    raise ValueError(
        f"max_points={family.max_points} leaves no room for min_target="
        f"{family.min_target} query points after a context of {hi - 1}; need "
        f"max_points > num_context[1] - 1 + min_target.")


def _affine(u: jax.Array, bounds: Tuple[float, float]) -> jax.Array:
  """Maps u ~ U[0, 1) onto U[bounds[0], bounds[1])."""
  return bounds[0] + (bounds[1] - bounds[0]) * u


def _uniform_int(u: jax.Array, lo, hi) -> jax.Array:
  """Maps u ~ U[0, 1) onto a uniform int32 in [lo, hi) (hi may be traced)."""
  # float32 u * (hi - lo) can round up to hi - lo itself; min() keeps it in
  # range. The bias of flooring 2^23 grid points is below 1e-5 for hi - lo
  # under 50.
  n = lo + jnp.floor(u * (hi - lo)).astype(jnp.int32)
  return jnp.minimum(n, hi - 1)


def _sample_task(key: jax.Array, kernel: str, query_includes_context: bool,
                 family: GPFamily) -> Tuple[Task, KernelParams]:
  """One task; see `sample_tasks`."""
  # One uniform draw for x, the hyper-parameters and the sizes, and one
  # normal draw for y: every PRNG call adds a sizeable block to the compiled
  # training step (about a second of compile time on a small CPU).
  m = family.max_points
  k_u, k_y = jax.random.split(key)
  u = jax.random.uniform(k_u, (m + 5,), jnp.float32)
  x = _affine(u[:m], family.x)[:, None]
  params = KernelParams(
      lengthscale=_affine(u[m], family.lengthscale),
      scale=_affine(u[m + 1], family.scale),
      period=_affine(u[m + 2], family.period),
      noise_std=jnp.asarray(family.noise_std, jnp.float32))
  y = sample_y(k_y, kernel, params, x)
  n_c = _uniform_int(u[m + 3], *family.num_context)
  n_t = _uniform_int(u[m + 4], family.min_target, m - n_c)
  slot = jnp.arange(m)
  support_mask = (slot < n_c).astype(jnp.float32)
  query_start = 0 if query_includes_context else n_c
  query_mask = ((slot >= query_start) & (slot < n_c + n_t)).astype(jnp.float32)
  return Task((x, (y, support_mask)), (x, (y, query_mask))), params


def sample_tasks(key: jax.Array, num_tasks: int, kernel: str, *,
                 query_includes_context: bool = False,
                 family: GPFamily = GPFamily()
                 ) -> Tuple[Task, KernelParams]:
  """Samples a batch of GP regression tasks and their kernel parameters.

  Args:
    key: PRNG key; the result is a deterministic function of it.
    num_tasks: B, the number of tasks.
    kernel: "rbf", "matern52" or "periodic".
    query_includes_context: whether the query mask also covers the context
      slots `[0, n_c)`.
    family: the task distribution.

  Returns:
    `(task, params)`. `task` is `Task(support=(x, (y, mask)),
    query=(x, (y, mask)))` with float32 x and y `[B, max_points, 1]` (the
    same arrays in both sets) and float32 masks `[B, max_points]`, 1.0 on
    real points. `params` is a `KernelParams` of float32 `[B]` arrays.

  Raises:
    ValueError: for an unknown kernel name or an inconsistent `family`.
  """
  _kernel_fn(kernel)
  _check_family(family)
  one = lambda k: _sample_task(k, kernel, query_includes_context, family)
  return jax.vmap(one)(jax.random.split(key, num_tasks))


def sampler(num_tasks: int, kernel: str, *,
            query_includes_context: bool = False,
            family: GPFamily = GPFamily()) -> Callable[[jax.Array], Task]:
  """`key -> Task` batch for `metajax.train`: `sample_tasks` without params.

  The kernel parameters of a batch are `sample_tasks(key, ...)[1]` with the
  same key and arguments.
  """
  _kernel_fn(kernel)
  _check_family(family)
  return lambda key: sample_tasks(
      key, num_tasks, kernel, query_includes_context=query_includes_context,
      family=family)[0]


def _predictive(kernel: str, params: KernelParams, support, query_x,
                include_noise: bool):
  """Posterior predictive mean and variance at `query_x`; see `gp_posterior`."""
  xs, (ys, ms) = support
  _check_x(xs, "support x")
  _check_x(query_x, "query x")
  real = ms > 0
  # Padding may hold anything (even NaN); zero it before it meets a kernel so
  # that neither values nor gradients can leak through the masking below.
  xs = jnp.where(real[:, None], xs, 0)
  ys = jnp.where(real, ys[:, 0], 0)
  gram = kernel_matrix(kernel, params, xs, xs)
  n = gram.shape[0]
  eye = jnp.eye(n, dtype=gram.dtype)
  noise_var = params.noise_std ** 2
  both = real[:, None] & real[None, :]
  # Padded rows and columns become those of the identity, which decouples
  # them: the real block is factorised exactly as if padding were absent.
  cov = jnp.where(both, gram + noise_var * eye, eye)
  cross = jnp.where(real[None, :],
                    kernel_matrix(kernel, params, query_x, xs), 0)
  chol = jnp.linalg.cholesky(cov)
  # With v = L^-1 K_sq and w = L^-1 y: mean = v^T w, var = k(x, x) - |v|^2.
  # One triangular solve gives both. It also keeps the LAPACK calls of a
  # vmapped evaluation in a chain: jaxlib 0.10's batched CPU LAPACK kernels
  # can deadlock when several run concurrently in one program.
  solved = jax.scipy.linalg.solve_triangular(
      chol, jnp.concatenate([cross.T, ys[:, None]], axis=1), lower=True)
  v, w = solved[:, :-1], solved[:, -1]
  mean = v.T @ w
  prior_var = _kernel_fn(kernel)(jnp.zeros_like(query_x[:, 0]), params)
  # Round-off can push the explained variance past the prior's in float32.
  var = jnp.maximum(prior_var - jnp.sum(v ** 2, axis=0), 0)
  if include_noise:
    var = var + noise_var
  return mean, var


def gp_posterior(kernel: str, params: KernelParams, support,
                 query_x: jax.Array, *, include_noise: bool = True
                 ) -> Tuple[jax.Array, jax.Array]:
  """Exact GP posterior predictive mean and std at `query_x`, for one task.

  Masked-out support points have no influence at all: the result equals that
  of deleting them, whatever their values (even NaN). With no real support
  point it is the prior, mean 0.

  Args:
    kernel: "rbf", "matern52" or "periodic".
    params: scalar `KernelParams`.
    support: `(x, (y, mask))` with x and y float `[n_s, 1]` and mask `[n_s]`
      (1.0 real, 0.0 padding).
    query_x: float `[n, 1]`.
    include_noise: whether the std is that of a new observation y (adds
      `noise_std^2` to the variance) rather than of the noise-free f.

  Returns:
    `(mean, std)`, each `[n]`, in the promoted dtype of the inputs.
  """
  mean, var = _predictive(kernel, params, support, query_x, include_noise)
  return mean, jnp.sqrt(var)


def gp_log_likelihood(kernel: str, params: KernelParams, support,
                      query) -> jax.Array:
  """Per-point log density of each query y under the GP posterior predictive.

  The marginal log N(y_i | mean_i, var_i) of every query point given the
  support set, with the observation noise in var_i; not the joint density of
  the query set, because Neural Processes predict factorised marginals, so
  this is the matching ceiling. For one task; `jax.vmap` it over a batch.

  Args:
    kernel: "rbf", "matern52" or "periodic".
    params: scalar `KernelParams`.
    support: `(x, (y, mask))` with x and y float `[n_s, 1]` and mask `[n_s]`.
      Masked-out points have no influence (as if deleted).
    query: `(x, (y, mask))` with x and y float `[n_q, 1]` and mask `[n_q]`.

  Returns:
    `[n_q]` log densities in the promoted dtype of the inputs; exactly 0 at
    masked-out query entries, whatever their values. On benchmark tasks,
    float32 values are within about 1e-4 of float64 on average (worst ~1e-3)
    for "rbf" and "matern52"; "periodic" Gram matrices are the worst
    conditioned (mean error ~4e-4, worst point ~4e-2, worst task mean
    ~7e-3). Use float64 for reference numbers.
  """
  xq, (yq, mq) = query
  real = mq > 0
  # As for the support set: padding that reached the density, even behind
  # the final `where`, would turn gradients into NaN.
  xq = jnp.where(real[:, None], xq, 0)
  yq = jnp.where(real, yq[:, 0], 0)
  mean, var = _predictive(kernel, params, support, xq, include_noise=True)
  resid = yq - mean
  log_density = -0.5 * (jnp.log(2 * math.pi * var) + resid ** 2 / var)
  return jnp.where(real, log_density, 0)


def gp_mean_log_likelihood(kernel: str, params: KernelParams, support,
                           query) -> jax.Array:
  """Mean `gp_log_likelihood` over the real query points of one task.

  The benchmark's "log-likelihood per point": sum(ll * mask) / sum(mask).

  Returns:
    A scalar; NaN if the query set has no real point.
  """
  mq = query[1][1]
  ll = gp_log_likelihood(kernel, params, support, query)
  return jnp.sum(ll * mq) / jnp.sum(mq)
