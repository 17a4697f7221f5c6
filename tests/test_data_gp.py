"""Gaussian-process regression tasks and the exact GP posterior predictive.

Every JAX computation here is compiled once as a whole: on a small CPU,
compiling op by op (eager mode) would dominate the run time.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

import metajax
from metajax.data import gp


KEY = jax.random.PRNGKey(0)
NUM_TASKS = 1000


def np_kernel(name, x1, x2, lengthscale, scale, period):
  """The benchmark's kernels written out directly, for 1-D x1 [n], x2 [m]."""
  d = x1[:, None] - x2[None, :]
  if name == "rbf":
    return scale ** 2 * np.exp(-d ** 2 / (2 * lengthscale ** 2))
  if name == "matern52":
    r = np.abs(d) / lengthscale
    return (scale ** 2 * (1 + np.sqrt(5) * r + 5 * r ** 2 / 3)
            * np.exp(-np.sqrt(5) * r))
  assert name == "periodic"
  return scale ** 2 * np.exp(
      -2 * np.sin(np.pi * np.abs(d) / period) ** 2 / lengthscale ** 2)


def np_predictive(name, hyper, xs, ys, xq, yq):
  """Reference posterior predictive from real points only: (ll, mean, std)."""
  kernel = functools.partial(np_kernel, name, **{
      k: hyper[k] for k in ("lengthscale", "scale", "period")})
  noise_var = hyper["noise_std"] ** 2
  cov = kernel(xs, xs) + noise_var * np.eye(len(xs))
  cross = kernel(xq, xs)
  mean = cross @ np.linalg.solve(cov, ys)
  explained = np.einsum("qs,sq->q", cross, np.linalg.solve(cov, cross.T))
  std = np.sqrt(np.diag(kernel(xq, xq)) - explained + noise_var)
  return scipy.stats.norm.logpdf(yq, mean, std), mean, std


def kernel_params(dtype, lengthscale=0.4, scale=0.7, period=0.3,
                  noise_std=0.02):
  return gp.KernelParams(*(jnp.asarray(v, dtype)
                           for v in (lengthscale, scale, period, noise_std)))


def sizes(task, query_includes_context):
  """(n_c, n_t) per task, read off the masks."""
  n_c = np.asarray(task.support[1][1]).sum(1).astype(int)
  n_q = np.asarray(task.query[1][1]).sum(1).astype(int)
  return n_c, n_q - n_c if query_includes_context else n_q


@pytest.fixture(scope="module")
def rbf_batch():
  """`(task, params)`: NUM_TASKS float32 RBF tasks drawn from KEY."""
  sample = jax.jit(functools.partial(gp.sample_tasks, num_tasks=NUM_TASKS,
                                     kernel="rbf"))
  return jax.device_get(sample(KEY))


def test_shapes_dtypes_ranges_and_masks(rbf_batch):
  task, params = rbf_batch
  metajax.validate_task(task, batched=True)
  (xs, (ys, ms)), (xq, (yq, mq)) = task
  b, m = NUM_TASKS, 50
  for a in (xs, ys, xq, yq):
    assert a.shape == (b, m, 1) and a.dtype == np.float32
  for a in (ms, mq):
    assert a.shape == (b, m) and a.dtype == np.float32
  assert set(np.unique(np.concatenate([ms, mq]))) == {0.0, 1.0}
  np.testing.assert_array_equal(xs, xq)
  np.testing.assert_array_equal(ys, yq)
  assert np.min(xs) >= -2.0 and np.max(xs) <= 2.0
  assert np.all(np.isfinite(ys))
  for field, (lo, hi) in [("lengthscale", (0.1, 0.6)), ("scale", (0.1, 1.0)),
                          ("period", (0.1, 0.5))]:
    v = getattr(params, field)
    assert v.shape == (b,) and v.dtype == np.float32
    assert lo <= v.min() and v.max() <= hi
  np.testing.assert_allclose(params.noise_std, np.full(b, 0.02, np.float32))

  n_c, n_t = sizes(task, False)
  assert n_c.min() == 3 and n_c.max() == 46
  assert np.all(n_t >= 3) and np.all(n_t <= 49 - n_c)
  assert np.any(n_t == 3) and np.any(n_t == 49 - n_c)
  assert len(np.unique(n_c)) > 20 and len(np.unique(n_t)) > 20
  slot = np.arange(m)
  np.testing.assert_array_equal(ms, slot < n_c[:, None])
  np.testing.assert_array_equal(
      mq, (slot >= n_c[:, None]) & (slot < (n_c + n_t)[:, None]))


