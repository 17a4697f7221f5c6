"""Neural processes: masked sets, the objectives' formulas, and learning.

The models are tiny (width 16). On a small shared CPU, XLA's compile time,
not the arithmetic, dominates, so the data are NumPy arrays and each model
runs everything the property tests read in one compiled call (`_probe`).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import metajax
from metajax.algorithms import neural_process as nplib

DX, DY, N_CONTEXT, N_TARGET, LATENT = 2, 2, 6, 5, 4
# Context points 0, 2, 3 and 5 are real; padding sits between them.
CONTEXT_MASK = np.array([1, 0, 1, 1, 0, 1], np.float64)
TARGET_MASK = np.array([1, 1, 0, 1, 1], np.float64)
TIGHT = dict(rtol=1e-10, atol=1e-12)

BUILDERS = {
    "cnp": lambda dtype: nplib.conditional_np(
        DX, DY, encoder_widths=(16, 16), decoder_widths=(16,), dtype=dtype),
    "np": lambda dtype: nplib.latent_np(
        DX, DY, latent_dim=LATENT, latent_widths=(16, 16),
        decoder_widths=(16,), dtype=dtype),
    "np_deterministic": lambda dtype: nplib.latent_np(
        DX, DY, latent_dim=LATENT, latent_widths=(16,),
        deterministic_path=True, encoder_widths=(16,), decoder_widths=(16,),
        dtype=dtype),
    "anp": lambda dtype: nplib.attentive_np(
        DX, DY, width=16, num_heads=4, self_attention_layers=1,
        encoder_widths=(16,), latent_dim=LATENT, latent_widths=(16,),
        decoder_widths=(16,), dtype=dtype),
    "canp": lambda dtype: nplib.attentive_np(
        DX, DY, width=16, num_heads=4, self_attention_layers=1,
        encoder_widths=(16,), latent=False, decoder_widths=(16,),
        dtype=dtype),
}
DETERMINISTIC_MODELS = ["cnp", "canp"]
# The latent models whose ELBO, and whose Monte Carlo log-likelihood, the
# tests rebuild from the models' pieces. Both are the same code for every
# model; more decoder copies in `_probe` cost seconds of compilation.
ELBO_MODELS = ["np", "np_deterministic", "anp"]
MC_MODELS = ["np"]
# What `_probe` runs the models on: context sets (each predicting the same
# targets) and whole tasks.
CONTEXTS = ("original", "reversed", "shuffled", "garbage_padding", "empty")
TASKS = ("original", "garbage_targets", "empty_context")
SHUFFLE = np.array([3, 5, 1, 0, 4, 2])


def _key(seed):
  """A PRNG key of the "rbg" implementation, quicker to compile on XLA:CPU."""
  return jax.random.key(seed, impl="rbg")


def _params(model, seed=0):
  """Random meta-parameters of `model` drawn with NumPy, float64.

  Shaped by `jax.eval_shape(model.init)`, which compiles nothing.
  """
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    if len(leaf.shape) == 2:  # a weight matrix [fan_in, fan_out]
      return jnp.asarray(rng.normal(size=leaf.shape) / np.sqrt(leaf.shape[0]))
    if jax.tree_util.keystr(path).endswith("['scale']"):
      return jnp.asarray(1.0 + 0.1 * rng.normal(size=leaf.shape))
    return jnp.asarray(0.1 * rng.normal(size=leaf.shape))

  shapes = jax.eval_shape(model.init, _key(0))
  assert all(leaf.dtype == jnp.float64 for leaf in jax.tree.leaves(shapes))
  return jax.tree_util.tree_map_with_path(draw, shapes)


def _set(rng, mask):
  """A NumPy set `(x [n, DX], (y [n, DY], mask [n]))`, padding zeroed."""
  x = rng.uniform(-2, 2, size=(len(mask), DX)) * mask[:, None]
  y = np.sin(x @ np.array([[1.0, -0.5], [0.3, 2.0]])) * mask[:, None]
  return (x, (y, mask))


def _task(seed=0):
  rng = np.random.default_rng(seed)
  return metajax.Task(_set(rng, CONTEXT_MASK), _set(rng, TARGET_MASK))


def _stack(trees):
  return jax.tree.map(lambda *a: np.stack(a), *trees)


def _with_padding(examples, mask_scale, x_value, y_value):
  """`examples` with its padded points' x and y replaced, mask scaled."""
  x, (y, mask) = examples
  padded = (mask == 0)[:, None]
  return (np.where(padded, x_value, x),
          (np.where(padded, y_value, y), mask * mask_scale))


