"""The networks of OML and ANML: shapes, the parts' names, ANML's gate."""

import jax
import jax.numpy as jnp
import numpy as np

from metajax.models.continual import ANMLNet
from metajax.models.continual import ConvStack
from metajax.models.continual import OMLNet

X = jnp.asarray(np.random.default_rng(0).normal(size=(3, 28, 28, 1)),
                jnp.float32)


def test_oml_net_is_a_representation_then_a_prediction_network():
  net = OMLNet(10, width=4, hidden=8)
  params = net.init(jax.random.PRNGKey(0), X)
  assert set(params["params"]) == {"rln", "pln"}
  assert params["params"]["pln"]["head"]["kernel"].shape == (8, 10)
  # 28 -> 28 -> 14 -> 14 -> 7 -> 7 -> 4: 4 * 4 * width features.
  assert params["params"]["pln"]["Dense_0"]["kernel"].shape == (64, 8)
  assert net.apply(params, X).shape == (3, 10)


def test_anml_gate_multiplies_the_prediction_features():
  net = ANMLNet(5, width=4, nm_width=3)
  params = net.init(jax.random.PRNGKey(0), X)
  assert set(params["params"]) == {"pn", "nm", "head"}
  # A gate closed everywhere (sigmoid of a very negative bias) leaves the
  # head's bias alone; a gate open everywhere passes the features as they
  # are.
  def with_gate_bias(b):
    p = jax.tree.map(lambda a: a, params)
    dense = p["params"]["nm"]["Dense_0"]
    p["params"]["nm"]["Dense_0"] = {"kernel": jnp.zeros_like(dense["kernel"]),
                                    "bias": jnp.full_like(dense["bias"], b)}
    return p
  head = params["params"]["head"]
  np.testing.assert_allclose(net.apply(with_gate_bias(-1e4), X),
                             jnp.broadcast_to(head["bias"], (3, 5)))
  features = ConvStack(4, (2, 2, 2)).apply(
      {"params": params["params"]["pn"]}, X)
  np.testing.assert_allclose(net.apply(with_gate_bias(1e4), X),
                             features @ head["kernel"] + head["bias"],
                             rtol=1e-5, atol=1e-5)
