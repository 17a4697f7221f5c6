"""Shared fixtures: float64 switching and a tiny smooth regression problem."""

import os
import shutil
import tempfile

import jax
import jax.numpy as jnp
import pytest

import metajax
import synthetic


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_XLA_CACHE = "METAJAX_TEST_XLA_CACHE"


def pytest_configure(config):
  """One persistent XLA compilation cache for the whole test run.

  Many tests compile what an earlier test (or the first half of a resume or
  rerun test) already compiled, and on the CPU compiling is most of their
  time. The first process makes the folder; pytest-xdist's workers, started
  later, inherit its path. `METAJAX_TEST_XLA_CACHE=folder` uses (and keeps)
  that folder instead, and an empty value turns the cache off. Not for a
  user's runs: experiments take `--compilation_cache`.
  """
  del config
  if _XLA_CACHE not in os.environ:
    os.environ[_XLA_CACHE] = tempfile.mkdtemp(prefix="metajax_xla_")
    os.environ[_XLA_CACHE + "_OWNER"] = str(os.getpid())
  if not os.environ[_XLA_CACHE]:
    return
  jax.config.update("jax_compilation_cache_dir", os.environ[_XLA_CACHE])
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)


def pytest_unconfigure(config):
  del config
  if os.environ.get(_XLA_CACHE + "_OWNER") == str(os.getpid()):
    shutil.rmtree(os.environ.pop(_XLA_CACHE), ignore_errors=True)


@pytest.fixture(scope="session")
def shared_data_dir():
  """The real data of ../shared/data (or $METAJAX_DATA_DIR).

  Tests on real files skip on a user's machine that has no copy, but fail in
  CI (CI=true), where the data must be present.
  """
  path = synthetic.real_data_dir()
  if not os.path.isdir(path):
    message = (f"real data not found at {path}; set METAJAX_DATA_DIR to the "
               f"folder holding omniglot/ and knowledge_tracing/.")
    if os.environ.get("CI"):
      pytest.fail(message)
    pytest.skip(message)
  return os.path.abspath(path)


@pytest.fixture(scope="session")
def omniglot_raw(shared_data_dir):
  """All 1,623 Omniglot characters from the shared npz arrays."""
  from metajax.data.vision import omniglot
  return omniglot.load_npz(os.path.join(shared_data_dir, "omniglot"))


@pytest.fixture(scope="session")
def omniglot_cache(tmp_path_factory, omniglot_raw):
  """A cache dir already holding the 28x28 preprocessed Omniglot arrays."""
  from metajax.data.vision import omniglot
  cache = str(tmp_path_factory.mktemp("omniglot_cache"))
  omniglot.preprocess(omniglot_raw, 28, cache)
  return cache


@pytest.fixture
def x64():
  """Runs the test with float64 enabled, restoring the previous setting."""
  previous = jax.config.jax_enable_x64
  jax.config.update("jax_enable_x64", True)
  yield
  jax.config.update("jax_enable_x64", previous)


def tiny_mlp_params(key, dtype=jnp.float32, width=6):
  """Params of a 1-width-1 tanh MLP: smooth, so finite differences are exact."""
  k1, k2, k3 = jax.random.split(key, 3)
  return {
      "body": {"w": jax.random.normal(k1, (1, width), dtype),
               "b": 0.1 * jax.random.normal(k3, (width,), dtype)},
      "head": {"w": jax.random.normal(k2, (width, 1), dtype) / width ** 0.5,
               "b": jnp.zeros((1,), dtype)},
  }


def tiny_mlp(params, x):
  h = jnp.tanh(x @ params["body"]["w"] + params["body"]["b"])
  return h @ params["head"]["w"] + params["head"]["b"]


def tiny_loss(params, batch):
  x, y = batch
  return jnp.mean((tiny_mlp(params, x) - y) ** 2)


def tiny_task(key, dtype=jnp.float32, n_support=5, n_query=7):
  """A sinusoid-like regression task `Task((x, y), (x, y))`, leaves [n, 1]."""
  k1, k2, k3 = jax.random.split(key, 3)
  amp = 1.0 + jax.random.uniform(k3, (), dtype)
  xs = jax.random.uniform(k1, (n_support, 1), dtype, -2.0, 2.0)
  xq = jax.random.uniform(k2, (n_query, 1), dtype, -2.0, 2.0)
  return metajax.Task((xs, amp * jnp.sin(xs)), (xq, amp * jnp.sin(xq)))


def tiny_tasks(key, n_tasks, dtype=jnp.float32):
  """A batch of `tiny_task`s with a leading task axis."""
  return jax.vmap(lambda k: tiny_task(k, dtype))(jax.random.split(key, n_tasks))