def test_sampler_is_jittable_deterministic_and_can_include_context(rbf_batch):
  task, _ = rbf_batch
  # Its own program: jaxlib 0.10's batched CPU LAPACK kernels can deadlock
  # when two batched Cholesky factorisations run concurrently in one.
  sample = jax.jit(gp.sampler(NUM_TASKS, "rbf", query_includes_context=True))
  a, b = sample(KEY), sample(KEY)
  jax.tree.map(np.testing.assert_array_equal, a, b)
  c = sample(jax.random.PRNGKey(1))
  assert not np.allclose(a.support[0], c.support[0])
  assert not np.allclose(a.support[1][0], c.support[1][0])

  # The same key draws the same tasks as `sample_tasks`; only the query
  # mask grows to cover the context too.
  np.testing.assert_array_equal(a.support[0], task.support[0])
  np.testing.assert_allclose(a.support[1][0], task.support[1][0], rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_array_equal(a.support[1][1], task.support[1][1])
  np.testing.assert_array_equal(a.query[1][1],
                                task.support[1][1] + task.query[1][1])
  assert sizes(a, True)[1].tolist() == sizes(task, False)[1].tolist()


def test_empirical_covariance_of_samples_approaches_kernels():
  # A longer lengthscale for the periodic kernel keeps its off-diagonal
  # entries far from zero, so that a wrong formula would show.
  hyper = {name: dict(lengthscale=1.0 if name == "periodic" else 0.3,
                      scale=0.8, period=0.4) for name in gp.KERNELS}
  x = np.array([0.1, 0.3, 0.45], np.float32)
  n = 20000

  @jax.jit
  def draw(keys):
    return {name: jax.vmap(lambda k, name=name: gp.sample_y(
        k, name, kernel_params(jnp.float32, **hyper[name]), x[:, None]))(keys)
            for name in gp.KERNELS}

  ys = draw(jax.random.split(KEY, n))
  for name in gp.KERNELS:
    y = ys[name]
    assert y.shape == (n, 3, 1) and y.dtype == jnp.float32
    expected = np_kernel(name, x, x, **hyper[name]) + 0.02 ** 2 * np.eye(3)
    assert expected[0, 2] > 0.1, name
    # Each entry's standard error is about scale^2 sqrt(2 / n) = 0.006.
    np.testing.assert_allclose(np.cov(y[:, :, 0].T), expected, atol=0.03,
                               err_msg=name)
    np.testing.assert_allclose(y.mean(0)[:, 0], 0.0, atol=0.03, err_msg=name)


@pytest.mark.parametrize("name", gp.KERNELS)
def test_kernel_matches_numpy(x64, name):
  rng = np.random.default_rng(0)
  x1, x2 = rng.uniform(-2, 2, 5), rng.uniform(-2, 2, 4)
  hyper = dict(lengthscale=0.35, scale=0.6, period=0.27)
  got = gp.kernel_matrix(name, kernel_params(jnp.float64, **hyper),
                         jnp.asarray(x1[:, None]), jnp.asarray(x2[:, None]))
  assert got.shape == (5, 4) and got.dtype == jnp.float64
  np.testing.assert_allclose(got, np_kernel(name, x1, x2, **hyper),
                             rtol=1e-12, atol=1e-14)


def test_unknown_kernel_is_named_with_the_choices():
  for call in (lambda: gp.sampler(4, "laplace"),
               lambda: gp.sample_tasks(KEY, 4, "laplace"),
               lambda: gp.kernel_matrix("laplace", kernel_params(jnp.float32),
                                        jnp.zeros((2, 1)), jnp.zeros((2, 1)))):
    with pytest.raises(ValueError, match=r"'laplace'.*'rbf', 'matern52', "
                                         r"'periodic'"):
      call()


def test_family_without_room_for_targets_is_refused():
  family = gp.GPFamily(num_context=(3, 48))  # n_c = 47 leaves only 2 slots
  with pytest.raises(ValueError, match="min_target=3"):
    gp.sampler(4, "rbf", family=family)


@pytest.mark.parametrize("name", gp.KERNELS)
def test_exact_predictive_matches_numpy_and_masking_is_deleting(x64, name):
  rng = np.random.default_rng(1)
  hyper = dict(lengthscale=0.4, scale=0.7, period=0.3, noise_std=0.02)
  params = kernel_params(jnp.float64, **hyper)
  n_s, n_q = 12, 9
  xs, ys = rng.uniform(-2, 2, n_s), rng.normal(size=n_s)
  xq, yq = rng.uniform(-2, 2, n_q), rng.normal(size=n_q)
  # Padding between real points, holding garbage (NaN included), must not
  # matter at all.
  real_s = np.isin(np.arange(n_s), [0, 1, 3, 4, 7, 8, 10])
  real_q = ~np.isin(np.arange(n_q), [2, 5, 8])
  xs_p, ys_p = np.where(real_s, xs, np.nan), np.where(real_s, ys, 1e6)
  xs_p[5] = 1e3
  yq_p = np.where(real_q, yq, np.nan)

  col = lambda a: jnp.asarray(a[:, None])
  support = (col(xs_p), (col(ys_p), jnp.asarray(real_s, jnp.float64)))
  query = (col(xq), (col(yq_p), jnp.asarray(real_q, jnp.float64)))
  deleted = (col(xs[real_s]), (col(ys[real_s]), jnp.ones(real_s.sum())))

  @jax.jit
  def evaluate(params, support, query, deleted):
    return dict(
        ll=gp.gp_log_likelihood(name, params, support, query),
        ll_deleted=gp.gp_log_likelihood(name, params, deleted, query),
        mean_ll=gp.gp_mean_log_likelihood(name, params, support, query),
        posterior=gp.gp_posterior(name, params, support, query[0]))

  got = jax.device_get(evaluate(params, support, query, deleted))
  ll, (mean, std) = got["ll"], got["posterior"]
  assert ll.shape == mean.shape == std.shape == (n_q,)
  assert ll.dtype == np.float64

  ref_ll, ref_mean, ref_std = np_predictive(name, hyper, xs[real_s],
                                            ys[real_s], xq, yq)
  np.testing.assert_allclose(ll[real_q], ref_ll[real_q], rtol=1e-10,
                             atol=1e-10)
  np.testing.assert_array_equal(ll[~real_q], 0.0)
  np.testing.assert_allclose(got["mean_ll"], ref_ll[real_q].mean(),
                             rtol=1e-10)
  np.testing.assert_allclose(mean, ref_mean, rtol=1e-10, atol=1e-10)
  np.testing.assert_allclose(std, ref_std, rtol=1e-10, atol=1e-10)
  np.testing.assert_allclose(got["ll_deleted"], ll, rtol=1e-12, atol=1e-12)


def test_padding_does_not_reach_gradients():
  params = kernel_params(jnp.float32)
  nan = np.float32(np.nan)
  x = jnp.array([[0.1], [nan], [0.5], [-1.0]])
  y = jnp.array([[0.3], [nan], [-0.2], [nan]])
  support = (x, (y, jnp.array([1.0, 0.0, 1.0, 0.0])))
  query = (x, (y, jnp.array([0.0, 0.0, 1.0, 0.0])))
  # Matern-5/2 has |d| in it, whose derivative at d = 0 (padding against
  # padding once zeroed) must not be NaN either.
  grads = jax.jit(jax.grad(
      lambda p: gp.gp_mean_log_likelihood("matern52", p, support, query)))(
          params)
  assert all(np.isfinite(g) for g in grads), grads
  assert grads.lengthscale != 0 and grads.scale != 0


def test_posterior_shrinks_at_dense_nearly_noiseless_context(x64):
  noise_std = 1e-3
  hyper = dict(lengthscale=0.4, scale=1.0, period=0.3)
  params = kernel_params(jnp.float64, noise_std=noise_std, **hyper)
  x = np.linspace(-2.0, 2.0, 25)
  cov = np_kernel("rbf", x, x, **hyper) + noise_std ** 2 * np.eye(25)
  y = np.linalg.cholesky(cov) @ np.random.default_rng(2).normal(size=25)
  x, y = jnp.asarray(x[:, None]), jnp.asarray(y[:, None])

  @jax.jit
  def evaluate(y):
    posterior = lambda mask, noise: gp.gp_posterior(
        "rbf", params, (x, (y, mask)), x, include_noise=noise)
    return (posterior(jnp.zeros(25), False), posterior(jnp.ones(25), False),
            posterior(jnp.ones(25), True)[1])

  (mean_0, std_0), (mean, std_f), std_y = jax.device_get(evaluate(y))
  np.testing.assert_array_equal(mean_0, 0.0)  # no context: the prior
  np.testing.assert_allclose(std_0, 1.0, rtol=1e-12)
  assert np.all(std_f < 0.01 * std_0)
  assert np.all(std_y >= noise_std)
  np.testing.assert_allclose(std_y, np.sqrt(std_f ** 2 + noise_std ** 2),
                             rtol=1e-12)
  np.testing.assert_allclose(mean, y[:, 0], atol=5 * noise_std)


def test_batched_exact_log_likelihood_in_float32(rbf_batch):
  task, params = rbf_batch
  x, (y, mask) = task.support
  # The second copy of each task has no context, i.e. scores the prior; one
  # batch of twice the size compiles once.
  twice = lambda a: np.concatenate([a, a])
  support = (twice(x), (twice(y), np.concatenate([mask, 0 * mask])))
  query = jax.tree.map(twice, task.query)
  mean_ll = jax.jit(jax.vmap(functools.partial(gp.gp_mean_log_likelihood,
                                               "rbf")))
  both = mean_ll(jax.tree.map(twice, params), support, query)
  assert both.shape == (2 * NUM_TASKS,) and both.dtype == jnp.float32
  assert np.all(np.isfinite(both))
  with_context, prior = np.split(np.asarray(both), 2)
  # Conditioning on the context must help a lot on average.
  assert with_context.mean() > prior.mean() + 0.5