@functools.lru_cache(maxsize=None)
def _probe(name):
  """All that the property tests read about a model, from one compiled call.

  The model's outputs on the `CONTEXTS` and `TASKS` variants of `_task()`,
  and for `ELBO_MODELS` and `MC_MODELS` the pieces the tests rebuild the
  objectives from.
  A dict of NumPy arrays; every sample is drawn with `_key(4)` (and with
  `_key(5)` for "pointwise_3_other").
  """
  model = BUILDERS[name](jnp.float64)
  learner = nplib.as_learner(model)
  task = _task()
  rng = np.random.default_rng(1)
  contexts = _stack([
      task.support,
      jax.tree.map(lambda a: a[::-1], task.support),  # padding moves too
      jax.tree.map(lambda a: a[SHUFFLE], task.support),
      _with_padding(task.support, 1.0, 50.0 * rng.normal(size=(N_CONTEXT, DX)),
                    -30.0 * rng.normal(size=(N_CONTEXT, DY))),
      _with_padding(task.support, 0.0, 0.0, 0.0)])
  tasks = _stack([
      task,
      task._replace(query=_with_padding(task.query, 1.0, 40.0, -70.0)),
      task._replace(support=_with_padding(task.support, 0.0, 0.0, 0.0))])
  union = jax.tree.map(lambda c, t: np.concatenate([c, t]), task.support,
                       task.query)

  @jax.jit
  def run(meta_params, task, contexts, tasks, union, key, other_key):
    x, _ = task.query
    out = {}

    def forward(support):
      state = learner.adapt(meta_params, support)
      return learner.predict(meta_params, state, x), state.prior
    out["predict"], out["prior"] = jax.vmap(forward)(contexts)

    def objectives(t):
      loss, metrics = nplib.task_loss(model, meta_params, t, key)
      ll = nplib.log_likelihood(model, meta_params, t.support, t.query,
                                key=key, num_samples=3)
      return loss, metrics, ll
    out["loss"], out["metrics"], out["ll"] = jax.vmap(objectives)(tasks)
    state = model.encode(meta_params, task.support)
    if name in ELBO_MODELS:
      posterior = model.latent(meta_params, union)
      z = posterior.mean + posterior.std * jax.random.normal(
          key, (LATENT,), jnp.float64)
      out["posterior"] = posterior
      out["posterior_decoded"] = model.decode(meta_params, state, x, z)
    if name not in MC_MODELS:
      return out
    for k in (1, 3):
      zs = state.prior.mean + state.prior.std * jax.random.normal(
          key, (k, LATENT), jnp.float64)
      out[f"prior_decoded_{k}"] = jax.vmap(
          lambda z: model.decode(meta_params, state, x, z))(zs)
      out[f"pointwise_{k}"] = nplib.pointwise_log_likelihood(
          model, meta_params, task.support, task.query, key=key,
          num_samples=k)
    out["pointwise_3_other"] = nplib.pointwise_log_likelihood(
        model, meta_params, task.support, task.query, key=other_key,
        num_samples=3)
    return out

  return jax.tree.map(np.asarray, run(_params(model), task, contexts, tasks,
                                      union, _key(4), _key(5)))


def _np_log_density(y, mean, std):
  """Diagonal Gaussian log-density summed over the last axis, in NumPy."""
  return np.sum(-0.5 * ((y - mean) / std) ** 2 - np.log(std) -
                0.5 * np.log(2 * np.pi), axis=-1)


def _np_kl(pm, ps, qm, qs):
  """KL(p || q) of diagonal Gaussians, summed over the last axis, in NumPy.

  `sum_d [log(qs / ps) + (ps^2 + (pm - qm)^2) / (2 qs^2) - 1/2]`.
  """
  return np.sum(np.log(qs / ps) + (ps ** 2 + (pm - qm) ** 2) /
                (2 * qs ** 2) - 0.5, axis=-1)


def _np_masked_mean(values, mask):
  return np.sum(values * mask) / max(np.sum(mask), 1.0)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_context_encoding_is_invariant_to_permutations_and_padding(name, x64):
  out = _probe(name)
  predict = out["predict"]
  assert predict.shape == (len(CONTEXTS), N_TARGET, 2 * DY)
  assert np.all(predict[:, :, DY:] > 0.1)  # stds above min_std
  for i in (1, 2):  # reversed, shuffled
    np.testing.assert_allclose(predict[i], predict[0], **TIGHT)
    if out["prior"] is not None:
      np.testing.assert_allclose(out["prior"].mean[i], out["prior"].mean[0],
                                 **TIGHT)
      np.testing.assert_allclose(out["prior"].std[i], out["prior"].std[0],
                                 **TIGHT)
  assert not np.allclose(predict[4], predict[0])  # the context matters


@pytest.mark.parametrize("name", list(BUILDERS))
def test_masked_context_points_have_no_influence(name, x64):
  out = _probe(name)
  garbage, empty = CONTEXTS.index("garbage_padding"), CONTEXTS.index("empty")
  np.testing.assert_allclose(out["predict"][garbage], out["predict"][0],
                             **TIGHT)
  # An empty context is a prediction from the prior: finite, not NaN.
  assert np.all(np.isfinite(out["predict"][empty]))
  assert np.all(np.isfinite(jax.tree.leaves(out["prior"])))
  i = TASKS.index("empty_context")
  assert np.isfinite(out["loss"][i]) and np.isfinite(out["ll"][i])


@pytest.mark.parametrize("name", list(BUILDERS))
def test_padded_targets_change_neither_loss_nor_likelihood(name, x64):
  out = _probe(name)
  i = TASKS.index("garbage_targets")
  np.testing.assert_allclose(out["loss"][i], out["loss"][0], **TIGHT)
  np.testing.assert_allclose(out["ll"][i], out["ll"][0], **TIGHT)


def test_gaussian_kl_is_the_closed_form_and_zero_for_equal_gaussians(x64):
  rng = np.random.default_rng(0)
  mp, mq = rng.normal(size=(2, 3, 5))
  sp, sq = rng.uniform(0.2, 2.0, size=(2, 3, 5))
  p = nplib.Gaussian(jnp.asarray(mp), jnp.asarray(sp))
  q = nplib.Gaussian(jnp.asarray(mq), jnp.asarray(sq))
  kl = nplib.gaussian_kl(p, q)
  assert kl.shape == (3,)
  np.testing.assert_allclose(kl, _np_kl(mp, sp, mq, sq), rtol=1e-12)
  np.testing.assert_allclose(nplib.gaussian_kl(p, p), 0.0, atol=1e-14)


@pytest.mark.parametrize("name", DETERMINISTIC_MODELS)
def test_deterministic_loss_is_the_masked_gaussian_nll_of_predict(name, x64):
  out = _probe(name)
  _, (y, _) = jax.tree.map(np.asarray, _task().query)
  mean, std = out["predict"][0][:, :DY], out["predict"][0][:, DY:]
  expected = -_np_masked_mean(_np_log_density(y, mean, std), TARGET_MASK)
  np.testing.assert_allclose(out["loss"][0], expected, rtol=1e-12)
  np.testing.assert_allclose(out["metrics"]["nll"][0], expected, rtol=1e-12)
  # The log-likelihood of a deterministic model is exact: minus the loss.
  np.testing.assert_allclose(out["ll"][0], -expected, rtol=1e-12)


@pytest.mark.parametrize("name", ELBO_MODELS)
def test_latent_loss_is_the_negative_elbo_per_target_point(name, x64):
  """Rebuilt from q(z | C u T), q(z | C) and the decoder at the sampled z."""
  out = _probe(name)
  _, (y, _) = jax.tree.map(np.asarray, _task().query)
  posterior, prior = out["posterior"], out["prior"]
  kl = _np_kl(posterior.mean, posterior.std, prior.mean[0], prior.std[0])
  assert kl > 0  # the context is a strict subset of the union
  n_real = TARGET_MASK.sum()
  ll = _np_log_density(y, *out["posterior_decoded"])
  np.testing.assert_allclose(out["metrics"]["kl"][0], kl / n_real,
                             rtol=1e-10)
  np.testing.assert_allclose(
      out["loss"][0], -(np.sum(ll * TARGET_MASK) - kl) / n_real, rtol=1e-10)


@pytest.mark.parametrize("name", MC_MODELS)
def test_monte_carlo_log_likelihood_is_the_stated_estimator(name, x64):
  out = _probe(name)
  _, (y, _) = jax.tree.map(np.asarray, _task().query)
  # K = 1: the log-density under the one sampled z.
  mean, std = out["prior_decoded_1"]
  np.testing.assert_allclose(out["pointwise_1"],
                             _np_log_density(y, mean[0], std[0]) * TARGET_MASK,
                             **TIGHT)
  # K = 3: per point, the log of the mean density over the samples.
  mean, std = out["prior_decoded_3"]
  assert not np.allclose(mean[0], mean[1])  # the decoder reads z
  density = np.exp(_np_log_density(y, mean, std))  # [3, N_TARGET]
  expected = np.log(density.mean(axis=0)) * TARGET_MASK
  np.testing.assert_allclose(out["pointwise_3"], expected, rtol=1e-10)
  # Deterministic per key: log_likelihood drew the same samples apart.
  np.testing.assert_allclose(out["ll"][0],
                             _np_masked_mean(expected, TARGET_MASK),
                             rtol=1e-10)
  assert not np.allclose(out["pointwise_3_other"], out["pointwise_3"])


def test_log_likelihood_of_latent_models_needs_a_key_and_samples():
  model = BUILDERS["np"](jnp.float32)
  task = _task()
  with pytest.raises(ValueError, match="num_samples"):
    nplib.log_likelihood(model, None, task.support, task.query, key=_key(0))
  with pytest.raises(ValueError, match="key"):
    nplib.log_likelihood(model, None, task.support, task.query,
                         num_samples=3)


@pytest.mark.parametrize("name", ["cnp", "np"])
def test_meta_grad_is_the_mean_of_per_task_gradients(name, x64):
  """The vmapped batch gradient against a loop over the tasks, compiled
  together; and for the CNP against `meta_grad` uncompiled.

  `meta_grad` is the same code for every model, so two models suffice. The
  key is a threefry key: with "rbg" keys `vmap` draws other numbers than a
  loop over the same keys does.
  """
  model = BUILDERS[name](jnp.float64)
  learner = nplib.as_learner(model)
  meta_params = _params(model)
  tasks = _stack([_task(seed) for seed in range(3)])
  key = jax.random.key(8) if model.latent else None

  @jax.jit
  def run(meta_params, tasks, key):
    def task_grad(args):
      task, task_key = args
      return jax.grad(lambda mp: nplib.task_loss(model, mp, task, task_key)[0])(
          meta_params)
    keys = None if key is None else jax.random.split(key, 3)
    # `lax.map` is a loop: one task at a time, nothing batched.
    per_task = jax.lax.map(task_grad, (tasks, keys))
    return (learner.meta_grad(meta_params, tasks, key),
            jax.tree.map(lambda g: jnp.mean(g, axis=0), per_task))

  (grads, metrics), loop_mean = run(meta_params, tasks, key)
  assert (jax.tree.map(lambda a: (a.shape, a.dtype), grads) ==
          jax.tree.map(lambda a: (a.shape, a.dtype), meta_params))
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  assert any(np.any(np.asarray(g) != 0) for g in jax.tree.leaves(grads))
  close = functools.partial(np.testing.assert_allclose, rtol=1e-9,
                            atol=1e-12)
  jax.tree.map(close, loop_mean, grads)
  if model.latent is None:
    assert set(metrics) == {"loss", "nll"}
    grads_eager, metrics_eager = learner.meta_grad(meta_params, tasks, None)
    jax.tree.map(close, grads_eager, grads)
    close(metrics_eager["loss"], metrics["loss"])
  else:
    assert set(metrics) == {"loss", "nll", "kl"}
    with pytest.raises(ValueError, match="key"):
      learner.meta_grad(meta_params, tasks, None)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_adapt_refuses_gradient_steps(name):
  learner = nplib.as_learner(BUILDERS[name](jnp.float32))
  support = _task().support
  # Checked before any parameter is read, so none are needed.
  for steps in (0, 1, 5):
    with pytest.raises(ValueError, match="steps=None"):
      learner.adapt(None, support, steps=steps)
  with pytest.raises(ValueError, match="mask"):
    learner.adapt(None, (support[0], support[1][0]))


def test_builders_reject_bad_options():
  with pytest.raises(ValueError, match="num_heads"):
    nplib.attentive_np(1, 1, width=16, num_heads=3)
  with pytest.raises(ValueError, match="min_std"):
    nplib.conditional_np(1, 1, min_std=1.5)
  with pytest.raises(ValueError, match="latent_widths"):
    nplib.latent_np(1, 1, latent_widths=())


def _lines(rng, num_tasks, num_real, n=8):
  """Tasks `y = a x + b`, `a, b ~ U(-1, 1)`, noiseless, float32.

  `n` context slots of which the first `num_real[i]` are real (an int or
  `[num_tasks]`), and `n` real targets; x ~ U(-2, 2). Leaves
  `[num_tasks, n, ...]`.
  """
  a, b = rng.uniform(-1, 1, size=(2, num_tasks, 1, 1))
  xc, xt = rng.uniform(-2, 2, size=(2, num_tasks, n, 1))
  mask = np.arange(n) < np.reshape(num_real, (-1, 1))
  mask = np.broadcast_to(mask, (num_tasks, n))
  return jax.tree.map(
      lambda v: jnp.asarray(v, jnp.float32),
      metajax.Task((xc, (a * xc + b, mask)), (xt, (a * xt + b, np.ones(
          (num_tasks, n))))))


def test_cnp_learns_that_more_context_means_less_uncertainty():
  """A CNP trained on noiseless lines `y = a x + b` is surer with 8 points.

  With one context point a line is undetermined and the trained std at the
  targets stays wide; with eight it is pinned down: the std shrinks and the
  mean fits. The untrained CNP shows no such difference. The data are drawn
  with NumPy beforehand, so one program (init, 500 Adam steps, evaluation)
  is compiled.
  """
  num_steps, batch_size, n = 500, 32, 8
  learner = nplib.as_learner(nplib.conditional_np(
      1, 1, encoder_widths=(32, 32), decoder_widths=(32, 32)))
  rng = np.random.default_rng(0)
  train_tasks = jax.tree.map(
      lambda a: a.reshape((num_steps, batch_size) + a.shape[1:]),
      _lines(rng, num_steps * batch_size,
             rng.integers(1, n + 1, size=num_steps * batch_size)))
  # The same 64 lines and points with 1 and with 8 real context points.
  test_tasks = _lines(rng, 64, 1)
  test_tasks = _stack([test_tasks, test_tasks._replace(support=(
      test_tasks.support[0],
      (test_tasks.support[1][0], jnp.ones_like(test_tasks.support[1][1]))))])
  optimizer = optax.adam(3e-3)

  def evaluate(meta_params):
    """`[2]` mean target std and squared error, with 1 and 8 points."""
    def one(task):
      state = learner.adapt(meta_params, task.support)
      return learner.predict(meta_params, state, task.query[0])
    out = jax.vmap(jax.vmap(one))(test_tasks)  # [2, 64, n, 2]
    error = jnp.square(out[..., 0] - test_tasks.query[1][0][..., 0])
    return jnp.mean(out[..., 1], axis=(1, 2)), jnp.mean(error, axis=(1, 2))

  @jax.jit
  def train(key, train_tasks):
    meta_params = learner.init(key)

    def step(carry, tasks):
      mp, opt_state = carry
      grads, metrics = learner.meta_grad(mp, tasks, None)
      updates, opt_state = optimizer.update(grads, opt_state, mp)
      return (optax.apply_updates(mp, updates), opt_state), metrics["loss"]

    (final, _), losses = jax.lax.scan(
        step, (meta_params, optimizer.init(meta_params)), train_tasks)
    return evaluate(meta_params), evaluate(final), losses

  before, after, losses = jax.tree.map(np.asarray,
                                       train(_key(0), train_tasks))
  (std_before, _), (std, error) = before, after
  assert losses[-50:].mean() < losses[:50].mean() - 0.8, losses[::50]
  assert std[1] < 0.6 * std[0], std
  assert error[1] < 0.5 * error[0] and error[1] < 0.1, error
  assert std_before[1] > 0.8 * std_before[0], std_before
